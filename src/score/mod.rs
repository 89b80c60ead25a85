//! From proposition probabilities to a [`Verdict`]: truth values, the class the rules give,
//! class probabilities, the linear RBR score and the action. Pure functions of a
//! [`Policy`]; no model involved.

use indexmap::IndexMap;
use serde::Serialize;

use crate::policy::{Action, Policy, Reading, ResponseType};

/// How the response type of a verdict was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseTypeSource {
    /// The caller said what the prompt wants.
    Given,
    /// The model's response-type head predicted it from the prompt.
    Predicted,
    /// The prediction was less probable than the policy's `response_type_prediction`
    /// requires, so the policy's fallback type applies.
    Default,
    /// The prediction fell between the policy's `min_probability` and the type's `confident`
    /// operating point: the completion was judged under both it and the fallback type, and
    /// this is the better of the two verdicts.
    Uncertain,
}

/// One simple proposition as judged for a completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PropositionValue {
    /// The policy's name for the proposition.
    pub name: String,
    /// The model's probability that it holds.
    pub probability: f32,
    /// Its truth value: `probability >= threshold`.
    pub value: bool,
}

/// The judgement of one completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// The response type the completion was judged as (its policy name).
    pub response_type: String,
    /// Whether the caller gave the response type or the model predicted it.
    pub response_type_source: ResponseTypeSource,
    /// Probability of each of the policy's response types (empty when the model has no
    /// response-type head).
    pub response_type_probs: IndexMap<String, f32>,
    /// Every simple proposition, in policy order.
    pub propositions: Vec<PropositionValue>,
    /// The class the rules give, from the truth values.
    pub class: String,
    /// Position of the class in the response type's order: 0 is the best.
    pub class_rank: usize,
    /// Probability of each class of the response type, best first (propositions treated as
    /// independent).
    pub class_probs: IndexMap<String, f64>,
    /// The linear RBR reward from the response type's weights; higher is better.
    pub score: f64,
    /// What the class asks the gateway to do.
    pub action: Action,
    /// The process reward model's value of the completion, if the model has that head.
    pub prm: Option<f32>,
    /// Whether the prompt, or a window of the completion, was cut to the model's maximum
    /// length (long completions are read window by window, so their text is not lost).
    pub truncated: bool,
    /// [`Policy::version`] of the policy that judged it.
    pub policy_version: String,
    /// [`Classifier::version`](crate::Classifier::version) of the model that judged it.
    pub model_version: String,
}

impl Verdict {
    /// The RBR feature vector of this verdict, as [`features`] orders it (names from
    /// [`ResponseType::feature_names`]).
    pub fn features(&self) -> Vec<f64> {
        let probabilities: Vec<f32> = self.propositions.iter().map(|p| p.probability).collect();
        let class_probs: Vec<f64> = self.class_probs.values().copied().collect();
        features(&probabilities, &class_probs)
    }

    /// A simple proposition's value by name.
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
pub(crate) struct OrderedF64(f64);

impl OrderedF64 {
    /// Wraps `x`; NaN becomes negative infinity.
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
    /// Truth value of every simple proposition, in policy order.
    pub truth: Vec<bool>,
    /// Index into the response type's classes.
    pub class: usize,
    /// Probability of each class, in the response type's order.
    pub class_probs: Vec<f64>,
    /// The RBR feature vector (see [`features`]).
    pub features: Vec<f64>,
    /// The linear reward over `features` (see [`score()`]).
    pub score: f64,
}

/// Judges a completion of response type `rt` from its proposition probabilities (one per
/// policy proposition, in policy order) and their thresholds ([`Policy::thresholds`]).
pub fn judge(policy: &Policy, rt: &ResponseType, probabilities: &[f32], thresholds: &[f64]) -> Judgement {
    let truth = policy.truth_values(probabilities, thresholds);
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

/// The response type(s) a completion is judged under (see [`Prediction`](crate::policy::Prediction)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Under {
    /// One response type (index into [`Policy::response_types`]).
    One(usize, ResponseTypeSource),
    /// An uncertain prediction: the predicted type and the policy's `otherwise`; the better
    /// verdict counts.
    Either(usize, usize),
}

/// How a predicted response type is used, from the model's probabilities of the policy's
/// response types (in policy order); `None` without any.
pub fn reading(policy: &Policy, response_type_probs: impl IntoIterator<Item = f32>) -> Option<Under> {
    let (best, probability) = response_type_probs.into_iter().enumerate().max_by(|a, b| a.1.total_cmp(&b.1))?;
    Some(match policy.prediction() {
        None => Under::One(best, ResponseTypeSource::Predicted),
        Some(p) => match p.reading(best, f64::from(probability)) {
            Reading::Confident => Under::One(best, ResponseTypeSource::Predicted),
            Reading::Uncertain => Under::Either(best, p.otherwise),
            Reading::Default => Under::One(p.otherwise, ResponseTypeSource::Default),
        },
    })
}

/// What the thresholds of a completion's propositions are weighted by ([`Policy::thresholds`]):
/// the prompt's response-type probabilities (policy order), or the one type judged under when
/// the caller gave it or the model reads none. Both readings of an uncertain prompt share them,
/// so the evidence asked of the completion follows the prompt, not the reading tried.
pub fn threshold_weights(policy: &Policy, under: Under, response_type_probs: &[f32]) -> Vec<f64> {
    let n = policy.response_types().len();
    let one = |i: usize| (0..n).map(|j| if j == i { 1.0 } else { 0.0 }).collect();
    match under {
        Under::One(i, ResponseTypeSource::Given) => one(i),
        _ if response_type_probs.len() == n => response_type_probs.iter().map(|&p| f64::from(p)).collect(),
        Under::One(i, _) | Under::Either(i, _) => one(i),
    }
}

/// The judgement that counts under `under`, with the response type it was made under: for an
/// uncertain reading the better of the two (class order, then score). `response_type_probs`
/// (policy order, may be empty) weight the thresholds ([`threshold_weights`]).
pub fn judge_under(
    policy: &Policy,
    under: Under,
    response_type_probs: &[f32],
    probabilities: &[f32],
) -> (usize, Judgement) {
    let thresholds = policy.thresholds(&threshold_weights(policy, under, response_type_probs));
    let one = |i: usize| (i, judge(policy, &policy.response_types()[i], probabilities, &thresholds));
    match under {
        Under::One(i, _) => one(i),
        Under::Either(a, b) => {
            let (a, b) = (one(a), one(b));
            let key = |j: &Judgement| (std::cmp::Reverse(j.class), OrderedF64::new(j.score));
            if key(&b.1) > key(&a.1) { b } else { a }
        }
    }
}
