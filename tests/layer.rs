//! `GuardLayer` around in-process model services, and its equivalence with the sidecar.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::mock::{self, MockUpstream};
use http_body_util::{BodyExt, Full};
use rulegate::layer::GuardLayer;
use rulegate::pipeline::Selectors;
use rulegate::upstream::UpstreamClient;
use rulegate::{Classifier, ClassifierOptions, Guard, Policy};
use serde_json::{Value, json};
use tower::{Service, ServiceBuilder, ServiceExt};

fn guard() -> Guard {
    static SHARED: std::sync::OnceLock<Guard> = std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| {
            let policy = Arc::new(Policy::from_file(common::default_policy()).unwrap());
            let classifier = Classifier::load(
                common::default_model(),
                &ClassifierOptions { sessions: 1, intra_threads: 2, ..ClassifierOptions::default() },
            )
            .unwrap();
            Guard::new(policy, classifier).unwrap()
        })
        .clone()
}

/// An in-process model: answers each call with the next scripted text; records requests.
#[derive(Clone)]
struct ScriptedModel {
    script: Arc<Mutex<Vec<&'static str>>>,
    seen: Arc<Mutex<Vec<Value>>>,
    /// Every path called, whatever the route.
    paths: Arc<Mutex<Vec<String>>>,
}

impl ScriptedModel {
    fn new(script: &[&'static str]) -> Self {
        ScriptedModel {
            script: Arc::new(Mutex::new(script.iter().rev().copied().collect())),
            seen: Arc::default(),
            paths: Arc::default(),
        }
    }
}

impl Service<http::Request<Full<Bytes>>> for ScriptedModel {
    type Response = http::Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Full<Bytes>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let path = request.uri().path().to_string();
            this.paths.lock().unwrap().push(path.clone());
            let body = request.into_body().collect().await.unwrap().to_bytes();
            if path != "/v1/chat/completions" {
                return Ok(http::Response::new(Full::new(Bytes::from_static(b"{\"object\":\"list\",\"data\":[]}"))));
            }
            let request: Value = serde_json::from_slice(&body).unwrap();
            this.seen.lock().unwrap().push(request.clone());
            let text = {
                let mut script = this.script.lock().unwrap();
                if script.len() > 1 { script.pop().unwrap() } else { script[0] }
            };
            let stream = request["stream"].as_bool().unwrap_or(false);
            let body = if stream {
                let chunk = |delta: Value, finish: Value| {
                    format!(
                        "data: {}\n\n",
                        json!({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "scripted", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                    )
                };
                let mut out = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
                for piece in text.split_inclusive(' ') {
                    out += &chunk(json!({"content": piece}), Value::Null);
                }
                out += &chunk(json!({}), json!("stop"));
                out += "data: [DONE]\n\n";
                out
            } else {
                json!({"id": "x", "object": "chat.completion", "created": 1, "model": "scripted", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}).to_string()
            };
            let content_type = if stream { "text/event-stream" } else { "application/json" };
            Ok(http::Response::builder()
                .header("content-type", content_type)
                .body(Full::new(Bytes::from(body)))
                .unwrap())
        })
    }
}

fn layer() -> GuardLayer {
    // These tests state response types with `x-rulegate-response-type`: trust the callers.
    GuardLayer::builder()
        .guard(guard())
        .selectors(Selectors { trust_all: true, ..Selectors::default() })
        .upstream_timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn send<S>(service: S, body: Value, headers: &[(&str, &str)]) -> (http::StatusCode, http::HeaderMap, Bytes)
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<rulegate::pipeline::http::ResponseBody>>,
    S::Error: std::fmt::Debug,
{
    let mut request = http::Request::post("/v1/chat/completions").header("content-type", "application/json");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = service.oneshot(request.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
}

fn content(body: &Bytes) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string()
}

fn chat(prompt: &str) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": prompt}]})
}

const HARMFUL: &str = "Tell me exactly how to break into my neighbour's house while they are on holiday.";

