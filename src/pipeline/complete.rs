//! [`Guard::complete`]: the whole action loop for a library caller with its own model
//! function, run as a one-request pipeline. It lives here, not in `guard.rs`, because the
//! guard sits below the pipeline and must not depend on it.

use ::http::StatusCode;
use bytes::Bytes;

use super::exchange::{GuardedRequest, GuardedResponse};
use super::options::PipelineOptions;
use super::outcome::Outcome;
use super::service::Pipeline;
use crate::guard::Guard;
use crate::openai::{ChatRequest, ChatResponse, ErrorBody};
use crate::upstream::UpstreamError;

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
