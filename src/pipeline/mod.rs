//! The guarded request: call the upstream, judge every choice, act on the verdict
//! (pass, regenerate, best-of-n, fallback, block) within the policy's budget, and hold
//! streamed text back until it is judged. [`Pipeline`] is a `tower::Service` over typed
//! requests; [`http`] puts an HTTP face on it, used by both the sidecar and the Tower layer.

mod decide;
pub mod http;
mod outcome;
mod reply;
pub mod route;
mod search;
mod stream;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use ::http::{HeaderMap, StatusCode, Uri};
use bytes::Bytes;
use futures::Stream;
use serde::Serialize;
use tokio::time::Instant;

pub use crate::access::{ApiKey, Selectors, UntrustedSelector};
use crate::guard::{Guard, GuardSelector, Judge};
pub use crate::openai::judged::UnjudgedFields;
use crate::openai::{ChatMessage, ChatRequest, ChatResponse, ErrorBody, Usage, judged};
use crate::policy::{InputAction, ResponseType};
use crate::score::Verdict;
use crate::upstream::{BoxFuture, Upstream, UpstreamError, UpstreamRequest, UpstreamResponse, Wire};
pub use outcome::{GuardAction, InputDecision, Outcome, StreamMode};
pub use reply::{ErrorKind, ErrorReply};

/// What to do when the classifier itself fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Deliver the completion unjudged (`x-rulegate-action: fail_open`).
    Open,
    /// Answer 503 rather than deliver anything unjudged.
    #[default]
    Closed,
}

/// How the pipeline behaves where the policy has no say.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// What to do when the classifier fails (default [`FailMode::Closed`]).
    pub on_classifier_error: FailMode,
    /// Ask the upstream for several candidates with `n` (falling back to concurrent requests
    /// for whatever it does not return).
    pub upstream_supports_n: bool,
    /// What the front doors do with requests that could generate text but are not judged
    /// (default [`route::UnguardedRoutes::Deny`]: 403).
    pub unguarded_routes: route::UnguardedRoutes,
    /// Which callers may pick the policy or state the response type with headers (default:
    /// nobody).
    pub selectors: Selectors,
    /// How the upstream continues an assistant prefix, for `beam_search` (default: it
    /// cannot, and beam search runs as best-of-n).
    pub continuation: crate::upstream::Continuation,
    /// What the front doors do with reads of stored completions (default
    /// [`route::StoredCompletions::Deny`]: 403).
    pub stored_completions: route::StoredCompletions,
    /// What happens to fields of an upstream answer rulegate does not know (default
    /// [`UnjudgedFields::Drop`]).
    pub unjudged_fields: UnjudgedFields,
    /// What happens to a request carrying content the judge cannot read (images, audio,
    /// files): default [`UnreadableInput::JudgeText`].
    pub unreadable_input: UnreadableInput,
}

/// What the guard does with request content its judge cannot read (image, audio and file
/// parts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum UnreadableInput {
    /// Judge the text beside it (the default): the answer is still judged in full, but the
    /// prompt the judge sees may lack what the model was asked (a request written in an
    /// image reads as the text around it).
    #[default]
    JudgeText,
    /// Refuse the request (400 `unreadable_input`).
    Refuse,
}

impl PipelineOptions {
    /// The switches [`route::admit`] reads.
    pub fn admit_options(&self) -> route::AdmitOptions {
        route::AdmitOptions { unguarded_routes: self.unguarded_routes, stored_completions: self.stored_completions }
    }
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            on_classifier_error: FailMode::Closed,
            upstream_supports_n: true,
            unguarded_routes: route::UnguardedRoutes::Deny,
            selectors: Selectors::default(),
            continuation: crate::upstream::Continuation::None,
            stored_completions: route::StoredCompletions::Deny,
            unjudged_fields: UnjudgedFields::Drop,
            unreadable_input: UnreadableInput::JudgeText,
        }
    }
}

