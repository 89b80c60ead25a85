//! How the pipeline behaves where the policy has no say.

use serde::{Deserialize, Serialize};

use super::route;
use crate::access::Selectors;
use crate::openai::judged::UnjudgedFields;
use crate::policy::CandidatePolicy;
use crate::telemetry::decision_log::DecisionLog;

/// What to do when the classifier itself fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Deliver the completion unjudged (`x-rulegate-action: fail_open`).
    Open,
    /// Answer 503 rather than deliver anything unjudged.
    #[default]
    Closed,
}

/// Whether the guard acts on what it judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum GuardMode {
    /// Act on every verdict (the default).
    #[default]
    Enforce,
    /// Judge every request exactly as `enforce` would, but deliver the upstream's answer
    /// unchanged, streamed as it arrives: `x-rulegate-action: pass`, and what enforce would
    /// have done in `x-rulegate-shadow-action`, the decision log and the metrics' `mode`
    /// label. No regeneration or search runs: one judge pass per answer.
    Shadow,
}

impl GuardMode {
    /// The name in metrics labels, logs and config.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardMode::Enforce => "enforce",
            GuardMode::Shadow => "shadow",
        }
    }
}

/// How the pipeline behaves where the policy has no say.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Act on verdicts, or only record what would have been done (default
    /// [`GuardMode::Enforce`]).
    pub mode: GuardMode,
    /// Per policy name, a mode other than [`PipelineOptions::mode`] (a key mapped to a
    /// policy gets that policy's mode; load one file under two names to shadow it for some
    /// keys only).
    pub policy_modes: std::collections::HashMap<String, GuardMode>,
    /// Where every judged request's decision is written, off the request path.
    pub decision_log: Option<DecisionLog>,
    /// A policy decided beside the live one from the same classifier pass; disagreements
    /// are counted in metrics and written to the decision log.
    pub candidate: CandidatePolicy,
    /// What to do when the classifier fails (default [`FailMode::Closed`]).
    pub on_classifier_error: FailMode,
    /// Ask the upstream for several candidates with `n` (falling back to concurrent requests
    /// for whatever it does not return).
    pub upstream_supports_n: bool,
    /// What the front doors do with requests that could generate text but are not judged
    /// (default [`route::UnguardedRoutes::Deny`]: 403).
    pub unguarded_routes: route::UnguardedRoutes,
    /// Which callers may pick the policy or state the response type with headers (default:
    /// nobody).
    pub selectors: Selectors,
    /// How the upstream continues an assistant prefix, for `beam_search` (default: it
    /// cannot, and beam search runs as best-of-n).
    pub continuation: crate::upstream::Continuation,
    /// What the front doors do with reads of stored completions (default
    /// [`route::StoredCompletions::Deny`]: 403).
    pub stored_completions: route::StoredCompletions,
    /// What happens to fields of an upstream answer rulegate does not know (default
    /// [`UnjudgedFields::Drop`]).
    pub unjudged_fields: UnjudgedFields,
    /// What happens to a request carrying content the judge cannot read (images, audio,
    /// files): default [`UnreadableInput::JudgeText`].
    pub unreadable_input: UnreadableInput,
}

/// What the guard does with request content its judge cannot read (image, audio and file
/// parts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum UnreadableInput {
    /// Judge the text beside it (the default): the answer is still judged in full, but the
    /// prompt the judge sees may lack what the model was asked (a request written in an
    /// image reads as the text around it).
    #[default]
    JudgeText,
    /// Refuse the request (400 `unreadable_input`).
    Refuse,
}

impl PipelineOptions {
    /// The mode requests judged by `policy` run in.
    pub fn mode_for(&self, policy: &str) -> GuardMode {
        self.policy_modes.get(policy).copied().unwrap_or(self.mode)
    }

    /// The switches [`route::admit`] reads.
    pub fn admit_options(&self) -> route::AdmitOptions {
        route::AdmitOptions { unguarded_routes: self.unguarded_routes, stored_completions: self.stored_completions }
    }
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            mode: GuardMode::Enforce,
            policy_modes: std::collections::HashMap::new(),
            decision_log: None,
            candidate: CandidatePolicy::new(),
            on_classifier_error: FailMode::Closed,
            upstream_supports_n: true,
            unguarded_routes: route::UnguardedRoutes::Deny,
            selectors: Selectors::default(),
            continuation: crate::upstream::Continuation::None,
            stored_completions: route::StoredCompletions::Deny,
            unjudged_fields: UnjudgedFields::Drop,
            unreadable_input: UnreadableInput::JudgeText,
        }
    }
}
