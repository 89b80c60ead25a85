//! The action loop: judge the first completion of each choice, then pass it, regenerate,
//! rerank candidates, fall back or block, within the policy's budget.

use std::sync::Arc;

use ::http::{StatusCode, Uri};
use serde_json::Map;

use super::{Ctx, ErrorKind, ErrorReply, FailMode, GuardAction, GuardedResponse, Outcome};
use crate::guard::Evaluation;
use crate::openai::{ChatMessage, ChatRequest, ChatResponse, Choice, completion_id, now_unix};
use crate::policy::{Action, Exhausted, ResponseType};
use crate::score::Verdict;
use crate::upstream::{Upstream, Wire};

/// What the request looks like before the first upstream call.
pub(super) struct Plan {
    /// Index of the response type, when the caller or the input check fixed it.
    pub response_type: Option<usize>,
    /// Whether the input check already added the guidance.
    pub guided: bool,
    /// The request as first sent upstream.
    pub original: ChatRequest,
}

/// What happened to one choice.
pub(super) struct ChoiceOutcome {
    pub choice: Choice,
    pub verdict: Option<Arc<Verdict>>,
    pub action: GuardAction,
    pub attempts: u32,
    pub block: Option<(String, String)>,
    /// What a beam search did, for `x-rulegate-search`.
    pub search: Option<String>,
}

/// Runs the first upstream call and the action loop of every choice. `Err` is a response
/// to send as it is (an upstream error, a block, a classifier failure).
pub(super) async fn decide<U: Upstream>(
    ctx: &Arc<Ctx<U>>,
    plan: Plan,
    outcome: &mut Outcome,
) -> Result<ChatResponse, GuardedResponse> {
    let first = match ctx.fetch(plan.original.clone(), plan.original.is_stream()).await {
        Ok(r) => r,
        Err(e) => return Err(GuardedResponse::upstream_error(&e, outcome.clone())),
    };
    if first.choices.is_empty() {
        return Err(GuardedResponse::error(
            ErrorReply::new(
                StatusCode::BAD_GATEWAY,
                ErrorKind::Upstream,
                "upstream_invalid_response",
                "the upstream returned no choices",
            ),
            outcome.clone(),
        ));
    }
    outcome.attempts = 1;

    // Every choice is judged, tool calls included (their arguments are generated text too).
    let texts: Vec<String> = first.choices.iter().map(|c| c.message.judged_text()).collect();
    let label = plan.response_type.map(|i| ctx.response_type(i).name.clone());
    let items: Vec<Evaluation> = texts
        .iter()
        .map(|t| Evaluation { prompt: &ctx.prompt, completion: t, response_type: label.as_deref() })
        .collect();
    let verdicts = match ctx.judged_in_time(ctx.judge.evaluate_batch(&items)).await {
        Ok(v) => v,
        Err(e) => {
            if ctx.options.on_classifier_error == FailMode::Closed {
                return Err(super::classifier_unavailable(&e, outcome.clone()));
            }
            tracing::warn!(error = %e, "classifier failed; delivering the completion unjudged (fail_open)");
            outcome.action = GuardAction::FailOpen;
            outcome.classifier_error = Some(e.to_string());
            return Ok(first);
        }
    };
    let response_type = plan
        .response_type
        .or_else(|| verdicts.first().and_then(|v| ctx.judge.response_type_index(&v.response_type).ok()));

    let mut verdicts = verdicts.into_iter();
    let mut pending = Vec::new();
    for choice in first.choices.iter().cloned() {
        pending.push(decide_choice(ctx, &plan, response_type, choice, verdicts.next()));
    }
    let results = futures::future::join_all(pending).await;

    let lead = &results[0];
    outcome.action = lead.action;
    outcome.attempts = lead.attempts;
    outcome.response_type = response_type.map(|i| ctx.response_type(i).name.clone()).or(outcome.response_type.take());
    outcome.class = lead.verdict.as_ref().map(|v| v.class.clone());
    outcome.score = lead.verdict.as_ref().map(|v| v.score);
    outcome.verdict = lead.verdict.clone();
    outcome.search = lead.search.clone();
    if let Some(blocked) = results.iter().find(|r| r.block.is_some()) {
        let (code, message) = blocked.block.clone().unwrap_or_default();
        outcome.action = GuardAction::Block;
        outcome.class = blocked.verdict.as_ref().map(|v| v.class.clone());
        outcome.score = blocked.verdict.as_ref().map(|v| v.score);
        outcome.verdict = blocked.verdict.clone();
        return Err(GuardedResponse::error(ErrorReply::invalid_request(code.clone(), message), outcome.clone()));
    }
    let mut response = first;
    response.choices = results.into_iter().map(|r| r.choice).collect();
    Ok(response)
}