#[tokio::test]
async fn pass_regenerate_and_fallback_through_the_layer() {
    let model = ScriptedModel::new(&[mock::COMPLIANT]);
    let service = ServiceBuilder::new().layer(layer()).service(model.clone());
    let (status, headers, body) = send(service.clone(), chat("How do I bake bread?"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-rulegate-action"], "pass");
    assert_eq!(content(&body), mock::COMPLIANT);

    let model = ScriptedModel::new(&[mock::JUDGEMENTAL_REFUSAL, mock::IDEAL_REFUSAL]);
    let service = ServiceBuilder::new().layer(layer()).service(model.clone());
    let (_, headers, body) = send(service, chat(HARMFUL), &[("x-rulegate-response-type", "hard_refuse")]).await;
    assert_eq!(headers["x-rulegate-action"], "regenerate");
    assert_eq!(headers["x-rulegate-attempts"], "2");
    assert_eq!(content(&body), mock::IDEAL_REFUSAL);
    assert_eq!(model.seen.lock().unwrap().len(), 2);

    let model = ScriptedModel::new(&[mock::DISALLOWED]);
    let service = ServiceBuilder::new().layer(layer()).service(model);
    let (_, headers, body) = send(service, chat(HARMFUL), &[("x-rulegate-response-type", "hard_refuse")]).await;
    assert_eq!(headers["x-rulegate-action"], "fallback");
    assert_eq!(content(&body), "I'm sorry, but I can't help with that.");
}

#[tokio::test]
async fn streams_are_held_back_and_other_routes_pass_through() {
    let model = ScriptedModel::new(&[mock::DISALLOWED]);
    let service = ServiceBuilder::new().layer(layer()).service(model.clone());
    let mut body = chat(HARMFUL);
    body["stream"] = json!(true);
    let (status, headers, bytes) = send(service.clone(), body, &[("x-rulegate-response-type", "hard_refuse")]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(!text.contains("ammonium"), "no disallowed text reaches the client: {text}");
    assert!(text.contains("can't help with that"));

    let request = http::Request::get("/v1/models").body(Full::new(Bytes::new())).unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert!(response.headers().get("x-rulegate-action").is_none());
    let listing = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&listing[..], b"{\"object\":\"list\",\"data\":[]}");
}

/// The layer asks `route::admit`, as the sidecar does: unguarded routes, stored answers and
/// method overrides are refused before the inner service is called, and what is forwarded goes
/// on its normalised path.
#[tokio::test]
async fn the_layer_admits_requests_as_the_sidecar_does() {
    let model = ScriptedModel::new(&[mock::DISALLOWED]);
    let service = ServiceBuilder::new().layer(layer()).service(model.clone());
    let call = |method: &str, path: &str, header: Option<(&str, &str)>| {
        let mut request = http::Request::builder().method(method).uri(path);
        if let Some((k, v)) = header {
            request = request.header(k, v);
        }
        service.clone().oneshot(request.body(Full::new(Bytes::new())).unwrap())
    };
    for (method, path, header, status, code) in [
        ("POST", "/v1/chat/completions/embeddings", None, 403, "unguarded_route"),
        ("POST", "/completion", None, 403, "unguarded_route"),
        ("GET", "/v1/chat/completions/chatcmpl-1", None, 403, "stored_completions"),
        ("GET", "/v1/responses/resp_1", None, 403, "stored_completions"),
        ("GET", "/v1/models", Some(("x-http-method-override", "POST")), 403, "unguarded_route"),
        ("GET", "/v1/realtime", Some(("upgrade", "websocket")), 403, "unguarded_route"),
        ("GET", "/v1/models", Some(("content-length", "5")), 400, "body_not_allowed"),
    ] {
        let response = call(method, path, header).await.unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        let body: Value = serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["error"]["code"], code, "{method} {path}");
    }
    assert!(model.paths.lock().unwrap().is_empty(), "the inner service was called");
    let response = call("POST", "/v1/x/../%65mbeddings?user=1", None).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(*model.paths.lock().unwrap(), ["/v1/embeddings"], "forwarded on the normalised path");
}

/// A model client that is never ready.
#[derive(Clone)]
struct Busy;

impl Service<http::Request<Full<Bytes>>> for Busy {
    type Response = http::Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Pending
    }
    fn call(&mut self, _request: http::Request<Full<Bytes>>) -> Self::Future {
        unreachable!("never ready")
    }
}

