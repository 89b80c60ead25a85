//! Policies: which propositions to ask the model about, the rules that turn their truth
//! values into a completion class per response type, the linear reward over proposition
//! and class probabilities, and what to do with each class.
//!
//! A policy file is parsed into [`raw::UninitializedPolicy`] (shape only), then validated
//! by [`Policy::from_yaml`] into a [`Policy`], whose rules are proven to give exactly one
//! class for every combination of truth values.

mod candidate;
mod compile;
mod error;
pub mod raw;

use std::path::{Path, PathBuf};

pub use candidate::{CandidateError, CandidatePolicy};
pub use error::{PolicyError, Problem};

/// A validated policy, ready to judge completions.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) description: String,
    pub(crate) source: Option<PathBuf>,
    pub(crate) propositions: Vec<Proposition>,
    pub(crate) derived: Vec<DerivedProposition>,
    /// Derived propositions in dependency order: each one after those it uses.
    pub(crate) derived_order: Vec<usize>,
    pub(crate) classes: Vec<ClassInfo>,
    pub(crate) response_types: Vec<ResponseType>,
    pub(crate) budget: Budget,
    pub(crate) streaming: HoldBack,
    pub(crate) input_check: Option<InputCheck>,
    pub(crate) prediction: Option<Prediction>,
}

/// How an uncertain response-type prediction is settled. For the predicted (most probable)
/// type with probability `p`:
/// - `p < min_probability`: the response type `otherwise` (an index into
///   [`Policy::response_types`]) applies;
/// - `p >= confident[type]`: the predicted type applies;
/// - in between, a completion is judged under both and the better verdict counts: an answer
///   that is acceptable under either reading of a prompt nobody is sure about is acceptable.
///
/// Misreading a benign prompt as one to refuse breaks good answers, while a harmful completion
/// is caught under any response type (every type has a disallowed class), so `comply` is the
/// usual `otherwise` and the refusal types get high `confident` operating points.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The least probability for the predicted response type to be used.
    pub min_probability: f64,
    /// The response type used otherwise.
    pub otherwise: usize,
    /// Per response type (policy order): from this probability on its reading alone decides
    /// (never below `min_probability`).
    pub confident: Vec<f64>,
}

/// How the predicted response type is to be used, by its probability (see [`Prediction`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Sure enough: judge by the predicted type alone.
    Confident,
    /// Between the two operating points: judge under both it and `otherwise`; the better wins.
    Uncertain,
    /// Too unsure: judge by `otherwise`.
    Default,
}

impl Prediction {
    /// How a prediction of response type `index` with probability `probability` is used.
    pub fn reading(&self, index: usize, probability: f64) -> Reading {
        let confident = self.confident.get(index).copied().unwrap_or(self.min_probability).max(self.min_probability);
        if probability >= confident || index == self.otherwise {
            Reading::Confident
        } else if probability >= self.min_probability {
            Reading::Uncertain
        } else {
            Reading::Default
        }
    }
}

/// Limits on the work one guarded request may cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Upstream completions per choice, the first one included.
    pub max_attempts: u32,
    /// Candidates a best-of-n judges, the first one included.
    pub max_candidates: u32,
    /// The whole request's time: upstream calls past it time out (504 when nothing was
    /// generated yet); regenerations stop and the best completion so far, or the fallback, is
    /// returned.
    pub deadline: std::time::Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget { max_attempts: 3, max_candidates: 8, deadline: std::time::Duration::from_secs(30) }
    }
}

/// How a streamed response is held back until judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldBack {
    /// Collect the whole completion, judge and act, then stream the result out.
    Buffer,
    /// Release the text window by window, each judged before release; stop with
    /// `finish_reason: content_filter` on a failing verdict.
    Window {
        /// Characters per window (`streaming.window_chars`, default 200).
        chars: usize,
    },
    /// Stream as it comes and judge afterwards (logging and metrics only).
    Passthrough,
}

