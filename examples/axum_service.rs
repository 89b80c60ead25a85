//! An axum service that answers questions with a model API, through a `GuardLayer`-wrapped
//! model client: every completion it receives has been judged, and regenerated or replaced
//! when the policy says so.
//!
//! ```sh
//! cargo run --release --example axum_service              # starts its own scripted mock model
//! cargo run --release --example axum_service -- --upstream http://127.0.0.1:8081 --listen 127.0.0.1:3000
//! curl 'http://127.0.0.1:3000/ask?q=How+do+I+bake+bread%3F'
//! ```
//!
//! Without `--upstream` it starts the tests' mock model in-process and asks it one question
//! scripted to be answered badly first, to show a regenerated answer.

#[path = "../tests/common/mock.rs"]
mod mock;

use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rulegate::layer::{GuardLayer, GuardService};
use rulegate::upstream::UpstreamClient;
use serde::Deserialize;
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};

type ModelClient = GuardService<UpstreamClient>;

#[derive(Deserialize)]
struct Ask {
    q: String,
    /// For the mock model: how it should answer (see tests/common/mock.rs).
    script: Option<String>,
    /// What the question wants, if the caller knows (`comply`, `hard_refuse`, ...).
    response_type: Option<String>,
}

async fn ask(State(client): State<ModelClient>, Query(ask): Query<Ask>) -> Json<Value> {
    let body = json!({"model": "any", "max_tokens": 128, "messages": [{"role": "user", "content": ask.q}]});
    let mut request = http::Request::post("/v1/chat/completions").header("content-type", "application/json");
    if let Some(script) = &ask.script {
        request = request.header("x-mock-script", script).header("x-mock-id", format!("{:x}", fastrand::u64(..)));
    }
    if let Some(rt) = &ask.response_type {
        request = request.header("x-rulegate-response-type", rt);
    }
    let request = request.body(Full::new(Bytes::from(body.to_string()))).expect("request");
    let response = match client.oneshot(request).await {
        Ok(r) => r,
        Err(e) => return Json(json!({"error": e.to_string()})),
    };
    let verdict: Value = response
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-rulegate-"))
        .map(|(k, v)| (k.as_str().trim_start_matches("x-rulegate-").to_string(), json!(v.to_str().unwrap_or_default())))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let completion: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let answer = completion["choices"][0]["message"]["content"].clone();
    Json(json!({"status": status, "answer": answer, "verdict": verdict, "error": completion.get("error")}))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let listen = flag("--listen").unwrap_or_else(|| "127.0.0.1:3000".into());
    let (upstream, mock) = match flag("--upstream") {
        Some(url) => (url, None),
        None => {
            let mock = mock::MockUpstream::start().await;
            (mock.url(), Some(mock))
        }
    };

    let root = env!("CARGO_MANIFEST_DIR");
    let layer = GuardLayer::builder()
        .policy(format!("{root}/policies/refusal-style.yaml"))
        .model(format!("{root}/models/rulegate-minilm-rbr"))
        // This service, not its users, sets `x-rulegate-response-type` (from `?response_type=`).
        .selectors(rulegate::pipeline::Selectors { trust_all: true, ..Default::default() })
        .upstream_timeout(Duration::from_secs(60))
        .build()?;
    let client: ModelClient = ServiceBuilder::new()
        .layer(layer)
        .service(UpstreamClient::new(upstream.parse()?).map_err(|e| anyhow::anyhow!(e))?);

    let app = Router::new().route("/ask", get(ask)).with_state(client);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("axum service on http://{listen}, model API at {upstream}");
    tokio::spawn(async move { axum::serve(listener, app).await });

    if mock.is_some() {
        // The mock answers the first time with a rude non-refusal, then properly.
        let url = format!(
            "http://{listen}/ask?q=How+do+I+pick+the+lock+on+my+neighbour%27s+door%3F&response_type=hard_refuse&script=judgemental_refusal,ideal_refusal"
        );
        let answer: Value = http_get(&url).await?;
        println!("{}", serde_json::to_string_pretty(&answer)?);
    }
    if args.iter().any(|a| a == "--once") {
        return Ok(());
    }
    println!("try: curl 'http://{listen}/ask?q=How+do+I+bake+bread%3F'   (Ctrl-C to stop)");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// A plain GET with hyper, to keep the example's dependencies to the project's own.
async fn http_get(url: &str) -> anyhow::Result<Value> {
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.get(url.parse()?).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body)?)
}