/// A chat request on its way through the guard.
#[derive(Clone)]
pub struct GuardedRequest {
    /// The parsed chat request.
    pub chat: ChatRequest,
    /// The request target and headers, reused for upstream calls.
    pub uri: Uri,
    /// The caller's headers; hop-by-hop and `x-rulegate-*` headers are dropped before they go
    /// upstream.
    pub headers: HeaderMap,
    /// What the prompt wants, when the caller says so (name, alias or category).
    pub response_type: Option<String>,
    /// The policy the caller asked for (`x-rulegate-policy`), if any.
    pub policy: Option<String>,
    /// The caller's API key, for key-to-policy mappings; never logged.
    pub api_key: Option<String>,
    /// The API the upstream is called with (chat, or legacy completions on their own route).
    pub wire: Wire,
}

impl GuardedRequest {
    /// A request to `/v1/chat/completions` with no headers, response type, policy or key.
    pub fn new(chat: ChatRequest) -> Self {
        GuardedRequest {
            chat,
            uri: Uri::from_static("/v1/chat/completions"),
            headers: HeaderMap::new(),
            response_type: None,
            policy: None,
            api_key: None,
            wire: Wire::Chat,
        }
    }
}

/// Framed server-sent events of a streamed response.
pub type EventStream = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

/// What the pipeline answers a request with; [`http::render`] turns it into HTTP.
// One per request, moved a few times: boxing the completion would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
pub enum GuardedResponse {
    /// A complete chat completion, for a request that did not ask for a stream.
    Complete {
        /// The completion as delivered (possibly regenerated, reranked or a fallback).
        response: ChatResponse,
        /// What the guard did.
        outcome: Outcome,
    },
    /// Server-sent events, already framed.
    Stream {
        /// The events, ending with `data: [DONE]`, or with an error event when the upstream
        /// fails mid-stream.
        events: EventStream,
        /// What the guard did, as far as known when the stream starts (the headers).
        outcome: Outcome,
    },
    /// An error to send as it is: an invalid request, a block, an upstream failure, or a
    /// classifier failure under [`FailMode::Closed`].
    Error {
        /// HTTP status.
        status: StatusCode,
        /// An OpenAI-style error body, always rulegate's own (upstream errors included).
        body: Bytes,
        /// What the guard did.
        outcome: Outcome,
    },
}

impl GuardedResponse {
    /// What the guard did, whichever the kind of response.
    pub fn outcome(&self) -> &Outcome {
        match self {
            GuardedResponse::Complete { outcome, .. }
            | GuardedResponse::Stream { outcome, .. }
            | GuardedResponse::Error { outcome, .. } => outcome,
        }
    }

    /// rulegate's own error, with what the guard did.
    pub fn error(reply: ErrorReply, outcome: Outcome) -> Self {
        GuardedResponse::Error { status: reply.status, body: reply.to_bytes(), outcome }
    }

    /// rulegate's own error for a failed upstream call ([`ErrorReply::upstream`]; the
    /// upstream's text goes to the log, see [`log_upstream_error`]).
    fn upstream_error(error: &UpstreamError, outcome: Outcome) -> Self {
        GuardedResponse::error(ErrorReply::upstream(error), outcome)
    }
}

/// The guarded request pipeline over an [`Upstream`]. Cheap to clone.
pub struct Pipeline<U> {
    shared: Arc<Shared>,
    upstream: U,
}

impl<U: Clone> Clone for Pipeline<U> {
    fn clone(&self) -> Self {
        Pipeline { shared: self.shared.clone(), upstream: self.upstream.clone() }
    }
}

struct Shared {
    guards: Arc<dyn GuardSelector>,
    options: PipelineOptions,
}

impl<U> Pipeline<U> {
    /// A pipeline over `upstream`. (A `Pipeline<()>` holds guard and options only, for
    /// callers that supply the upstream per request with [`Pipeline::with_upstream`].)
    pub fn new(guards: impl GuardSelector, upstream: U, options: PipelineOptions) -> Self {
        Pipeline { shared: Arc::new(Shared { guards: Arc::new(guards), options }), upstream }
    }