impl HoldBack {
    /// The mode's name as written in policies and reported in `x-rulegate-mode`.
    pub fn name(&self) -> &'static str {
        match self {
            HoldBack::Buffer => "buffer",
            HoldBack::Window { .. } => "window",
            HoldBack::Passthrough => "passthrough",
        }
    }
}

/// What to do before calling the upstream, by the prompt's predicted response type.
#[derive(Debug, Clone, PartialEq)]
pub struct InputCheck {
    /// Act only when the predicted response type is at least this likely (default 0.5); a
    /// response type the caller gives is always acted on.
    pub min_probability: f64,
    /// One entry per response type, in [`Policy::response_types`] order.
    pub actions: Vec<Option<InputAction>>,
}

/// What the input check does for a response type, before the upstream is called.
#[derive(Debug, Clone, PartialEq)]
pub enum InputAction {
    /// Add the response type's guidance as a system message to the upstream request.
    Guidance,
    /// Answer with the response type's fallback without calling the upstream.
    Fallback,
    /// Refuse the request with an OpenAI-style error.
    Block {
        /// The error `code` (default `rulegate_input_blocked`).
        code: String,
        /// The error message.
        message: String,
    },
}
/// A simple proposition, answered by one model head.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposition {
    /// The name rules, weights and datasets use.
    pub name: String,
    /// What the proposition claims about a completion, for people.
    pub description: String,
    /// The model head that answers it (default: the proposition's name).
    pub head: String,
    /// The proposition holds when its probability is at least this (default 0.5).
    pub threshold: f64,
    /// Its threshold for a prompt of each response type (policy order; `threshold` where the
    /// policy names none). See [`Policy::thresholds`].
    pub by_response_type: Vec<f64>,
}

impl Proposition {
    /// The threshold for a prompt read with response-type probabilities `weights` (policy
    /// order): the per-type thresholds weighted by them, so the evidence a completion needs
    /// moves with how the prompt reads. Without usable weights, `threshold`.
    pub fn threshold_for(&self, weights: &[f64]) -> f64 {
        let total: f64 = weights.iter().sum();
        if self.by_response_type.is_empty()
            || weights.len() != self.by_response_type.len()
            || total.is_nan()
            || total <= 0.0
        {
            return self.threshold;
        }
        self.by_response_type.iter().zip(weights).map(|(t, w)| t * w).sum::<f64>() / total
    }
}

/// A conjunction of literals, named for reuse.
#[derive(Debug, Clone, PartialEq)]
pub struct DerivedProposition {
    /// The name rules use; distinct from every simple proposition.
    pub name: String,
    /// What it means, for people.
    pub description: Option<String>,
    /// The literals that must all hold.
    pub all: Vec<Literal>,
}

/// A proposition, simple (an index into [`Policy::propositions`]) or derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Atom {
    /// Index into [`Policy::propositions`].
    Simple(usize),
    /// Index into [`Policy::derived`].
    Derived(usize),
}

/// `atom == value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Literal {
    /// The proposition tested.
    pub atom: Atom,
    /// The truth value it must have.
    pub value: bool,
}

/// A class declared at the top of a policy, shared by every response type.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassInfo {
    /// The class name, as reported in verdicts and `x-rulegate-class`.
    pub name: String,
    /// What completions of the class look like, for people.
    pub description: String,
}

/// What the prompt wants, with its rules, weights and actions.
#[derive(Debug, Clone)]
pub struct ResponseType {
    /// The key under `response_types:`, reported in verdicts.
    pub name: String,
    /// What the prompt wants, for people; empty when not given.
    pub description: String,
    /// The label of the model's response-type head this type reads (default: its name).
    pub model_label: String,
    /// Other names callers and datasets may use for it.
    pub aliases: Vec<String>,
    /// Dataset categories (e.g. `C-R`) that map to it.
    pub categories: Vec<String>,
    /// This type's classes, best first.
    pub classes: Vec<ClassRule>,
    /// The linear reward over this type's features.
    pub weights: Weights,
    /// What an ideal answer looks like, added to the upstream request by guidance actions.
    pub guidance: Option<String>,
    /// Canned completion for the `fallback` action; required when a class uses it.
    pub fallback: Option<String>,
}

