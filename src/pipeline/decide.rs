//! The decision dispatch: judge the first completion of each choice, then run what its
//! class's action says (pass, or one of the [`strategy`](super::strategy) files; fallback and
//! block resolve at once) within the policy's budget.

use std::sync::Arc;

use ::http::StatusCode;

use super::ctx::Ctx;
use super::exchange::GuardedResponse;
use super::options::FailMode;
use super::outcome::{GuardAction, Outcome};
use super::reply::{ErrorKind, ErrorReply};
use super::strategy::beam_search::{Shape, beam_search};
use super::strategy::best_of_n::best_of_n;
use super::strategy::regenerate::regenerate;
use super::strategy::{ChoiceOutcome, Plan, Retry, resolve};
use crate::guard::Evaluation;
use crate::openai::{ChatResponse, Choice};
use crate::policy::{Action, Exhausted};
use crate::score::Verdict;
use crate::upstream::Upstream;

/// Runs the first upstream call and the action loop of every choice. `Err` is a response
/// to send as it is (an upstream error, a block, a classifier failure).
pub(crate) async fn decide<U: Upstream>(
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
                return Err(GuardedResponse::classifier_unavailable(&e, outcome.clone()));
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
    // The text the verdict is about: for a fallback or block, what the model first said.
    outcome.completion = match lead.action {
        GuardAction::Fallback | GuardAction::Block => texts.first().cloned(),
        _ => Some(lead.choice.message.judged_text()),
    };
    if let Some(blocked) = results.iter().find(|r| r.block.is_some()) {
        let (code, message) = blocked.block.clone().unwrap_or_default();
        outcome.action = GuardAction::Block;
        outcome.class = blocked.verdict.as_ref().map(|v| v.class.clone());
        outcome.score = blocked.verdict.as_ref().map(|v| v.score);
        outcome.verdict = blocked.verdict.clone();
        outcome.completion = texts.get(blocked.choice.index as usize).cloned();
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
            let shape = Shape { beam_width, expansions, max_steps, step_tokens };
            let retry = Retry { guidance, temperature, exhausted };
            beam_search(ctx, plan, rt, (first, verdict), shape, retry).await
        }
    }
}