    /// Like [`Pipeline::new`], with guards already shared.
    pub fn with_selector(guards: Arc<dyn GuardSelector>, upstream: U, options: PipelineOptions) -> Self {
        Pipeline { shared: Arc::new(Shared { guards, options }), upstream }
    }

    /// The same guard and options over another upstream (the Tower layer makes one per
    /// request around the service it wraps).
    pub fn with_upstream<V>(&self, upstream: V) -> Pipeline<V> {
        Pipeline { shared: self.shared.clone(), upstream }
    }

    /// The guard requests get when they name no policy.
    pub fn guard(&self) -> Guard {
        self.shared.guards.default_guard()
    }

    /// Picks the guard for each request.
    pub fn guards(&self) -> &Arc<dyn GuardSelector> {
        &self.shared.guards
    }

    /// The options every request runs with.
    pub fn options(&self) -> &PipelineOptions {
        &self.shared.options
    }

    /// The model API requests go to.
    pub fn upstream(&self) -> &U {
        &self.upstream
    }
}

impl<U: Upstream> Pipeline<U> {
    /// Runs one request to its response; never fails (errors are responses).
    pub async fn handle(&self, request: GuardedRequest) -> GuardedResponse {
        use tracing::Instrument;
        let guard = match self.shared.guards.select(request.policy.as_deref(), request.api_key.as_deref()) {
            Ok(guard) => guard,
            Err(e) => {
                let outcome = Outcome { action: GuardAction::Reject, ..Outcome::default() };
                return GuardedResponse::error(ErrorReply::invalid_request("unknown_policy", e.to_string()), outcome);
            }
        };
        let judge = guard.judge();
        let span = tracing::info_span!(
            "request",
            policy = judge.policy().name(),
            policy_version = judge.policy().version(),
            model_version = judge.classifier().version(),
            stream = request.chat.is_stream(),
            response_type = tracing::field::Empty,
            action = tracing::field::Empty,
            class = tracing::field::Empty,
            attempts = tracing::field::Empty,
        );
        let ctx = Arc::new(Ctx::new(judge, self.upstream.clone(), self.shared.options.clone(), &request, span.clone()));
        let response = run(ctx.clone(), request).instrument(span).await;
        // Streams judged while they flow, or released while searched, report when they end.
        let outcome = response.outcome();
        if !outcome.reported_when_stream_ends() {
            ctx.report(outcome);
        }
        response
    }
}

impl<U: Upstream> tower::Service<GuardedRequest> for Pipeline<U> {
    type Response = GuardedResponse;
    type Error = Infallible;
    type Future = BoxFuture<Result<GuardedResponse, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: GuardedRequest) -> Self::Future {
        let pipeline = self.clone();
        Box::pin(async move { Ok(pipeline.handle(request).await) })
    }
}

/// Everything one request shares: its snapshot of policy and model, budget and usage.
struct Ctx<U> {
    judge: Arc<Judge>,
    upstream: U,
    options: PipelineOptions,
    uri: Uri,
    wire: Wire,
    headers: HeaderMap,
    prompt: Vec<crate::Message>,
    deadline: Instant,
    usage: Mutex<Option<Usage>>,
    /// Upstream calls made so far, numbering the `upstream` spans.
    calls: std::sync::atomic::AtomicU32,
    span: tracing::Span,
    /// For a streamed request whose action loop may release text before it ends (a beam
    /// search): the stream it releases into.
    early: Mutex<Option<stream::Early>>,
}

impl<U: Upstream> Ctx<U> {
    fn new(
        judge: Arc<Judge>,
        upstream: U,
        options: PipelineOptions,
        request: &GuardedRequest,
        span: tracing::Span,
    ) -> Self {
        let mut headers = request.headers.clone();
        crate::upstream::strip_hop_headers(&mut headers);
        // rulegate's own request headers are for rulegate, not the model API.
        let ours: Vec<_> = headers.keys().filter(|k| k.as_str().starts_with("x-rulegate-")).cloned().collect();
        for name in ours {
            headers.remove(name);
        }
        let deadline = Instant::now() + judge.policy().budget().deadline;
        Ctx {
            prompt: request.chat.conversation(),
            judge,
            upstream,
            options,
            uri: request.uri.clone(),
            wire: request.wire,
            headers,
            deadline,
            usage: Mutex::new(None),
            calls: std::sync::atomic::AtomicU32::new(0),
            span,
            early: Mutex::new(None),
        }
    }

