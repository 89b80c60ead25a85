//! `manifest.json`: how a model directory packs its inputs and where its heads are.
//! The format is documented in `docs/model-contract.md`.

use serde::{Deserialize, Serialize};
use std::path::Path;

use super::ClassifierError;

pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub base_model: Option<String>,
    #[serde(default)]
    pub precision: Option<String>,
    pub encoding: Encoding,
    #[serde(default)]
    pub inputs: InputNames,
    pub heads: Vec<Head>,
    /// Informational (e.g. temperatures folded into the graph); rulegate does not read it.
    #[serde(default)]
    pub calibration: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encoding {
    pub scheme: PairScheme,
    pub prompt_render: PromptRender,
    pub max_length: usize,
    #[serde(default = "default_min_prompt_tokens")]
    pub min_prompt_tokens: usize,
    pub prompt_truncation: TruncationSide,
    pub completion_truncation: TruncationSide,
    pub cls_token: String,
    pub sep_token: String,
    pub pad_token: String,
}

fn default_min_prompt_tokens() -> usize {
    64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairScheme {
    /// `[CLS] prompt [SEP] completion [SEP]` with token types 0 and 1.
    Pair,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptRender {
    /// `"{role}: {content}"` per message, joined by newlines.
    RoleLines,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncationSide {
    /// Keep the end (drop the oldest tokens).
    Left,
    /// Keep the start.
    Right,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputNames {
    pub input_ids: String,
    pub attention_mask: String,
    pub token_type_ids: String,
}

impl Default for InputNames {
    fn default() -> Self {
        InputNames {
            input_ids: "input_ids".into(),
            attention_mask: "attention_mask".into(),
            token_type_ids: "token_type_ids".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub name: String,
    pub kind: HeadKind,
    /// Graph output holding this head, shape `[batch, k]`.
    pub output: String,
    /// Column for single-value heads.
    #[serde(default)]
    pub index: Option<usize>,
    pub activation: Activation,
    /// Class labels of a `response_type` head, one per column.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    Proposition,
    ResponseType,
    Prm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Sigmoid,
    Softmax,
    Identity,
}

impl Manifest {
    pub fn from_file(path: &Path) -> Result<Manifest, ClassifierError> {
        let bad = |message: String| ClassifierError::Manifest { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        manifest.validate().map_err(bad)?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!(
                "format {} is not supported (this rulegate reads format {MANIFEST_FORMAT})",
                self.format
            ));
        }
        if self.encoding.max_length < 8 {
            return Err(format!("encoding.max_length {} is too small", self.encoding.max_length));
        }
        if self.encoding.prompt_truncation != TruncationSide::Left
            || self.encoding.completion_truncation != TruncationSide::Right
        {
            return Err("only prompt_truncation: left with completion_truncation: right is supported".into());
        }
        let mut names = std::collections::HashSet::new();
        let mut response_type_heads = 0;
        let mut prm_heads = 0;
        for head in &self.heads {
            if !names.insert(head.name.as_str()) {
                return Err(format!("head `{}` appears twice", head.name));
            }
            match head.kind {
                HeadKind::Proposition | HeadKind::Prm => {
                    if head.index.is_none() {
                        return Err(format!("head `{}` needs an `index` into output `{}`", head.name, head.output));
                    }
                    if head.activation == Activation::Softmax {
                        return Err(format!(
                            "head `{}` is a single value; softmax needs a response_type head",
                            head.name
                        ));
                    }
                    if head.kind == HeadKind::Prm {
                        prm_heads += 1;
                    }
                }
                HeadKind::ResponseType => {
                    response_type_heads += 1;
                    match &head.labels {
                        Some(labels) if !labels.is_empty() => {}
                        _ => return Err(format!("response_type head `{}` needs `labels`", head.name)),
                    }
                }
            }
        }
        if response_type_heads > 1 || prm_heads > 1 {
            return Err("a model has at most one response_type head and one prm head".into());
        }
        Ok(())
    }

    pub fn head(&self, name: &str) -> Option<&Head> {
        self.heads.iter().find(|h| h.name == name)
    }

    pub fn proposition_heads(&self) -> impl Iterator<Item = &Head> {
        self.heads.iter().filter(|h| h.kind == HeadKind::Proposition)
    }

    pub fn response_type_head(&self) -> Option<&Head> {
        self.heads.iter().find(|h| h.kind == HeadKind::ResponseType)
    }

    pub fn prm_head(&self) -> Option<&Head> {
        self.heads.iter().find(|h| h.kind == HeadKind::Prm)
    }
}
