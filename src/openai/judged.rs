//! What of an upstream answer reaches the client: only what the judge reads.
//!
//! A model writes text in more places than `content`: tool calls of every type, `refusal`,
//! reasoning fields (`reasoning_content`, `reasoning`), audio transcripts, content-part
//! arrays, and fields no one has named yet. [`sanitize_message`] and [`sanitize_delta`] bring
//! an upstream message or stream delta to a shape whose every string is read by
//! [`ChatMessage::judged_text`] (bar the role, tool-call ids and types, and audio ids, which
//! rulegate checks or rewrites), and drop the rest: unknown fields under
//! [`UnjudgedFields::Drop`] (the default), audio data and non-text content parts always,
//! since the judge cannot read them. Both run on every answer as it arrives from the
//! upstream, before any hold-back mode sees it.

use serde_json::{Map, Value};

use super::{ChatMessage, Choice, ChunkChoice, Delta};

/// What happens to fields of an assistant message or delta that rulegate does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum UnjudgedFields {
    /// Dropped before the answer reaches the client (the default): what is not read is not
    /// delivered.
    #[default]
    Drop,
    /// Kept, and every string in them judged as part of the completion.
    Judge,
}

/// Message fields known to carry generated text, judged with the content.
const TEXT_FIELDS: [&str; 3] = ["refusal", "reasoning_content", "reasoning"];

/// The finish reasons passed on; any other becomes `stop` (the field is a string the upstream
/// writes, and the client reads).
const FINISH_REASONS: [&str; 5] = ["stop", "length", "tool_calls", "content_filter", "function_call"];

/// A finish reason as delivered.
pub fn finish_reason(reason: Option<String>) -> Option<String> {
    reason.map(|r| if FINISH_REASONS.contains(&r.as_str()) { r } else { "stop".to_string() })
}

/// Brings an upstream choice to what is judged and delivered (see the module docs). Choice
/// fields other than the message (`logprobs`, ...) are dropped: their tokens are generated
/// text the judge does not read.
pub fn sanitize_choice(choice: &mut Choice, mode: UnjudgedFields) {
    sanitize_message(&mut choice.message, mode);
    choice.finish_reason = finish_reason(choice.finish_reason.take());
    choice.extra.clear();
}

/// A stream choice, like [`sanitize_choice`].
pub fn sanitize_chunk_choice(choice: &mut ChunkChoice, mode: UnjudgedFields) {
    sanitize_delta(&mut choice.delta, mode);
    choice.finish_reason = finish_reason(choice.finish_reason.take());
    choice.extra.clear();
}

/// An assistant message as judged and delivered: content parts become their text, tool
/// calls keep the fields the judge reads, audio keeps its transcript, unknown fields go
/// (or stay, to be judged, under [`UnjudgedFields::Judge`]).
pub fn sanitize_message(message: &mut ChatMessage, mode: UnjudgedFields) {
    message.role = "assistant".into();
    if message.content.is_array() {
        message.content = Value::String(super::content_text(&message.content));
    } else if !message.content.is_string() {
        message.content = Value::Null;
    }
    sanitize_fields(&mut message.extra, mode);
}

/// A stream delta, like [`sanitize_message`] (its content is already text: see [`Delta`]).
pub fn sanitize_delta(delta: &mut Delta, mode: UnjudgedFields) {
    if delta.role.is_some() {
        delta.role = Some("assistant".into());
    }
    sanitize_fields(&mut delta.extra, mode);
}

fn sanitize_fields(extra: &mut Map<String, Value>, mode: UnjudgedFields) {
    let fields = std::mem::take(extra);
    for (key, value) in fields {
        let kept = match key.as_str() {
            "tool_calls" => match value {
                Value::Array(calls) => {
                    Some(Value::Array(calls.into_iter().filter_map(|c| sanitize_call(c, mode)).collect()))
                }
                _ => None,
            },
            "function_call" => sanitize_payload(value, "arguments", mode),
            "audio" => sanitize_audio(value),
            k if TEXT_FIELDS.contains(&k) => Some(value),
            _ if mode == UnjudgedFields::Judge => Some(value),
            _ => None,
        };
        if let Some(value) = kept.filter(|v| !v.is_null()) {
            extra.insert(key, value);
        }
    }
}

