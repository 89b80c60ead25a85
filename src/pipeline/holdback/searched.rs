//! A streamed request in `buffer` mode whose policy can search step by step: its stream may
//! start with the prefix a beam search's beams share before the search ends.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::buffer::deliver;
use super::verdict_comment;
use crate::openai::chunks::{chunk_event, delta, new_head, pieces, usage_event};
use crate::openai::{ChatRequest, ChatResponse, sse};
use crate::pipeline::ctx::{Ctx, Early};
use crate::pipeline::exchange::GuardedResponse;
use crate::pipeline::outcome::{GuardAction, Outcome, StreamMode};
use crate::pipeline::reply::{ErrorKind, ErrorReply};
use crate::upstream::Upstream;

/// Aborts a task when dropped: the searched request's work ends with its client.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A streamed request in `buffer` mode whose policy can search step by step: the action loop
/// runs as for any buffered request, but a beam search may release the prefix its beams
/// share (judged first) while it goes on ([`Ctx::release`]); the stream then starts, and the
/// rest of the final answer follows when the loop ends. A final answer that does not extend
/// what left (a fallback, a block) ends the stream with `finish_reason: content_filter`.
/// Without a release the response is the buffered one.
///
/// `decide` is the action loop to run (the dispatcher hands it down, so this mode does not
/// reach back up for it): it gets the context and the outcome so far, and gives back the
/// decided completion (or the response to send instead) with the outcome.
pub(crate) async fn searched<U, D, F>(
    ctx: Arc<Ctx<U>>,
    chat: ChatRequest,
    outcome: Outcome,
    decide: D,
) -> GuardedResponse
where
    U: Upstream,
    D: FnOnce(Arc<Ctx<U>>, Outcome) -> F,
    F: Future<Output = (Result<ChatResponse, GuardedResponse>, Outcome)> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Bytes>(32);
    let (opened, mut on_open) = tokio::sync::oneshot::channel();
    let head = new_head(chat.model().to_string());
    if let Ok(mut early) = ctx.early.lock() {
        *early = Some(Early { opened: Some(opened), tx, head, released: String::new() });
    }
    let include_usage = chat.include_usage();
    let at_open = outcome.clone();
    let work_ctx = ctx.clone();
    let decided = decide(ctx.clone(), outcome);
    let mut work = tokio::spawn(
        async move {
            let (result, outcome) = decided.await;
            let early = work_ctx.early.lock().ok().and_then(|mut e| e.take());
            match early {
                Some(early) if early.opened.is_none() => {
                    finish_early(&work_ctx, early, result, outcome, include_usage).await;
                    None
                }
                _ => Some((result, outcome)),
            }
        }
        .instrument(tracing::Span::current()),
    );
    let guard = AbortOnDrop(work.abort_handle());
    tokio::select! {
        // A release fires `opened` before the loop can end, so this branch wins whenever it fired.
        biased;
        Ok(()) = &mut on_open => {
            let mut outcome = at_open;
            outcome.action = GuardAction::BeamSearch;
            outcome.mode = Some(StreamMode::Search);
            let events = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
                rx.recv().await.map(|b| (b, (rx, guard)))
            });
            GuardedResponse::Stream { events: Box::pin(events), outcome }
        }
        joined = &mut work => {
            drop(guard);
            rx.close();
            match joined {
                Ok(Some((Ok(response), outcome))) => deliver(&ctx, &chat, response, outcome),
                Ok(Some((Err(response), _))) => response,
                // A release that lost the race cannot happen (see above); a panic in the loop can.
                Ok(None) | Err(_) => GuardedResponse::error(ErrorReply::new(::http::StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Server, "rulegate_internal_error", "The guard failed while searching for a response."), at_open),
            }
        }
    }
}

/// Sends the rest of the final answer after what a search released, or ends the stream with
/// `content_filter` when the final answer does not extend it.
async fn finish_early<U: Upstream>(
    ctx: &Ctx<U>,
    early: Early,
    result: Result<ChatResponse, GuardedResponse>,
    mut outcome: Outcome,
    include_usage: bool,
) {
    outcome.mode = Some(StreamMode::Search);
    let head = &early.head;
    let mut events = Vec::new();
    let rest = result.as_ref().ok().and_then(|r| r.choices.first()).and_then(|c| {
        let text = c.message.text();
        let rest = text.strip_prefix(early.released.as_str())?.to_string();
        Some((rest, c.finish_reason.clone().unwrap_or_else(|| "stop".into())))
    });
    match rest {
        Some((rest, finish_reason)) => {
            for piece in pieces(&rest, 48) {
                events.push(chunk_event(head, vec![delta(0, None, Some(piece), None)]));
            }
            events.push(chunk_event(head, vec![delta(0, None, None, Some(&finish_reason))]));
        }
        None => {
            outcome.action = GuardAction::ContentFilter;
            events.push(chunk_event(head, vec![delta(0, None, None, Some("content_filter"))]));
        }
    }
    if include_usage {
        events.push(usage_event(head, ctx.usage()));
    }
    events.push(verdict_comment(&outcome));
    events.push(Bytes::from_static(sse::DONE));
    for event in events {
        if early.tx.send(event).await.is_err() {
            break;
        }
    }
    ctx.report(&outcome);
}
