//! `passthrough` mode: chunks go to the client as they come; the completion is judged
//! afterwards for logs and metrics.

use std::sync::Arc;

use bytes::Bytes;
use tracing::Instrument;

use super::{Forwarded, channel, error_event, forward, open, verdict_comment};
use crate::openai::chunks::Assembled;
use crate::openai::sse;
use crate::pipeline::ctx::Ctx;
use crate::pipeline::exchange::GuardedResponse;
use crate::pipeline::outcome::{GuardAction, Outcome};
use crate::pipeline::strategy::Plan;
use crate::upstream::Upstream;

/// `passthrough` mode: chunks go to the client as they come; the completion is judged
/// afterwards for logs and metrics, and the verdict is appended as an SSE comment.
pub(crate) async fn passthrough<U: Upstream>(ctx: Arc<Ctx<U>>, plan: Plan, mut outcome: Outcome) -> GuardedResponse {
    let mut upstream = match open(&ctx, &plan, &outcome).await {
        Ok(s) => s,
        Err(response) => return response,
    };
    outcome.action = GuardAction::Passthrough;
    outcome.attempts = 1;
    let (tx, events) = channel();
    let label = plan.response_type.map(|i| ctx.response_type(i).name.clone());
    let mut report = outcome.clone();
    tokio::spawn(async move {
        // Everything delivered of the first choice, judged afterwards as a whole.
        let mut delivered = Assembled::new();
        match forward(&mut upstream, &tx, &mut delivered).await {
            Forwarded::End => {}
            Forwarded::Gone => return,
            Forwarded::Failed(e) => {
                let _ = tx.send(error_event(&e)).await;
                // Reported as window mode reports it: every stream that ends is counted.
                report.action = GuardAction::UpstreamError;
                ctx.report(&report);
                return;
            }
        }
        let text = delivered.message(delivered.text.clone()).judged_text();
        match ctx.judged_per_call(ctx.judge.evaluate(&ctx.prompt, &text, label.as_deref())).await {
            Ok(v) => {
                report.class = Some(v.class.clone());
                report.score = Some(v.score);
                report.response_type = Some(v.response_type.clone());
                tracing::info!(class = %v.class, score = v.score, would = v.action.name(), "stream judged after delivery (passthrough)");
                report.verdict = Some(v);
            }
            Err(e) => {
                tracing::warn!(error = %e, "classifier failed on a passthrough stream");
                report.classifier_error = Some(e.to_string());
            }
        }
        report.completion = Some(text);
        let _ = tx.send(verdict_comment(&report)).await;
        let _ = tx.send(Bytes::from_static(sse::DONE)).await;
        ctx.report(&report);
    }
    .instrument(tracing::Span::current()));
    GuardedResponse::Stream { events, outcome }
}
