//! The per-request context [`Ctx`]: one request's snapshot of policy and model, its budget
//! and deadline, its usage, and everything done with the upstream and the judge on its
//! behalf (fetch, send, judge within the deadline, release early text, report). Every
//! strategy and hold-back mode calls down into it; it calls nothing above it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::http::{HeaderMap, Uri};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::exchange::GuardedRequest;
use super::options::{GuardMode, PipelineOptions};
use super::outcome::{GuardAction, Outcome};
use crate::guard::Judge;
use crate::openai::chunks::{chunk_event, delta};
use crate::openai::{ChatRequest, ChatResponse, Choice, Usage, judged};
use crate::policy::ResponseType;
use crate::telemetry::decision_log::{self, CandidateDecision, DecisionRecord};
use crate::upstream::{Upstream, UpstreamError, UpstreamRequest, UpstreamResponse, Wire};
use indexmap::IndexMap;

/// Everything one request shares: its snapshot of policy and model, budget and usage.
pub(crate) struct Ctx<U> {
    pub(crate) judge: Arc<Judge>,
    pub(crate) upstream: U,
    pub(crate) options: PipelineOptions,
    pub(crate) uri: Uri,
    pub(crate) wire: Wire,
    pub(crate) headers: HeaderMap,
    pub(crate) prompt: Vec<crate::Message>,
    pub(crate) deadline: Instant,
    pub(crate) usage: Mutex<Option<Usage>>,
    /// Upstream calls made so far, numbering the `upstream` spans.
    pub(crate) calls: std::sync::atomic::AtomicU32,
    pub(crate) span: tracing::Span,
    /// For a streamed request whose action loop may release text before it ends (a beam
    /// search): the stream it releases into.
    pub(crate) early: Mutex<Option<Early>>,
    /// Enforce, or shadow (this request's policy's mode).
    pub(crate) mode: GuardMode,
    /// When the request reached the pipeline.
    pub(crate) started: Instant,
    /// The request's id: the client's `x-request-id`, else a random one.
    pub(crate) request_id: String,
    /// The API key the request carried; hashed for the decision log only when a line is written.
    pub(crate) api_key: Option<String>,
}

