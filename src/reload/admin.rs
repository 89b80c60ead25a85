//! The admin API, on its own listener (loopback by default), bearer-token protected:
//! `GET /admin/status`, `POST /admin/reload`, `GET /metrics` (optionally without a token,
//! for scrapers), and unauthenticated `GET /healthz` and `GET /readyz` for probes.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::GuardStore;
use super::store::constant_time_eq;

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
