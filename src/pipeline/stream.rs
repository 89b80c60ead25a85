//! Streamed responses: collecting an upstream stream, replaying a decided completion as
//! SSE (`buffer` mode), and judging text while it flows (`window`, `passthrough`).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Map;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::decide::Plan;
use super::{Ctx, ErrorKind, ErrorReply, EventStream, FailMode, GuardAction, GuardedResponse, Outcome, StreamMode};
use crate::openai::{ChatChunk, ChatMessage, ChatResponse, Choice, ChunkChoice, Delta, Usage, sse};
use crate::policy::Action;
use crate::score::Verdict;
use crate::upstream::{ChunkStream, Upstream, UpstreamError, UpstreamResponse};

/// One choice of a stream being reassembled.
struct Assembled {
    role: String,
    text: String,
    finish_reason: Option<String>,
    /// Tool calls by their `index`, arguments concatenated.
    tool_calls: BTreeMap<u64, serde_json::Value>,
    /// Other message fields the deltas carried (`refusal`, `reasoning_content`, ...):
    /// strings are concatenated, anything else keeps its last value.
    extra: Map<String, serde_json::Value>,
}

impl Assembled {
    fn new() -> Self {
        Assembled {
            role: "assistant".into(),
            text: String::new(),
            finish_reason: None,
            tool_calls: BTreeMap::new(),
            extra: Map::new(),
        }
    }

    /// The message assembled so far, with `text` as its content.
    fn message(&self, text: String) -> ChatMessage {
        let mut message = ChatMessage::new(&self.role, text);
        message.extra = self.extra.clone();
        if !self.tool_calls.is_empty() {
            message
                .extra
                .insert("tool_calls".into(), serde_json::Value::Array(self.tool_calls.values().cloned().collect()));
        }
        message
    }

    fn add(&mut self, delta: &Delta) {
        use serde_json::Value;
        if let Some(role) = &delta.role {
            self.role = role.clone();
        }
        if let Some(text) = &delta.content {
            self.text.push_str(text);
        }
        for (key, value) in &delta.extra {
            match (key.as_str(), value) {
                ("tool_calls", Value::Array(calls)) => {
                    for (position, call) in calls.iter().enumerate() {
                        let index = call.get("index").and_then(Value::as_u64).unwrap_or(position as u64);
                        merge_tool_call(self.tool_calls.entry(index).or_insert_with(|| serde_json::json!({})), call);
                    }
                }
                (_, Value::Null) => {}
                (_, Value::String(piece)) => match self.extra.get_mut(key) {
                    Some(Value::String(so_far)) => so_far.push_str(piece),
                    _ => {
                        self.extra.insert(key.clone(), value.clone());
                    }
                },
                _ => {
                    self.extra.insert(key.clone(), value.clone());
                }
            }
        }
    }

    fn into_choice(self, index: u32) -> Choice {
        let mut message = ChatMessage::new(&self.role, self.text);
        message.extra = self.extra;
        if !self.tool_calls.is_empty() {
            message
                .extra
                .insert("tool_calls".into(), serde_json::Value::Array(self.tool_calls.into_values().collect()));
        }
        Choice { index, message, finish_reason: self.finish_reason, extra: Map::new() }
    }
}

