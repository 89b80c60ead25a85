use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use tower::Service;

use super::ResponseFuture;
use std::sync::Arc;

use crate::guard::{Guard, GuardSelector};
use crate::pipeline::http::{ResponseBody, handle_route, read_body, refusal_response};
use crate::pipeline::route::{Admission, admit};
use crate::pipeline::{Pipeline, PipelineOptions};
use crate::upstream::{BoxError, HttpUpstream};

/// The service a [`super::GuardLayer`] makes around `S`.
///
/// `S` takes requests whose body can be built from bytes (`Full<Bytes>`, axum's `Body`,
/// reqwest's `Body`...), since the guard sends its own requests for regenerations.
#[derive(Clone)]
pub struct GuardService<S> {
    inner: S,
    pipeline: Pipeline<()>,
    timeout: Duration,
    max_body_bytes: usize,
}

impl<S> GuardService<S> {
    pub(super) fn new(
        inner: S,
        guards: Arc<dyn GuardSelector>,
        options: PipelineOptions,
        timeout: Duration,
        max_body_bytes: usize,
    ) -> Self {
        GuardService { inner, pipeline: Pipeline::with_selector(guards, (), options), timeout, max_body_bytes }
    }

    /// The guard requests get when they name no policy.
    pub fn guard(&self) -> Guard {
        self.pipeline.guard()
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GuardService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + Unpin + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<ResponseBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // `self.inner` is the instance made ready by `poll_ready`: it serves this request.
        let fresh = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, fresh);
        let admission =
            admit(request.method(), request.uri().path(), request.headers(), self.pipeline.options().admit_options());
        let route = match admission {
            Admission::Guard(route) => route,
            Admission::Forward { path, .. } => {
                let mut request = request;
                // The inner service must route the path that was checked.
                if let Some(path) = path {
                    match with_path(request.uri(), &path) {
                        Some(uri) => *request.uri_mut() = uri,
                        None => {
                            let response =
                                crate::pipeline::http::error_response(crate::pipeline::ErrorReply::invalid_request(
                                    "invalid_path",
                                    "the request path cannot be forwarded",
                                ));
                            return ResponseFuture::guarded(Box::pin(async move { response }));
                        }
                    }
                }
                return ResponseFuture::passthrough(ready.call(request));
            }
            Admission::Refuse { refusal, .. } => {
                let response = refusal_response(refusal, request.method(), request.uri().path());
                return ResponseFuture::guarded(Box::pin(async move { response }));
            }
        };
        let upstream = HttpUpstream::<S, ReqBody>::primed(ready, self.inner.clone(), self.timeout);
        let pipeline = self.pipeline.with_upstream(upstream);
        let limit = self.max_body_bytes;
        ResponseFuture::guarded(Box::pin(async move {
            let (parts, body) = request.into_parts();
            match read_body(body, limit).await {
                Ok(bytes) => handle_route(&pipeline, route, &parts, &bytes).await,
                Err(rejection) => rejection.into_response(),
            }
        }))
    }
}

/// `uri` with its path replaced by `path` (scheme, authority and query kept).
fn with_path(uri: &http::Uri, path: &str) -> Option<http::Uri> {
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}
