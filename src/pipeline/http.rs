//! The HTTP face of the pipeline, shared by the sidecar and the Tower layer: reading and
//! limiting the body, parsing the chat request (400 on bad JSON), and rendering a
//! [`GuardedResponse`] with the `x-rulegate-*` headers.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};

use super::exchange::{GuardedRequest, GuardedResponse, RESPONSE_TYPE_HEADER};
use super::outcome::Outcome;
use super::reply::{ErrorKind, ErrorReply};
use super::route::{Refusal, Route};
use super::service::Pipeline;
use crate::access::UntrustedSelector;
use crate::openai::{ChatRequest, legacy, responses};
use crate::upstream::{BoxError, Upstream, Wire};

/// The body of every response the sidecar and the Tower layer send.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Default limit on a request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;

/// `x-rulegate-class`: the class of the judged completion.
pub const CLASS: HeaderName = HeaderName::from_static("x-rulegate-class");
/// `x-rulegate-score`: its reward score, four decimals.
pub const SCORE: HeaderName = HeaderName::from_static("x-rulegate-score");
/// `x-rulegate-action`: what the guard did ([`Outcome::action`]).
pub const ACTION: HeaderName = HeaderName::from_static("x-rulegate-action");
/// `x-rulegate-attempts`: upstream completions generated for the first choice.
pub const ATTEMPTS: HeaderName = HeaderName::from_static("x-rulegate-attempts");
/// `x-rulegate-policy-version`: the version of the policy that judged the request.
pub const POLICY_VERSION: HeaderName = HeaderName::from_static("x-rulegate-policy-version");
/// `x-rulegate-model-version`: the version of the model that judged the request.
pub const MODEL_VERSION: HeaderName = HeaderName::from_static("x-rulegate-model-version");
/// `x-rulegate-response-type`: the response type the request was judged as (the same name
/// callers use to give one, [`RESPONSE_TYPE_HEADER`]).
pub const RESPONSE_TYPE: HeaderName = HeaderName::from_static("x-rulegate-response-type");
/// `x-rulegate-mode`: the streaming hold-back mode, for streamed responses.
pub const MODE: HeaderName = HeaderName::from_static("x-rulegate-mode");
/// `x-rulegate-search`: what a `beam_search` did, or why it ran as best-of-n.
pub const SEARCH: HeaderName = HeaderName::from_static("x-rulegate-search");
/// `x-rulegate-shadow-action`: in shadow mode, what enforce would have done.
pub const SHADOW_ACTION: HeaderName = HeaderName::from_static("x-rulegate-shadow-action");
/// `x-rulegate-request-id`: the request's id, as in the decision log.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-rulegate-request-id");
/// `x-rulegate-policy`: the policy a request asks for.
pub const POLICY_HEADER: &str = "x-rulegate-policy";

/// 403 for a request that could generate text on a route rulegate does not judge
/// ([`Route::Unguarded`] under `unguarded_routes: deny`).
pub fn unguarded_route_response(method: &Method, path: &str) -> http::Response<ResponseBody> {
    refusal_response(Refusal::Unguarded, method, path)
}

/// The answer to a request [`super::route::admit`] refused. The path is shown cut short: it
/// is the client's own text, never generated.
pub fn refusal_response(refusal: Refusal, method: &Method, path: &str) -> http::Response<ResponseBody> {
    let shown: String = path.chars().take(200).collect();
    match refusal {
        Refusal::Unguarded => error_response(ErrorReply::forbidden(
            "unguarded_route",
            format!(
                "{method} {shown} could generate text that rulegate does not judge (or asks for a protocol or \
                 method switch); this gateway judges POST /v1/chat/completions, /v1/responses and /v1/completions \
                 (an operator can forward other routes unjudged with `unguarded_routes: pass`)"
            ),
        )),
        Refusal::StoredRead => error_response(ErrorReply::forbidden(
            "stored_completions",
            format!(
                "{method} {shown} reads or deletes stored answers, which rulegate never judged (an operator can \
                 allow it with `stored_completions: pass`)"
            ),
        )),
        Refusal::BodyOnRead => error_response(ErrorReply::invalid_request(
            "body_not_allowed",
            format!("a {method} request must not carry a body"),
        )),
    }
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// An OpenAI-style error response written by rulegate itself.
pub fn error_response(reply: ErrorReply) -> http::Response<ResponseBody> {
    json_response(reply.status, reply.to_bytes())
}

fn json_response(status: StatusCode, body: Bytes) -> http::Response<ResponseBody> {
    let mut response = http::Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A request refused before it reaches the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 413 or 400.
    pub status: StatusCode,
    /// The error `code`, e.g. `request_too_large` or `invalid_json`.
    pub code: &'static str,
    /// The error message.
    pub message: String,
}

impl Rejection {
    /// 413: the body exceeds `limit` bytes.
    pub fn too_large(limit: usize) -> Rejection {
        Rejection {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "request_too_large",
            message: format!("the request body exceeds {limit} bytes"),
        }
    }

    /// 400: the body could not be read to its end.
    pub fn broken_body(error: impl std::fmt::Display) -> Rejection {
        Rejection {
            status: StatusCode::BAD_REQUEST,
            code: "request_body_error",
            message: format!("could not read the request body: {error}"),
        }
    }

    /// The OpenAI-style error response.
    pub fn into_response(self) -> http::Response<ResponseBody> {
        error_response(ErrorReply::new(self.status, ErrorKind::InvalidRequest, self.code, self.message))
    }
}

/// Reads a request body up to `limit` bytes; 413 beyond it, 400 if it breaks off.
pub async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, Rejection>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Rejection::too_large(limit)),
        Err(e) => Err(Rejection::broken_body(e)),
    }
}

