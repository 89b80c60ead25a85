//! The policy file as written: serde structs that mirror the YAML, unknown fields rejected.
//! Nothing here is checked beyond its shape; [`Policy::from_yaml`](super::Policy::from_yaml)
//! validates it into a [`super::Policy`].

use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

/// A literal map `{proposition: true|false, ...}`: the conjunction of its entries.
pub type UninitializedLiterals = IndexMap<String, Spanned<bool>>;

/// A policy file as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninitializedPolicy {
    /// The policy's name; must not be empty.
    pub policy: Spanned<String>,
    /// Declared version; the content hash is appended to it.
    #[serde(default)]
    pub version: Option<Spanned<String>>,
    /// What the policy is for, for people.
    #[serde(default)]
    pub description: Option<String>,
    /// Class name -> description, best first.
    pub classes: IndexMap<String, Spanned<String>>,
    /// Default action per class.
    #[serde(default)]
    pub actions: IndexMap<String, Spanned<UninitializedAction>>,
    /// Simple propositions by name, each answered by one model head.
    pub propositions: IndexMap<String, Spanned<UninitializedProposition>>,
    /// Derived propositions by name: conjunctions of literals, for reuse in rules.
    #[serde(default)]
    pub derived: IndexMap<String, Spanned<UninitializedDerived>>,
    /// Response types by name, each with its class rules.
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
    /// What to do with the model's guess at the response type when it is unsure.
    #[serde(default)]
    pub response_type_prediction: Option<Spanned<UninitializedPrediction>>,
}

/// `response_type_prediction:`: below `min_probability`, the `otherwise` type is used.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninitializedPrediction {
    /// The least probability for a predicted response type to be used.
    pub min_probability: Option<Spanned<f64>>,
    /// The response type used when no prediction is that probable.
    pub otherwise: Option<Spanned<String>>,
    /// Response type -> the probability from which its reading alone decides; between
    /// `min_probability` and this, a completion is judged under both it and `otherwise`.
    #[serde(default)]
    pub confident: IndexMap<String, Spanned<f64>>,
}

/// The `budget:` section; absent fields keep the defaults of [`Budget`](super::Budget).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninitializedBudget {
    /// Upstream completions per choice, the first one included.
    pub max_attempts: Option<u32>,
    /// Candidates a best-of-n may judge, the first one included.
    pub max_candidates: Option<u32>,
    /// The whole request's time, the first upstream call included; past it, the best
    /// completion so far (or the fallback) is returned, or 504 when there is none.
    pub deadline_ms: Option<u64>,
}

/// The `streaming:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninitializedStreaming {
    /// `buffer`, `window` or `passthrough`.
    pub mode: Option<Spanned<String>>,
    /// Characters released per judged window (`window` mode).
    pub window_chars: Option<Spanned<usize>>,
}

/// The `input_check:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninitializedInputCheck {
    /// `false` switches the check off while keeping its settings in the file.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Act only when the predicted response type is at least this likely.
    pub min_probability: Option<Spanned<f64>>,
    /// Response type -> `guidance`, `fallback` or `block` (with optional code/message).
    #[serde(default)]
    pub actions: IndexMap<String, Spanned<UninitializedAction>>,
}

/// One entry of `propositions:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninitializedProposition {
    /// What the proposition claims about a completion.
    pub description: String,
    /// Model head; defaults to the proposition's name.
    #[serde(default)]
    pub head: Option<Spanned<String>>,
    /// Probability at or above which it holds, in [0, 1] (default 0.5).
    #[serde(default)]
    pub threshold: Option<Spanned<f64>>,
    /// Thresholds for prompts read as a given response type (by name); the others use
    /// `threshold`. A prompt's threshold is these weighted by its response-type probabilities.
    #[serde(default)]
    pub threshold_by_response_type: IndexMap<String, Spanned<f64>>,
}

/// One entry of `derived:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninitializedDerived {
    /// What it means, for people.
    #[serde(default)]
    pub description: Option<String>,
    /// The literals that must all hold.
    pub all: UninitializedLiterals,
}

/// One entry of `response_types:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninitializedResponseType {
    /// What the prompt wants, for people.
    #[serde(default)]
    pub description: Option<String>,
    /// Label of the model's response-type head; defaults to the name.
    #[serde(default)]
    pub model_label: Option<Spanned<String>>,
    /// Other names for the type; unique across the policy, like names and categories.
    #[serde(default)]
    pub aliases: Vec<Spanned<String>>,
    /// Dataset categories that map to the type.
    #[serde(default)]
    pub categories: Vec<Spanned<String>>,
    /// Class order for this type, best first; defaults to the order of `classes` at the top.
    #[serde(default)]
    pub class_order: Option<Spanned<Vec<String>>>,
    /// Class name -> rule.
    pub classes: IndexMap<String, Spanned<UninitializedLiterals>>,
    /// The linear reward; all zero when absent.
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

/// A response type's `weights:`; absent entries are zero.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninitializedWeights {
    /// Constant term.
    #[serde(default)]
    pub bias: f64,
    /// Proposition name -> weight on its probability.
    #[serde(default)]
    pub propositions: IndexMap<String, Spanned<f64>>,
    /// Class name -> weight on its probability.
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
    /// `pass`, `regenerate`, `best_of_n`, `beam_search`, `fallback` or `block` (or, in `input_check`,
    /// `guidance`, `fallback` or `block`).
    pub name: String,
    /// Its parameters; all absent for a bare name.
    pub params: UninitializedActionParams,
}

/// Parameters of an action; which ones an action takes is checked in validation.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninitializedActionParams {
    /// `regenerate`: new completions to try after the first, 1 to 10 (default 2).
    pub max_attempts: Option<u32>,
    /// `best_of_n`: candidates, the first one included, 2 to 16 (default 4).
    pub n: Option<u32>,
    /// `beam_search`: prefixes kept after each step, 1 to 8 (default 2).
    pub beam_width: Option<u32>,
    /// `beam_search`: continuations per kept prefix and step, 1 to 8 (default 2).
    pub expansions: Option<u32>,
    /// `beam_search`: steps before the beams are finished, 1 to 16 (default 4).
    pub max_steps: Option<u32>,
    /// `beam_search`: tokens per step, 8 to 1024 (default 48).
    pub step_tokens: Option<u32>,
    /// `regenerate`, `best_of_n` and `beam_search`: add the response type's guidance
    /// (defaults true, false and true).
    pub guidance: Option<bool>,
    /// `regenerate`, `best_of_n` and `beam_search`: sampling temperature, 0 to 2.
    pub temperature: Option<f64>,
    /// `block`: the error code.
    pub code: Option<String>,
    /// `block`: the error message.
    pub message: Option<String>,
    /// `best`, `fallback` or `block`: what regenerate / best_of_n / beam_search return when
    /// nothing passes.
    pub exhausted: Option<String>,
}

impl<'de> Deserialize<'de> for UninitializedAction {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ActionVisitor;
        impl<'de> Visitor<'de> for ActionVisitor {
            type Value = UninitializedAction;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an action name (pass, regenerate, best_of_n, beam_search, fallback, block) or a one-key map {action: {params}}",
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
