//! `window` mode: text is released window by window, each judged (as a prefix of the
//! completion) before it leaves.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::{Next, channel, error_event, next_for, open, stops, verdict_comment};
use crate::openai::chunks::{Assembled, chunk_event, delta, head_of, new_head, usage_event};
use crate::openai::{ChatResponse, Delta, sse};
use crate::pipeline::ctx::Ctx;
use crate::pipeline::exchange::GuardedResponse;
use crate::pipeline::options::FailMode;
use crate::pipeline::outcome::{GuardAction, Outcome};
use crate::pipeline::strategy::Plan;
use crate::upstream::{ChunkStream, Upstream};

/// `window` mode: text is released window by window, each judged (as a prefix of the
/// completion) before it leaves; a failing verdict ends the stream with
/// `finish_reason: content_filter` and withholds the failing window.
pub(crate) async fn window<U: Upstream>(
    ctx: Arc<Ctx<U>>,
    plan: Plan,
    window_chars: usize,
    mut outcome: Outcome,
) -> GuardedResponse {
    let upstream = match open(&ctx, &plan, &outcome).await {
        Ok(s) => s,
        Err(response) => return response,
    };
    outcome.action = GuardAction::Window;
    outcome.attempts = 1;
    outcome.response_type = plan.response_type.map(|i| ctx.response_type(i).name.clone());
    let (tx, events) = channel();
    let include_usage = plan.original.include_usage();
    let label = outcome.response_type.clone();
    let report = outcome.clone();
    tokio::spawn(
        async move {
            let mut w = Windowed {
                ctx,
                tx,
                include_usage,
                label,
                head: None,
                released: String::new(),
                pending: String::new(),
                held: Assembled::new(),
                outcome: report,
            };
            w.run(upstream, window_chars).await;
        }
        .instrument(tracing::Span::current()),
    );
    GuardedResponse::Stream { events, outcome }
}

struct Windowed<U> {
    ctx: Arc<Ctx<U>>,
    tx: mpsc::Sender<Bytes>,
    include_usage: bool,
    label: Option<String>,
    head: Option<ChatResponse>,
    released: String,
    pending: String,
    /// Everything but the content (tool calls, `refusal`, reasoning, ...), held whole until
    /// the end: judged with the final text, sent only when that verdict passes.
    held: Assembled,
    outcome: Outcome,
}

impl<U: Upstream> Windowed<U> {
    async fn run(&mut self, mut upstream: ChunkStream, window_chars: usize) {
        let mut finish_reason = None;
        loop {
            let item = match next_for(&mut upstream, &self.tx).await {
                Next::Item(item) => item,
                Next::End => break,
                Next::Gone => return,
            };
            let mut chunk = match item {
                Ok(c) => c,
                Err(e) => {
                    // Released text stays released; what is pending was never judged and is dropped.
                    let _ = self.tx.send(error_event(&e)).await;
                    self.outcome.action = GuardAction::UpstreamError;
                    self.ctx.report(&self.outcome);
                    return;
                }
            };
            self.ctx.add_usage(chunk.usage.take());
            if self.head.is_none() {
                let head = head_of(&chunk);
                let role = chunk_event(&head, vec![delta(0, Some("assistant"), Some(""), None)]);
                self.head = Some(head);
                if !self.send(role).await {
                    return;
                }
            }
            for c in chunk.choices.iter().filter(|c| c.index == 0) {
                if let Some(text) = &c.delta.content {
                    self.pending.push_str(text);
                }
                if !c.delta.extra.is_empty() {
                    self.held.add(&Delta { role: None, content: None, extra: c.delta.extra.clone() });
                }
                finish_reason = c.finish_reason.clone().or(finish_reason);
            }
            while self.pending.chars().count() >= window_chars {
                let cut = window_cut(&self.pending, window_chars);
                match self.judge_prefix(cut).await {
                    Some(true) => {
                        if !self.release(cut).await {
                            return;
                        }
                    }
                    Some(false) => return self.stop().await,
                    None => return,
                }
            }
        }
        // The end: the whole completion is judged before its last window leaves.
        let all = self.pending.len();
        match self.judge_prefix(all).await {
            Some(true) => {}
            Some(false) => return self.stop().await,
            None => return,
        }
        if !self.release(all).await {
            return;
        }
        if !self.held_empty() && !self.send_held().await {
            return;
        }
        self.outcome.action = GuardAction::Pass;
        self.finish(finish_reason.as_deref().unwrap_or("stop")).await;
    }

