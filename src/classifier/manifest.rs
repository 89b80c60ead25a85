//! `manifest.json`: how a model directory packs its inputs and where its heads are.
//! The format is documented in `docs/model-contract.md`.

use serde::{Deserialize, Serialize};
use std::path::Path;

use super::ClassifierError;

/// The manifest `format` this build reads; bumped on incompatible changes.
pub const MANIFEST_FORMAT: u32 = 1;

/// A model's `manifest.json`, as parsed; unknown fields are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Must equal [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The model's name, e.g. `rulegate-minilm-rbr`.
    pub name: String,
    /// The model's declared version; [`Classifier::version`](super::Classifier::version) adds a
    /// hash of the ONNX file to it.
    pub version: String,
    /// The pretrained encoder the model was fine-tuned from; informational.
    #[serde(default)]
    pub base_model: Option<String>,
    /// The graph's weight precision (e.g. `int8`); informational.
    #[serde(default)]
    pub precision: Option<String>,
    /// How the graph was quantised, if at all. `dynamic` graphs compute activation scales
    /// from each input tensor, so a row's result would depend on the rows batched with it:
    /// rulegate then runs such graphs one row at a time.
    #[serde(default)]
    pub quantization: Option<Quantization>,
    /// How a pair is tokenized and packed.
    pub encoding: Encoding,
    /// Names of the graph's three inputs; the usual BERT names when absent.
    #[serde(default)]
    pub inputs: InputNames,
    /// Where every head is read from in the graph's outputs.
    pub heads: Vec<Head>,
    /// Informational (e.g. temperatures folded into the graph); rulegate does not read it.
    #[serde(default)]
    pub calibration: Option<serde_json::Value>,
}

/// How a (prompt, completion) pair is packed into model inputs; see `docs/model-contract.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encoding {
    /// Layout of the packed pair.
    pub scheme: PairScheme,
    /// How a conversation is turned into prompt text.
    pub prompt_render: PromptRender,
    /// Most tokens in a packed pair, special tokens included; at least 8.
    pub max_length: usize,
    /// Prompt tokens kept however long the completion is (when the prompt has that many);
    /// defaults to 64.
    #[serde(default = "default_min_prompt_tokens")]
    pub min_prompt_tokens: usize,
    /// Which end of the prompt is kept; only `left` is supported.
    pub prompt_truncation: TruncationSide,
    /// Which end of the completion is kept; only `right` is supported.
    pub completion_truncation: TruncationSide,
    /// The classification token that starts every pair, e.g. `[CLS]`.
    pub cls_token: String,
    /// The separator after the prompt and after the completion, e.g. `[SEP]`.
    pub sep_token: String,
    /// The token batches are right-padded with, e.g. `[PAD]`.
    pub pad_token: String,
}

fn default_min_prompt_tokens() -> usize {
    64
}

/// How the two sides of a pair are laid out in one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairScheme {
    /// `[CLS] prompt [SEP] completion [SEP]` with token types 0 and 1.
    Pair,
}

/// How a conversation is rendered as the prompt side of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptRender {
    /// `"{role}: {content}"` per message, joined by newlines.
    RoleLines,
}

/// Which tokens are dropped when a side is too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncationSide {
    /// Keep the end (drop the oldest tokens).
    Left,
    /// Keep the start.
    Right,
}

/// Names of the ONNX graph's inputs, all int64 tensors of shape `[batch, seq]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputNames {
    /// Token ids input.
    pub input_ids: String,
    /// Attention mask input: 1 on real tokens, 0 on padding.
    pub attention_mask: String,
    /// Segment ids input: 0 for the prompt side, 1 for the completion side.
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

/// One output of the model: a proposition probability, the response-type distribution or the
/// process reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// What policies call the head (a proposition's `head`); unique in the manifest.
    pub name: String,
    /// What the head predicts.
    pub kind: HeadKind,
    /// Graph output holding this head, shape `[batch, k]`.
    pub output: String,
    /// Column for single-value heads.
    #[serde(default)]
    pub index: Option<usize>,
    /// Applied by rulegate to the raw output; softmax only on a `response_type` head.
    pub activation: Activation,
    /// Class labels of a `response_type` head, one per column.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
}

/// Quantisation schemes a model directory may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantization {
    /// Float weights and activations.
    None,
    /// Int8 weights; activation scales computed per input tensor at run time.
    Dynamic,
    /// Int8 weights and activations with calibrated, fixed scales.
    Static,
    /// Int8 weights dequantised to float; float arithmetic.
    WeightOnly,
}

/// What a head predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// The probability that a proposition holds for the completion; needs `index`.
    Proposition,
    /// What the prompt wants: one column per label; at most one per model.
    ResponseType,
    /// A process reward for the (possibly partial) completion; needs `index`; at most one per
    /// model.
    Prm,
}

/// Function applied to a head's raw output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `1 / (1 + e^-x)`: a probability from one logit.
    Sigmoid,
    /// Softmax over all the head's columns (`response_type` heads only).
    Softmax,
    /// The raw output unchanged.
    Identity,
}

impl Manifest {
    /// Reads, parses and validates a manifest file.
    pub fn from_file(path: &Path) -> Result<Manifest, ClassifierError> {
        let bytes = std::fs::read(path).map_err(|e| ClassifierError::Manifest {
            path: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        Manifest::from_bytes(path, &bytes)
    }

    /// Parses and validates a manifest already read from `path` (named in errors).
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Manifest, ClassifierError> {
        let bad = |message: String| ClassifierError::Manifest { path: path.to_path_buf(), message };
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
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

    /// The head called `name`, of any kind.
    pub fn head(&self, name: &str) -> Option<&Head> {
        self.heads.iter().find(|h| h.name == name)
    }

    /// Proposition heads in manifest order, the order of
    /// [`HeadValues::propositions`](super::HeadValues::propositions).
    pub fn proposition_heads(&self) -> impl Iterator<Item = &Head> {
        self.heads.iter().filter(|h| h.kind == HeadKind::Proposition)
    }

    /// The response-type head, if the model has one.
    pub fn response_type_head(&self) -> Option<&Head> {
        self.heads.iter().find(|h| h.kind == HeadKind::ResponseType)
    }

    /// The process-reward head, if the model has one.
    pub fn prm_head(&self) -> Option<&Head> {
        self.heads.iter().find(|h| h.kind == HeadKind::Prm)
    }
}