/// Parses a chat request; 400 with `invalid_json` or `invalid_request` otherwise.
pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, Rejection> {
    serde_json::from_slice::<ChatRequest>(body).map_err(|e| {
        let (code, what) = if e.is_data() {
            ("invalid_request", "the body is not a chat completion request")
        } else {
            ("invalid_json", "the body is not valid JSON")
        };
        Rejection { status: StatusCode::BAD_REQUEST, code, message: format!("{what}: {e}") }
    })
}

/// Guards one generation request given as parts and a complete body: a chat completion, a
/// Responses API request (translated to chat and back, see [`crate::openai::responses`]) or a
/// legacy text completion (see [`crate::openai::legacy`]).
pub async fn handle<U: Upstream>(
    pipeline: &Pipeline<U>,
    parts: &http::request::Parts,
    body: &[u8],
) -> http::Response<ResponseBody> {
    handle_route(pipeline, Route::classify(&parts.method, parts.uri.path()), parts, body).await
}

/// [`handle`] for a request the front door has already classified as `route` (one of the
/// judged routes; any other is handled as chat completions).
pub async fn handle_route<U: Upstream>(
    pipeline: &Pipeline<U>,
    route: Route,
    parts: &http::request::Parts,
    body: &[u8],
) -> http::Response<ResponseBody> {
    let selected = match selectors(pipeline, parts) {
        Ok(selected) => selected,
        Err(response) => return *response,
    };
    if route == Route::Responses {
        let (chat, echo) = match responses::to_chat(body) {
            Ok(translated) => translated,
            Err(e) => {
                return error_response(ErrorReply::invalid_request(e.code(), e.to_string()));
            }
        };
        let request = selected.request(chat, chat_uri(&parts.uri), parts);
        let mut translator = responses::StreamTranslator::new(echo.clone());
        return render_translated(
            pipeline.handle(request).await,
            |chat| responses::from_chat(chat, &echo),
            move |frame| translator.frame(&frame),
        );
    }
    if route == Route::Completions {
        let chat = match legacy::to_chat(body) {
            Ok(chat) => chat,
            Err(e) => {
                return error_response(ErrorReply::invalid_request(e.code(), e.to_string()));
            }
        };
        let mut request = selected.request(chat, parts.uri.clone(), parts);
        request.wire = Wire::Completions;
        return render_translated(pipeline.handle(request).await, legacy::from_chat, |frame| {
            vec![legacy::stream_frame(frame)]
        });
    }
    let chat = match parse_chat(body) {
        Ok(chat) => chat,
        Err(rejection) => return rejection.into_response(),
    };
    let request = selected.request(chat, parts.uri.clone(), parts);
    render(pipeline.handle(request).await)
}

/// What the caller may say about its own request: the selector headers (when trusted) and
/// the API key.
struct Selected {
    response_type: Option<String>,
    policy: Option<String>,
    api_key: Option<String>,
}

impl Selected {
    fn request(self, chat: ChatRequest, uri: http::Uri, parts: &http::request::Parts) -> GuardedRequest {
        GuardedRequest {
            chat,
            uri,
            headers: parts.headers.clone(),
            response_type: self.response_type,
            policy: self.policy,
            api_key: self.api_key,
            wire: Wire::Chat,
        }
    }
}

