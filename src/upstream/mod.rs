//! Calling the model API. [`Upstream`] is what the pipeline needs: send one chat request,
//! get a completion or a stream of chunks. [`HttpUpstream`] provides it over any
//! `tower::Service` that speaks HTTP (the sidecar's client, or the service a `GuardLayer`
//! wraps); [`FnUpstream`] over any async function.

pub(crate) mod client;
mod continuation;

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use tower::{Service, ServiceExt};

pub use client::UpstreamClient;
pub use continuation::{Continuation, ContinueCall, chatml};

use crate::openai::{ChatChunk, ChatRequest, ChatResponse, legacy, sse};

/// Any error, boxed; what HTTP services and bodies fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// The chunks of a streamed completion; an error ends the stream.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<ChatChunk, UpstreamError>> + Send>>;

/// Most bytes rulegate reads of a non-streamed upstream body.
const MAX_RESPONSE_BYTES: usize = 32 << 20;

/// The API an upstream call speaks on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wire {
    /// Chat completions.
    #[default]
    Chat,
    /// Legacy text completions: the body is built with [`legacy::request_body`] and the
    /// answer read back as chat (see [`crate::openai::legacy`]).
    Completions,
}

/// One call to the model API.
#[derive(Clone)]
pub struct UpstreamRequest {
    /// The chat request to send, as the guard rewrote it.
    pub chat: ChatRequest,
    /// How it is written on the wire.
    pub wire: Wire,
    /// The client's request target, reused for the upstream call.
    pub uri: Uri,
    /// The client's headers (authorization included), minus hop-by-hop ones.
    pub headers: HeaderMap,
}

/// What the model API answered with.
// One per upstream call: boxing the completion would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
pub enum UpstreamResponse {
    /// A complete (non-streamed) chat completion.
    Complete(ChatResponse),
    /// Parsed chunks of a server-sent event stream, ending at `[DONE]`.
    Stream(ChunkStream),
}

impl std::fmt::Debug for UpstreamResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamResponse::Complete(r) => f.debug_tuple("Complete").field(r).finish(),
            UpstreamResponse::Stream(_) => f.write_str("Stream(..)"),
        }
    }
}

/// Why a call to the model API failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream answered with an error status; the client gets the status with rulegate's
    /// own body ([`UpstreamError::reason`]).
    #[error("upstream answered {status}")]
    Status {
        /// The upstream's status.
        status: StatusCode,
        /// The upstream's `content-type`, if any.
        content_type: Option<HeaderValue>,
        /// The upstream's body.
        body: Bytes,
    },
    /// The call, or the wait for a stream's next chunk, took longer than the timeout.
    #[error("upstream timed out")]
    Timeout,
    /// The connection could not be made or broke before a response.
    #[error("cannot reach the upstream: {0}")]
    Connect(String),
    /// The response was not a chat completion or a well-formed stream, or was too large.
    #[error("invalid upstream response: {0}")]
    Protocol(String),
}

impl UpstreamError {
    /// The status the client gets for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Status { status, .. } => *status,
            UpstreamError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Connect(_) | UpstreamError::Protocol(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The error `type` of rulegate's own error body.
    pub fn kind(&self) -> crate::openai::ErrorKind {
        match self {
            UpstreamError::Status { status, .. } if status.is_client_error() => {
                crate::openai::ErrorKind::InvalidRequest
            }
            _ => crate::openai::ErrorKind::Upstream,
        }
    }

    /// A short reason for the client, written by rulegate: never the upstream's text.
    pub fn reason(&self) -> String {
        match self {
            UpstreamError::Status { status, .. } => {
                format!("the model API answered {}; its message is in rulegate's log", status.as_u16())
            }
            UpstreamError::Timeout => "the model API did not answer in time".into(),
            UpstreamError::Connect(_) => "the model API cannot be reached".into(),
            UpstreamError::Protocol(_) => "the model API's answer could not be read".into(),
        }
    }

    /// What the upstream said, for the log only: its error body's `error.message` (or the body
    /// cut short), or the detail of a transport or parse failure.
    pub fn detail(&self) -> String {
        match self {
            UpstreamError::Status { body, .. } => {
                let parsed: Option<String> = serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v.pointer("/error/message").and_then(|m| m.as_str()).map(str::to_string));
                parsed.unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned())
            }
            other => other.to_string(),
        }
    }

    /// Machine-readable code for rulegate's own error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            UpstreamError::Status { .. } => "upstream_error",
            UpstreamError::Timeout => "upstream_timeout",
            UpstreamError::Connect(_) => "upstream_unreachable",
            UpstreamError::Protocol(_) => "upstream_invalid_response",
        }
    }
}

/// Sends chat requests to the model API. Cloned once per concurrent call.
pub trait Upstream: Clone + Send + Sync + 'static {
    /// Sends one request; a streamed answer is returned as chunks to be read.
    fn send(&self, request: UpstreamRequest) -> BoxFuture<Result<UpstreamResponse, UpstreamError>>;
}

