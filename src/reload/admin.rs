//! The admin API, on its own listener (loopback by default), bearer-token protected:
//! `GET /admin/status`, `POST /admin/reload`, `GET|PUT|DELETE /admin/candidate` (the policy
//! decided beside the live one), `GET /metrics` (optionally without a token, for scrapers),
//! and unauthenticated `GET /healthz` and `GET /readyz` for probes.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::GuardStore;
use crate::access::constant_time_eq;
use crate::policy::{CandidateError, CandidatePolicy};

#[derive(Clone)]
struct AdminState {
    store: GuardStore,
    token: Option<Arc<str>>,
}

/// The admin routes. With no token configured, the protected routes answer 401 to everyone.
pub fn router(store: GuardStore, token: Option<String>, metrics_without_token: bool) -> Router {
    let state = AdminState { store, token: token.filter(|t| !t.is_empty()).map(Into::into) };
    let protected = Router::new().route("/admin/status", get(status)).route("/admin/reload", post(reload));
    let metrics_route = Router::new().route("/metrics", get(metrics));
    let (protected, public) = if metrics_without_token {
        (protected, metrics_route)
    } else {
        (protected.merge(metrics_route), Router::new())
    };
    let protected = protected.layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(protected)
        .merge(public)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state)
}

#[derive(Clone)]
struct CandidateState {
    store: GuardStore,
    candidate: CandidatePolicy,
}

/// `/admin/candidate`, token-protected like the rest: `GET` names the candidate policy,
/// `PUT` (a policy file as the body) replaces it once it compiles and reads only what the
/// live policy's model pass gives, `DELETE` removes it.
pub fn candidate_router(store: GuardStore, token: Option<String>, candidate: CandidatePolicy) -> Router {
    let auth = AdminState { store: store.clone(), token: token.filter(|t| !t.is_empty()).map(Into::into) };
    Router::new()
        .route("/admin/candidate", get(candidate_get).put(candidate_put).delete(candidate_delete))
        .with_state(CandidateState { store, candidate })
        .layer(middleware::from_fn_with_state(auth, require_token))
}

fn candidate_body(candidate: Option<&crate::Policy>) -> serde_json::Value {
    match candidate {
        Some(p) => serde_json::json!({"candidate": {"name": p.name(), "version": p.version()}}),
        None => serde_json::json!({"candidate": null}),
    }
}

async fn candidate_get(State(state): State<CandidateState>) -> Response {
    axum::Json(candidate_body(state.candidate.get().as_deref())).into_response()
}

async fn candidate_put(State(state): State<CandidateState>, body: String) -> Response {
    use crate::guard::GuardSelector;
    let compiled = crate::Policy::from_yaml(&body, "candidate policy (PUT /admin/candidate)");
    let checked = compiled.map_err(CandidateError::from).and_then(|p| {
        let live = state.store.default_guard().judge().policy().clone();
        CandidatePolicy::check(&p, &live).map(|()| p)
    });
    match checked {
        Ok(policy) => {
            tracing::info!(version = %policy.version(), "candidate policy replaced");
            let body = candidate_body(Some(&policy));
            state.candidate.set(Some(Arc::new(policy)));
            axum::Json(body).into_response()
        }
        Err(e) => {
            (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(serde_json::json!({"error": e.to_string()}))).into_response()
        }
    }
}

async fn candidate_delete(State(state): State<CandidateState>) -> Response {
    state.candidate.set(None);
    tracing::info!("candidate policy removed");
    axum::Json(candidate_body(None)).into_response()
}

async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let Some(expected) = &state.token else {
        return (StatusCode::UNAUTHORIZED, "admin API disabled: no admin token is configured\n").into_response();
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        let mut response = (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}

async fn status(State(state): State<AdminState>) -> Response {
    axum::Json(state.store.status()).into_response()
}

async fn reload(State(state): State<AdminState>) -> Response {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.reload()).await {
        Ok(report) => {
            let status = if report.ok { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
            (status, axum::Json(report)).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("reload failed: {e}\n")).into_response(),
    }
}

async fn metrics() -> Response {
    let mut response = crate::telemetry::metrics().encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// Ready once a policy and a model are loaded, which the store guarantees from its start.
/// Ready when policies are loaded and every policy's classifier has a live worker thread.
async fn ready(State(state): State<AdminState>) -> Response {
    let names = state.store.policy_names();
    let dead = names
        .iter()
        .filter(|name| state.store.guard(name).is_none_or(|g| g.judge().classifier().live_workers() == 0))
        .count();
    if names.is_empty() {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: no policy loaded\n").into_response()
    } else if dead > 0 {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: the classifier has no live worker\n").into_response()
    } else {
        "ready\n".into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::path::Path;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::classifier::{ClassifierOptions, INJECT_PANIC, PairText};
    use crate::reload::StoreConfig;

    /// `GET {path}` over HTTP/1.1 on a plain socket: the status code and the body.
    fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
    }

    #[test]
    fn readyz_answers_503_over_http_once_no_worker_is_live() {
        // The injected panic is process-wide: take turns with the classifier's tests. (A plain
        // test with its own runtime: the turn is held on this thread, never across an await.)
        let _turn = crate::classifier::tests::SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir().unwrap();
        for f in ["model.onnx", "tokenizer.json", "manifest.json"] {
            std::fs::copy(root.join("models/rulegate-minilm-rbr").join(f), dir.path().join(f)).unwrap();
        }
        let mut policies = indexmap::IndexMap::new();
        policies.insert("p".to_string(), root.join("policies/refusal-style.yaml"));
        let store = GuardStore::load(StoreConfig {
            policies,
            default_policy: None,
            api_keys: indexmap::IndexMap::new(),
            model: dir.path().to_path_buf(),
            classifier: ClassifierOptions { sessions: 1, intra_threads: 1, ..ClassifierOptions::default() },
            cache: None,
        })
        .unwrap();
        let classifier = store.guard("p").unwrap().judge().classifier().clone();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(store, None, false);
        runtime.spawn(async move {
            if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                let _ = axum::serve(listener, app).await;
            }
        });
        assert_eq!(get(addr, "/readyz"), (200, "ready\n".to_string()));

        // The worker panics and, its model changed on disk, stops instead of restarting.
        let path = dir.path().join("tokenizer.json");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        INJECT_PANIC.store(true, Ordering::Release);
        let pair = vec![PairText { prompt: "user: hi".into(), completion: "Hello!".into() }];
        assert!(classifier.classify_blocking(pair).is_err());
        for _ in 0..500 {
            if classifier.live_workers() == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(classifier.live_workers(), 0, "the worker did not stop");
        let (status, body) = get(addr, "/readyz");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("no live worker"), "{body}");
    }
}