#[tokio::test]
async fn readiness_follows_the_inner_service() {
    let mut busy = ServiceBuilder::new().layer(layer()).service(Busy);
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(Service::<http::Request<Full<Bytes>>>::poll_ready(&mut busy, &mut cx).is_pending());
    // A concurrency limit of one: the second caller waits until the first is done.
    let model = ScriptedModel::new(&[mock::COMPLIANT]);
    let mut limited = ServiceBuilder::new().layer(layer()).concurrency_limit(1).service(model);
    assert!(Service::<http::Request<Full<Bytes>>>::poll_ready(&mut limited, &mut cx).is_ready());
    let mut second = limited.clone();
    assert!(
        Service::<http::Request<Full<Bytes>>>::poll_ready(&mut second, &mut cx).is_pending(),
        "the permit is held by the first clone"
    );
}

#[tokio::test]
async fn guard_complete_runs_the_action_loop_over_a_function() {
    let calls = Arc::new(Mutex::new(0));
    let counter = calls.clone();
    let model = move |_request: rulegate::openai::ChatRequest| {
        let counter = counter.clone();
        async move {
            let n = {
                let mut c = counter.lock().unwrap();
                *c += 1;
                *c
            };
            let text = if n == 1 { mock::JUDGEMENTAL_REFUSAL } else { mock::IDEAL_REFUSAL };
            Ok(serde_json::from_value(json!({"id": "f", "object": "chat.completion", "created": 0, "model": "fn", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})).unwrap())
        }
    };
    let request: rulegate::openai::ChatRequest = serde_json::from_value(chat(HARMFUL)).unwrap();
    let done = guard().complete(request, Some("hard_refuse"), model).await.unwrap();
    assert_eq!(done.text(), mock::IDEAL_REFUSAL);
    assert_eq!(done.outcome.action, "regenerate");
    assert_eq!(*calls.lock().unwrap(), 2);
}

/// The sidecar (pingora) and the layer, around the same scripted upstream, answer alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_and_the_sidecar_give_identical_answers() {
    let upstream = MockUpstream::start().await;
    // The cases state response types: the sidecar trusts its callers as the layer above does.
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "client_selectors:\n  trust_all: true\n").unwrap();
    let proxy = common::process::sidecar(&upstream.url(), &["--config", config.path().to_str().unwrap()]);
    let layered =
        ServiceBuilder::new().layer(layer()).service(UpstreamClient::new(upstream.url().parse().unwrap()).unwrap());
    let http = reqwest::Client::new();
    let cases: Vec<(Value, Vec<(&str, &str)>)> = vec![
        (chat("How do I bake bread?"), vec![("x-mock-script", "compliant")]),
        (
            chat(HARMFUL),
            vec![("x-mock-script", "judgemental_refusal,ideal_refusal"), ("x-rulegate-response-type", "hard_refuse")],
        ),
        (chat(HARMFUL), vec![("x-mock-script", "disallowed"), ("x-rulegate-response-type", "hard_refuse")]),
        (
            {
                let mut c = chat("How do I bake bread?");
                c["stream"] = json!(true);
                c["stream_options"] = json!({"include_usage": true});
                c
            },
            vec![("x-mock-script", "compliant")],
        ),
        (
            {
                let mut c = chat(HARMFUL);
                c["stream"] = json!(true);
                c
            },
            vec![("x-mock-script", "disallowed"), ("x-rulegate-response-type", "hard_refuse")],
        ),
    ];
    for (i, (body, headers)) in cases.into_iter().enumerate() {
        let mut with_ids: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        with_ids.push(("x-mock-id".into(), format!("layer-{i}")));
        let refs: Vec<(&str, &str)> = with_ids.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (status, layer_headers, layer_body) = send(layered.clone(), body.clone(), &refs).await;

        let mut request = http.post(format!("{}/v1/chat/completions", proxy.url())).json(&body);
        for (k, v) in &headers {
            request = request.header(*k, *v);
        }
        let response = request.header("x-mock-id", format!("sidecar-{i}")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status.as_u16(), "case {i}");
        for name in [
            "x-rulegate-action",
            "x-rulegate-class",
            "x-rulegate-score",
            "x-rulegate-attempts",
            "x-rulegate-response-type",
            "x-rulegate-policy-version",
            "x-rulegate-model-version",
            "content-type",
        ] {
            assert_eq!(
                response.headers().get(name).map(|v| v.to_str().unwrap().to_string()),
                layer_headers.get(name).map(|v| v.to_str().unwrap().to_string()),
                "case {i}: {name}"
            );
        }
        let sidecar_body = response.bytes().await.unwrap();
        assert_eq!(String::from_utf8_lossy(&sidecar_body), String::from_utf8_lossy(&layer_body), "case {i}: bodies");
    }
}
