//! The hold-back modes of a streamed response, one per file: [`buffer`] (judge whole, then
//! replay), [`window`] (release window by window, each judged first), [`passthrough`] (send
//! as it comes, judge afterwards) and [`searched`] (a buffered request whose beam search may
//! release the prefix its beams share early). What they share is here: opening the upstream
//! stream, the event channel, the verdict comment and error event.

pub(crate) mod buffer;
pub(crate) mod passthrough;
pub(crate) mod searched;
pub(crate) mod window;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::ctx::{Ctx, log_upstream_error};
use super::exchange::{EventStream, GuardedResponse};
use super::outcome::Outcome;
use super::reply::ErrorReply;
use super::strategy::Plan;
use crate::openai::chunks::as_chunks;
use crate::openai::{ChatChunk, sse};
use crate::policy::Action;
use crate::score::Verdict;
use crate::upstream::{ChunkStream, Upstream, UpstreamError, UpstreamResponse};

/// `: rulegate ...` comment with the verdict, for streams whose headers left before it.
pub(crate) fn verdict_comment(outcome: &Outcome) -> Bytes {
    let mut text = format!("rulegate action={}", outcome.action.as_str());
    if let Some(shadow) = outcome.shadow_action {
        text.push_str(&format!(" shadow_action={shadow}"));
    }
    if let Some(class) = &outcome.class {
        text.push_str(&format!(" class={class}"));
    }
    if let Some(score) = outcome.score {
        text.push_str(&format!(" score={score:.4}"));
    }
    if outcome.classifier_error.is_some() {
        // The kind only: the message stays in the logs.
        text.push_str(" error=classifier");
    }
    sse::comment(&text)
}

/// A channel-backed event stream; the producer stops when the client goes away.
pub(crate) fn channel() -> (mpsc::Sender<Bytes>, EventStream) {
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let events = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    (tx, Box::pin(events))
}

/// Starts the upstream stream; errors before the first byte become ordinary error responses.
pub(crate) async fn open<U: Upstream>(
    ctx: &Ctx<U>,
    plan: &Plan,
    outcome: &Outcome,
) -> Result<ChunkStream, GuardedResponse> {
    let mut request = plan.original.clone();
    request.stream = Some(true);
    if matches!(ctx.judge.policy().streaming(), crate::policy::HoldBack::Window { .. }) {
        request.stream_options.get_or_insert_with(Default::default).include_usage = Some(true);
    }
    match ctx.send(request).await {
        Ok(UpstreamResponse::Stream(s)) => Ok(s),
        // An upstream that ignores `stream` still gets judged, as one piece.
        Ok(UpstreamResponse::Complete(r)) => Ok(Box::pin(futures::stream::iter(as_chunks(r).into_iter().map(Ok)))),
        Err(e) => Err(GuardedResponse::upstream_error(&e, outcome.clone())),
    }
}

/// rulegate's own error event for a stream that failed upstream: the code and a short
/// reason, never the upstream's text (logged instead).
pub(crate) fn error_event(error: &UpstreamError) -> Bytes {
    log_upstream_error(error, 0);
    sse::json_event(&ErrorReply::upstream(error).body())
}

/// Does a verdict stop a stream? Text leaves only when its class's action is `pass`: text
/// the policy would regenerate, rerank, replace or block must not reach the client.
pub(crate) fn stops(verdict: &Verdict) -> bool {
    !matches!(verdict.action, Action::Pass)
}

// Lives for one loop turn on the stack; boxing the chunk would allocate for every one.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Next {
    Item(Result<ChatChunk, UpstreamError>),
    End,
    /// The client went away.
    Gone,
}

/// How a stream forwarded as it came ended.
pub(crate) enum Forwarded {
    /// The upstream finished.
    End,
    /// The client went away.
    Gone,
    /// The upstream failed mid-stream.
    Failed(UpstreamError),
}

/// Sends every upstream chunk to the client as it comes (`passthrough`, shadow mode),
/// collecting what the first choice delivered.
pub(crate) async fn forward(
    upstream: &mut ChunkStream,
    tx: &mpsc::Sender<Bytes>,
    delivered: &mut crate::openai::chunks::Assembled,
) -> Forwarded {
    loop {
        let chunk = match next_for(upstream, tx).await {
            Next::Item(Ok(chunk)) => chunk,
            Next::Item(Err(e)) => return Forwarded::Failed(e),
            Next::End => return Forwarded::End,
            Next::Gone => return Forwarded::Gone,
        };
        for c in chunk.choices.iter().filter(|c| c.index == 0) {
            delivered.add(&c.delta);
        }
        if tx.send(sse::json_event(&chunk)).await.is_err() {
            return Forwarded::Gone;
        }
    }
}

/// The next upstream chunk, unless the client leaves first: a stalled upstream is let go of
/// as soon as nobody waits for it, not when its idle timeout ends.
pub(crate) async fn next_for(upstream: &mut ChunkStream, tx: &mpsc::Sender<Bytes>) -> Next {
    tokio::select! {
        item = upstream.next() => item.map_or(Next::End, Next::Item),
        () = tx.closed() => Next::Gone,
    }
}