    /// Judges released text plus the first `cut` bytes of the pending window (at the end,
    /// with the held tool calls, as [`ChatMessage::judged_text`] writes them).
    /// `Some(passes)`, or `None` when the stream had to end (classifier failure, fail_closed).
    async fn judge_prefix(&mut self, cut: usize) -> Option<bool> {
        let mut text = format!("{}{}", self.released, &self.pending[..cut]);
        if cut == self.pending.len() && !self.held_empty() {
            text = self.held.message(text).judged_text();
        }
        let judged = self.ctx.judged_per_call(self.ctx.judge.evaluate(&self.ctx.prompt, &text, self.label.as_deref()));
        // A client that leaves mid-judgment frees the classifier at once.
        let result = tokio::select! {
            result = judged => result,
            () = self.tx.closed() => return None,
        };
        match result {
            Ok(v) => {
                self.label.get_or_insert_with(|| v.response_type.clone());
                self.outcome.response_type = Some(v.response_type.clone());
                self.outcome.class = Some(v.class.clone());
                self.outcome.score = Some(v.score);
                let passes = !stops(&v);
                self.outcome.verdict = Some(v);
                self.outcome.completion = Some(text);
                Some(passes)
            }
            Err(e) if self.ctx.options.on_classifier_error == FailMode::Open => {
                tracing::warn!(error = %e, "classifier failed on a stream window; releasing it unjudged (fail_open)");
                self.outcome.classifier_error = Some(e.to_string());
                Some(true)
            }
            Err(e) => {
                tracing::error!(error = %e, "classifier failed on a stream window; stopping the stream (fail_closed)");
                self.outcome.classifier_error = Some(e.to_string());
                self.stop().await;
                None
            }
        }
    }

    async fn release(&mut self, cut: usize) -> bool {
        let text: String = self.pending.drain(..cut).collect();
        if text.is_empty() {
            return true;
        }
        self.released.push_str(&text);
        let Some(head) = &self.head else { return true };
        let event = chunk_event(head, vec![delta(0, None, Some(&text), None)]);
        self.send(event).await
    }

    fn held_empty(&self) -> bool {
        !self.held.has_more_than_text()
    }

    /// What was held (tool calls, each whole, and the other fields), in one delta, as
    /// `replay` sends them.
    async fn send_held(&mut self) -> bool {
        let Some(head) = &self.head else { return true };
        let held = std::mem::take(&mut self.held);
        let event = chunk_event(head, vec![held.into_held_delta(0)]);
        self.send(event).await
    }

    async fn stop(&mut self) {
        self.outcome.action = GuardAction::ContentFilter;
        self.finish("content_filter").await;
    }

    async fn finish(&mut self, finish_reason: &str) {
        let head = self.head.clone().unwrap_or_else(|| new_head(String::new()));
        let mut events = vec![chunk_event(&head, vec![delta(0, None, None, Some(finish_reason))])];
        if self.include_usage {
            events.push(usage_event(&head, self.ctx.usage()));
        }
        events.push(verdict_comment(&self.outcome));
        events.push(Bytes::from_static(sse::DONE));
        for e in events {
            if !self.send(e).await {
                return;
            }
        }
        self.ctx.report(&self.outcome);
    }

    async fn send(&self, event: Bytes) -> bool {
        self.tx.send(event).await.is_ok()
    }
}

/// Byte index at which to cut the pending text: the last whitespace after at least half a
/// window, else exactly one window's worth of characters.
fn window_cut(pending: &str, window_chars: usize) -> usize {
    let limit = pending.char_indices().nth(window_chars).map_or(pending.len(), |(i, _)| i);
    let floor = pending.char_indices().nth(window_chars / 2).map_or(0, |(i, _)| i);
    match pending[..limit].rfind(char::is_whitespace) {
        Some(i) if i >= floor => i + pending[i..].chars().next().map_or(1, char::len_utf8),
        _ => limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cut_at_whitespace() {
        let cut = window_cut("aaaa bbbb cccc dddd", 12);
        assert_eq!(&"aaaa bbbb cccc dddd"[..cut], "aaaa bbbb ");
        // no whitespace: exactly one window
        assert_eq!(window_cut("abcdefghijklmnop", 8), 8);
        // multibyte characters stay whole
        let s = "ééééééééé";
        assert!(s.is_char_boundary(window_cut(s, 4)));
    }
}