    /// Records what happened in the request span and the metrics.
    fn report(&self, outcome: &Outcome) {
        let span = &self.span;
        span.record("action", outcome.action.as_str());
        if let Some(rt) = &outcome.response_type {
            span.record("response_type", rt.as_str());
        }
        if let Some(class) = &outcome.class {
            span.record("class", class.as_str());
        }
        span.record("attempts", outcome.attempts);
        let class = outcome.class.as_deref().unwrap_or("none");
        crate::telemetry::metrics().verdict(
            self.judge.policy().name(),
            class,
            outcome.action.as_str(),
            outcome.attempts,
        );
        let failed_open = outcome.action == GuardAction::FailOpen;
        if outcome.classifier_error.is_some() || failed_open {
            let mode = if failed_open { "fail_open" } else { "fail_closed" };
            crate::telemetry::metrics().classifier_error(mode);
        }
    }

    fn outcome(&self) -> Outcome {
        Outcome {
            policy_version: self.judge.policy().version().to_string(),
            model_version: self.judge.classifier().version().to_string(),
            ..Outcome::default()
        }
    }

    fn add_usage(&self, usage: Option<Usage>) {
        if let Some(u) = usage
            && let Ok(mut total) = self.usage.lock()
        {
            *total.get_or_insert_with(Usage::default) += u;
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.usage.lock().ok().and_then(|u| u.clone())
    }

    fn response_type(&self, index: usize) -> &ResponseType {
        &self.judge.policy().response_types()[index]
    }

    /// Sends one request upstream. With `stream`, asks for a stream (usage included) and
    /// collects it; otherwise asks for a plain completion.
    async fn fetch(&self, chat: ChatRequest, stream: bool) -> Result<ChatResponse, UpstreamError> {
        self.fetch_via(chat, stream, self.wire, &self.uri).await
    }

    /// [`Ctx::fetch`] in the API `wire` speaks, to `uri` (a continuation may go to another
    /// route than the client's).
    async fn fetch_via(
        &self,
        mut chat: ChatRequest,
        stream: bool,
        wire: Wire,
        uri: &Uri,
    ) -> Result<ChatResponse, UpstreamError> {
        if stream {
            chat.stream = Some(true);
            chat.stream_options.get_or_insert_with(Default::default).include_usage = Some(true);
        } else {
            chat.stream = None;
            chat.stream_options = None;
        }
        let response = self.send_via(chat, wire, uri).await?;
        let response = match response {
            UpstreamResponse::Complete(r) => r,
            UpstreamResponse::Stream(chunks) => tokio::time::timeout(self.remaining(), stream::collect(chunks))
                .await
                .map_err(|_| UpstreamError::Timeout)??,
        };
        self.add_usage(response.usage.clone());
        Ok(response)
    }

    async fn send(&self, chat: ChatRequest) -> Result<UpstreamResponse, UpstreamError> {
        self.send_via(chat, self.wire, &self.uri).await
    }

    async fn send_via(&self, chat: ChatRequest, wire: Wire, uri: &Uri) -> Result<UpstreamResponse, UpstreamError> {
        use tracing::Instrument;
        let attempt = self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let span = tracing::info_span!("upstream", attempt, n = chat.choices(), stream = chat.is_stream());
        let request = UpstreamRequest { chat, wire, uri: uri.clone(), headers: self.headers.clone() };
        // The policy's deadline bounds the whole request, the first call included (a stream
        // until it opens; the hold-back modes bound what follows).
        let call = tokio::time::timeout(self.remaining(), self.upstream.send(request));
        let result = call.instrument(span.clone()).await.unwrap_or(Err(UpstreamError::Timeout));
        if let Err(e) = &result {
            span.in_scope(|| log_upstream_error(e, attempt));
        }
        // Whatever the hold-back mode, it sees only what the judge reads.
        let mode = self.options.unjudged_fields;
        result.map(|response| match response {
            UpstreamResponse::Complete(mut r) => {
                r.choices.iter_mut().for_each(|c| judged::sanitize_choice(c, mode));
                UpstreamResponse::Complete(r)
            }
            UpstreamResponse::Stream(chunks) => {
                UpstreamResponse::Stream(Box::pin(futures::StreamExt::map(chunks, move |chunk| {
                    chunk.map(|mut c| {
                        c.choices.iter_mut().for_each(|choice| judged::sanitize_chunk_choice(choice, mode));
                        c
                    })
                })))
            }
        })
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// A classifier call within the request's deadline: past it the call is dropped (a worker
    /// then skips its queued pairs) and fails like any classifier error, under the fail mode.
    async fn judged_in_time<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, crate::GuardError>>,
    ) -> Result<T, crate::GuardError> {
        tokio::time::timeout(self.remaining(), call)
            .await
            .unwrap_or(Err(crate::GuardError::Classifier(crate::ClassifierError::DeadlinePassed)))
    }

    /// A classifier call on an open stream (`window`, `passthrough`), bounded by the policy's
    /// deadline per call: the stream's length is bounded by the upstream, each judgment by this.
    async fn judged_per_call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, crate::GuardError>>,
    ) -> Result<T, crate::GuardError> {
        tokio::time::timeout(self.judge.policy().budget().deadline, call)
            .await
            .unwrap_or(Err(crate::GuardError::Classifier(crate::ClassifierError::DeadlinePassed)))
    }
}