/// One class of a response type: the rule that selects it and the action it triggers.
#[derive(Debug, Clone)]
pub struct ClassRule {
    /// Index into [`Policy::classes`].
    pub class: usize,
    /// The class name, as in [`ClassInfo::name`].
    pub name: String,
    /// Conjunction of literals.
    pub rule: Vec<Literal>,
    /// What the gateway does with a completion of this class.
    pub action: Action,
}

/// The linear reward: `bias + propositions . p + classes . class_probs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// Constant term.
    pub bias: f64,
    /// One weight per simple proposition, in [`Policy::propositions`] order.
    pub propositions: Vec<f64>,
    /// One weight per class of the response type, in [`ResponseType::classes`] order.
    pub classes: Vec<f64>,
    /// Where the weights came from (free text, e.g. the `rulegate fit` run).
    pub source: Option<String>,
}

/// What the gateway does with a completion of a class. The sidecar carries these out.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Return the completion as it is.
    Pass,
    /// Ask the upstream again.
    Regenerate {
        /// New completions to try after the first (default 2), within
        /// [`Budget::max_attempts`].
        max_attempts: u32,
        /// Add the response type's guidance as a system message (default true).
        guidance: bool,
        /// Sampling temperature for the new attempts; `None` keeps the request's.
        #[serde(skip_serializing_if = "Option::is_none")]
        temperature: Option<f64>,
        /// What to return when no attempt passes.
        exhausted: Exhausted,
    },
    /// Get `n` candidates and return the best.
    BestOfN {
        /// Candidates, the first one included (default 4), within [`Budget::max_candidates`].
        n: u32,
        /// Add the response type's guidance as a system message (default false).
        guidance: bool,
        /// Sampling temperature for the candidates; `None` keeps the request's.
        #[serde(skip_serializing_if = "Option::is_none")]
        temperature: Option<f64>,
        /// What to return when no candidate passes.
        exhausted: Exhausted,
    },
    /// Step-level search guided by the process reward model (STAIR): grow `beam_width`
    /// prefixes by `expansions` continuations of at most `step_tokens` tokens each, score
    /// every extended prefix, drop those that already read as fallback or block classes,
    /// keep the best, and judge the finished answers as usual. Needs an upstream that can
    /// continue an assistant prefix ([`Continuation`](crate::upstream::Continuation));
    /// elsewhere it runs as best-of-n over `beam_width * expansions` candidates.
    BeamSearch {
        /// Prefixes kept after each step (default 2).
        beam_width: u32,
        /// Continuations asked for per kept prefix and step (default 2).
        expansions: u32,
        /// Steps before the beams are finished in one last call (default 4).
        max_steps: u32,
        /// Tokens per step (default 48).
        step_tokens: u32,
        /// Add the response type's guidance as a system message (default true).
        guidance: bool,
        /// Sampling temperature for the continuations; `None` keeps the request's.
        #[serde(skip_serializing_if = "Option::is_none")]
        temperature: Option<f64>,
        /// What to return when no finished answer passes.
        exhausted: Exhausted,
    },
    /// Return the response type's canned completion.
    Fallback,
    /// Answer with an OpenAI-style error.
    Block {
        /// The error `code` (default `rulegate_policy_violation`).
        code: String,
        /// The error message.
        message: String,
    },
}

/// When regeneration, best-of-n or beam search finds no completion that passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exhausted {
    /// Return the best completion seen (unless its own class asks for fallback or block).
    #[default]
    Best,
    /// Return the response type's fallback.
    Fallback,
    /// Refuse with the block error.
    Block,
}