impl<U: Upstream> Ctx<U> {
    pub(crate) fn new(
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
        let started = Instant::now();
        let deadline = started + judge.policy().budget().deadline;
        let request_id = request
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map_or_else(|| format!("{:016x}", fastrand::u64(..)), str::to_string);
        Ctx {
            mode: options.mode_for(judge.policy().name()),
            started,
            request_id,
            api_key: request.api_key.clone(),
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

    /// Records what happened in the request span, the metrics and the decision log, and
    /// decides the request by the candidate policy too. Every path reports once, here.
    pub(crate) fn report(&self, outcome: &Outcome) {
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
        // In shadow mode the action worth counting is the one enforce would have taken.
        let action = outcome.shadow_action.unwrap_or(outcome.action);
        crate::telemetry::metrics().verdict(
            self.judge.policy().name(),
            class,
            action.as_str(),
            outcome.guard_mode.as_str(),
            outcome.attempts,
        );
        let failed_open = outcome.action == GuardAction::FailOpen;
        if outcome.classifier_error.is_some() || failed_open {
            let mode = if failed_open { "fail_open" } else { "fail_closed" };
            crate::telemetry::metrics().classifier_error(mode);
        }
        let log = self.options.decision_log.as_ref();
        let candidate_policy = self.options.candidate.get();
        if log.is_none() && candidate_policy.is_none() {
            return;
        }
        // Read by name by both the candidate and the log line: built once.
        let propositions: IndexMap<String, f32> = outcome
            .verdict
            .as_ref()
            .map(|v| v.propositions.iter().map(|p| (p.name.clone(), p.probability)).collect())
            .unwrap_or_default();
        let candidate = candidate_policy.and_then(|policy| self.decide_candidate(&policy, outcome, &propositions));
        let judged = outcome.verdict.is_some() || outcome.input_action.is_some() || outcome.classifier_error.is_some();
        if let Some(log) = log
            && judged
        {
            log.record(self.decision_record(outcome, candidate, propositions));
        }
    }

    /// The candidate policy's decision of the judged completion, from the live verdict's
    /// probabilities (no second model pass); counted in the metrics.
    fn decide_candidate(
        &self,
        policy: &crate::policy::Policy,
        outcome: &Outcome,
        propositions: &IndexMap<String, f32>,
    ) -> Option<CandidateDecision> {
        let verdict = outcome.verdict.as_ref()?;
        match crate::eval::replay::decide(policy, &verdict.response_type_probs, propositions) {
            Ok(decided) => {
                let disagrees = decided.class != verdict.class || decided.action != verdict.action.name();
                crate::telemetry::metrics().candidate(
                    self.judge.policy().name(),
                    &verdict.class,
                    &decided.class,
                    disagrees,
                );
                Some(CandidateDecision {
                    policy_version: policy.version().to_string(),
                    class: Some(decided.class),
                    score: Some(decided.score),
                    action: decided.action.to_string(),
                })
            }
            Err(e) => {
                tracing::debug!(error = %e, "the candidate policy could not decide this request");
                None
            }
        }
    }

    /// The decision-log line of a reported request (text in it; the log redacts it).
    fn decision_record(
        &self,
        outcome: &Outcome,
        candidate: Option<CandidateDecision>,
        propositions: IndexMap<String, f32>,
    ) -> DecisionRecord {
        let verdict = outcome.verdict.as_deref();
        let acts = |a: GuardAction| !matches!(a, GuardAction::Pass | GuardAction::Undecided);
        let flagged = acts(outcome.action)
            || outcome.shadow_action.is_some_and(acts)
            || verdict.is_some_and(|v| !matches!(v.action, crate::policy::Action::Pass))
            || candidate.as_ref().is_some_and(|c| c.action != "pass" || c.class != outcome.class);
        DecisionRecord {
            time: decision_log::now_rfc3339(),
            request_id: self.request_id.clone(),
            route: self.uri.path().to_string(),
            api_key: self.api_key.as_deref().map(decision_log::hashed_key_id),
            mode: outcome.guard_mode.as_str().to_string(),
            policy: self.judge.policy().name().to_string(),
            policy_version: outcome.policy_version.clone(),
            model_version: outcome.model_version.clone(),
            response_type: outcome.response_type.clone(),
            response_type_probs: verdict.map(|v| v.response_type_probs.clone()).unwrap_or_default(),
            propositions,
            class: outcome.class.clone(),
            score: outcome.score,
            action: outcome.action.as_str().to_string(),
            shadow_action: outcome.shadow_action.map(|a| a.as_str().to_string()),
            input_action: outcome.input_action.map(|a| a.as_str().to_string()),
            candidate,
            attempts: outcome.attempts,
            latency_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            upstream_tokens: self.usage().map(|u| u.total_tokens),
            flagged,
            prompt: Some(self.prompt.clone()),
            completion: outcome.completion.clone(),
            ..DecisionRecord::default()
        }
    }

    pub(crate) fn outcome(&self) -> Outcome {
        Outcome {
            policy_version: self.judge.policy().version().to_string(),
            model_version: self.judge.classifier().version().to_string(),
            guard_mode: self.mode,
            request_id: self.request_id.clone(),
            ..Outcome::default()
        }
    }

    pub(crate) fn add_usage(&self, usage: Option<Usage>) {
        if let Some(u) = usage
            && let Ok(mut total) = self.usage.lock()
        {
            *total.get_or_insert_with(Usage::default) += u;
        }
    }

    pub(crate) fn usage(&self) -> Option<Usage> {
        self.usage.lock().ok().and_then(|u| u.clone())
    }

    pub(crate) fn response_type(&self, index: usize) -> &ResponseType {
        &self.judge.policy().response_types()[index]
    }

    /// Sends one request upstream. With `stream`, asks for a stream (usage included) and
    /// collects it; otherwise asks for a plain completion.
    pub(crate) async fn fetch(&self, chat: ChatRequest, stream: bool) -> Result<ChatResponse, UpstreamError> {
        self.fetch_via(chat, stream, self.wire, &self.uri).await
    }

    /// [`Ctx::fetch`] in the API `wire` speaks, to `uri` (a continuation may go to another
    /// route than the client's).
    pub(crate) async fn fetch_via(
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
            UpstreamResponse::Stream(chunks) => {
                tokio::time::timeout(self.remaining(), crate::upstream::collect(chunks))
                    .await
                    .map_err(|_| UpstreamError::Timeout)??
            }
        };
        self.add_usage(response.usage.clone());
        Ok(response)
    }

    pub(crate) async fn send(&self, chat: ChatRequest) -> Result<UpstreamResponse, UpstreamError> {
        self.send_via(chat, self.wire, &self.uri).await
    }

    pub(crate) async fn send_via(
        &self,
        chat: ChatRequest,
        wire: Wire,
        uri: &Uri,
    ) -> Result<UpstreamResponse, UpstreamError> {
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

    pub(crate) fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// A classifier call within the request's deadline: past it the call is dropped (a worker
    /// then skips its queued pairs) and fails like any classifier error, under the fail mode.
    pub(crate) async fn judged_in_time<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, crate::GuardError>>,
    ) -> Result<T, crate::GuardError> {
        tokio::time::timeout(self.remaining(), call)
            .await
            .unwrap_or(Err(crate::GuardError::Classifier(crate::ClassifierError::DeadlinePassed)))
    }

    /// A classifier call on an open stream (`window`, `passthrough`), bounded by the policy's
    /// deadline per call: the stream's length is bounded by the upstream, each judgment by this.
    pub(crate) async fn judged_per_call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, crate::GuardError>>,
    ) -> Result<T, crate::GuardError> {
        tokio::time::timeout(self.judge.policy().budget().deadline, call)
            .await
            .unwrap_or(Err(crate::GuardError::Classifier(crate::ClassifierError::DeadlinePassed)))
    }

