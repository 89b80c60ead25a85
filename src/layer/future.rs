use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

use crate::pipeline::http::ResponseBody;
use crate::upstream::{BoxError, BoxFuture};

pin_project! {
    /// The response future of [`super::GuardService`]: the inner service's own future for
    /// unguarded routes, the pipeline for chat completions.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Passthrough { #[pin] future: F },
        Guarded { future: BoxFuture<http::Response<ResponseBody>> },
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn passthrough(future: F) -> Self {
        ResponseFuture { kind: Kind::Passthrough { future } }
    }

    pub(super) fn guarded(future: BoxFuture<http::Response<ResponseBody>>) -> Self {
        ResponseFuture { kind: Kind::Guarded { future } }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<http::Response<ResponseBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { future } => future
                .poll(cx)
                .map(|result| result.map(|response| response.map(|body| body.map_err(Into::into).boxed_unsync()))),
            // The pipeline turns every failure into a response.
            KindProj::Guarded { future } => future.as_mut().poll(cx).map(Ok),
        }
    }
}
