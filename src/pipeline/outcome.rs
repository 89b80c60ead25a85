//! What the guard did with a request, typed: the action taken, the streaming hold-back mode
//! and the input check's action. They become text only at the edges (the `x-rulegate-*`
//! headers, metrics labels, SSE comments and logs), through their `as_str`.

use std::sync::Arc;

use serde::Serialize;

use super::options::GuardMode;
use crate::policy::{Action, HoldBack, InputAction};
use crate::score::Verdict;

/// What the guard did with a request ([`Outcome::action`], `x-rulegate-action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuardAction {
    /// Nothing decided (yet): no `x-rulegate-action` header.
    #[default]
    Undecided,
    /// The first completion passed.
    Pass,
    /// A regenerated completion was delivered.
    Regenerate,
    /// The best of several candidates was delivered.
    BestOfN,
    /// A beam search's answer was delivered.
    BeamSearch,
    /// The response type's fallback text was delivered.
    Fallback,
    /// The request was answered with the policy's block error.
    Block,
    /// The classifier failed and the completion was delivered unjudged.
    FailOpen,
    /// The request named a policy that does not exist.
    Reject,
    /// A `window` stream, until its verdict is in.
    Window,
    /// A `passthrough` stream, until its verdict is in.
    Passthrough,
    /// A stream ended early with `finish_reason: content_filter`.
    ContentFilter,
    /// The upstream failed while a stream was flowing.
    UpstreamError,
}

impl GuardAction {
    /// The name in headers, metrics, SSE comments and logs (empty for
    /// [`GuardAction::Undecided`]).
    pub fn as_str(self) -> &'static str {
        match self {
            GuardAction::Undecided => "",
            GuardAction::Pass => "pass",
            GuardAction::Regenerate => "regenerate",
            GuardAction::BestOfN => "best_of_n",
            GuardAction::BeamSearch => "beam_search",
            GuardAction::Fallback => "fallback",
            GuardAction::Block => "block",
            GuardAction::FailOpen => "fail_open",
            GuardAction::Reject => "reject",
            GuardAction::Window => "window",
            GuardAction::Passthrough => "passthrough",
            GuardAction::ContentFilter => "content_filter",
            GuardAction::UpstreamError => "upstream_error",
        }
    }

    /// Whether nothing was decided.
    pub fn is_undecided(self) -> bool {
        self == GuardAction::Undecided
    }

    /// The action a class's policy action starts.
    pub fn started_by(action: &Action) -> GuardAction {
        match action {
            Action::Pass => GuardAction::Pass,
            Action::Regenerate { .. } => GuardAction::Regenerate,
            Action::BestOfN { .. } => GuardAction::BestOfN,
            Action::BeamSearch { .. } => GuardAction::BeamSearch,
            Action::Fallback => GuardAction::Fallback,
            Action::Block { .. } => GuardAction::Block,
        }
    }
}

/// How a streamed response was held back ([`Outcome::mode`], `x-rulegate-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMode {
    /// Judged whole, then replayed.
    Buffer,
    /// Released window by window, each judged first.
    Window,
    /// Sent as it comes, judged afterwards.
    Passthrough,
    /// Started with the prefix a beam search's beams share, before the search ended.
    Search,
    /// Sent as it comes in shadow mode, judged afterwards.
    Shadow,
}

impl StreamMode {
    /// The name in headers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamMode::Buffer => "buffer",
            StreamMode::Window => "window",
            StreamMode::Passthrough => "passthrough",
            StreamMode::Search => "search",
            StreamMode::Shadow => "shadow",
        }
    }
}

impl From<&HoldBack> for StreamMode {
    fn from(mode: &HoldBack) -> Self {
        match mode {
            HoldBack::Buffer => StreamMode::Buffer,
            HoldBack::Window { .. } => StreamMode::Window,
            HoldBack::Passthrough => StreamMode::Passthrough,
        }
    }
}

/// What the input check did ([`Outcome::input_action`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputDecision {
    /// Added the response type's guidance to the request.
    Guidance,
    /// Answered with the fallback text without calling the upstream.
    Fallback,
    /// Refused the request.
    Block,
}

impl InputDecision {
    /// The name in logs and serialized outcomes.
    pub fn as_str(self) -> &'static str {
        match self {
            InputDecision::Guidance => "guidance",
            InputDecision::Fallback => "fallback",
            InputDecision::Block => "block",
        }
    }
}

impl From<&InputAction> for InputDecision {
    fn from(action: &InputAction) -> Self {
        match action {
            InputAction::Guidance => InputDecision::Guidance,
            InputAction::Fallback => InputDecision::Fallback,
            InputAction::Block { .. } => InputDecision::Block,
        }
    }
}

macro_rules! named {
    ($($name:ident),*) => {$(
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    )*};
}

named!(GuardAction, StreamMode, InputDecision);

/// What the guard did with a request: reported in headers, logs and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// What the guard did; for streams judged while flowing, [`GuardAction::Window`] or
    /// [`GuardAction::Passthrough`] until their verdict is in.
    pub action: GuardAction,
    /// Class of the first choice's judged completion (or of the blocked one); `None` when
    /// nothing was judged.
    pub class: Option<String>,
    /// Reward score of that completion.
    pub score: Option<f64>,
    /// The response type the request was judged as, given or predicted.
    pub response_type: Option<String>,
    /// Upstream completions generated for the first choice, the first one included.
    pub attempts: u32,
    /// Streaming hold-back mode, for streamed responses: the policy's, or
    /// [`StreamMode::Search`] when a beam search started the stream with the prefix its beams
    /// share before it ended.
    pub mode: Option<StreamMode>,
    /// The input check's action, if it acted.
    pub input_action: Option<InputDecision>,
    /// What a `beam_search` did (`steps=.. calls=.. continuations=..`), or why it ran as
    /// best-of-n.
    pub search: Option<String>,
    /// [`Policy::version`](crate::Policy::version) of the snapshot that judged the request.
    pub policy_version: String,
    /// [`Classifier::version`](crate::Classifier::version) of the snapshot that judged the request.
    pub model_version: String,
    /// The verdict on the delivered completion (or on the one that triggered a fallback or block).
    #[serde(skip)]
    pub verdict: Option<Arc<Verdict>>,
    /// Set when the classifier failed and `fail_open` delivered the completion unjudged.
    pub classifier_error: Option<String>,
    /// Seconds a refused client should wait before retrying (`Retry-After`), when rulegate
    /// shed the request under load.
    #[serde(skip)]
    pub retry_after_secs: Option<u32>,
    /// Whether the guard acted ([`GuardMode::Enforce`]) or only recorded ([`GuardMode::Shadow`]).
    pub guard_mode: GuardMode,
    /// In shadow mode, what enforce would have done (`x-rulegate-shadow-action`): the action
    /// the input check or the first completion's class would have started.
    pub shadow_action: Option<GuardAction>,
    /// The request's id (`x-rulegate-request-id`, and the decision log's `request_id`): the
    /// client's `x-request-id` when it sent one.
    pub request_id: String,
    /// The judged text of the delivered (or blocked) first choice, for the decision log.
    #[serde(skip)]
    pub completion: Option<String>,
}

impl Outcome {
    /// Whether the response's stream reports this outcome itself when it ends (a stream
    /// judged while it flows, or one a search released early), rather than the pipeline when
    /// the response leaves.
    pub fn reported_when_stream_ends(&self) -> bool {
        matches!(self.action, GuardAction::Window | GuardAction::Passthrough)
            || matches!(self.mode, Some(StreamMode::Search | StreamMode::Shadow))
    }
}