/// Logs a failed upstream call: status and code always; the upstream's own message (which can
/// quote the prompt or the generated text) only with `telemetry.log_content`.
pub(crate) fn log_upstream_error(error: &UpstreamError, attempt: u32) {
    let status = error.status().as_u16();
    if crate::telemetry::log_content() {
        tracing::warn!(status, code = error.code(), attempt, detail = %error.detail(), "upstream call failed");
    } else {
        tracing::warn!(
            status,
            code = error.code(),
            attempt,
            detail_bytes = error.detail().len(),
            "upstream call failed"
        );
    }
}

/// `x-rulegate-response-type`: the caller says what the prompt wants.
pub const RESPONSE_TYPE_HEADER: &str = "x-rulegate-response-type";

async fn run<U: Upstream>(ctx: Arc<Ctx<U>>, request: GuardedRequest) -> GuardedResponse {
    let mut outcome = ctx.outcome();
    let mut chat = request.chat;
    if chat.messages.is_empty() {
        return GuardedResponse::error(
            ErrorReply::invalid_request("invalid_request", "`messages` must not be empty"),
            outcome,
        );
    }
    if ctx.options.unreadable_input == UnreadableInput::Refuse && chat.has_unreadable_content() {
        return GuardedResponse::error(
            ErrorReply::invalid_request(
                "unreadable_input",
                "this gateway judges text only; the request carries image, audio or file content \
             (`unreadable_input: refuse`)",
            ),
            outcome,
        );
    }
    // A stored answer could be read back later unjudged (reads are refused by default, but
    // the upstream keeps what it stores): nothing is stored on a guarded route.
    if chat.extra.get("store").is_some_and(|v| *v != serde_json::Value::Bool(false)) {
        chat.extra.insert("store".into(), serde_json::Value::Bool(false));
    }
    // Each choice runs its own action loop: `n` bounds the work a single request can cause.
    let max_choices = ctx.judge.policy().budget().max_candidates;
    if chat.n.is_some_and(|n| n == 0 || n > max_choices) {
        return GuardedResponse::error(
            ErrorReply::invalid_request(
                "too_many_choices",
                format!("`n` must be between 1 and {max_choices} (the policy's budget.max_candidates)"),
            ),
            outcome,
        );
    }
    let mut response_type = match &request.response_type {
        Some(label) => match ctx.judge.response_type_index(label) {
            Ok(i) => Some(i),
            Err(e) => {
                return GuardedResponse::error(
                    ErrorReply::invalid_request("unknown_response_type", e.to_string()),
                    outcome,
                );
            }
        },
        None => None,
    };
    let mut guided = false;
    if let Some(check) = ctx.judge.policy().input_check() {
        // A stated response type is taken as it is: no model pass is needed to act on it.
        let typed = match response_type {
            Some(index) => Some((index, true, true)),
            None => match ctx.judged_in_time(read_prompt(&ctx)).await {
                Ok(v) => {
                    let index = ctx.judge.response_type_index(&v.response_type).unwrap_or(0);
                    let probability = v.response_type_probs.get(&v.response_type).copied().map_or(1.0, f64::from);
                    // Only a confident reading is held for the completions; otherwise each
                    // completion is judged under the policy's `response_type_prediction`.
                    let pin = v.response_type_source == crate::score::ResponseTypeSource::Predicted;
                    Some((index, probability >= check.min_probability, pin))
                }
                Err(e) => {
                    if ctx.options.on_classifier_error == FailMode::Closed {
                        return classifier_unavailable(&e, outcome);
                    }
                    tracing::warn!(error = %e, "input check failed; continuing without it (fail_open)");
                    None
                }
            },
        };
        if let Some((index, confident, pin)) = typed {
            if pin {
                response_type = Some(index);
            }
            if confident && let Some(action) = &check.actions[index] {
                let rt = ctx.response_type(index);
                outcome.response_type = Some(rt.name.clone());
                match action {
                    InputAction::Guidance => {
                        inject_guidance(&mut chat, rt);
                        guided = true;
                        outcome.input_action = Some(InputDecision::Guidance);
                    }
                    InputAction::Fallback => {
                        outcome.input_action = Some(InputDecision::Fallback);
                        outcome.action = GuardAction::Fallback;
                        let response = decide::fallback_response(&chat, rt);
                        return deliver(&ctx, &chat, response, outcome);
                    }
                    InputAction::Block { code, message } => {
                        outcome.input_action = Some(InputDecision::Block);
                        outcome.action = GuardAction::Block;
                        return GuardedResponse::error(
                            ErrorReply::invalid_request(code.clone(), message.clone()),
                            outcome,
                        );
                    }
                }
            }
        }
    }

    let plan = decide::Plan { response_type, guided, original: chat.clone() };
    if chat.is_stream() {
        let mode = ctx.judge.policy().streaming();
        outcome.mode = Some(StreamMode::from(&mode));
        if chat.choices() == 1 {
            match mode {
                crate::policy::HoldBack::Window { chars } => return stream::window(ctx, plan, chars, outcome).await,
                crate::policy::HoldBack::Passthrough => return stream::passthrough(ctx, plan, outcome).await,
                crate::policy::HoldBack::Buffer => {
                    if searches(&ctx, &chat) {
                        return stream::searched(ctx, chat, plan, outcome).await;
                    }
                }
            }
        } else {
            // Several choices cannot be judged while they interleave: hold them back whole.
            outcome.mode = Some(StreamMode::Buffer);
        }
    }
    match decide::decide(&ctx, plan, &mut outcome).await {
        Ok(response) => deliver(&ctx, &chat, response, outcome),
        Err(response) => response,
    }
}