/// An [`Upstream`] over any HTTP service whose request body can be made from bytes.
pub struct HttpUpstream<S, B = Full<Bytes>> {
    service: S,
    /// An instance already driven to readiness by its owner (a Tower service's
    /// `poll_ready`); the first call uses it, later calls use clones of `service`.
    primed: Arc<Mutex<Option<S>>>,
    timeout: Duration,
    _body: PhantomData<fn(B)>,
}

impl<S: Clone, B> Clone for HttpUpstream<S, B> {
    fn clone(&self) -> Self {
        HttpUpstream {
            service: self.service.clone(),
            primed: self.primed.clone(),
            timeout: self.timeout,
            _body: PhantomData,
        }
    }
}

impl<S, B> HttpUpstream<S, B> {
    /// `timeout` bounds a whole non-streamed call, and the wait for each chunk of a stream.
    pub fn new(service: S, timeout: Duration) -> Self {
        HttpUpstream { service, primed: Arc::new(Mutex::new(None)), timeout, _body: PhantomData }
    }

    /// Like [`HttpUpstream::new`], with `ready` (an instance whose `poll_ready` returned
    /// ready) used for the first call, so Tower backpressure is honoured.
    pub fn primed(ready: S, service: S, timeout: Duration) -> Self {
        HttpUpstream { service, primed: Arc::new(Mutex::new(Some(ready))), timeout, _body: PhantomData }
    }
}

impl<S, B, R> Upstream for HttpUpstream<S, B>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: From<Bytes> + Send + 'static,
    R: Body<Data = Bytes> + Send + Unpin + 'static,
    R::Error: Into<BoxError>,
{
    fn send(&self, request: UpstreamRequest) -> BoxFuture<Result<UpstreamResponse, UpstreamError>> {
        let primed = self.primed.lock().ok().and_then(|mut p| p.take());
        let service = self.service.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let wire = request.wire;
            let body = match wire {
                Wire::Chat => serde_json::to_vec(&request.chat),
                Wire::Completions => serde_json::to_vec(&legacy::request_body(&request.chat)),
            }
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
            let mut builder = http::Request::builder().method(http::Method::POST).uri(request.uri);
            if let Some(headers) = builder.headers_mut() {
                *headers = request.headers;
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                // The guard reads the body, so it must not come back compressed.
                headers.remove(header::ACCEPT_ENCODING);
            }
            let http_request =
                builder.body(B::from(Bytes::from(body))).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
            let call = async move {
                match primed {
                    Some(mut ready) => ready.call(http_request).await,
                    None => service.oneshot(http_request).await,
                }
            };
            let started = std::time::Instant::now();
            let response = match tokio::time::timeout(timeout, call).await {
                Err(_) => Err(UpstreamError::Timeout),
                Ok(result) => result.map_err(|e| classify_error(e.into())),
            };
            crate::telemetry::metrics().upstream_latency.observe(started.elapsed().as_secs_f64());
            let response = response?;
            let (parts, body) = response.into_parts();
            let content_type = parts.headers.get(header::CONTENT_TYPE).cloned();
            if !parts.status.is_success() {
                let body = read_body(body, timeout).await?;
                return Err(UpstreamError::Status { status: parts.status, content_type, body });
            }
            let is_stream =
                content_type.as_ref().and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/event-stream"));
            if is_stream {
                return Ok(UpstreamResponse::Stream(chunk_stream(body, timeout, wire)));
            }
            let bytes = read_body(body, timeout).await?;
            let response: ChatResponse = match wire {
                Wire::Chat => serde_json::from_slice(&bytes)
                    .map_err(|e| UpstreamError::Protocol(format!("not a chat completion: {e}")))?,
                Wire::Completions => serde_json::from_slice(&bytes)
                    .map_err(|e| e.to_string())
                    .and_then(legacy::response_to_chat)
                    .map_err(|e| UpstreamError::Protocol(format!("not a text completion: {e}")))?,
            };
            Ok(UpstreamResponse::Complete(response))
        })
    }
}

fn classify_error(error: BoxError) -> UpstreamError {
    if let Some(e) = error.downcast_ref::<hyper_util::client::legacy::Error>()
        && !e.is_connect()
    {
        return UpstreamError::Protocol(format!("{e}: {}", source_chain(&*error)));
    }
    if error.is::<tower::timeout::error::Elapsed>() {
        return UpstreamError::Timeout;
    }
    UpstreamError::Connect(source_chain(&*error))
}