fn selectors<U>(
    pipeline: &Pipeline<U>,
    parts: &http::request::Parts,
) -> Result<Selected, Box<http::Response<ResponseBody>>> {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_string());
    let api_key = header("authorization")
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).map(str::to_string))
        .or_else(|| header("api-key"));
    let mut response_type = header(RESPONSE_TYPE_HEADER);
    let mut policy = header(POLICY_HEADER);
    let selectors = &pipeline.options().selectors;
    if (response_type.is_some() || policy.is_some()) && !selectors.trusts(api_key.as_deref()) {
        match selectors.untrusted {
            UntrustedSelector::Ignore => (response_type, policy) = (None, None),
            UntrustedSelector::Reject => {
                return Err(Box::new(error_response(ErrorReply::forbidden(
                    "selector_not_allowed",
                    format!(
                        "this caller may not choose the policy ({POLICY_HEADER}) or state the response type \
                         ({RESPONSE_TYPE_HEADER})"
                    ),
                ))));
            }
        }
    }
    Ok(Selected { response_type, policy, api_key })
}

/// The upstream chat-completions target for a Responses request: its path with the last
/// segment (`responses`) replaced, so a prefix such as `/openai/v1` is kept; the query too.
fn chat_uri(uri: &http::Uri) -> http::Uri {
    let path = uri.path().trim_end_matches('/');
    let prefix = path.rsplit_once('/').map_or("", |(prefix, _)| prefix);
    let target = match uri.query() {
        Some(query) => format!("{prefix}/chat/completions?{query}"),
        None => format!("{prefix}/chat/completions"),
    };
    target.parse().unwrap_or_else(|_| http::Uri::from_static("/v1/chat/completions"))
}

/// Like [`render`], in another API's shapes: the completion through `body`, each stream
/// frame through `frames` (errors are OpenAI-style in every API and pass as they are).
fn render_translated<F>(
    response: GuardedResponse,
    body: impl FnOnce(&crate::openai::ChatResponse) -> serde_json::Value,
    mut frames: F,
) -> http::Response<ResponseBody>
where
    F: FnMut(Bytes) -> Vec<Bytes> + Send + 'static,
{
    match response {
        GuardedResponse::Complete { response, outcome } => {
            let bytes = serde_json::to_vec(&body(&response)).unwrap_or_default();
            let mut http = json_response(StatusCode::OK, Bytes::from(bytes));
            outcome_headers(http.headers_mut(), &outcome);
            http
        }
        GuardedResponse::Stream { events, outcome } => {
            let events = futures::StreamExt::flat_map(events, move |frame| futures::stream::iter(frames(frame)));
            render(GuardedResponse::Stream { events: Box::pin(events), outcome })
        }
        error @ GuardedResponse::Error { .. } => render(error),
    }
}

/// Turns a pipeline response into HTTP, with the verdict in `x-rulegate-*` headers.
pub fn render(response: GuardedResponse) -> http::Response<ResponseBody> {
    match response {
        GuardedResponse::Complete { response, outcome } => {
            let body = serde_json::to_vec(&response).unwrap_or_default();
            let mut http = json_response(StatusCode::OK, Bytes::from(body));
            outcome_headers(http.headers_mut(), &outcome);
            http
        }
        GuardedResponse::Stream { events, outcome } => {
            let frames = futures::StreamExt::map(events, |b| Ok::<_, BoxError>(http_body::Frame::data(b)));
            let mut http = http::Response::new(StreamBody::new(frames).boxed_unsync());
            let headers = http.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            outcome_headers(headers, &outcome);
            http
        }
        GuardedResponse::Error { status, body, outcome } => {
            let mut http = json_response(status, body);
            outcome_headers(http.headers_mut(), &outcome);
            http
        }
    }
}

/// Sets the `x-rulegate-*` headers from `outcome`, leaving out what it lacks and values
/// that are not valid header text.
pub fn outcome_headers(headers: &mut HeaderMap, outcome: &Outcome) {
    let mut set = |name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    if !outcome.action.is_undecided() {
        set(ACTION, outcome.action.as_str());
    }
    if let Some(class) = &outcome.class {
        set(CLASS, class);
    }
    if let Some(score) = outcome.score {
        set(SCORE, &format!("{score:.4}"));
    }
    if outcome.attempts > 0 {
        set(ATTEMPTS, &outcome.attempts.to_string());
    }
    if let Some(rt) = &outcome.response_type {
        set(RESPONSE_TYPE, rt);
    }
    if let Some(mode) = outcome.mode {
        set(MODE, mode.as_str());
    }
    if let Some(search) = &outcome.search {
        set(SEARCH, search);
    }
    if let Some(shadow) = outcome.shadow_action {
        set(SHADOW_ACTION, shadow.as_str());
    }
    if !outcome.request_id.is_empty() {
        set(REQUEST_ID, &outcome.request_id);
    }
    set(POLICY_VERSION, &outcome.policy_version);
    set(MODEL_VERSION, &outcome.model_version);
    if let Some(secs) = outcome.retry_after_secs {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
}