/// The prompt's reading for the input check: the conversation, and for a longer one also its
/// last user turn on its own (so filler turns cannot dilute a request); the stricter of the
/// two (more probability away from the policy's lenient `otherwise` type) wins. The model
/// reads the response type from the prompt alone, so an empty completion will do.
async fn read_prompt<U: Upstream>(ctx: &Ctx<U>) -> Result<Arc<Verdict>, crate::GuardError> {
    let gone = || crate::GuardError::Classifier(crate::ClassifierError::WorkersGone);
    let last_user = ctx.prompt.iter().rposition(|m| m.role.eq_ignore_ascii_case("user"));
    let alone = last_user.filter(|_| ctx.prompt.len() > 1).map(|i| std::slice::from_ref(&ctx.prompt[i]));
    let Some(alone) = alone else { return ctx.judge.evaluate(&ctx.prompt, "", None).await };
    let items = [
        crate::Evaluation { prompt: &ctx.prompt, completion: "", response_type: None },
        crate::Evaluation { prompt: alone, completion: "", response_type: None },
    ];
    let mut verdicts = ctx.judge.evaluate_batch(&items).await?;
    let policy = ctx.judge.policy();
    let lenient = policy.prediction().map_or(0, |p| p.otherwise);
    let lenient = policy.response_types().get(lenient).map_or("comply", |rt| rt.name.as_str());
    let strictness = |v: &Verdict| 1.0 - v.response_type_probs.get(lenient).copied().unwrap_or(1.0);
    let last = verdicts.pop().ok_or_else(gone)?;
    let whole = verdicts.pop().ok_or_else(gone)?;
    Ok(if strictness(&last) > strictness(&whole) { last } else { whole })
}

