//! What goes into the pipeline and what comes out: [`GuardedRequest`] and
//! [`GuardedResponse`].

use std::pin::Pin;

use ::http::{HeaderMap, StatusCode, Uri};
use bytes::Bytes;
use futures::Stream;

use super::outcome::Outcome;
use super::reply::ErrorReply;
use crate::openai::{ChatRequest, ChatResponse};
use crate::upstream::{UpstreamError, Wire};

/// `x-rulegate-response-type`: the caller says what the prompt wants.
pub const RESPONSE_TYPE_HEADER: &str = "x-rulegate-response-type";

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

/// What the pipeline answers a request with; `http::render` turns it into HTTP.
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
    /// classifier failure under [`FailMode::Closed`](super::options::FailMode::Closed).
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
    /// upstream's text goes to the log, see `log_upstream_error`).
    pub(crate) fn upstream_error(error: &UpstreamError, outcome: Outcome) -> Self {
        GuardedResponse::error(ErrorReply::upstream(error), outcome)
    }

    /// 503 for a classifier failure under `fail_closed` (with `Retry-After` when the
    /// classifier shed the work under load).
    pub(crate) fn classifier_unavailable(error: &crate::GuardError, mut outcome: Outcome) -> GuardedResponse {
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
