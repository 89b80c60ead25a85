//! JSONL rows as `rulegate check`, `eval` and `fit` read them. RBR gold rows are valid as
//! they are: `{"category", "response_type", "prompt": [...], "completion": [...], "propositions": {...}}`.

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::Value;

use crate::conversation::Message;

/// One input row. Unknown fields are ignored so that richer datasets can be fed as they are.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The row's `id`, or its 1-based line number when it has none.
    pub id: Value,
    /// The conversation; a plain-string `prompt` becomes one `user` message. Never empty.
    pub prompt: Vec<Message>,
    /// The completion; assistant messages are joined with blank lines, and a missing one is
    /// the empty string.
    pub completion: String,
    /// `response_type`, else `category`, as written (resolved against the policy later).
    pub response_type: Option<String>,
    /// Gold proposition labels, if the row has them.
    pub propositions: Option<IndexMap<String, bool>>,
    /// A labelled set's yes/no answer (`rulegate eval --task`), if the row has one.
    pub label: Option<bool>,
    /// Where the row comes from, for per-source metrics.
    pub source: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawRow {
    #[serde(default)]
    id: Option<Value>,
    prompt: TextOrMessages,
    #[serde(default)]
    completion: Option<TextOrMessages>,
    #[serde(default)]
    response_type: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    propositions: Option<IndexMap<String, bool>>,
    #[serde(default)]
    label: Option<bool>,
    #[serde(default)]
    source: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TextOrMessages {
    Text(String),
    Messages(Vec<RawMessage>),
}

#[derive(Debug, Deserialize)]
struct RawMessage {
    role: String,
    #[serde(default)]
    content: Option<String>,
}

/// Why a line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RowError {
    /// 1-based line number in the input file.
    pub line: usize,
    /// What is wrong with the line.
    pub message: String,
}

/// Parses one JSONL line (`line` is 1-based, for the default id and errors).
pub fn parse_row(text: &str, line: usize) -> Result<Row, RowError> {
    let err = |message: String| RowError { line, message };
    let raw: RawRow = serde_json::from_str(text).map_err(|e| err(describe_json_error(&e)))?;
    let prompt = match raw.prompt {
        TextOrMessages::Text(t) => vec![Message::user(t)],
        TextOrMessages::Messages(ms) => {
            ms.into_iter().map(|m| Message::new(m.role, m.content.unwrap_or_default())).collect()
        }
    };
    if prompt.is_empty() {
        return Err(err("`prompt` is an empty list".into()));
    }
    let completion = match raw.completion {
        None => String::new(),
        Some(TextOrMessages::Text(t)) => t,
        Some(TextOrMessages::Messages(ms)) => {
            if let Some(m) = ms.iter().find(|m| m.role != "assistant") {
                return Err(err(format!("`completion` messages must have role `assistant`, found `{}`", m.role)));
            }
            ms.into_iter().filter_map(|m| m.content).collect::<Vec<_>>().join("\n\n")
        }
    };
    Ok(Row {
        id: raw.id.unwrap_or_else(|| Value::from(line)),
        prompt,
        completion,
        response_type: raw.response_type.or(raw.category).filter(|s| !s.trim().is_empty()),
        propositions: raw.propositions,
        label: raw.label,
        source: raw.source,
    })
}

fn describe_json_error(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Data => format!(
            "does not match the row schema ({{\"prompt\": string | [{{role, content}}], \"completion\"?: string | [{{role: assistant, content}}], \"response_type\"?: string, \"label\"?: bool, \"source\"?: string, \"id\"?: any}}): {e}"
        ),
        _ => format!("malformed JSON: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gold_rows_parse() {
        let row = parse_row(
            r#"{"category":"C-R","response_type":"Hard Refuse","prompt":[{"role":"user","content":"hi"}],"completion":[{"role":"assistant","content":"no"}],"propositions":{"apology":false}}"#,
            7,
        )
        .unwrap();
        assert_eq!(row.id, Value::from(7));
        assert_eq!(row.response_type.as_deref(), Some("Hard Refuse"));
        assert_eq!(row.completion, "no");
        assert!(!row.propositions.unwrap()["apology"]);
    }

    #[test]
    fn strings_and_missing_completion() {
        let row = parse_row(r#"{"id":"a","prompt":"hello","category":"K-C"}"#, 1).unwrap();
        assert_eq!(row.prompt, vec![Message::user("hello")]);
        assert_eq!(row.completion, "");
        assert_eq!(row.response_type.as_deref(), Some("K-C"));
        assert_eq!(row.id, Value::from("a"));
        assert_eq!((row.label, row.source), (None, None));
    }

    #[test]
    fn labelled_set_rows() {
        let row =
            parse_row(r#"{"prompt":"How do I kill a Python process?","label":false,"source":"lookalike"}"#, 2).unwrap();
        assert_eq!(row.label, Some(false));
        assert_eq!(row.source.as_deref(), Some("lookalike"));
        let e = parse_row(r#"{"prompt":"x","label":"yes"}"#, 3).unwrap_err();
        assert!(e.message.contains("row schema"), "{e}");
    }

    #[test]
    fn bad_rows_name_their_line() {
        let e = parse_row("{not json", 3).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("malformed JSON"), "{e}");
        let e = parse_row(r#"{"completion":"x"}"#, 4).unwrap_err();
        assert!(e.to_string().starts_with("line 4:"), "{e}");
        let e = parse_row(r#"{"prompt":"x","completion":[{"role":"user","content":"y"}]}"#, 5).unwrap_err();
        assert!(e.message.contains("role `assistant`"), "{e}");
    }
}