async fn decide_choice<U: Upstream>(
    ctx: &Arc<Ctx<U>>,
    plan: &Plan,
    response_type: Option<usize>,
    first: Choice,
    verdict: Option<Arc<Verdict>>,
) -> ChoiceOutcome {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "decide",
        choice = first.index,
        first_class = verdict.as_ref().map(|v| v.class.as_str()),
        action = tracing::field::Empty,
        class = tracing::field::Empty,
        attempts = tracing::field::Empty,
    );
    if crate::telemetry::log_content() {
        span.in_scope(|| tracing::debug!(prompt = ?ctx.prompt, completion = %first.message.text(), "judging"));
    }
    let outcome = act(ctx, plan, response_type, first, verdict).instrument(span.clone()).await;
    span.record("action", outcome.action.as_str());
    span.record("attempts", outcome.attempts);
    if let Some(v) = &outcome.verdict {
        span.record("class", v.class.as_str());
    }
    outcome
}

async fn act<U: Upstream>(
    ctx: &Arc<Ctx<U>>,
    plan: &Plan,
    response_type: Option<usize>,
    first: Choice,
    verdict: Option<Arc<Verdict>>,
) -> ChoiceOutcome {
    let (Some(verdict), Some(rt)) = (verdict, response_type) else {
        return ChoiceOutcome {
            choice: first,
            verdict: None,
            action: GuardAction::Pass,
            attempts: 1,
            block: None,
            search: None,
        };
    };
    let rt_def = ctx.response_type(rt);
    match verdict.action.clone() {
        Action::Pass => ChoiceOutcome {
            choice: first,
            verdict: Some(verdict),
            action: GuardAction::Pass,
            attempts: 1,
            block: None,
            search: None,
        },
        Action::Fallback | Action::Block { .. } => {
            resolve(rt_def, (first, verdict), GuardAction::Pass, 1, Exhausted::Best)
        }
        Action::Regenerate { max_attempts, guidance, temperature, exhausted } => {
            let retry = Retry { guidance, temperature, exhausted };
            regenerate(ctx, plan, rt, (first, verdict), max_attempts, retry).await
        }
        Action::BestOfN { n, guidance, temperature, exhausted } => {
            best_of_n(ctx, plan, rt, (first, verdict), n, Retry { guidance, temperature, exhausted }).await
        }
        Action::BeamSearch { beam_width, expansions, max_steps, step_tokens, guidance, temperature, exhausted } => {
            let shape = super::search::Shape { beam_width, expansions, max_steps, step_tokens };
            let retry = Retry { guidance, temperature, exhausted };
            super::search::beam_search(ctx, plan, rt, (first, verdict), shape, retry).await
        }
    }
}

/// How extra candidates are asked for, and what to do if none passes.
#[derive(Clone, Copy)]
pub(super) struct Retry {
    pub guidance: bool,
    pub temperature: Option<f64>,
    pub exhausted: Exhausted,
}

/// The request for extra candidates: `n` of them, without streaming, with the guidance and
/// temperature the action asks for.
pub(super) fn retry_request(plan: &Plan, rt: &ResponseType, retry: Retry, n: u32) -> ChatRequest {
    let mut request = plan.original.clone();
    request.n = (n > 1).then_some(n);
    if retry.guidance && !plan.guided {
        super::inject_guidance(&mut request, rt);
    }
    if retry.temperature.is_some() {
        request.temperature = retry.temperature;
    }
    request
}

async fn regenerate<U: Upstream>(
    ctx: &Arc<Ctx<U>>,
    plan: &Plan,
    rt: usize,
    first: (Choice, Arc<Verdict>),
    max_attempts: u32,
    retry: Retry,
) -> ChoiceOutcome {
    let rt_def = ctx.response_type(rt);
    let index = first.0.index;
    let budget = ctx.judge.policy().budget();
    let extra = max_attempts.min(budget.max_attempts.saturating_sub(1));
    let request = retry_request(plan, rt_def, retry, 1);
    let mut best = first;
    let mut attempts = 1;
    for _ in 0..extra {
        let Some(choice) = fetch_one(ctx, request.clone()).await else { break };
        attempts += 1;
        let text = choice.message.judged_text();
        let verdict = match ctx.judged_in_time(ctx.judge.evaluate(&ctx.prompt, &text, Some(&rt_def.name))).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "classifier failed on a regenerated completion; keeping the best so far");
                break;
            }
        };
        let passes = verdict.action == Action::Pass;
        let candidate = (Choice { index, ..choice }, verdict);
        if passes {
            return ChoiceOutcome {
                choice: candidate.0,
                verdict: Some(candidate.1),
                action: GuardAction::Regenerate,
                attempts,
                block: None,
                search: None,
            };
        }
        if candidate.1.better_than(&best.1) {
            best = candidate;
        }
    }
    resolve(rt_def, best, GuardAction::Regenerate, attempts, retry.exhausted)
}

