//! Which requests generate text, decided once, on the normalised path, by both front doors
//! (the sidecar and the Tower layer): [`admit`] says guard, forward or refuse.
//!
//! Model servers route on the path *after* decoding it, so `/v1/chat/completion%73`,
//! `/v1//chat/completions` and `/v1/x/../chat/completions` all reach the chat handler of
//! many servers. rulegate classifies the path the way the most lenient server would read
//! it: percent-decoded (repeatedly, for routers that decode twice), `\` read as `/`,
//! repeated slashes and `.` segments dropped, `..` resolved, `;params` cut from each
//! segment, and compared without regard to case (a case-sensitive upstream answers 404 to a
//! case variant, so judging it costs nothing; a case-insensitive one is covered).
//!
//! The whole path is read, not its end: many servers route by prefix, so
//! `/v1/chat/completions/embeddings` may generate. A `POST` passes unjudged only to the
//! embeddings, moderations, tokenize and detokenize routes, and only when no segment anywhere
//! reads as a generation route. Chat completions, the Responses API and legacy text
//! completions are judged; every other `POST` (a server's native routes such as llama.cpp's
//! `/completion`, batches, ...) is refused with 403 unless the operator says
//! `unguarded_routes: pass`. Reads of stored answers (`GET`/`DELETE` under a generation route,
//! e.g. `/v1/chat/completions/{id}`) replay text that was never judged: 403 unless
//! `stored_completions: pass`. A request that asks for a protocol switch (`Upgrade`, e.g. the
//! Realtime API's websocket) or another method (`X-HTTP-Method-Override` and its kin) is
//! refused like an unguarded route, and a `GET`/`HEAD`/`OPTIONS` with a body is not forwarded.
//! What is forwarded goes with its normalised path, so the upstream routes what was checked.

use http::{HeaderMap, Method};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// What a request is, for the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST .../chat/completions`: judged by the pipeline.
    ChatCompletions,
    /// `POST .../responses`: the Responses API, translated to chat completions, judged by
    /// the pipeline, and translated back.
    Responses,
    /// `POST .../completions` (legacy text completions): judged by the pipeline, the upstream
    /// called on the same route in the same format.
    Completions,
    /// A request that cannot generate text (`GET`, `HEAD`, `OPTIONS` outside generation
    /// routes, and `POST` to the embeddings, moderations, tokenize and detokenize routes when
    /// no segment reads as a generation route): proxied.
    NonGenerating,
    /// A `GET`, `HEAD` or `DELETE` under a generation route (`/v1/chat/completions/{id}`, the
    /// list route, `/v1/responses/{id}/input_items`, ...): reads stored answers, which were
    /// never judged; refused unless [`StoredCompletions::Pass`].
    StoredRead,
    /// Any other request that could make the upstream generate text (a server's native
    /// routes, batches, ...): refused unless [`UnguardedRoutes::Pass`].
    Unguarded,
}

impl Route {
    /// Classifies a request by method and path (the path as the client sent it); headers
    /// are not read (see [`admit`] for the full decision).
    pub fn classify(method: &Method, path: &str) -> Route {
        match Normalised::new(path) {
            Some(normalised) => classify_segments(method, &normalised.lower),
            None => Route::Unguarded,
        }
    }

    /// The route's label in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Route::ChatCompletions => "chat_completions",
            Route::Responses => "responses",
            Route::Completions => "completions",
            Route::NonGenerating => "proxy",
            Route::StoredRead => "stored_read",
            Route::Unguarded => "unguarded",
        }
    }

    /// Whether the pipeline judges this route.
    pub fn is_guarded(self) -> bool {
        matches!(self, Route::ChatCompletions | Route::Responses | Route::Completions)
    }
}

/// What to do with [`Route::Unguarded`] requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum UnguardedRoutes {
    /// Answer 403 `unguarded_route` (the default): nothing generated reaches a client unjudged.
    #[default]
    Deny,
    /// Proxy them unjudged: only for upstreams whose other routes cannot generate text, or
    /// where another control covers them.
    Pass,
}

/// What to do with [`Route::StoredRead`] requests (reads and deletes of stored completions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StoredCompletions {
    /// Answer 403 `stored_completions` (the default): a stored answer was never judged.
    #[default]
    Deny,
    /// Proxy them: only where the upstream stores nothing, or what it stores was judged.
    Pass,
}

