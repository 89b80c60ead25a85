//! Shadow mode: every request is judged exactly as enforce mode judges it (the same input
//! check, the same windows over a long answer), but nothing is acted on. The client gets the
//! upstream's answer unchanged, a stream as it arrives; what enforce would have done goes to
//! `x-rulegate-shadow-action` (a stream's closing comment), the decision log and the
//! metrics. No regeneration or search runs: one judge pass per answer (two for a request the
//! input check reads first).

use std::sync::Arc;

use bytes::Bytes;
use tracing::Instrument;

use super::ctx::Ctx;
use super::exchange::GuardedResponse;
use super::holdback::buffer::deliver;
use super::holdback::{Forwarded, channel, error_event, forward, open, verdict_comment};
use super::input;
use super::outcome::{GuardAction, InputDecision, Outcome, StreamMode};
use super::strategy::Plan;
use crate::guard::Evaluation;
use crate::openai::chunks::Assembled;
use crate::openai::{ChatRequest, sse};
use crate::score::Verdict;
use crate::upstream::Upstream;

/// Runs one request in shadow mode; `response_type` is the one the caller stated, if any.
pub(crate) async fn shadow<U: Upstream>(
    ctx: Arc<Ctx<U>>,
    chat: ChatRequest,
    response_type: Option<usize>,
    mut outcome: Outcome,
) -> GuardedResponse {
    // The input check reads the prompt as in enforce mode; what it would do is recorded, and
    // the request goes upstream as the client sent it (no guidance added).
    let mut probe = chat.clone();
    let mut would = outcome.clone();
    let checked = input::check(&ctx, &mut probe, response_type, &mut would).await;
    let response_type = match checked {
        Ok((rt, _guided)) => rt,
        Err(_not_sent) => would.response_type.as_deref().and_then(|n| ctx.judge.response_type_index(n).ok()),
    };
    outcome.input_action = would.input_action;
    outcome.response_type = would.response_type;
    let input_would = match would.input_action {
        Some(InputDecision::Fallback) => Some(GuardAction::Fallback),
        Some(InputDecision::Block) => Some(GuardAction::Block),
        Some(InputDecision::Guidance) | None => None,
    };
    let plan = Plan { response_type, guided: false, original: chat.clone() };
    if chat.is_stream() {
        stream(ctx, plan, input_would, outcome).await
    } else {
        whole(ctx, &chat, plan, input_would, outcome).await
    }
}

/// What enforce would have done: the input check's answer if it had one, else the action
/// the first completion's class starts (a block on any choice blocks the request).
fn would_do(input_would: Option<GuardAction>, verdicts: &[Arc<Verdict>]) -> GuardAction {
    if let Some(action) = input_would {
        return action;
    }
    if verdicts.iter().any(|v| matches!(v.action, crate::policy::Action::Block { .. })) {
        return GuardAction::Block;
    }
    verdicts.first().map_or(GuardAction::Pass, |v| GuardAction::started_by(&v.action))
}

async fn whole<U: Upstream>(
    ctx: Arc<Ctx<U>>,
    chat: &ChatRequest,
    plan: Plan,
    input_would: Option<GuardAction>,
    mut outcome: Outcome,
) -> GuardedResponse {
    let response = match ctx.fetch(plan.original.clone(), false).await {
        Ok(r) => r,
        Err(e) => return GuardedResponse::upstream_error(&e, outcome),
    };
    outcome.action = GuardAction::Pass;
    outcome.attempts = 1;
    let label = plan.response_type.map(|i| ctx.response_type(i).name.clone());
    let texts: Vec<String> = response.choices.iter().map(|c| c.message.judged_text()).collect();
    let items: Vec<Evaluation> = texts
        .iter()
        .map(|t| Evaluation { prompt: &ctx.prompt, completion: t, response_type: label.as_deref() })
        .collect();
    match ctx.judged_in_time(ctx.judge.evaluate_batch(&items)).await {
        Ok(verdicts) => {
            outcome.shadow_action = Some(would_do(input_would, &verdicts));
            if let Some(v) = verdicts.first() {
                record_verdict(&mut outcome, v);
            }
        }
        Err(e) => {
            // Shadow mode never changes traffic: a failed judge is recorded, not acted on.
            tracing::warn!(error = %e, "classifier failed in shadow mode; the answer is delivered as it is");
            outcome.shadow_action = input_would;
            outcome.classifier_error = Some(e.to_string());
        }
    }
    outcome.completion = texts.into_iter().next();
    deliver(&ctx, chat, response, outcome)
}

fn record_verdict(outcome: &mut Outcome, v: &Arc<Verdict>) {
    outcome.class = Some(v.class.clone());
    outcome.score = Some(v.score);
    outcome.response_type = Some(v.response_type.clone());
    outcome.verdict = Some(v.clone());
}

/// A stream: chunks go to the client as they come (like `passthrough`); the first choice is
/// judged when it ends, and the stream reports then.
async fn stream<U: Upstream>(
    ctx: Arc<Ctx<U>>,
    plan: Plan,
    input_would: Option<GuardAction>,
    mut outcome: Outcome,
) -> GuardedResponse {
    let mut upstream = match open(&ctx, &plan, &outcome).await {
        Ok(s) => s,
        Err(response) => return response,
    };
    outcome.action = GuardAction::Pass;
    outcome.attempts = 1;
    outcome.mode = Some(StreamMode::Shadow);
    let (tx, events) = channel();
    let label = plan.response_type.map(|i| ctx.response_type(i).name.clone());
    let mut report = outcome.clone();
    tokio::spawn(
        async move {
            let mut delivered = Assembled::new();
            // A client that left is still judged on what it was sent, and reported.
            if let Forwarded::Failed(e) = forward(&mut upstream, &tx, &mut delivered).await {
                let _ = tx.send(error_event(&e)).await;
                report.action = GuardAction::UpstreamError;
            }
            let text = delivered.message(delivered.text.clone()).judged_text();
            match ctx.judged_per_call(ctx.judge.evaluate(&ctx.prompt, &text, label.as_deref())).await {
                Ok(v) => {
                    report.shadow_action = Some(would_do(input_would, std::slice::from_ref(&v)));
                    record_verdict(&mut report, &v);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "classifier failed on a shadow stream");
                    report.shadow_action = input_would;
                    report.classifier_error = Some(e.to_string());
                }
            }
            report.completion = Some(text);
            if report.action != GuardAction::UpstreamError {
                let _ = tx.send(verdict_comment(&report)).await;
                let _ = tx.send(Bytes::from_static(sse::DONE)).await;
            }
            ctx.report(&report);
        }
        .instrument(tracing::Span::current()),
    );
    GuardedResponse::Stream { events, outcome }
}
