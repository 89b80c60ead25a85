//! The policy file as written: serde structs that mirror the YAML, unknown fields rejected.
//! Nothing here is checked beyond its shape; [`super::compile`] validates it into a
//! [`super::Policy`].

use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

/// A literal map `{proposition: true|false, ...}`: the conjunction of its entries.
pub type UninitializedLiterals = IndexMap<String, Spanned<bool>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninitializedPolicy {
    pub policy: Spanned<String>,
    #[serde(default)]
    pub version: Option<Spanned<String>>,
    #[serde(default)]
    pub description: Option<String>,
    /// Class name -> description, best first.
    pub classes: IndexMap<String, Spanned<String>>,
    /// Default action per class.
    #[serde(default)]
    pub actions: IndexMap<String, Spanned<UninitializedAction>>,
    pub propositions: IndexMap<String, Spanned<UninitializedProposition>>,
    #[serde(default)]
    pub derived: IndexMap<String, Spanned<UninitializedDerived>>,
    pub response_types: IndexMap<String, Spanned<UninitializedResponseType>>,
    /// Limits on the work one request may cause.
    #[serde(default)]
    pub budget: Option<Spanned<UninitializedBudget>>,
    /// How streamed responses are held back until judged.
    #[serde(default)]
    pub streaming: Option<Spanned<UninitializedStreaming>>,
    /// Judging the prompt before the upstream is called.
    #[serde(default)]
    pub input_check: Option<Spanned<UninitializedInputCheck>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninitializedBudget {
    /// Upstream completions per choice, the first one included.
    pub max_attempts: Option<u32>,
    /// Candidates a best-of-n may judge, the first one included.
    pub max_candidates: Option<u32>,
    /// After this, the best completion so far (or the fallback) is returned.
    pub deadline_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninitializedStreaming {
    /// `buffer`, `window` or `passthrough`.
    pub mode: Option<Spanned<String>>,
    /// Characters released per judged window (`window` mode).
    pub window_chars: Option<Spanned<usize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninitializedInputCheck {
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Act only when the predicted response type is at least this likely.
    pub min_probability: Option<Spanned<f64>>,
    /// Response type -> `guidance`, `fallback` or `block` (with optional code/message).
    #[serde(default)]
    pub actions: IndexMap<String, Spanned<UninitializedAction>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninitializedProposition {
    pub description: String,
    /// Model head; defaults to the proposition's name.
    #[serde(default)]
    pub head: Option<Spanned<String>>,
    #[serde(default)]
    pub threshold: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninitializedDerived {
    #[serde(default)]
    pub description: Option<String>,
    pub all: UninitializedLiterals,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninitializedResponseType {
    #[serde(default)]
    pub description: Option<String>,
    /// Label of the model's response-type head; defaults to the name.
    #[serde(default)]
    pub model_label: Option<Spanned<String>>,
    #[serde(default)]
    pub aliases: Vec<Spanned<String>>,
    #[serde(default)]
    pub categories: Vec<Spanned<String>>,
    /// Class order for this type, best first; defaults to the order of `classes` at the top.
    #[serde(default)]
    pub class_order: Option<Spanned<Vec<String>>>,
    /// Class name -> rule.
    pub classes: IndexMap<String, Spanned<UninitializedLiterals>>,
    #[serde(default)]
    pub weights: Option<Spanned<UninitializedWeights>>,
    /// Overrides of the policy-level actions.
    #[serde(default)]
    pub actions: IndexMap<String, Spanned<UninitializedAction>>,
    /// What an ideal answer looks like, injected as a system message when regenerating.
    #[serde(default)]
    pub guidance: Option<String>,
    /// Canned completion used by the `fallback` action.
    #[serde(default)]
    pub fallback: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninitializedWeights {
    #[serde(default)]
    pub bias: f64,
    #[serde(default)]
    pub propositions: IndexMap<String, Spanned<f64>>,
    #[serde(default)]
    pub classes: IndexMap<String, Spanned<f64>>,
    /// Where the weights came from (free text, e.g. the `rulegate fit` run).
    #[serde(default)]
    pub source: Option<String>,
}

/// An action as written: either a bare name (`pass`, `regenerate`, ...) or a one-key map
/// `{regenerate: {max_attempts: 3}}` carrying parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct UninitializedAction {
    pub name: String,
    pub params: UninitializedActionParams,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninitializedActionParams {
    pub max_attempts: Option<u32>,
    pub n: Option<u32>,
    pub guidance: Option<bool>,
    pub temperature: Option<f64>,
    pub code: Option<String>,
    pub message: Option<String>,
    /// `best`, `fallback` or `block`: what regenerate / best_of_n return when nothing passes.
    pub exhausted: Option<String>,
}

impl<'de> Deserialize<'de> for UninitializedAction {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ActionVisitor;
        impl<'de> Visitor<'de> for ActionVisitor {
            type Value = UninitializedAction;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an action name (pass, regenerate, best_of_n, fallback, block) or a one-key map {action: {params}}",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(UninitializedAction { name: v.to_string(), params: UninitializedActionParams::default() })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let Some(name) = map.next_key::<String>()? else {
                    return Err(de::Error::custom("empty action map: write the action name as its key"));
                };
                let params = map.next_value::<Option<UninitializedActionParams>>()?.unwrap_or_default();
                if map.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom("an action map has exactly one key, the action name"));
                }
                Ok(UninitializedAction { name, params })
            }
        }
        deserializer.deserialize_any(ActionVisitor)
    }
}