    /// `need` completions of `request`: one call with `n` where the upstream honours it, then
    /// concurrent single calls for whatever it did not bring; fewer when the deadline passes or
    /// calls fail.
    pub(crate) async fn fetch_many(&self, mut request: ChatRequest, need: usize, wire: Wire, uri: &Uri) -> Vec<Choice> {
        let mut candidates: Vec<Choice> = Vec::new();
        if need > 1 && self.options.upstream_supports_n {
            request.n = Some(need as u32);
            if let Some(Ok(response)) = self.within_deadline(self.fetch_via(request.clone(), false, wire, uri)).await {
                candidates.extend(response.choices.into_iter().take(need));
            }
        }
        let missing = need.saturating_sub(candidates.len());
        if missing > 0 {
            request.n = None;
            let singles =
                futures::future::join_all((0..missing).map(|_| self.fetch_one_via(request.clone(), wire, uri))).await;
            candidates.extend(singles.into_iter().flatten());
        }
        candidates
    }

    /// One more completion, within the request's deadline; `None` when the deadline passed or
    /// the upstream failed (the loop then settles for the best so far).
    pub(crate) async fn fetch_one(&self, request: ChatRequest) -> Option<Choice> {
        self.fetch_one_via(request, self.wire, &self.uri).await
    }

    async fn fetch_one_via(&self, request: ChatRequest, wire: Wire, uri: &Uri) -> Option<Choice> {
        match self.within_deadline(self.fetch_via(request, false, wire, uri)).await {
            Some(Ok(response)) => response.choices.into_iter().next(),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "upstream failed during regeneration; keeping the best so far");
                None
            }
            None => None,
        }
    }

    /// `work` within the request's deadline; `None` once it passed.
    pub(crate) async fn within_deadline<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        let remaining = self.remaining();
        if remaining.is_zero() {
            return None;
        }
        tokio::time::timeout(remaining, work).await.ok()
    }

    /// Whether this request may release text before its action loop ends.
    pub(crate) fn can_release(&self) -> bool {
        self.early.lock().is_ok_and(|e| e.is_some())
    }

    /// The text released so far (empty when nothing was).
    pub(crate) fn released(&self) -> String {
        self.early.lock().ok().and_then(|e| e.as_ref().map(|e| e.released.clone())).unwrap_or_default()
    }

    /// Sends the part of `text` past what was already released, starting the stream on the
    /// first call. `text` must extend the released text (else nothing is sent). `false` when
    /// the client is gone.
    pub(crate) async fn release(&self, text: &str) -> bool {
        let (tx, events) = {
            let Ok(mut early) = self.early.lock() else { return false };
            let Some(early) = early.as_mut() else { return false };
            let Some(piece) = text.strip_prefix(early.released.as_str()).filter(|p| !p.is_empty()) else {
                return true;
            };
            let mut events = Vec::new();
            if let Some(opened) = early.opened.take() {
                events.push(chunk_event(&early.head, vec![delta(0, Some("assistant"), Some(""), None)]));
                let _ = opened.send(());
            }
            events.push(chunk_event(&early.head, vec![delta(0, None, Some(piece), None)]));
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

/// The stream of a request whose action loop may release text before it ends.
pub(crate) struct Early {
    /// Fired when the first text is released: the response (headers, then these events)
    /// can leave.
    pub(crate) opened: Option<tokio::sync::oneshot::Sender<()>>,
    pub(crate) tx: mpsc::Sender<Bytes>,
    pub(crate) head: ChatResponse,
    pub(crate) released: String,
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
