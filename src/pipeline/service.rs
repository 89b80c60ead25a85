//! [`Pipeline`]: the guarded request pipeline as a `tower::Service`.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::ctx::Ctx;
use super::exchange::{GuardedRequest, GuardedResponse};
use super::options::PipelineOptions;
use super::outcome::{GuardAction, Outcome};
use super::reply::ErrorReply;
use super::run;
use crate::guard::{Guard, GuardSelector};
use crate::upstream::{BoxFuture, Upstream};

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
        let response = run::run(ctx.clone(), request).instrument(span).await;
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
