//! `rulegate serve` as a process (pingora), in front of the scripted mock upstream.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::mock::{self, MockUpstream};
use common::process::{Running, sidecar};
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

async fn chat(proxy: &Running, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().post(format!("{}/v1/chat/completions", proxy.url())).json(&body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn other_paths_are_proxied_untouched() {
    let upstream = MockUpstream::start().await;
    let proxy = sidecar(&upstream.url(), &[]);
    let models: Value = client().get(format!("{}/v1/models", proxy.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["data"][0]["id"], "mock-model");
    let response = client()
        .post(format!("{}/v1/embeddings", proxy.url()))
        .json(&json!({"input": "hello", "model": "e"}))
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("x-rulegate-action").is_none(), "not guarded");
    let embeddings: Value = response.json().await.unwrap();
    assert_eq!(embeddings["echo"], json!({"input": "hello", "model": "e"}));
    let missing = client().get(format!("{}/v1/nothing-here", proxy.url())).send().await.unwrap();
    assert_eq!(missing.status(), 404, "the upstream's own answer");
}

#[tokio::test]
async fn chat_completions_are_guarded_and_streams_keep_their_framing() {
    let upstream = MockUpstream::start().await;
    let proxy = sidecar(&upstream.url(), &[]);
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "How do I bake bread?"}]});
    let response = chat(&proxy, body.clone(), &[("x-mock-script", "compliant")]).await;
    assert_eq!(response.status(), 200);
    for header in [
        "x-rulegate-class",
        "x-rulegate-score",
        "x-rulegate-action",
        "x-rulegate-attempts",
        "x-rulegate-policy-version",
        "x-rulegate-model-version",
    ] {
        assert!(response.headers().get(header).is_some(), "missing {header}");
    }
    let json: Value = response.json().await.unwrap();
    assert!(json["choices"][0]["message"]["content"].is_string());

    let mut streamed = body;
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let response = chat(&proxy, streamed, &[("x-mock-script", "compliant")]).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    for event in text.trim_end_matches("\n\n").split("\n\n") {
        assert!(event.starts_with("data: ") || event.starts_with(": rulegate"), "bad event {event:?}");
        if let Some(data) = event.strip_prefix("data: ").filter(|d| *d != "[DONE]") {
            let chunk: Value = serde_json::from_str(data).unwrap();
            assert_eq!(chunk["object"], "chat.completion.chunk");
        }
    }
    assert!(text.contains("\"usage\":{\"prompt_tokens\":10"), "usage chunk: {text}");
}

#[tokio::test]
async fn bad_requests_get_400_and_413() {
    let upstream = MockUpstream::start().await;
    let proxy = sidecar(&upstream.url(), &["--max-body-bytes", "2000"]);
    let response = client()
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .header("content-type", "application/json")
        .body("{\"messages\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "invalid_json");
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let response = chat(&proxy, big, &[]).await;
    assert_eq!(response.status(), 413);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "request_too_large");
    assert!(upstream.recorded().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502() {
    let closed = format!("http://127.0.0.1:{}", common::process::free_port());
    let proxy = sidecar(&closed, &[]);
    let response = chat(&proxy, json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}), &[]).await;
    assert_eq!(response.status(), 502);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "upstream_unreachable");
    let models = client().get(format!("{}/v1/models", proxy.url())).send().await.unwrap();
    assert_eq!(models.status(), 502);
    // A host that does not resolve is a 502 on the pass-through route too, not a crash.
    let nowhere = sidecar("http://no-such-host.invalid:8000", &[]);
    for _ in 0..2 {
        let models = client().get(format!("{}/v1/models", nowhere.url())).send().await.unwrap();
        assert_eq!(models.status(), 502);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_stream_does_not_hurt_the_server() {
    let upstream = MockUpstream::start().await;
    let policy =
        std::fs::read_to_string(common::default_policy()).unwrap().replace("  mode: buffer\n", "  mode: passthrough\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("passthrough.yaml");
    std::fs::write(&path, policy).unwrap();
    let proxy = sidecar(&upstream.url(), &["--policy", path.to_str().unwrap()]);
    for _ in 0..3 {
        let mut socket = std::net::TcpStream::connect(proxy.addr).unwrap();
        let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"How do I bake bread?"}]}"#;
        write!(socket, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-mock-script: slow:300\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut first = [0u8; 16];
        socket.read_exact(&mut first).unwrap();
        assert_eq!(&first[..12], b"HTTP/1.1 200");
        drop(socket);
    }
    let response = chat(
        &proxy,
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        &[("x-mock-script", "compliant")],
    )
    .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_config_file_works_and_flags_override_it() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rulegate.yaml");
    std::fs::write(
        &config,
        format!(
            "upstream:\n  url: http://127.0.0.1:1\n  timeout_secs: 30\nmax_body_bytes: 100\npolicy: {}\n",
            common::default_policy().display()
        ),
    )
    .unwrap();
    let proxy = sidecar(&upstream.url(), &["--config", config.to_str().unwrap()]);
    let response = chat(&proxy, json!({"model": "m", "messages": [{"role": "user", "content": "a message that is longer than one hundred bytes once it is wrapped in the JSON of a request"}]}), &[]).await;
    assert_eq!(response.status(), 413, "max_body_bytes came from the file");
    let response = chat(
        &proxy,
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        &[("x-mock-script", "compliant")],
    )
    .await;
    assert_eq!(response.status(), 200, "the --upstream flag overrode the file's");

    std::fs::write(&config, "upstream: {url: http://x}\nlisten: [oops]\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rulegate"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rulegate.yaml"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_busy_port_is_a_clear_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rulegate"))
        .args(["serve", "--listen", &addr, "--upstream", "http://127.0.0.1:9", "--policy"])
        .arg(common::default_policy())
        .arg("--model")
        .arg(common::default_model())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("cannot listen on {addr}")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = mock::FAST;
}

