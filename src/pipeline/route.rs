//! Which requests generate text, decided once, on the normalised path, by both front doors
//! (the sidecar and the Tower layer).
//!
//! Model servers route on the path *after* decoding it, so `/v1/chat/completion%73`,
//! `/v1//chat/completions` and `/v1/x/../chat/completions` all reach the chat handler of
//! many servers. rulegate classifies the path the way the most lenient server would read
//! it: percent-decoded (repeatedly, for routers that decode twice), `\` read as `/`,
//! repeated slashes and `.` segments dropped, `..` resolved, `;params` cut from each
//! segment, and compared without regard to case (a case-sensitive upstream answers 404 to a
//! case variant, so judging it costs nothing; a case-insensitive one is covered).
//!
//! Every method other than `GET`, `HEAD` and `OPTIONS` is classified: chat completions, the
//! Responses API and legacy text completions are judged; the few routes known not to generate
//! text (embeddings, moderations, tokenize, detokenize) pass; every other one (a server's
//! native routes such as llama.cpp's `/completion`, batches, ...) is refused with 403 unless
//! the operator says `unguarded_routes: pass`.

use http::Method;
use percent_encoding::percent_decode_str;

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
    /// A request that cannot generate text (`GET`, `HEAD`, `OPTIONS`, and `POST` to the
    /// embeddings, moderations, tokenize and detokenize routes): proxied as it is.
    NonGenerating,
    /// Any other request that could make the upstream generate text (a server's native
    /// routes, batches, ...): refused unless [`UnguardedRoutes::Pass`].
    Unguarded,
}

impl Route {
    /// Classifies a request by method and path (the path as the client sent it).
    pub fn classify(method: &Method, path: &str) -> Route {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Route::NonGenerating;
        }
        if *method != Method::POST {
            return Route::Unguarded;
        }
        // Most paths are already what normalising would give (bar a trailing `/`): read
        // their segments as they are instead of allocating a normalised copy per request.
        let normalised = if is_plain(path) {
            std::borrow::Cow::Borrowed(path)
        } else {
            std::borrow::Cow::Owned(normalise_path(path))
        };
        let mut segments = normalised.rsplit('/').filter(|s| !s.is_empty());
        let (last, before) = (segments.next(), segments.next());
        match (before, last) {
            (Some("chat"), Some("completions")) => Route::ChatCompletions,
            (_, Some("responses")) => Route::Responses,
            (_, Some("completions")) => Route::Completions,
            (_, Some("embeddings" | "moderations" | "tokenize" | "detokenize")) => Route::NonGenerating,
            _ => Route::Unguarded,
        }
    }

    /// The route's label in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Route::ChatCompletions => "chat_completions",
            Route::Responses => "responses",
            Route::Completions => "completions",
            Route::NonGenerating => "proxy",
            Route::Unguarded => "unguarded",
        }
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

/// Whether `path` reads the same normalised (bar a trailing `/`): it starts with `/`, holds
/// only lower-case letters, digits, `-`, `_` and single `/`, so there is nothing to decode,
/// fold or resolve.
fn is_plain(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains("//")
        && path.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'/' | b'-' | b'_'))
}

/// The path as a lenient router would read it (see the module docs), in lower case, with
/// a leading `/` and no trailing one.
pub fn normalise_path(path: &str) -> String {
    // Decode until stable; a few rounds cover double-encoding without unbounded work.
    let mut decoded = path.to_string();
    for _ in 0..4 {
        let next = percent_decode_str(&decoded).decode_utf8_lossy().into_owned();
        if next == decoded {
            break;
        }
        decoded = next;
    }
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
            s => out.push(s.to_lowercase()),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(path: &str) -> Route {
        Route::classify(&Method::POST, path)
    }

    /// The classification from the fully normalised path, the way it was always computed.
    fn slow(method: &Method, path: &str) -> Route {
        let normalised = normalise_path(path);
        let segments: Vec<&str> = normalised.split('/').filter(|s| !s.is_empty()).collect();
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Route::NonGenerating;
        }
        match segments.as_slice() {
            [.., "chat", "completions"] if *method == Method::POST => Route::ChatCompletions,
            [.., "responses"] if *method == Method::POST => Route::Responses,
            [.., "completions"] if *method == Method::POST => Route::Completions,
            [.., "embeddings" | "moderations" | "tokenize" | "detokenize"] if *method == Method::POST => {
                Route::NonGenerating
            }
            _ => Route::Unguarded,
        }
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
        ] {
            assert_eq!(post(path), Route::Unguarded, "{path}");
        }
        assert_eq!(Route::classify(&Method::PUT, "/v1/chat/completions"), Route::Unguarded);
    }

    #[test]
    fn reads_and_known_non_generating_posts_pass() {
        assert_eq!(Route::classify(&Method::GET, "/v1/chat/completions"), Route::NonGenerating);
        assert_eq!(Route::classify(&Method::GET, "/v1/models"), Route::NonGenerating);
        for path in ["/v1/embeddings", "/v1/moderations", "/tokenize", "/extras/detokenize"] {
            assert_eq!(post(path), Route::NonGenerating, "{path}");
        }
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalise_path(""), "/");
        assert_eq!(normalise_path("/../../etc"), "/etc");
        assert_eq!(normalise_path("/a/%2e%2e/b"), "/b");
        assert_eq!(normalise_path("/%ff/x"), "/\u{fffd}/x");
    }
}
