//! rulegate's own error answers, from one typed constructor: [`ErrorReply`] becomes either a
//! pipeline response (`GuardedResponse::error`) or, before the pipeline, an HTTP response
//! (`http::error_response`).

use std::borrow::Cow;

use bytes::Bytes;
use http::StatusCode;

use crate::openai::ErrorBody;
pub use crate::openai::ErrorKind;
use crate::upstream::UpstreamError;

/// An OpenAI-style error written by rulegate itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// HTTP status.
    pub status: StatusCode,
    /// The error `type`.
    pub kind: ErrorKind,
    /// The machine-readable `code`, e.g. `unknown_policy`.
    pub code: Cow<'static, str>,
    /// The message for people.
    pub message: String,
}

impl ErrorReply {
    /// An error of any status and kind.
    pub fn new(
        status: StatusCode,
        kind: ErrorKind,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        ErrorReply { status, kind, code: code.into(), message: message.into() }
    }

    /// 400 `invalid_request_error`.
    pub fn invalid_request(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        ErrorReply::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest, code, message)
    }

    /// 403 `permission_error`.
    pub fn forbidden(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        ErrorReply::new(StatusCode::FORBIDDEN, ErrorKind::Permission, code, message)
    }

    /// 503 `server_error`: the guard could not judge.
    pub fn unavailable(code: &'static str, message: &'static str) -> Self {
        ErrorReply::new(StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Server, code, message)
    }

    /// rulegate's own error for a failed upstream call: the upstream's status, a short
    /// reason, never the upstream's text (an error body or a parse failure can quote
    /// generated text; it goes to the log).
    pub fn upstream(error: &UpstreamError) -> Self {
        ErrorReply::new(error.status(), error.kind(), error.code(), error.reason())
    }

    /// The error body as it is sent.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.kind, &self.code, self.message.clone())
    }

    /// The error body as JSON bytes.
    pub fn to_bytes(&self) -> Bytes {
        self.body().to_bytes()
    }
}