/// The operator's switches [`admit`] reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmitOptions {
    /// Generation routes rulegate does not judge.
    pub unguarded_routes: UnguardedRoutes,
    /// Reads of stored completions.
    pub stored_completions: StoredCompletions,
}

/// Why a request is refused before anything is sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It could generate text rulegate does not judge (403 `unguarded_route`).
    Unguarded,
    /// It reads or deletes stored answers (403 `stored_completions`).
    StoredRead,
    /// A `GET`, `HEAD` or `OPTIONS` with a body (400 `body_not_allowed`): servers that read
    /// it, or honour a method override, could generate from it.
    BodyOnRead,
}

/// What a front door does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Judge it with the pipeline, as this route.
    Guard(Route),
    /// Proxy it unjudged. `path` is the normalised path (percent-encoded again, case kept) to
    /// send instead of the client's when they differ; the query is kept as it came.
    Forward {
        /// The route, for metrics.
        route: Route,
        /// The path to forward, when not the client's.
        path: Option<String>,
    },
    /// Answer with an error; nothing goes upstream.
    Refuse {
        /// The route, for metrics.
        route: Route,
        /// Why.
        refusal: Refusal,
    },
}

impl Admission {
    /// The route's label in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Admission::Guard(route) | Admission::Forward { route, .. } | Admission::Refuse { route, .. } => {
                route.label()
            }
        }
    }
}

/// Headers asking a server to treat the request as another method; some frameworks honour
/// them, so a `GET` could run as a `POST` the guard never saw.
const METHOD_OVERRIDES: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// Decides what happens to a request: the one place both front doors ask.
pub fn admit(method: &Method, path: &str, headers: &HeaderMap, options: AdmitOptions) -> Admission {
    let Some(normalised) = Normalised::new(path) else {
        // A path still decoding after several rounds reads differently to each router.
        return refuse_or_forward(Route::Unguarded, None, options);
    };
    let route = classify_segments(method, &normalised.lower);
    let switches_protocol =
        headers.contains_key(http::header::UPGRADE) || METHOD_OVERRIDES.iter().any(|name| headers.contains_key(*name));
    if switches_protocol {
        return refuse_or_forward(Route::Unguarded, normalised.forward(path), options);
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) && has_body(headers) {
        return Admission::Refuse { route, refusal: Refusal::BodyOnRead };
    }
    if route.is_guarded() {
        return Admission::Guard(route);
    }
    refuse_or_forward(route, normalised.forward(path), options)
}

fn refuse_or_forward(route: Route, path: Option<String>, options: AdmitOptions) -> Admission {
    match route {
        Route::Unguarded if options.unguarded_routes == UnguardedRoutes::Deny => {
            Admission::Refuse { route, refusal: Refusal::Unguarded }
        }
        Route::StoredRead if options.stored_completions == StoredCompletions::Deny => {
            Admission::Refuse { route, refusal: Refusal::StoredRead }
        }
        route => Admission::Forward { route, path },
    }
}

/// Whether the request announces a body (`Content-Length` other than 0, or any
/// `Transfer-Encoding`); an unreadable length counts as a body.
fn has_body(headers: &HeaderMap) -> bool {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return true;
    }
    headers.get_all(http::header::CONTENT_LENGTH).iter().any(|v| v.to_str().ok().map(str::trim) != Some("0"))
}

/// A segment that names a generation route (or a store of generated answers), as a whole
/// word or within a longer segment (`generateContent`, `gpt:chat`): many servers route by
/// prefix or pattern, so a path holding one anywhere may generate.
fn generates(segment: &str) -> bool {
    const WORDS: [&str; 14] = [
        "chat",
        "complet",
        "respons",
        "generat",
        "realtime",
        "infill",
        "batch",
        "thread",
        "message",
        "assistant",
        "predict",
        "invocation",
        "conversation",
        "runs",
    ];
    WORDS.iter().any(|w| segment.contains(w))
}