/// A tool call (or a stream's piece of one): `index`, `id` (when it reads as an identifier),
/// `type`, and the `function` or `custom` payload. A call of another type is kept only
/// under [`UnjudgedFields::Judge`] (every string of it judged).
fn sanitize_call(call: Value, mode: UnjudgedFields) -> Option<Value> {
    let Value::Object(call) = call else { return None };
    let mut out = Map::new();
    for (key, value) in call {
        let kept = match key.as_str() {
            "index" => value.is_u64().then_some(value),
            "id" => value.as_str().filter(|id| is_identifier(id)).map(|_| value.clone()),
            "type" => match value.as_str() {
                Some("function" | "custom") => Some(value),
                _ if mode == UnjudgedFields::Judge => Some(value),
                _ => return None,
            },
            "function" => sanitize_payload(value, "arguments", mode),
            "custom" => sanitize_payload(value, "input", mode),
            _ if mode == UnjudgedFields::Judge => Some(value),
            _ => None,
        };
        if let Some(value) = kept {
            out.insert(key, value);
        }
    }
    Some(Value::Object(out))
}

/// A tool call's payload: its `name` (a string) and its `body` field (`arguments` or
/// `input`), written as the string the judge reads; other fields only under
/// [`UnjudgedFields::Judge`].
fn sanitize_payload(payload: Value, body: &str, mode: UnjudgedFields) -> Option<Value> {
    let Value::Object(payload) = payload else { return None };
    let mut out = Map::new();
    for (key, value) in payload {
        let kept = if key == "name" {
            value.is_string().then_some(value)
        } else if key == body {
            match value {
                Value::Null => None,
                Value::String(_) => Some(value),
                other => Some(Value::String(other.to_string())),
            }
        } else {
            (mode == UnjudgedFields::Judge).then_some(value)
        };
        if let Some(value) = kept {
            out.insert(key, value);
        }
    }
    Some(Value::Object(out))
}

/// An audio answer: its transcript (judged) and its id; the audio itself cannot be judged.
fn sanitize_audio(audio: Value) -> Option<Value> {
    let Value::Object(audio) = audio else { return None };
    let out: Map<String, Value> = audio
        .into_iter()
        .filter(|(k, v)| match k.as_str() {
            "transcript" => v.is_string(),
            "id" => v.as_str().is_some_and(is_identifier),
            "expires_at" => v.is_number(),
            _ => false,
        })
        .collect();
    Some(Value::Object(out))
}

