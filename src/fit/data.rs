//! Input rows of `rulegate fit`: ranked sets (one prompt, several completions, each with a
//! class or proposition labels) and RBR gold rows (one completion with proposition labels).

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::Value;

use crate::conversation::Message;
use crate::dataset::{RowError, parse_row};
use crate::policy::Policy;

/// One completion to score, with what is known of its quality.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    /// Index of the prompt it answers; pairs form within a prompt (ranked rows) or, for
    /// gold rows, across prompts of the same response type.
    pub prompt: usize,
    /// Index into [`Policy::response_types`].
    pub response_type: usize,
    /// Position of its class in the response type's order (0 is best).
    pub class_rank: usize,
    /// The completion text.
    pub completion: String,
    /// An external reward to fit on top of (`base_reward` of a ranked completion; 0 otherwise).
    pub base_reward: f64,
}

/// Rows read from one or more files.
#[derive(Debug, Default)]
pub struct FitData {
    /// Every prompt read, indexed by [`Labelled::prompt`].
    pub prompts: Vec<Vec<Message>>,
    /// Whether the prompt came from a ranked row (pairs within it) or a gold row.
    pub ranked: Vec<bool>,
    /// Every completion read, from all files.
    pub completions: Vec<Labelled>,
    /// Rows that could not be used, with their line numbers.
    pub errors: Vec<RowError>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RankedRow {
    #[serde(default)]
    #[allow(dead_code)]
    id: Option<Value>,
    prompt: Value,
    response_type: String,
    completions: Vec<RankedCompletion>,
    #[serde(default)]
    #[allow(dead_code)]
    category: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RankedCompletion {
    completion: Value,
    #[serde(default)]
    class: Option<String>,
    /// Labels; `null` marks one that is unknown (fine when `class` is given).
    #[serde(default)]
    propositions: Option<IndexMap<String, Option<bool>>>,
    #[serde(default)]
    base_reward: Option<f64>,
}

impl FitData {
    /// Reads JSONL text; bad rows are collected in `errors` with their line numbers.
    pub fn read(&mut self, text: &str, policy: &Policy) {
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            if let Err(message) = self.read_line(line, line_no, policy) {
                self.errors.push(RowError { line: line_no, message });
            }
        }
    }

    fn read_line(&mut self, line: &str, line_no: usize, policy: &Policy) -> Result<(), String> {
        let value: Value = serde_json::from_str(line).map_err(|e| format!("malformed JSON: {e}"))?;
        if value.get("completions").is_some() {
            let row: RankedRow = serde_json::from_value(value).map_err(|e| format!("not a ranked row ({{prompt, response_type, completions: [{{completion, class | propositions, base_reward?}}]}}): {e}"))?;
            let rt = resolve(policy, &row.response_type)?;
            let prompt = parse_row(&serde_json::json!({"prompt": row.prompt}).to_string(), line_no)
                .map_err(|e| e.message)?
                .prompt;
            if row.completions.len() < 2 {
                return Err("a ranked row needs at least two completions".into());
            }
            let index = self.prompts.len();
            let mut parsed = Vec::new();
            for (k, c) in row.completions.iter().enumerate() {
                let text = match &c.completion {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => crate::openai::content_text(other.get("content").unwrap_or(other)),
                };
                let class_rank = class_rank(policy, rt, c.class.as_deref(), c.propositions.as_ref())
                    .map_err(|e| format!("completion {}: {e}", k + 1))?;
                parsed.push(Labelled {
                    prompt: index,
                    response_type: rt,
                    class_rank,
                    completion: text,
                    base_reward: c.base_reward.unwrap_or(0.0),
                });
            }
            self.prompts.push(prompt);
            self.ranked.push(true);
            self.completions.extend(parsed);
            return Ok(());
        }
        let row = parse_row(line, line_no).map_err(|e| e.message)?;
        let label = row.response_type.as_deref().ok_or("a gold row needs a response_type (or category)")?;
        let rt = resolve(policy, label)?;
        let propositions = row.propositions.as_ref().ok_or("a gold row needs `propositions` labels")?;
        let labels: IndexMap<String, Option<bool>> = propositions.iter().map(|(k, v)| (k.clone(), Some(*v))).collect();
        let class_rank = class_rank(policy, rt, None, Some(&labels))?;
        let index = self.prompts.len();
        self.prompts.push(row.prompt);
        self.ranked.push(false);
        self.completions.push(Labelled {
            prompt: index,
            response_type: rt,
            class_rank,
            completion: row.completion,
            base_reward: 0.0,
        });
        Ok(())
    }
}

fn resolve(policy: &Policy, label: &str) -> Result<usize, String> {
    let rt = policy.resolve_response_type(label).ok_or_else(|| format!("unknown response type `{label}`"))?;
    Ok(policy.response_types().iter().position(|r| std::ptr::eq(r, rt)).unwrap_or(0))
}

/// The class's rank from a class name, or from proposition labels through the rules.
fn class_rank(
    policy: &Policy,
    rt: usize,
    class: Option<&str>,
    propositions: Option<&IndexMap<String, Option<bool>>>,
) -> Result<usize, String> {
    let rt = &policy.response_types()[rt];
    if let Some(name) = class {
        return rt.class_index(name).ok_or_else(|| format!("`{name}` is not a class of response type `{}`", rt.name));
    }
    let labels = propositions.ok_or("needs a `class` or `propositions`")?;
    let truth = policy
        .propositions()
        .iter()
        .map(|p| {
            labels.get(&p.name).copied().flatten().ok_or_else(|| format!("proposition `{}` is not labelled", p.name))
        })
        .collect::<Result<Vec<bool>, String>>()?;
    Ok(policy.classify(rt, &truth))
}