/// The segments under which `GET`/`HEAD`/`DELETE` read or delete stored answers.
fn stores(segment: &str) -> bool {
    matches!(
        segment,
        "chat"
            | "completions"
            | "completion"
            | "responses"
            | "response"
            | "realtime"
            | "threads"
            | "runs"
            | "messages"
            | "conversations"
            | "batches"
    )
}

fn classify_segments(method: &Method, lower: &[String]) -> Route {
    let stored = lower.iter().any(|s| stores(s));
    if matches!(*method, Method::GET | Method::HEAD | Method::DELETE) && stored {
        return Route::StoredRead;
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Route::NonGenerating;
    }
    if *method != Method::POST {
        return Route::Unguarded;
    }
    let last = lower.last().map(String::as_str);
    let before = lower.len().checked_sub(2).and_then(|i| lower.get(i)).map(String::as_str);
    match (before, last) {
        (Some("chat"), Some("completions")) => Route::ChatCompletions,
        (_, Some("responses")) => Route::Responses,
        (_, Some("completions")) => Route::Completions,
        (_, Some("embeddings" | "moderations" | "tokenize" | "detokenize")) if !lower.iter().any(|s| generates(s)) => {
            Route::NonGenerating
        }
        _ => Route::Unguarded,
    }
}

/// Characters re-encoded in a forwarded segment: what would end or split it, or be decoded
/// again by the upstream.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'\\')
    .add(b';')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// A path's segments as a lenient router reads them, in lower case (for classifying) and as
/// written (for forwarding).
struct Normalised {
    lower: Vec<String>,
    kept: Vec<String>,
}

impl Normalised {
    /// `None` when the path is still changing after several rounds of decoding.
    fn new(path: &str) -> Option<Normalised> {
        if is_plain(path) {
            let kept: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect();
            return Some(Normalised { lower: kept.clone(), kept });
        }
        let kept = segments(path)?;
        let lower = kept.iter().map(|s| s.to_lowercase()).collect();
        Some(Normalised { lower, kept })
    }

    /// The path to forward instead of `raw`, when they differ.
    fn forward(&self, raw: &str) -> Option<String> {
        let path = format!(
            "/{}",
            self.kept.iter().map(|s| utf8_percent_encode(s, SEGMENT).to_string()).collect::<Vec<_>>().join("/")
        );
        (path != raw).then_some(path)
    }
}

/// Whether `path` reads the same normalised (bar a trailing `/`): it starts with `/`, holds
/// only lower-case letters, digits, `-`, `_` and single `/`, so there is nothing to decode,
/// fold or resolve.
fn is_plain(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains("//")
        && path.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'/' | b'-' | b'_'))
}

/// Rounds of percent-decoding: enough for double-encoding, bounded work.
const DECODE_ROUNDS: usize = 4;

/// `path` percent-decoded until stable (at most [`DECODE_ROUNDS`] rounds), `\` read as `/`,
/// split into segments with `;params` cut, `.` dropped and `..` resolved; case kept. The flag
/// says whether decoding settled.
fn decode_segments(path: &str) -> (Vec<String>, bool) {
    let mut decoded = path.to_string();
    let mut settled = false;
    for _ in 0..DECODE_ROUNDS {
        let next = percent_decode_str(&decoded).decode_utf8_lossy().into_owned();
        if next == decoded {
            settled = true;
            break;
        }
        decoded = next;
    }
    settled = settled || percent_decode_str(&decoded).decode_utf8_lossy() == decoded;
    let decoded = decoded.replace('\\', "/");
    let mut out: Vec<String> = Vec::new();
    for segment in decoded.split('/') {
        // `;params` are cut by some routers (matrix parameters) before matching.
        let segment = segment.split(';').next().unwrap_or("").trim();
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_string()),
        }
    }
    (out, settled)
}

/// The decoded, resolved segments of `path`, case kept; `None` if decoding does not settle.
fn segments(path: &str) -> Option<Vec<String>> {
    let (segments, settled) = decode_segments(path);
    settled.then_some(segments)
}