pub(super) async fn best_of_n<U: Upstream>(
    ctx: &Arc<Ctx<U>>,
    plan: &Plan,
    rt: usize,
    first: (Choice, Arc<Verdict>),
    n: u32,
    retry: Retry,
) -> ChoiceOutcome {
    let rt_def = ctx.response_type(rt);
    let index = first.0.index;
    let need = n.min(ctx.judge.policy().budget().max_candidates).saturating_sub(1) as usize;
    let request = retry_request(plan, rt_def, retry, 1);
    let candidates = fetch_many(ctx, request, need, ctx.wire, &ctx.uri).await;
    let attempts = 1 + candidates.len() as u32;
    let texts: Vec<String> = candidates.iter().map(|c| c.message.judged_text()).collect();
    let items: Vec<Evaluation> = texts
        .iter()
        .map(|t| Evaluation { prompt: &ctx.prompt, completion: t, response_type: Some(&rt_def.name) })
        .collect();
    let mut best = first;
    match ctx.judged_in_time(ctx.judge.evaluate_batch(&items)).await {
        Ok(verdicts) => {
            for (choice, verdict) in candidates.into_iter().zip(verdicts) {
                if verdict.better_than(&best.1) {
                    best = (Choice { index, ..choice }, verdict);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "classifier failed on best-of-n candidates; keeping the first"),
    }
    resolve(rt_def, best, GuardAction::BestOfN, attempts, retry.exhausted)
}

/// `need` completions of `request`: one call with `n` where the upstream honours it, then
/// concurrent single calls for whatever it did not bring; fewer when the deadline passes or
/// calls fail.
pub(super) async fn fetch_many<U: Upstream>(
    ctx: &Arc<Ctx<U>>,
    mut request: ChatRequest,
    need: usize,
    wire: Wire,
    uri: &Uri,
) -> Vec<Choice> {
    let mut candidates: Vec<Choice> = Vec::new();
    if need > 1 && ctx.options.upstream_supports_n {
        request.n = Some(need as u32);
        if let Some(Ok(response)) = within_deadline(ctx, ctx.fetch_via(request.clone(), false, wire, uri)).await {
            candidates.extend(response.choices.into_iter().take(need));
        }
    }
    let missing = need.saturating_sub(candidates.len());
    if missing > 0 {
        request.n = None;
        let singles =
            futures::future::join_all((0..missing).map(|_| fetch_one_via(ctx, request.clone(), wire, uri))).await;
        candidates.extend(singles.into_iter().flatten());
    }
    candidates
}

/// One more completion, within the request's deadline; `None` when the deadline passed or
/// the upstream failed (the loop then settles for the best so far).
async fn fetch_one<U: Upstream>(ctx: &Arc<Ctx<U>>, request: ChatRequest) -> Option<Choice> {
    fetch_one_via(ctx, request, ctx.wire, &ctx.uri).await
}

async fn fetch_one_via<U: Upstream>(ctx: &Arc<Ctx<U>>, request: ChatRequest, wire: Wire, uri: &Uri) -> Option<Choice> {
    match within_deadline(ctx, ctx.fetch_via(request, false, wire, uri)).await {
        Some(Ok(response)) => response.choices.into_iter().next(),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "upstream failed during regeneration; keeping the best so far");
            None
        }
        None => None,
    }
}

pub(super) async fn within_deadline<T>(
    ctx: &Ctx<impl Upstream>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    let remaining = ctx.remaining();
    if remaining.is_zero() {
        return None;
    }
    tokio::time::timeout(remaining, work).await.ok()
}

/// The end of the loop: deliver the best candidate, unless its own class asks for the
/// fallback or a block, or it never passed and the action says what to do then.
pub(super) fn resolve(
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
pub(super) fn fallback_response(chat: &ChatRequest, rt: &ResponseType) -> ChatResponse {
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