fn source_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn read_body<B>(body: B, timeout: Duration) -> Result<Bytes, UpstreamError>
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    match tokio::time::timeout(timeout, Limited::new(body, MAX_RESPONSE_BYTES).collect()).await {
        Err(_) => Err(UpstreamError::Timeout),
        Ok(Err(e)) => Err(UpstreamError::Protocol(format!("reading the body: {e}"))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Parses an SSE body into chunks; ends at `[DONE]` or the end of the body.
fn chunk_stream<B>(body: B, idle: Duration, wire: Wire) -> ChunkStream
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let frames = http_body_util::BodyStream::new(body);
    let state = (frames, sse::Decoder::default(), std::collections::VecDeque::<Vec<u8>>::new(), false);
    Box::pin(futures::stream::unfold(state, move |(mut frames, mut decoder, mut queue, mut done)| async move {
        loop {
            if let Some(data) = queue.pop_front() {
                if data == b"[DONE]" {
                    return None;
                }
                let parsed = match wire {
                    Wire::Chat => serde_json::from_slice::<ChatChunk>(&data).map_err(|e| e.to_string()),
                    Wire::Completions => {
                        serde_json::from_slice(&data).map_err(|e| e.to_string()).and_then(legacy::chunk_to_chat)
                    }
                };
                // The detail is for the log; it may quote generated text, so it never reaches
                // the client (see `UpstreamError::reason`).
                let item = parsed.map_err(|e| UpstreamError::Protocol(format!("bad stream chunk: {e}")));
                let failed = item.is_err();
                return Some((
                    item,
                    (frames, decoder, if failed { Default::default() } else { queue }, done || failed),
                ));
            }
            if done {
                return None;
            }
            match tokio::time::timeout(idle, frames.next()).await {
                Err(_) => return Some((Err(UpstreamError::Timeout), (frames, decoder, queue, true))),
                Ok(None) => {
                    done = true;
                    queue.extend(decoder.finish());
                }
                Ok(Some(Err(e))) => {
                    let e: BoxError = e.into();
                    return Some((
                        Err(UpstreamError::Protocol(format!("stream broke: {e}"))),
                        (frames, decoder, queue, true),
                    ));
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        match decoder.push(&data) {
                            Ok(events) => queue.extend(events),
                            Err(e) => return Some((Err(UpstreamError::Protocol(e)), (frames, decoder, queue, true))),
                        }
                    }
                }
            }
        }
    }))
}

/// An [`Upstream`] over an async function, for callers that are not HTTP.
pub struct FnUpstream<F>(Arc<F>);

impl<F> Clone for FnUpstream<F> {
    fn clone(&self) -> Self {
        FnUpstream(self.0.clone())
    }
}

impl<F, Fut> FnUpstream<F>
where
    F: Fn(ChatRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<ChatResponse, UpstreamError>> + Send + 'static,
{
    /// Wraps `f`, which answers a chat request with a complete response (never a stream).
    pub fn new(f: F) -> Self {
        FnUpstream(Arc::new(f))
    }
}

impl<F, Fut> Upstream for FnUpstream<F>
where
    F: Fn(ChatRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<ChatResponse, UpstreamError>> + Send + 'static,
{
    fn send(&self, request: UpstreamRequest) -> BoxFuture<Result<UpstreamResponse, UpstreamError>> {
        let f = self.0.clone();
        Box::pin(async move { f(request.chat).await.map(UpstreamResponse::Complete) })
    }
}

/// Headers that describe one hop, not the request; never forwarded.
pub(crate) fn strip_hop_headers(headers: &mut HeaderMap) {
    // Headers the client named in `Connection` are hop-by-hop too (RFC 9110 section 7.6.1).
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in [
        header::CONNECTION,
        header::HOST,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::CONTENT_LENGTH,
        header::EXPECT,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

impl std::fmt::Debug for UpstreamRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamRequest")
            .field("uri", &self.uri)
            .field("headers", &Redacted(&self.headers))
            .finish_non_exhaustive()
    }
}

/// Headers for `Debug` output, with credentials replaced: a stray `{:?}` in a log line must
/// not leak keys.
pub(crate) struct Redacted<'a>(pub(crate) &'a HeaderMap);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |name: &str| {
            matches!(
                name,
                "authorization" | "proxy-authorization" | "api-key" | "x-api-key" | "cookie" | "openai-organization"
            )
        };
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                (k.as_str(), if secret(k.as_str()) { "<redacted>" } else { v.to_str().unwrap_or("<binary>") })
            }))
            .finish()
    }
}

/// Reassembles a streamed completion, tool calls and unknown message fields included.
pub async fn collect(mut chunks: ChunkStream) -> Result<ChatResponse, UpstreamError> {
    let mut assembler = crate::openai::chunks::Assembler::default();
    while let Some(chunk) = chunks.next().await {
        assembler.push(chunk?);
    }
    assembler.finish().ok_or_else(|| UpstreamError::Protocol("the upstream stream ended before any chunk".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_include_those_named_in_connection() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, X-Secret-Hop".parse().unwrap());
        headers.append(header::CONNECTION, "x-other".parse().unwrap());
        headers.insert("x-secret-hop", "1".parse().unwrap());
        headers.insert("x-other", "2".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("x-end-to-end", "3".parse().unwrap());
        strip_hop_headers(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-end-to-end"]);
    }
}