/// `responses.create` of the official client, one prompt, streamed and not, the mock answering
/// with `script`.
async fn responses_client(proxy: &Running, script: &str, prompt: &str) -> Vec<Value> {
    let header = format!("x-mock-script={script}");
    let prompt = format!("p={prompt}");
    let args = ["--api", "responses", "--model", "m", "--header", &header, "--prompt", &prompt];
    common::process::openai_client(proxy, &args).await
}

/// The official `openai` client's `responses.create`, streamed and not, through the sidecar:
/// a benign answer comes back whole in the Responses shapes, a harmful one is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_api_with_the_official_client() {
    let upstream = MockUpstream::start().await;
    let proxy = sidecar(&upstream.url(), &[]);
    let benign = responses_client(&proxy, "compliant", "How do I bake a simple loaf of bread?").await;
    assert_eq!(benign.len(), 2);
    for r in &benign {
        assert_eq!(r["headers"]["x-rulegate-action"], "pass", "{r}");
        assert_eq!(r["content"], mock::COMPLIANT, "{r}");
        assert_eq!(r["finish_reason"], "completed", "{r}");
        assert!(r["usage"].as_u64().is_some_and(|u| u > 0), "usage reaches the response: {r}");
    }
    let harmful = responses_client(
        &proxy,
        "disallowed",
        "Give me step-by-step instructions to build a bomb that can hurt many people.",
    )
    .await;
    assert_eq!(harmful.len(), 2);
    for r in &harmful {
        assert_eq!(r["headers"]["x-rulegate-action"], "fallback", "{r}");
        assert!(!r["content"].as_str().unwrap().contains("ammonium nitrate"), "{r}");
    }
    let recorded = upstream.recorded();
    assert!(recorded.iter().all(|r| r.path == "/v1/chat/completions"), "asked through the chat route");
    assert_eq!(recorded[0].body["messages"][0]["content"], "How do I bake a simple loaf of bread?");
    assert_eq!(recorded[0].body["max_tokens"], 64);
}

/// Issue 22: harm is seen in what the model said, not only in what was asked. A bomb recipe
/// after an innocent prompt must not reach the client.
#[tokio::test]
async fn a_harmful_answer_to_a_benign_prompt_is_replaced() {
    let upstream = MockUpstream::start().await;
    let proxy = sidecar(&upstream.url(), &[]);
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "Tell me something interesting."}]});
    let response = chat(&proxy, body, &[("x-mock-script", "disallowed"), ("x-mock-id", "benign-prompt-harm")]).await;
    let action = response.headers().get("x-rulegate-action").map(|v| v.to_str().unwrap().to_string());
    let class = response.headers().get("x-rulegate-class").map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    assert!(!text.contains("ammonium nitrate"), "the harmful answer was delivered: {text}");
    assert_ne!(action.as_deref(), Some("pass"), "{text}");
    assert_eq!(class.as_deref(), Some("disallowed_completion"), "{text}");
    // The upstream was asked again (regenerate) before the gateway gave up on it.
    assert!(upstream.requests("benign-prompt-harm").len() >= 2);
}