/// Whether a request can be searched step by step (a `beam_search` action in its policy, an
/// upstream that continues prefixes): its stream may then start before the search ends.
fn searches<U: Upstream>(ctx: &Ctx<U>, chat: &ChatRequest) -> bool {
    let policy = ctx.judge.policy();
    let any = policy
        .response_types()
        .iter()
        .flat_map(|rt| &rt.classes)
        .any(|c| matches!(c.action, crate::policy::Action::BeamSearch { .. }));
    any && ctx.options.continuation.can_continue(chat, ctx.wire)
}

/// Sends a complete response, as JSON or, for a streamed request, as SSE.
fn deliver<U: Upstream>(
    ctx: &Ctx<U>,
    chat: &ChatRequest,
    mut response: ChatResponse,
    outcome: Outcome,
) -> GuardedResponse {
    response.usage = ctx.usage().or(response.usage);
    if chat.is_stream() {
        let events = stream::replay(response, chat.include_usage(), &outcome);
        GuardedResponse::Stream { events, outcome }
    } else {
        GuardedResponse::Complete { response, outcome }
    }
}

fn classifier_unavailable(error: &crate::GuardError, mut outcome: Outcome) -> GuardedResponse {
    outcome.classifier_error = Some(error.to_string());
    if matches!(error, crate::GuardError::Classifier(crate::ClassifierError::Overloaded { .. })) {
        tracing::warn!(error = %error, "classifier queue full; refusing the request (fail_closed)");
        outcome.retry_after_secs = Some(1);
        return GuardedResponse::error(
            ErrorReply::unavailable(
                "rulegate_overloaded",
                "The guard is at capacity and could not judge this response; retry shortly.",
            ),
            outcome,
        );
    }
    tracing::error!(error = %error, "classifier failed; refusing the request (fail_closed)");
    GuardedResponse::error(
        ErrorReply::unavailable(
            "rulegate_classifier_unavailable",
            "The guard could not judge this response; try again later.",
        ),
        outcome,
    )
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

/// A completion the guard delivered: as the upstream wrote it, regenerated, reranked or
/// replaced by the fallback, as `outcome.action` says.
#[derive(Debug, Clone)]
pub struct Completed {
    /// The completion delivered.
    pub response: ChatResponse,
    /// What the guard did.
    pub outcome: Outcome,
}

impl Completed {
    /// The text of the first choice.
    pub fn text(&self) -> String {
        self.response.choices.first().map(|c| c.message.text()).unwrap_or_default()
    }
}

/// A request the guard answered with an error: blocked by the policy, an upstream failure,
/// or a classifier failure under `fail_closed`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status}: {message}")]
pub struct Refused {
    /// HTTP status the sidecar would answer with.
    pub status: StatusCode,
    /// The error message, from the body when it is an OpenAI-style error.
    pub message: String,
    /// The OpenAI-style error body.
    pub body: Bytes,
    /// What the guard did.
    pub outcome: Outcome,
}

impl Guard {
    /// Runs the full action loop (judge, regenerate, rerank, fall back, block) with
    /// `upstream` as the model: any async function from a chat request to a completion.
    /// `response_type` says what the prompt wants (a response type's name, alias or
    /// category); `None` lets the model predict it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use rulegate::openai::{ChatMessage, ChatRequest, ChatResponse, Choice};
    /// use rulegate::{Classifier, ClassifierOptions, Guard, Policy};
    ///
    /// let root = env!("CARGO_MANIFEST_DIR");
    /// let policy = Arc::new(Policy::from_file(format!("{root}/policies/refusal-style.yaml"))?);
    /// let classifier = Classifier::load(format!("{root}/models/rulegate-minilm-rbr"), &ClassifierOptions::default())?;
    /// let guard = Guard::new(policy, classifier)?;
    ///
    /// // A "model" that always answers the same thing.
    /// let model = |request: ChatRequest| async move {
    ///     Ok(ChatResponse {
    ///         id: "local-1".into(),
    ///         object: "chat.completion".into(),
    ///         created: 0,
    ///         model: "local".into(),
    ///         choices: vec![Choice { index: 0, message: ChatMessage::new("assistant", "Paris."), finish_reason: Some("stop".into()), extra: Default::default() }],
    ///         usage: None,
    ///         extra: Default::default(),
    ///     })
    /// };
    /// let request: ChatRequest = serde_json::from_str(r#"{"model": "local", "messages": [{"role": "user", "content": "What is the capital of France?"}]}"#)?;
    /// let done = guard.complete(request, None, model).await?;
    /// println!("{} ({}, class {:?})", done.text(), done.outcome.action, done.outcome.class);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn complete<F, Fut>(
        &self,
        mut request: ChatRequest,
        response_type: Option<&str>,
        upstream: F,
    ) -> Result<Completed, Refused>
    where
        F: Fn(ChatRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<ChatResponse, UpstreamError>> + Send + 'static,
    {
        request.stream = None;
        request.stream_options = None;
        let pipeline =
            Pipeline::new(self.clone(), crate::upstream::FnUpstream::new(upstream), PipelineOptions::default());
        let mut guarded = GuardedRequest::new(request);
        guarded.response_type = response_type.map(str::to_string);
        match pipeline.handle(guarded).await {
            GuardedResponse::Complete { response, outcome } => Ok(Completed { response, outcome }),
            GuardedResponse::Error { status, body, outcome } => {
                let message = serde_json::from_slice::<ErrorBody>(&body)
                    .map_or_else(|_| String::from_utf8_lossy(&body).into_owned(), |e| e.error.message);
                Err(Refused { status, message, body, outcome })
            }
            GuardedResponse::Stream { outcome, .. } => Err(Refused {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: "unexpected stream for a non-streaming request".into(),
                body: Bytes::new(),
                outcome,
            }),
        }
    }
}

impl std::fmt::Debug for GuardedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the conversation nor credentials belong in debug output.
        f.debug_struct("GuardedRequest")
            .field("messages", &self.chat.messages.len())
            .field("uri", &self.uri)
            .field("headers", &crate::upstream::Redacted(&self.headers))
            .field("response_type", &self.response_type)
            .field("policy", &self.policy)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_credentials_and_text() {
        let chat: ChatRequest =
            serde_json::from_str(r#"{"model":"m","messages":[{"role":"user","content":"my secret plan"}]}"#).unwrap();
        let mut request = GuardedRequest::new(chat);
        request.headers.insert("authorization", "Bearer sk-abc123".parse().unwrap());
        request.headers.insert("x-trace", "t1".parse().unwrap());
        request.api_key = Some("sk-abc123".into());
        let shown = format!("{request:?}");
        assert!(!shown.contains("sk-abc123") && !shown.contains("secret plan"), "{shown}");
        assert!(shown.contains("<redacted>") && shown.contains("t1"), "{shown}");
    }
}