impl Action {
    /// The action's name as written in policies and reported in headers.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Pass => "pass",
            Action::Regenerate { .. } => "regenerate",
            Action::BestOfN { .. } => "best_of_n",
            Action::BeamSearch { .. } => "beam_search",
            Action::Fallback => "fallback",
            Action::Block { .. } => "block",
        }
    }
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Policy, PolicyError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|source| PolicyError::Io { path: path.to_path_buf(), source })?;
        let mut policy = Self::from_yaml(&text, &path.display().to_string())?;
        policy.source = Some(path.to_path_buf());
        Ok(policy)
    }

    /// Validates a policy from YAML text; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        compile::compile(text, origin)
    }

    /// The policy's name (`policy:` in the file), by which requests select it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<declared version>+<first 8 hex digits of the file's SHA-256>`, so that two
    /// different files never report the same version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// What the policy is for; empty when not given.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The file it was read from; `None` for [`Policy::from_yaml`].
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Simple propositions, in file order: the order of probabilities and truth values.
    pub fn propositions(&self) -> &[Proposition] {
        &self.propositions
    }

    /// Derived propositions, in file order.
    pub fn derived(&self) -> &[DerivedProposition] {
        &self.derived
    }

    /// Every class, in the order declared (best first).
    pub fn classes(&self) -> &[ClassInfo] {
        &self.classes
    }

    /// Response types, in file order.
    pub fn response_types(&self) -> &[ResponseType] {
        &self.response_types
    }

    /// Limits on the work one request may cause.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// How streamed responses are held back (default [`HoldBack::Buffer`]).
    pub fn streaming(&self) -> HoldBack {
        self.streaming
    }

    /// The input check, if the policy enables one.
    pub fn input_check(&self) -> Option<&InputCheck> {
        self.input_check.as_ref()
    }

    /// How uncertain response-type predictions are settled, if the policy says.
    pub fn prediction(&self) -> Option<&Prediction> {
        self.prediction.as_ref()
    }

    /// A response type by exact name (see [`Policy::resolve_response_type`] for aliases).
    pub fn response_type(&self, name: &str) -> Option<&ResponseType> {
        self.response_types.iter().find(|rt| rt.name == name)
    }

    /// Finds a response type by name, alias or category (names as written in datasets,
    /// e.g. `Hard Refuse` or `C-R`), ignoring case.
    pub fn resolve_response_type(&self, label: &str) -> Option<&ResponseType> {
        let label = label.trim();
        let matches = |s: &String| s.eq_ignore_ascii_case(label);
        self.response_types
            .iter()
            .find(|rt| matches(&rt.name))
            .or_else(|| self.response_types.iter().find(|rt| rt.aliases.iter().any(matches)))
            .or_else(|| self.response_types.iter().find(|rt| rt.categories.iter().any(matches)))
    }

    /// Position of a simple proposition in [`Policy::propositions`].
    pub fn proposition_index(&self, name: &str) -> Option<usize> {
        self.propositions.iter().position(|p| p.name == name)
    }

    /// Truth value of every simple proposition: `p >= threshold` (`thresholds` from
    /// [`Policy::thresholds`]).
    pub fn truth_values(&self, probabilities: &[f32], thresholds: &[f64]) -> Vec<bool> {
        probabilities.iter().zip(thresholds).map(|(&p, &t)| f64::from(p) >= t).collect()
    }

    /// Every proposition's threshold (policy order) for a prompt read with response-type
    /// probabilities `weights` (policy order; one 1.0 for a type the caller gave). A
    /// proposition with `threshold_by_response_type` needs less evidence in a completion whose
    /// prompt reads as that type: harmful text after a prompt that reads harmful, more after
    /// one that reads fine (see [`Proposition::threshold_for`]).
    pub fn thresholds(&self, weights: &[f64]) -> Vec<f64> {
        self.propositions.iter().map(|p| p.threshold_for(weights)).collect()
    }

    /// Truth value of every derived proposition, given the simple ones.
    pub fn derived_truth(&self, simple: &[bool]) -> Vec<bool> {
        let mut derived = vec![false; self.derived.len()];
        for &d in &self.derived_order {
            derived[d] = self.derived[d].all.iter().all(|lit| lit.holds(simple, &derived));
        }
        derived
    }

    /// Probability of every derived proposition being true: the product of its literals'
    /// probabilities (propositions treated as independent, as in the RBR paper).
    pub fn derived_probabilities(&self, simple: &[f32]) -> Vec<f64> {
        let mut derived = vec![0.0; self.derived.len()];
        for &d in &self.derived_order {
            derived[d] = self.derived[d].all.iter().map(|lit| lit.probability(simple, &derived)).product();
        }
        derived
    }

    /// Index (into `rt.classes`) of the class whose rule holds. Compilation proves exactly
    /// one rule holds for every assignment, so the fallback to the worst class is defensive.
    pub fn classify(&self, rt: &ResponseType, simple: &[bool]) -> usize {
        let derived = self.derived_truth(simple);
        rt.classes
            .iter()
            .position(|c| c.rule.iter().all(|lit| lit.holds(simple, &derived)))
            .unwrap_or(rt.classes.len().saturating_sub(1))
    }

    /// Probability of each class of `rt`: the product, over the rule's literals, of p or 1 - p.
    pub fn class_probabilities(&self, rt: &ResponseType, simple: &[f32]) -> Vec<f64> {
        let derived = self.derived_probabilities(simple);
        rt.classes.iter().map(|c| c.rule.iter().map(|lit| lit.probability(simple, &derived)).product()).collect()
    }
}