/// Folds one streamed tool-call delta into the call assembled so far: `id`, `type` and the
/// payload's `name` are taken when given; a function's `arguments` and a custom tool's
/// `input` arrive in pieces and are appended.
fn merge_tool_call(call: &mut serde_json::Value, delta: &serde_json::Value) {
    use serde_json::Value;
    let (Some(call), Some(delta)) = (call.as_object_mut(), delta.as_object()) else { return };
    for (key, value) in delta {
        match key.as_str() {
            "index" => {}
            "function" | "custom" => {
                let payload = call.entry(key.clone()).or_insert_with(|| serde_json::json!({}));
                let (Some(function), Some(parts)) = (payload.as_object_mut(), value.as_object()) else { continue };
                for (k, v) in parts {
                    match (k.as_str(), v, function.get_mut(k)) {
                        ("arguments" | "input", Value::String(piece), Some(Value::String(so_far))) => {
                            so_far.push_str(piece)
                        }
                        (_, Value::Null, _) => {}
                        _ => {
                            function.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            _ if !value.is_null() => {
                call.insert(key.clone(), value.clone());
            }
            _ => {}
        }
    }
}

/// Reassembles a streamed completion, tool calls and unknown message fields included.
pub(super) async fn collect(mut chunks: ChunkStream) -> Result<ChatResponse, UpstreamError> {
    let mut head: Option<ChatChunk> = None;
    let mut choices: BTreeMap<u32, Assembled> = BTreeMap::new();
    let mut usage = None;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        usage = chunk.usage.clone().or(usage);
        for c in &chunk.choices {
            let entry = choices.entry(c.index).or_insert_with(Assembled::new);
            entry.add(&c.delta);
            if c.finish_reason.is_some() {
                entry.finish_reason = c.finish_reason.clone();
            }
        }
        head.get_or_insert(chunk);
    }
    let head = head.ok_or_else(|| UpstreamError::Protocol("the upstream stream ended before any chunk".into()))?;
    Ok(ChatResponse {
        id: head.id,
        object: "chat.completion".into(),
        created: head.created,
        model: head.model,
        choices: choices.into_iter().map(|(index, a)| a.into_choice(index)).collect(),
        usage,
        extra: Map::new(),
    })
}

fn chunk(head: &ChatResponse, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatChunk {
    ChatChunk {
        id: head.id.clone(),
        object: "chat.completion.chunk".into(),
        created: head.created,
        model: head.model.clone(),
        choices,
        usage,
        extra: Map::new(),
    }
}

fn delta(index: u32, role: Option<&str>, content: Option<&str>, finish_reason: Option<&str>) -> ChunkChoice {
    ChunkChoice {
        index,
        delta: Delta { role: role.map(str::to_string), content: content.map(str::to_string), extra: Map::new() },
        finish_reason: finish_reason.map(str::to_string),
        extra: Map::new(),
    }
}

/// The final chunk `stream_options.include_usage` asks for. When the upstream reported no
/// usage (some servers do not stream it), `usage` is `null` rather than invented zeros.
fn usage_event(head: &ChatResponse, usage: Option<Usage>) -> Bytes {
    let missing = usage.is_none();
    let mut last = serde_json::to_value(chunk(head, Vec::new(), usage)).unwrap_or_default();
    if missing {
        last["usage"] = serde_json::Value::Null;
    }
    sse::json_event(&last)
}

/// Cuts text into pieces of about `size` characters at whitespace; they concatenate back
/// to the text exactly.
fn pieces(text: &str, size: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut count = 0;
    for (i, c) in text.char_indices() {
        count += 1;
        if count >= size && c.is_whitespace() {
            let end = i + c.len_utf8();
            out.push(&text[start..end]);
            start = end;
            count = 0;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// The id, time and model for chunks of a stream rulegate starts itself (no upstream chunk
/// to take them from).
fn new_head(model: String) -> ChatResponse {
    ChatResponse {
        id: crate::openai::completion_id(),
        object: String::new(),
        created: crate::openai::now_unix(),
        model,
        choices: Vec::new(),
        usage: None,
        extra: Map::new(),
    }
}

/// `: rulegate ...` comment with the verdict, for streams whose headers left before it.
fn verdict_comment(outcome: &Outcome) -> Bytes {
    let mut text = format!("rulegate action={}", outcome.action.as_str());
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

/// Streams a decided completion (`buffer` mode): role, text in pieces, finish reason, the
/// summed usage when asked for, `[DONE]`.
pub(super) fn replay(response: ChatResponse, include_usage: bool, outcome: &Outcome) -> EventStream {
    let mut events = Vec::new();
    for choice in &response.choices {
        // The first delta carries the role and any other message fields but the tool calls.
        let mut first = delta(choice.index, Some("assistant"), Some(""), None);
        first.delta.extra = choice
            .message
            .extra
            .iter()
            .filter(|(k, _)| *k != "tool_calls")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        events.push(sse::json_event(&chunk(&response, vec![first], None)));
        let text = choice.message.text();
        for piece in pieces(&text, 48) {
            events.push(sse::json_event(&chunk(&response, vec![delta(choice.index, None, Some(piece), None)], None)));
        }
        if let Some(serde_json::Value::Array(calls)) = choice.message.extra.get("tool_calls") {
            // Each call whole, in one delta, with the `index` streamed tool calls carry.
            let calls: Vec<serde_json::Value> = calls
                .iter()
                .enumerate()
                .map(|(i, call)| {
                    let mut call = call.clone();
                    if let Some(o) = call.as_object_mut() {
                        o.insert("index".into(), serde_json::Value::from(i));
                    }
                    call
                })
                .collect();
            let mut tools = delta(choice.index, None, None, None);
            tools.delta.extra.insert("tool_calls".into(), serde_json::Value::Array(calls));
            events.push(sse::json_event(&chunk(&response, vec![tools], None)));
        }
        let finish = choice.finish_reason.as_deref().unwrap_or("stop");
        events.push(sse::json_event(&chunk(&response, vec![delta(choice.index, None, None, Some(finish))], None)));
    }
    if include_usage {
        events.push(usage_event(&response, response.usage.clone()));
    }
    events.push(verdict_comment(outcome));
    events.push(Bytes::from_static(sse::DONE));
    Box::pin(futures::stream::iter(events))
}

/// A channel-backed event stream; the producer stops when the client goes away.
fn channel() -> (mpsc::Sender<Bytes>, EventStream) {
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let events = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    (tx, Box::pin(events))
}

/// Starts the upstream stream; errors before the first byte become ordinary error responses.
async fn open<U: Upstream>(ctx: &Ctx<U>, plan: &Plan, outcome: &Outcome) -> Result<ChunkStream, GuardedResponse> {
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

fn as_chunks(response: ChatResponse) -> Vec<ChatChunk> {
    let mut out: Vec<ChatChunk> = response
        .choices
        .iter()
        .map(|c| {
            chunk(
                &response,
                vec![delta(c.index, Some(&c.message.role), Some(&c.message.text()), c.finish_reason.as_deref())],
                None,
            )
        })
        .collect();
    if let Some(usage) = response.usage.clone() {
        out.push(chunk(&response, Vec::new(), Some(usage)));
    }
    out
}

/// rulegate's own error event for a stream that failed upstream: the code and a short
/// reason, never the upstream's text (logged instead).
fn error_event(error: &UpstreamError) -> Bytes {
    super::log_upstream_error(error, 0);
    sse::json_event(&ErrorReply::upstream(error).body())
}

/// Does a verdict stop a stream? Text leaves only when its class's action is `pass`: text
/// the policy would regenerate, rerank, replace or block must not reach the client.
fn stops(verdict: &Verdict) -> bool {
    !matches!(verdict.action, Action::Pass)
}

/// `window` mode: text is released window by window, each judged (as a prefix of the
/// completion) before it leaves; a failing verdict ends the stream with
/// `finish_reason: content_filter` and withholds the failing window.
pub(super) async fn window<U: Upstream>(
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
            let chunk = match item {
                Ok(c) => c,
                Err(e) => {
                    // Released text stays released; what is pending was never judged and is dropped.
                    let _ = self.tx.send(error_event(&e)).await;
                    self.outcome.action = GuardAction::UpstreamError;
                    self.ctx.report(&self.outcome);
                    return;
                }
            };
            self.ctx.add_usage(chunk.usage);
            if self.head.is_none() {
                let head = ChatResponse {
                    id: chunk.id.clone(),
                    object: String::new(),
                    created: chunk.created,
                    model: chunk.model.clone(),
                    choices: Vec::new(),
                    usage: None,
                    extra: Map::new(),
                };
                let role = super::stream::chunk(&head, vec![delta(0, Some("assistant"), Some(""), None)], None);
                self.head = Some(head);
                if !self.send(sse::json_event(&role)).await {
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
        let event = sse::json_event(&chunk(head, vec![delta(0, None, Some(&text), None)], None));
        self.send(event).await
    }

    fn held_empty(&self) -> bool {
        self.held.tool_calls.is_empty() && self.held.extra.is_empty()
    }

    /// What was held (tool calls, each whole, and the other fields), in one delta, as
    /// `replay` sends them.
    async fn send_held(&mut self) -> bool {
        let Some(head) = &self.head else { return true };
        let held = std::mem::replace(&mut self.held, Assembled::new());
        let mut tools = delta(0, None, None, None);
        tools.delta.extra = held.extra;
        if !held.tool_calls.is_empty() {
            let calls: Vec<serde_json::Value> = held
                .tool_calls
                .into_iter()
                .map(|(index, mut call)| {
                    if let Some(o) = call.as_object_mut() {
                        o.insert("index".into(), serde_json::Value::from(index));
                    }
                    call
                })
                .collect();
            tools.delta.extra.insert("tool_calls".into(), serde_json::Value::Array(calls));
        }
        let event = sse::json_event(&chunk(head, vec![tools], None));
        self.send(event).await
    }

    async fn stop(&mut self) {
        self.outcome.action = GuardAction::ContentFilter;
        self.finish("content_filter").await;
    }

    async fn finish(&mut self, finish_reason: &str) {
        let head = self.head.clone().unwrap_or_else(|| new_head(String::new()));
        let mut events = vec![sse::json_event(&chunk(&head, vec![delta(0, None, None, Some(finish_reason))], None))];
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

// Lives for one loop turn on the stack; boxing the chunk would allocate for every one.
#[allow(clippy::large_enum_variant)]
enum Next {
    Item(Result<ChatChunk, UpstreamError>),
    End,
    /// The client went away.
    Gone,
}

/// The next upstream chunk, unless the client leaves first: a stalled upstream is let go of
/// as soon as nobody waits for it, not when its idle timeout ends.
async fn next_for(upstream: &mut ChunkStream, tx: &mpsc::Sender<Bytes>) -> Next {
    tokio::select! {
        item = upstream.next() => item.map_or(Next::End, Next::Item),
        () = tx.closed() => Next::Gone,
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

/// `passthrough` mode: chunks go to the client as they come; the completion is judged
/// afterwards for logs and metrics, and the verdict is appended as an SSE comment.
pub(super) async fn passthrough<U: Upstream>(ctx: Arc<Ctx<U>>, plan: Plan, mut outcome: Outcome) -> GuardedResponse {
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
        loop {
            let item = match next_for(&mut upstream, &tx).await {
                Next::Item(item) => item,
                Next::End => break,
                Next::Gone => return,
            };
            match item {
                Ok(chunk) => {
                    for c in chunk.choices.iter().filter(|c| c.index == 0) {
                        delivered.add(&c.delta);
                    }
                    if tx.send(sse::json_event(&chunk)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(error_event(&e)).await;
                    // Reported as window mode reports it: every stream that ends is counted.
                    report.action = GuardAction::UpstreamError;
                    ctx.report(&report);
                    return;
                }
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
        let _ = tx.send(verdict_comment(&report)).await;
        let _ = tx.send(Bytes::from_static(sse::DONE)).await;
        ctx.report(&report);
    }
    .instrument(tracing::Span::current()));
    GuardedResponse::Stream { events, outcome }
}

/// The stream of a request whose action loop may release text before it ends.
pub(super) struct Early {
    /// Fired when the first text is released: the response (headers, then these events)
    /// can leave.
    opened: Option<tokio::sync::oneshot::Sender<()>>,
    tx: mpsc::Sender<Bytes>,
    head: ChatResponse,
    released: String,
}

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
pub(super) async fn searched<U: Upstream>(
    ctx: Arc<Ctx<U>>,
    chat: crate::openai::ChatRequest,
    plan: Plan,
    outcome: Outcome,
) -> GuardedResponse {
    let (tx, mut rx) = mpsc::channel::<Bytes>(32);
    let (opened, mut on_open) = tokio::sync::oneshot::channel();
    let head = new_head(chat.model().to_string());
    if let Ok(mut early) = ctx.early.lock() {
        *early = Some(Early { opened: Some(opened), tx, head, released: String::new() });
    }
    let include_usage = chat.include_usage();
    let at_open = outcome.clone();
    let work_ctx = ctx.clone();
    let mut work = tokio::spawn(
        async move {
            let mut outcome = outcome;
            let result = super::decide::decide(&work_ctx, plan, &mut outcome).await;
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
                Ok(Some((Ok(response), outcome))) => super::deliver(&ctx, &chat, response, outcome),
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
                events.push(sse::json_event(&chunk(head, vec![delta(0, None, Some(piece), None)], None)));
            }
            events.push(sse::json_event(&chunk(head, vec![delta(0, None, None, Some(&finish_reason))], None)));
        }
        None => {
            outcome.action = GuardAction::ContentFilter;
            events.push(sse::json_event(&chunk(head, vec![delta(0, None, None, Some("content_filter"))], None)));
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

impl<U: Upstream> Ctx<U> {
    /// Whether this request may release text before its action loop ends.
    pub(super) fn can_release(&self) -> bool {
        self.early.lock().is_ok_and(|e| e.is_some())
    }

    /// The text released so far (empty when nothing was).
    pub(super) fn released(&self) -> String {
        self.early.lock().ok().and_then(|e| e.as_ref().map(|e| e.released.clone())).unwrap_or_default()
    }

    /// Sends the part of `text` past what was already released, starting the stream on the
    /// first call. `text` must extend the released text (else nothing is sent). `false` when
    /// the client is gone.
    pub(super) async fn release(&self, text: &str) -> bool {
        let (tx, events) = {
            let Ok(mut early) = self.early.lock() else { return false };
            let Some(early) = early.as_mut() else { return false };
            let Some(piece) = text.strip_prefix(early.released.as_str()).filter(|p| !p.is_empty()) else {
                return true;
            };
            let mut events = Vec::new();
            if let Some(opened) = early.opened.take() {
                events.push(sse::json_event(&chunk(
                    &early.head,
                    vec![delta(0, Some("assistant"), Some(""), None)],
                    None,
                )));
                let _ = opened.send(());
            }
            events.push(sse::json_event(&chunk(&early.head, vec![delta(0, None, Some(piece), None)], None)));
            early.released = text.to_string();
            (early.tx.clone(), events)
        };
        for event in events {
            if tx.send(event).await.is_err() {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[tokio::test]
    async fn collect_keeps_streamed_tool_calls_and_unknown_fields() {
        let chunks: Vec<ChatChunk> = [
            r#"{"id":"c","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"run","arguments":""}}]}}]}"#,
            r#"{"id":"c","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"cmd\":"}}]}}]}"#,
            r#"{"id":"c","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"ls\"}"}}],"reasoning_content":"think"}}]}"#,
            r#"{"id":"c","created":1,"model":"m","choices":[{"index":0,"delta":{"reasoning_content":"ing"},"finish_reason":"tool_calls"}]}"#,
        ]
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
        let stream: ChunkStream = Box::pin(futures::stream::iter(chunks.into_iter().map(Ok)));
        let response = collect(stream).await.unwrap();
        let message = &response.choices[0].message;
        let call = &message.extra["tool_calls"][0];
        assert_eq!(call["id"], "call_1");
        assert_eq!(call["function"]["name"], "run");
        assert_eq!(call["function"]["arguments"], r#"{"cmd":"ls"}"#);
        assert_eq!(message.extra["reasoning_content"], "thinking");
        assert_eq!(response.choices[0].finish_reason.as_deref(), Some("tool_calls"));
        // The judge reads the call's arguments, and the reasoning delivered beside them.
        assert_eq!(message.judged_text(), "run({\"cmd\":\"ls\"})\nthinking");

        // Replayed as SSE and collected again, nothing is lost.
        let replayed: Vec<Bytes> = replay(response.clone(), false, &Outcome::default()).collect().await;
        let again: Vec<ChatChunk> = replayed
            .iter()
            .filter_map(|e| std::str::from_utf8(e).ok()?.strip_prefix("data: ")?.trim().parse::<String>().ok())
            .filter(|d| d != "[DONE]")
            .map(|d| serde_json::from_str(&d).unwrap())
            .collect();
        let stream: ChunkStream = Box::pin(futures::stream::iter(again.into_iter().map(Ok)));
        let back = collect(stream).await.unwrap();
        assert_eq!(back.choices[0].message.extra["tool_calls"], message.extra["tool_calls"]);
        assert_eq!(back.choices[0].message.extra["reasoning_content"], "thinking");
    }

    proptest::proptest! {
        /// For any stream the upstream sends, `buffer` mode delivers only strings the judge
        /// read: each chunk sanitized as it arrives, the stream assembled and judged, the
        /// assembled answer replayed; every string of every replayed delta is in the judged
        /// text (bar the role and tool-call ids and types).
        #[test]
        fn buffered_streams_deliver_only_judged_text(
            deltas in proptest::collection::vec(crate::openai::judged::tests::answer_json(), 1..6)
        ) {
            use crate::openai::judged::{UnjudgedFields, sanitize_chunk_choice};
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            for mode in [UnjudgedFields::Drop, UnjudgedFields::Judge] {
                let chunks: Vec<ChatChunk> = deltas
                    .iter()
                    .filter_map(|d| {
                        let value = serde_json::json!({"id": "c", "created": 1, "model": "m",
                            "choices": [{"index": 0, "delta": d}]});
                        let mut chunk: ChatChunk = serde_json::from_value(value).ok()?;
                        chunk.choices.iter_mut().for_each(|c| sanitize_chunk_choice(c, mode));
                        Some(chunk)
                    })
                    .collect();
                if chunks.is_empty() {
                    continue;
                }
                let stream: ChunkStream = Box::pin(futures::stream::iter(chunks.into_iter().map(Ok)));
                let response = runtime.block_on(collect(stream)).unwrap();
                let judged = response.choices[0].message.judged_text();
                let events: Vec<Bytes> = runtime.block_on(replay(response, false, &Outcome::default()).collect());
                for event in events {
                    let Some(data) = std::str::from_utf8(&event).ok().and_then(|e| e.strip_prefix("data: ")) else {
                        continue;
                    };
                    let Ok(chunk) = serde_json::from_str::<Value>(data.trim()) else { continue };
                    for choice in chunk["choices"].as_array().into_iter().flatten() {
                        let mut found = Vec::new();
                        crate::openai::judged::tests::delivered_strings(&choice["delta"], &mut Vec::new(), &mut found);
                        for (path, s) in found {
                            proptest::prop_assert!(judged.contains(&s), "{path} = {s:?} delivered, judged {judged:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn pieces_concatenate_back() {
        let text = "The quick brown fox jumps over the lazy dog, again and again and again, until nightfall.";
        let p = pieces(text, 16);
        assert!(p.len() > 3);
        assert_eq!(p.concat(), text);
        assert!(pieces("", 16).is_empty());
        assert_eq!(pieces("héllo wörld ünïcode", 3).concat(), "héllo wörld ünïcode");
    }

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

    #[test]
    fn stream_pieces_keep_json_valid() {
        let head = ChatResponse {
            id: "x".into(),
            object: String::new(),
            created: 1,
            model: "m".into(),
            choices: Vec::new(),
            usage: None,
            extra: Map::new(),
        };
        let event = sse::json_event(&chunk(&head, vec![delta(0, None, Some("a\"b"), None)], None));
        let body = std::str::from_utf8(&event).unwrap();
        let json: Value = serde_json::from_str(body.strip_prefix("data: ").unwrap().trim_end()).unwrap();
        assert_eq!(json["choices"][0]["delta"]["content"], "a\"b");
        assert_eq!(json["object"], "chat.completion.chunk");
    }
}
