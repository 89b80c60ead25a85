//! The strategies a class's action runs when the first completion does not pass, one per
//! file: [`regenerate`], [`best_of_n`] and [`beam_search`] (which falls back to best-of-n
//! where the upstream cannot continue a prefix: the one strategy that calls another). What
//! they share is here: the request's plan, the retry request, and how a loop ends
//! ([`resolve`]: the best candidate, the fallback or a block).

pub(crate) mod beam_search;
pub(crate) mod best_of_n;
pub(crate) mod regenerate;

use std::sync::Arc;

use serde_json::Map;

use super::outcome::GuardAction;
use crate::openai::{ChatMessage, ChatRequest, ChatResponse, Choice, completion_id, now_unix};
use crate::policy::{Action, Exhausted, ResponseType};
use crate::score::Verdict;

/// What the request looks like before the first upstream call.
pub(crate) struct Plan {
    /// Index of the response type, when the caller or the input check fixed it.
    pub(crate) response_type: Option<usize>,
    /// Whether the input check already added the guidance.
    pub(crate) guided: bool,
    /// The request as first sent upstream.
    pub(crate) original: ChatRequest,
}

/// What happened to one choice.
pub(crate) struct ChoiceOutcome {
    pub(crate) choice: Choice,
    pub(crate) verdict: Option<Arc<Verdict>>,
    pub(crate) action: GuardAction,
    pub(crate) attempts: u32,
    pub(crate) block: Option<(String, String)>,
    /// What a beam search did, for `x-rulegate-search`.
    pub(crate) search: Option<String>,
}

/// How extra candidates are asked for, and what to do if none passes.
#[derive(Clone, Copy)]
pub(crate) struct Retry {
    pub(crate) guidance: bool,
    pub(crate) temperature: Option<f64>,
    pub(crate) exhausted: Exhausted,
}

/// The request for extra candidates: `n` of them, without streaming, with the guidance and
/// temperature the action asks for.
pub(crate) fn retry_request(plan: &Plan, rt: &ResponseType, retry: Retry, n: u32) -> ChatRequest {
    let mut request = plan.original.clone();
    request.n = (n > 1).then_some(n);
    if retry.guidance && !plan.guided {
        inject_guidance(&mut request, rt);
    }
    if retry.temperature.is_some() {
        request.temperature = retry.temperature;
    }
    request
}

/// The end of the loop: deliver the best candidate, unless its own class asks for the
/// fallback or a block, or it never passed and the action says what to do then.
pub(crate) fn resolve(
    rt: &ResponseType,
    best: (Choice, Arc<Verdict>),
    action: GuardAction,
    attempts: u32,
    exhausted: Exhausted,
) -> ChoiceOutcome {
    let (choice, verdict) = best;
    let passed = verdict.action == Action::Pass;
    let fallback = |choice: Choice, verdict: Arc<Verdict>| match &rt.fallback {
        Some(text) => ChoiceOutcome {
            choice: fallback_choice(choice.index, text),
            verdict: Some(verdict),
            action: GuardAction::Fallback,
            attempts,
            block: None,
            search: None,
        },
        None => ChoiceOutcome { choice, verdict: Some(verdict), action, attempts, block: None, search: None },
    };
    match (&verdict.action, exhausted) {
        (Action::Fallback, _) => fallback(choice, verdict),
        (Action::Block { code, message }, _) => {
            let block = Some((code.clone(), message.clone()));
            ChoiceOutcome { choice, verdict: Some(verdict), action: GuardAction::Block, attempts, block, search: None }
        }
        (_, Exhausted::Fallback) if !passed => fallback(choice, verdict),
        (_, Exhausted::Block) if !passed => {
            let block = Some((
                "rulegate_policy_violation".to_string(),
                "The response was blocked by the gateway's content policy.".to_string(),
            ));
            ChoiceOutcome { choice, verdict: Some(verdict), action: GuardAction::Block, attempts, block, search: None }
        }
        _ => ChoiceOutcome { choice, verdict: Some(verdict), action, attempts, block: None, search: None },
    }
}

fn fallback_choice(index: u32, text: &str) -> Choice {
    Choice {
        index,
        message: ChatMessage::new("assistant", text),
        finish_reason: Some("stop".into()),
        extra: Map::new(),
    }
}

/// A response holding only the response type's fallback, for every requested choice.
pub(crate) fn fallback_response(chat: &ChatRequest, rt: &ResponseType) -> ChatResponse {
    let text = rt.fallback.as_deref().unwrap_or_default();
    ChatResponse {
        id: completion_id(),
        object: "chat.completion".into(),
        created: now_unix(),
        model: chat.model().to_string(),
        choices: (0..chat.choices()).map(|i| fallback_choice(i, text)).collect(),
        usage: None,
        extra: Map::new(),
    }
}

/// Adds the response type's guidance (what an ideal answer looks like) to the request: to
/// the first system message if there is one, else as a new first system message, since
/// some chat templates accept a single leading system message only.
pub(crate) fn inject_guidance(chat: &mut ChatRequest, rt: &ResponseType) {
    let Some(guidance) = rt.guidance.as_deref() else { return };
    let note = format!("Guidance for this reply: {guidance}");
    match chat.messages.first_mut() {
        Some(first) if first.role == "system" || first.role == "developer" => {
            let text = first.text();
            first.content = serde_json::Value::String(if text.is_empty() { note } else { format!("{text}\n\n{note}") });
        }
        _ => chat.messages.insert(0, ChatMessage::new("system", note)),
    }
}