/// The path as a lenient router would read it (see the module docs), in lower case, with
/// a leading `/` and no trailing one.
pub fn normalise_path(path: &str) -> String {
    let (segments, _) = decode_segments(path);
    format!("/{}", segments.iter().map(|s| s.to_lowercase()).collect::<Vec<_>>().join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(path: &str) -> Route {
        Route::classify(&Method::POST, path)
    }

    fn admit_plain(method: Method, path: &str, headers: &[(&str, &str)]) -> Admission {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        admit(&method, path, &map, AdmitOptions::default())
    }

    /// The classification from the fully normalised path, without the plain-path shortcut.
    fn slow(method: &Method, path: &str) -> Route {
        let normalised = normalise_path(path);
        let segments: Vec<String> = normalised.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect();
        classify_segments(method, &segments)
    }

    #[test]
    fn the_plain_path_shortcut_classifies_as_normalising_does() {
        let parts = ["", "/", "v1", "chat", "completions", "Chat", "responses", "embeddings", "x", "..", ".", "%63hat"];
        let parts2 = ["completions", "completion%73", "responses/", "embeddings;x", "a-b_c", "tokenize", "/", "\\chat"];
        for a in parts {
            for b in parts {
                for c in parts2 {
                    for path in [format!("/{a}/{b}/{c}"), format!("{a}/{b}/{c}"), format!("/{a}//{b}/{c}/")] {
                        for method in [Method::POST, Method::PUT, Method::GET] {
                            assert_eq!(Route::classify(&method, &path), slow(&method, &path), "{method} {path}");
                        }
                    }
                }
            }
        }
        assert!(is_plain("/v1/chat/completions") && !is_plain("/v1/Chat/completions") && !is_plain("/v1//x"));
    }

    #[test]
    fn chat_completions_in_every_disguise() {
        for path in [
            "/v1/chat/completions",
            "/chat/completions",
            "/v1/chat/completions/",
            "/v1/chat/completion%73",
            "/v1/%63hat/completions",
            "/v1/chat//completions",
            "//v1///chat/completions",
            "/v1/./chat/completions",
            "/v1/x/../chat/completions",
            "/v1/chat%2Fcompletions",
            "/v1/chat%252Fcompletions",
            "/v1/CHAT/Completions",
            "/v1\\chat\\completions",
            "/v1/chat/completions;jsessionid=1",
            "/openai/deployments/gpt/chat/completions",
        ] {
            assert_eq!(post(path), Route::ChatCompletions, "{path}");
        }
        for path in ["/v1/responses", "/v1/respons%65s", "/openai/v1/responses/", "/V1/RESPONSES"] {
            assert_eq!(post(path), Route::Responses, "{path}");
        }
        for path in ["/v1/completions", "/v1/%63ompletions", "/openai/deployments/d/completions"] {
            assert_eq!(post(path), Route::Completions, "{path}");
        }
    }

    #[test]
    fn other_generation_routes_are_unguarded() {
        for path in [
            "/v1/responses/resp_1/cancel",
            "/v1/responses/input_tokens",
            "/completion",
            "/infill",
            "/v1/batches",
            "/generate",
            "/v1/chat/completions/extra",
            "/v1/chat/completions%3F",
            // Prefix routers generate here: a generation segment anywhere is enough.
            "/v1/chat/completions/embeddings",
            "/v1/completions/tokenize",
            "/v1/responses/moderations",
            "/v1/models/gemini:generateContent/embeddings",
            "/v1/chat/embeddings",
        ] {
            assert_eq!(post(path), Route::Unguarded, "{path}");
        }
        assert_eq!(Route::classify(&Method::PUT, "/v1/chat/completions"), Route::Unguarded);
    }

    #[test]
    fn reads_and_known_non_generating_posts_pass() {
        assert_eq!(Route::classify(&Method::GET, "/v1/models"), Route::NonGenerating);
        assert_eq!(Route::classify(&Method::OPTIONS, "/v1/chat/completions"), Route::NonGenerating);
        for path in ["/v1/embeddings", "/v1/moderations", "/tokenize", "/extras/detokenize"] {
            assert_eq!(post(path), Route::NonGenerating, "{path}");
        }
    }

    #[test]
    fn stored_answers_are_not_read_back() {
        for (method, path) in [
            (Method::GET, "/v1/chat/completions"),
            (Method::GET, "/v1/chat/completions/chatcmpl-1"),
            (Method::GET, "/v1/chat/completions/chatcmpl-1/messages"),
            (Method::DELETE, "/v1/chat/completions/chatcmpl-1"),
            (Method::GET, "/v1/responses/resp_1"),
            (Method::HEAD, "/v1/responses/resp_1/input_items"),
            (Method::GET, "/v1/Chat/Completions/x"),
            (Method::GET, "/v1/x/../responses/resp_1"),
        ] {
            assert_eq!(Route::classify(&method, path), Route::StoredRead, "{method} {path}");
            assert_eq!(
                admit_plain(method.clone(), path, &[]),
                Admission::Refuse { route: Route::StoredRead, refusal: Refusal::StoredRead },
                "{method} {path}"
            );
        }
        let pass = AdmitOptions { stored_completions: StoredCompletions::Pass, ..AdmitOptions::default() };
        assert!(matches!(
            admit(&Method::GET, "/v1/chat/completions/c1", &HeaderMap::new(), pass),
            Admission::Forward { route: Route::StoredRead, path: None }
        ));
    }

    #[test]
    fn upgrades_overrides_and_bodies_on_reads_are_refused() {
        let refused = Admission::Refuse { route: Route::Unguarded, refusal: Refusal::Unguarded };
        assert_eq!(admit_plain(Method::GET, "/v1/realtime", &[("upgrade", "websocket")]), refused);
        assert_eq!(admit_plain(Method::GET, "/v1/models", &[("Upgrade", "h2c")]), refused);
        for name in ["x-http-method-override", "X-HTTP-Method", "x-method-override"] {
            assert_eq!(admit_plain(Method::GET, "/v1/models", &[(name, "POST")]), refused, "{name}");
        }
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            for header in [("content-length", "12"), ("transfer-encoding", "chunked")] {
                assert!(
                    matches!(
                        admit_plain(method.clone(), "/v1/models", &[header]),
                        Admission::Refuse { refusal: Refusal::BodyOnRead, .. }
                    ),
                    "{method} {header:?}"
                );
            }
        }
        assert_eq!(
            admit_plain(Method::GET, "/v1/models", &[("content-length", "0")]),
            Admission::Forward { route: Route::NonGenerating, path: None }
        );
        let pass = AdmitOptions { unguarded_routes: UnguardedRoutes::Pass, ..AdmitOptions::default() };
        let mut headers = HeaderMap::new();
        headers.insert(http::header::UPGRADE, "websocket".parse().unwrap());
        assert!(matches!(admit(&Method::GET, "/v1/realtime", &headers, pass), Admission::Forward { .. }));
    }

    #[test]
    fn forwarded_paths_are_the_normalised_ones() {
        assert_eq!(
            admit_plain(Method::POST, "/v1/chat/completions/../../embeddings", &[]),
            Admission::Forward { route: Route::NonGenerating, path: Some("/v1/embeddings".into()) }
        );
        // Resolved to `/v1/chat/embeddings`: still under a generation segment, refused.
        assert_eq!(
            admit_plain(Method::POST, "/v1/chat/completions/../embeddings", &[]),
            Admission::Refuse { route: Route::Unguarded, refusal: Refusal::Unguarded }
        );
        assert_eq!(
            admit_plain(Method::POST, "/v1/embeddings", &[]),
            Admission::Forward { route: Route::NonGenerating, path: None }
        );
        // Case is kept for the upstream (model names), characters that would split or end a
        // segment are encoded again.
        assert_eq!(
            admit_plain(Method::GET, "/v1/models/Org%2FModel%20A%3F/./", &[]),
            Admission::Forward { route: Route::NonGenerating, path: Some("/v1/models/Org/Model%20A%3F".into()) }
        );
        assert_eq!(admit_plain(Method::POST, "/v1/chat/completions", &[]), Admission::Guard(Route::ChatCompletions));
        // A path that keeps decoding is not read the same by every router.
        // `%25` six times before `65` (`e`): still decoding after the bounded rounds.
        let deep = "/v1/%2525252525252565mbeddings";
        assert!(matches!(admit_plain(Method::POST, deep, &[]), Admission::Refuse { .. }), "{deep}");
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalise_path(""), "/");
        assert_eq!(normalise_path("/../../etc"), "/etc");
        assert_eq!(normalise_path("/a/%2e%2e/b"), "/b");
        assert_eq!(normalise_path("/%ff/x"), "/\u{fffd}/x");
    }
}
