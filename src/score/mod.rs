//! From proposition probabilities to a [`Verdict`]: truth values, the class the rules give,
//! class probabilities, the linear RBR score and the action. Pure functions of a
//! [`Policy`]; no model involved.

use indexmap::IndexMap;
use serde::Serialize;

use crate::policy::{Action, Policy, ResponseType};

/// How the response type of a verdict was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseTypeSource {
    /// The caller said what the prompt wants.
    Given,
    /// The model's response-type head predicted it from the prompt.
    Predicted,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PropositionValue {
    pub name: String,
    pub probability: f32,
    pub value: bool,
}

/// The judgement of one completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub response_type: String,
    pub response_type_source: ResponseTypeSource,
    /// Probability of each of the policy's response types (empty when the model has no
    /// response-type head).
    pub response_type_probs: IndexMap<String, f32>,
    pub propositions: Vec<PropositionValue>,
    pub class: String,
    /// Position of the class in the response type's order: 0 is the best.
    pub class_rank: usize,
    pub class_probs: IndexMap<String, f64>,
    pub score: f64,
    pub action: Action,
    /// The process reward model's value of the completion, if the model has that head.
    pub prm: Option<f32>,
    /// Whether the prompt or completion was cut to the model's maximum length.
    pub truncated: bool,
    pub policy_version: String,
    pub model_version: String,
}

impl Verdict {
    pub fn proposition(&self, name: &str) -> Option<&PropositionValue> {
        self.propositions.iter().find(|p| p.name == name)
    }

    /// Orders candidates best first: class order, then RBR score, then PRM value.
    pub fn better_than(&self, other: &Verdict) -> bool {
        self.rank_key() > other.rank_key()
    }

    fn rank_key(&self) -> (std::cmp::Reverse<usize>, OrderedF64, OrderedF64) {
        (
            std::cmp::Reverse(self.class_rank),
            OrderedF64::new(self.score),
            OrderedF64::new(f64::from(self.prm.unwrap_or(0.0))),
        )
    }
}

/// A total order on floats, NaN lowest, for ranking candidates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrderedF64(f64);

impl OrderedF64 {
    pub fn new(x: f64) -> Self {
        OrderedF64(if x.is_nan() { f64::NEG_INFINITY } else { x })
    }
}

impl Eq for OrderedF64 {}
impl PartialOrd for OrderedF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrderedF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The model-free part of a verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub truth: Vec<bool>,
    /// Index into the response type's classes.
    pub class: usize,
    pub class_probs: Vec<f64>,
    pub features: Vec<f64>,
    pub score: f64,
}

/// Judges a completion of response type `rt` from its proposition probabilities (one per
/// policy proposition, in policy order).
pub fn judge(policy: &Policy, rt: &ResponseType, probabilities: &[f32]) -> Judgement {
    let truth = policy.truth_values(probabilities);
    let class = policy.classify(rt, &truth);
    let class_probs = policy.class_probabilities(rt, probabilities);
    let features = features(probabilities, &class_probs);
    let score = score(rt, &features);
    Judgement { truth, class, class_probs, features, score }
}

/// The RBR feature vector: every proposition probability, then every class probability
/// (names from [`ResponseType::feature_names`]).
pub fn features(probabilities: &[f32], class_probs: &[f64]) -> Vec<f64> {
    probabilities.iter().map(|&p| f64::from(p)).chain(class_probs.iter().copied()).collect()
}

/// `bias + w . features`.
pub fn score(rt: &ResponseType, features: &[f64]) -> f64 {
    let w = &rt.weights;
    w.bias + w.propositions.iter().chain(&w.classes).zip(features).map(|(w, f)| w * f).sum::<f64>()
}