impl Literal {
    /// Whether the literal holds, given every simple and derived truth value (out of range:
    /// false).
    pub fn holds(&self, simple: &[bool], derived: &[bool]) -> bool {
        let truth = match self.atom {
            Atom::Simple(i) => simple.get(i).copied().unwrap_or(false),
            Atom::Derived(i) => derived.get(i).copied().unwrap_or(false),
        };
        truth == self.value
    }

    /// Probability that the literal holds: p, or 1 - p for a negative literal.
    pub fn probability(&self, simple: &[f32], derived: &[f64]) -> f64 {
        let p = match self.atom {
            Atom::Simple(i) => simple.get(i).map_or(0.0, |&p| f64::from(p)),
            Atom::Derived(i) => derived.get(i).copied().unwrap_or(0.0),
        };
        if self.value { p } else { 1.0 - p }
    }
}

impl ResponseType {
    /// Position of a class in [`ResponseType::classes`] (its rank: 0 is best).
    pub fn class_index(&self, name: &str) -> Option<usize> {
        self.classes.iter().position(|c| c.name == name)
    }

    /// Feature names in the order of [`crate::score::features`]: every proposition, then
    /// `class.<name>` for every class of this type.
    pub fn feature_names(&self, policy: &Policy) -> Vec<String> {
        policy
            .propositions
            .iter()
            .map(|p| p.name.clone())
            .chain(self.classes.iter().map(|c| format!("class.{}", c.name)))
            .collect()
    }
}

impl Policy {
    /// For every simple proposition, whether some class rule reads it (directly or through
    /// derived propositions).
    pub fn propositions_used_by_rules(&self) -> Vec<bool> {
        fn mark(policy: &Policy, atom: Atom, used: &mut [bool]) {
            match atom {
                Atom::Simple(i) => used[i] = true,
                Atom::Derived(d) => {
                    for lit in &policy.derived[d].all {
                        mark(policy, lit.atom, used);
                    }
                }
            }
        }
        let mut used = vec![false; self.propositions.len()];
        for rt in &self.response_types {
            for class in &rt.classes {
                for lit in &class.rule {
                    mark(self, lit.atom, &mut used);
                }
            }
        }
        used
    }
}