/// Whether an id reads as an identifier, not prose: up to 64 letters, digits, `_`, `-`, `.`,
/// `:`.
fn is_identifier(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// Every string in `value`, in order, for the judge.
pub(crate) fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(fields) => fields.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// What the judge reads of a message (see [`ChatMessage::judged_text`]): the content, the
/// tool calls, then every other field's strings, one part per line.
pub(crate) fn judged_text(message: &ChatMessage) -> String {
    let mut parts = vec![message.text()];
    let calls = message.extra.get("tool_calls").and_then(Value::as_array).into_iter().flatten();
    parts.extend(calls.map(call_text));
    parts.extend(message.extra.get("function_call").map(|f| payload_text(f, "arguments")));
    for (key, value) in &message.extra {
        match key.as_str() {
            "tool_calls" | "function_call" => {}
            "audio" => parts.push(value.get("transcript").and_then(Value::as_str).unwrap_or_default().to_string()),
            _ => {
                let mut found = Vec::new();
                strings(value, &mut found);
                parts.push(found.join("\n"));
            }
        }
    }
    parts.retain(|p| !p.is_empty());
    parts.join("\n")
}

/// A tool call as the judge reads it: `name(arguments)` for a function, `name(input)` for a
/// custom tool, every string otherwise (bar the id and type, rulegate's or checked).
fn call_text(call: &Value) -> String {
    let Some(fields) = call.as_object() else { return String::new() };
    let mut parts = Vec::new();
    for (key, value) in fields {
        match key.as_str() {
            "id" | "type" | "index" => {}
            "function" => parts.push(payload_text(value, "arguments")),
            "custom" => parts.push(payload_text(value, "input")),
            _ => {
                let mut found = Vec::new();
                strings(value, &mut found);
                parts.extend(found);
            }
        }
    }
    // An unknown type is read too: under `judge`, it is delivered.
    if let Some(kind) = fields.get("type").and_then(Value::as_str).filter(|t| !matches!(*t, "function" | "custom")) {
        parts.insert(0, kind.to_string());
    }
    parts.retain(|p| !p.is_empty());
    parts.join("\n")
}

/// `name(body)`, then every other string of the payload.
fn payload_text(payload: &Value, body: &str) -> String {
    let Some(fields) = payload.as_object() else { return String::new() };
    let name = fields.get("name").and_then(Value::as_str).unwrap_or_default();
    let text = match fields.get(body) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let mut out = format!("{name}({text})");
    for (_, value) in fields.iter().filter(|(k, _)| *k != "name" && *k != body) {
        let mut found = Vec::new();
        strings(value, &mut found);
        for s in found {
            out.push('\n');
            out.push_str(&s);
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    fn message(value: Value) -> ChatMessage {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn every_generated_field_is_judged_or_dropped() {
        let mut m = message(json!({
            "role": "assistant",
            "content": [{"type": "text", "text": "A"}, {"type": "image_url", "image_url": {"url": "data:IMG"}}],
            "refusal": "R",
            "reasoning_content": "T",
            "reasoning": {"summary": "S"},
            "audio": {"id": "audio_1", "data": "BASE64", "transcript": "X", "expires_at": 1},
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}", "extra": "FE"}, "note": "N"},
                {"id": "call 2 with prose", "type": "custom", "custom": {"name": "c", "input": "CI"}},
                {"id": "call_3", "type": "mcp", "mcp": {"text": "M"}}
            ],
            "annotations": [{"type": "url_citation", "title": "U"}],
            "name": "Nm"
        }));
        sanitize_message(&mut m, UnjudgedFields::Drop);
        let judged = m.judged_text();
        assert_eq!(judged, "A\nf({\"a\":1})\nc(CI)\nR\nT\nS\nX", "{judged}");
        let delivered = serde_json::to_string(&m).unwrap();
        for gone in ["IMG", "BASE64", "FE", "\"N\"", "prose", "mcp", "\"M\"", "\"U\"", "Nm"] {
            assert!(!delivered.contains(gone), "{gone} delivered: {delivered}");
        }

        let mut m = message(json!({"role": "assistant", "content": "A", "annotations": [{"title": "U"}],
            "tool_calls": [{"id": "call_3", "type": "mcp", "mcp": {"text": "M"}}]}));
        sanitize_message(&mut m, UnjudgedFields::Judge);
        let judged = m.judged_text();
        for read in ["U", "M", "mcp"] {
            assert!(judged.contains(read), "{read} not judged: {judged}");
        }
    }

    #[test]
    fn finish_reasons_are_known_words() {
        assert_eq!(finish_reason(Some("stop".into())).as_deref(), Some("stop"));
        assert_eq!(finish_reason(Some("here is how to".into())).as_deref(), Some("stop"));
        assert_eq!(finish_reason(None), None);
    }

    /// Arbitrary JSON with the keys answers use, every string distinct (`s<n>`), so a string
    /// found in the judged text was read there, not matched by chance.
    pub(crate) fn answer_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let key = prop_oneof![
            Just("content".to_string()),
            Just("refusal".to_string()),
            Just("reasoning_content".to_string()),
            Just("reasoning".to_string()),
            Just("audio".to_string()),
            Just("transcript".to_string()),
            Just("data".to_string()),
            Just("tool_calls".to_string()),
            Just("function_call".to_string()),
            Just("function".to_string()),
            Just("custom".to_string()),
            Just("arguments".to_string()),
            Just("input".to_string()),
            Just("name".to_string()),
            Just("id".to_string()),
            Just("type".to_string()),
            Just("text".to_string()),
            Just("index".to_string()),
            Just("role".to_string()),
            "[a-z_]{1,8}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<u8>().prop_map(Value::from),
            (0u32..1_000_000).prop_map(|n| Value::String(format!("s{n}"))),
            prop_oneof![
                Just("function"),
                Just("custom"),
                Just("text"),
                Just("call_1"),
                Just("assistant"),
                Just("stop")
            ]
            .prop_map(|s| Value::String(s.to_string())),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec((key.clone(), inner), 0..6)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    /// Every string of a delivered message with its path; the role, tool-call ids and types
    /// and the audio id are rulegate's own or checked, so they are left out.
    pub(crate) fn delivered_strings(value: &Value, path: &mut Vec<String>, out: &mut Vec<(String, String)>) {
        match value {
            Value::String(s) => {
                let last = path.last().map(String::as_str);
                let parent = path.len().checked_sub(3).and_then(|i| path.get(i)).map(String::as_str);
                let own = last == Some("role")
                    || (parent == Some("tool_calls") && matches!(last, Some("id" | "type")))
                    || (path.first().map(String::as_str) == Some("audio") && last == Some("id") && path.len() == 2);
                if !own {
                    out.push((path.join("."), s.clone()));
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(i.to_string());
                    delivered_strings(item, path, out);
                    path.pop();
                }
            }
            Value::Object(fields) => {
                for (k, v) in fields {
                    path.push(k.clone());
                    delivered_strings(v, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    fn check_delivered(message: &ChatMessage) -> Result<(), proptest::test_runner::TestCaseError> {
        let judged = message.judged_text();
        let value =
            serde_json::to_value(message).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
        let mut found = Vec::new();
        delivered_strings(&value, &mut Vec::new(), &mut found);
        for (path, s) in found {
            proptest::prop_assert!(judged.contains(&s), "{path} = {s:?} delivered but not judged: {judged:?}");
        }
        proptest::prop_assert_eq!(&message.role, "assistant");
        Ok(())
    }

    proptest::proptest! {
        /// For any JSON answer, every string delivered of a choice was judged (or is
        /// rulegate's own), in both modes.
        #[test]
        fn delivered_answers_are_judged(fields in answer_json(), finish in answer_json()) {
            let Value::Object(fields) = fields else { return Ok(()) };
            let mut message = json!({"role": "assistant"});
            message.as_object_mut().unwrap().extend(fields);
            let Ok(message) = serde_json::from_value::<ChatMessage>(message) else { return Ok(()) };
            for mode in [UnjudgedFields::Drop, UnjudgedFields::Judge] {
                let mut choice = Choice { index: 0, message: message.clone(), finish_reason: finish.as_str().map(str::to_string), extra: Map::new() };
                sanitize_choice(&mut choice, mode);
                check_delivered(&choice.message)?;
                proptest::prop_assert!(choice.finish_reason.as_deref().is_none_or(|r| FINISH_REASONS.contains(&r)));
                proptest::prop_assert!(choice.extra.is_empty());
            }
        }

        /// For any stream delta, every string delivered was judged: read as a message, the
        /// delta's judged text holds it (the assembled answer holds every delta's pieces).
        #[test]
        fn delivered_deltas_are_judged(fields in answer_json()) {
            let Value::Object(fields) = fields else { return Ok(()) };
            let Ok(delta) = serde_json::from_value::<Delta>(Value::Object(fields)) else { return Ok(()) };
            for mode in [UnjudgedFields::Drop, UnjudgedFields::Judge] {
                let mut delta = delta.clone();
                sanitize_delta(&mut delta, mode);
                let mut message = ChatMessage::new("assistant", delta.content.clone().unwrap_or_default());
                message.extra = delta.extra.clone();
                check_delivered(&message)?;
            }
        }
    }
}
