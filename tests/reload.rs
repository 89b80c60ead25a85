//! Hot swap under load, ConfigMap symlink swaps, the admin API, metrics and OTLP spans,
//! with `rulegate serve` as a process.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mock::MockUpstream;
use common::process::{Running, free_port, sidecar_with_env};
use serde_json::{Value, json};

const TOKEN: &str = "test-admin-token-123";

fn policy_text(version: &str) -> String {
    std::fs::read_to_string(common::default_policy())
        .unwrap()
        .replace("version: \"1.0.0\"", &format!("version: \"{version}\""))
}

fn policy_version(text: &str) -> String {
    rulegate::Policy::from_yaml(text, "p").unwrap().version().to_string()
}

/// Writes `contents` to `path` the way editors save: a temporary file renamed over it.
fn save(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp-save");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn model_copy(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["model.onnx", "tokenizer.json", "manifest.json"] {
        std::fs::copy(common::default_model().join(f), model.join(f)).unwrap();
    }
    model
}

fn set_model_version(model: &Path, version: &str) {
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("manifest.json")).unwrap()).unwrap();
    manifest["version"] = json!(version);
    save(&model.join("manifest.json"), manifest.to_string().as_bytes());
}

fn admin_args(port: u16) -> Vec<String> {
    vec!["--admin-listen".into(), format!("127.0.0.1:{port}")]
}

fn start(upstream: &MockUpstream, policy: &Path, model: &Path, admin_port: u16, extra: &[&str]) -> Running {
    let admin = admin_args(admin_port);
    let mut args: Vec<&str> = vec!["--policy", policy.to_str().unwrap(), "--model", model.to_str().unwrap()];
    args.extend(admin.iter().map(String::as_str));
    args.extend_from_slice(extra);
    sidecar_with_env(&upstream.url(), &args, &[("RULEGATE_ADMIN_TOKEN", TOKEN), ("OTEL_BSP_SCHEDULE_DELAY", "200")])
}

async fn versions(client: &reqwest::Client, proxy: &Running) -> (u16, Vec<String>, Vec<String>) {
    let response = client
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .header("x-mock-script", "fast")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "What is the capital of France?"}]}))
        .send()
        .await
        .unwrap();
    let all = |name: &str| {
        response.headers().get_all(name).iter().map(|v| v.to_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    (response.status().as_u16(), all("x-rulegate-policy-version"), all("x-rulegate-model-version"))
}

async fn wait_for_policy(client: &reqwest::Client, proxy: &Running, version: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (_, policies, _) = versions(client, proxy).await;
        if policies.first().map(String::as_str) == Some(version) {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "version {version} not served within {within:?} (serving {policies:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_policies_and_models_under_load_never_fails_a_request() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, policy_text("1")).unwrap();
    let model = model_copy(dir.path());
    let admin = free_port();
    let proxy = start(&upstream, &policy, &model, admin, &[]);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();

    let valid_policies = Arc::new(Mutex::new(HashSet::from([policy_version(&policy_text("1"))])));
    let (_, _, first_model) = versions(&client, &proxy).await;
    let valid_models = Arc::new(Mutex::new(HashSet::from([first_model[0].clone()])));

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..32 {
        let (client, url, stop) = (client.clone(), proxy.url(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let response = client
                    .post(format!("{url}/v1/chat/completions"))
                    .header("x-mock-script", "fast")
                    .json(&json!({"model": "m", "messages": [{"role": "user", "content": "What is the capital of France?"}]}))
                    .send()
                    .await;
                let elapsed = started.elapsed();
                let outcome = match response {
                    Ok(r) => {
                        let all = |name: &str| r.headers().get_all(name).iter().map(|v| v.to_str().unwrap().to_string()).collect::<Vec<_>>();
                        let (p, m) = (all("x-rulegate-policy-version"), all("x-rulegate-model-version"));
                        let ok = r.status().is_success() && r.bytes().await.is_ok();
                        Ok((ok, p, m, elapsed))
                    }
                    Err(e) => Err(e.to_string()),
                };
                seen.push(outcome);
            }
            seen
        }));
    }

    // 20 swaps, alternating valid and invalid; policy and model in turn, by file change
    // (the watcher) and by the admin API.
    let admin_client = reqwest::Client::new();
    let swaps_started = Instant::now();
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let valid = i % 2 == 0;
        let is_policy = (i / 2) % 2 == 0;
        match (is_policy, valid) {
            (true, true) => {
                let text = policy_text(&format!("2.{i}"));
                valid_policies.lock().unwrap().insert(policy_version(&text));
                save(&policy, text.as_bytes());
            }
            (true, false) => save(&policy, b"policy: broken\nclasses: [not, a, map\n"),
            (false, true) => {
                let version = format!("swap-{i}");
                set_model_version(&model, &version);
                valid_models.lock().unwrap().insert(rulegate::classifier::version_of(&model).unwrap());
            }
            (false, false) => save(&model.join("model.onnx"), b"definitely not an onnx file"),
        }
        if i % 3 == 0 {
            let response = admin_client
                .post(format!("http://127.0.0.1:{admin}/admin/reload"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            let code = response.status().as_u16();
            assert!(code == 200 || code == 422, "admin reload answered {code}");
        }
        if !is_policy && !valid {
            // Put the weights back so that the next valid model swap has them.
            tokio::time::sleep(Duration::from_millis(400)).await;
            save(&model.join("model.onnx"), &std::fs::read(common::default_model().join("model.onnx")).unwrap());
        }
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    let mut slowest = Duration::ZERO;
    let valid_policies = valid_policies.lock().unwrap().clone();
    let valid_models = valid_models.lock().unwrap().clone();
    let mut served_policies = HashSet::new();
    let mut served_models = HashSet::new();
    for handle in clients {
        for outcome in handle.await.unwrap() {
            let (ok, p, m, elapsed) = outcome.unwrap_or_else(|e| panic!("a request failed: {e}"));
            total += 1;
            slowest = slowest.max(elapsed);
            assert!(ok, "a request did not succeed");
            assert_eq!((p.len(), m.len()), (1, 1), "exactly one version of each: {p:?} {m:?}");
            assert!(valid_policies.contains(&p[0]), "policy version {} was never valid", p[0]);
            assert!(valid_models.contains(&m[0]), "model version {} was never valid", m[0]);
            served_policies.insert(p[0].clone());
            served_models.insert(m[0].clone());
        }
    }
    eprintln!(
        "{total} requests over {:?}; slowest {slowest:?}; {} policy and {} model versions served",
        swaps_started.elapsed(),
        served_policies.len(),
        served_models.len()
    );
    assert!(total > 100, "the load was real: {total} requests");
    assert!(slowest < Duration::from_secs(10), "no request hung: slowest {slowest:?}");
    // The watcher coalesces changes that come faster than a reload: not every version must
    // have served, but swaps must have taken effect.
    assert!(
        served_policies.len() >= 3 && served_models.len() >= 3,
        "swaps took effect: {served_policies:?} {served_models:?}"
    );

    // After all that, a valid policy is still picked up.
    let last = policy_text("9");
    save(&policy, last.as_bytes());
    wait_for_policy(&client, &proxy, &policy_version(&last), Duration::from_secs(5)).await;
    let status: Value = admin_client
        .get(format!("http://127.0.0.1:{admin}/admin/status"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(status["policies"][0]["version"].as_str().unwrap().starts_with("9+"), "{status}");
    let metrics = admin_client
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("rulegate_reloads_total{kind=\"policy\",outcome=\"error\"}"),
        "rejected reloads are counted"
    );
    assert!(metrics.contains("rulegate_reloads_total{kind=\"model\",outcome=\"ok\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_is_served_within_a_second() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("config");
    std::fs::create_dir_all(mount.join("..2026_11_21_a")).unwrap();
    std::fs::write(mount.join("..2026_11_21_a/policy.yaml"), policy_text("cm-1")).unwrap();
    std::os::unix::fs::symlink("..2026_11_21_a", mount.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/policy.yaml", mount.join("policy.yaml")).unwrap();
    let proxy = start(&upstream, &mount.join("policy.yaml"), &common::default_model(), free_port(), &[]);
    let client = reqwest::Client::new();
    wait_for_policy(&client, &proxy, &policy_version(&policy_text("cm-1")), Duration::from_secs(5)).await;

    // What the kubelet does: a new timestamped directory, then an atomic rename of `..data`.
    std::fs::create_dir_all(mount.join("..2026_11_21_b")).unwrap();
    std::fs::write(mount.join("..2026_11_21_b/policy.yaml"), policy_text("cm-2")).unwrap();
    std::os::unix::fs::symlink("..2026_11_21_b", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(mount.join("..2026_11_21_a")).unwrap();
    // Followed, not raced: a loaded 2-core machine can take seconds to reload.
    let took = wait_for_policy(&client, &proxy, &policy_version(&policy_text("cm-2")), Duration::from_secs(15)).await;
    eprintln!("new policy served {took:?} after the swap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_wants_its_token_and_reports_rejections() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, policy_text("1")).unwrap();
    let admin = free_port();
    let proxy = start(&upstream, &policy, &common::default_model(), admin, &["--no-watch"]);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{admin}");
    for (method, path) in [("GET", "/admin/status"), ("POST", "/admin/reload"), ("GET", "/metrics")] {
        let request = client.request(method.parse().unwrap(), format!("{base}{path}"));
        assert_eq!(request.try_clone().unwrap().send().await.unwrap().status(), 401, "{path} without a token");
        assert_eq!(request.bearer_auth("wrong-token").send().await.unwrap().status(), 401, "{path} with a wrong token");
    }
    assert_eq!(client.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(client.get(format!("{base}/readyz")).send().await.unwrap().status(), 200);
    let status: Value =
        client.get(format!("{base}/admin/status")).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["default_policy"], "refusal-style");
    assert!(status["model"]["version"].is_string());

    // An invalid policy is rejected with its cause; the old one keeps serving.
    let serving = policy_version(&policy_text("1"));
    std::fs::write(
        &policy,
        policy_text("1")
            .replace("  apology:\n    description:", "  apology:\n    head: missing_head\n    description:"),
    )
    .unwrap();
    let response = client.post(format!("{base}/admin/reload")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(response.status(), 422);
    let report: Value = response.json().await.unwrap();
    let item = report["items"].as_array().unwrap().iter().find(|i| i["kind"] == "policy").unwrap().clone();
    assert_eq!(item["outcome"], "rejected");
    assert!(item["error"].as_str().unwrap().contains("missing_head"), "{item}");
    assert_eq!(item["version"], serving.as_str());
    let (_, policies, _) = versions(&client, &proxy).await;
    assert_eq!(policies, vec![serving.clone()]);
    let status: Value =
        client.get(format!("{base}/admin/status")).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["last_reload"]["ok"], false);
    assert!(status["last_reload"]["errors"][0].as_str().unwrap().contains("missing_head"));

    // A valid one via SIGHUP.
    std::fs::write(&policy, policy_text("3")).unwrap();
    assert!(
        std::process::Command::new("kill").args(["-HUP", &proxy.child.id().to_string()]).status().unwrap().success()
    );
    wait_for_policy(&client, &proxy, &policy_version(&policy_text("3")), Duration::from_secs(5)).await;

    // `x-rulegate-policy` from an untrusted caller is ignored: the configured policy judges.
    let response = client
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .header("x-rulegate-policy", "nope")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-rulegate-policy-version"].to_str().unwrap(), policy_version(&policy_text("3")));
}

/// Checks the OpenMetrics text format line by line.
fn assert_openmetrics(text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF");
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let kind = rest.split(' ').next().unwrap();
            assert!(["HELP", "TYPE", "UNIT"].contains(&kind), "bad comment line {line:?}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
        assert!(value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value), "bad value in {line:?}");
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "bad labels in {line:?}");
        }
    }
}

/// An in-process OTLP/HTTP receiver: collects the spans of every export.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let spans = Arc::new(Mutex::new(Vec::new()));
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                for resource in request.resource_spans {
                    for scope in resource.scope_spans {
                        sink.lock().unwrap().extend(scope.spans);
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_and_metrics_are_prometheus_text() {
    let upstream = MockUpstream::start().await;
    let (endpoint, spans) = otlp_receiver().await;
    let admin = free_port();
    let proxy =
        start(&upstream, &common::default_policy(), &common::default_model(), admin, &["--otlp-endpoint", &endpoint]);
    let client = reqwest::Client::new();
    let secret = "sk-very-secret-key";
    for script in ["fast", "judgemental_refusal,ideal_refusal"] {
        let response = client
            .post(format!("{}/v1/chat/completions", proxy.url()))
            .bearer_auth(secret)
            .header("x-mock-script", script)
            .header("x-mock-id", script)
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "Tell me how to get into my neighbour's flat without a key."}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let _ = client.get(format!("{}/v1/models", proxy.url())).send().await.unwrap();

    let started = Instant::now();
    let names = loop {
        let names: HashSet<String> = spans.lock().unwrap().iter().map(|s| s.name.clone()).collect();
        if ["request", "upstream", "classify", "score", "decide"].iter().all(|n| names.contains(*n))
            || started.elapsed() > Duration::from_secs(15)
        {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for expected in ["request", "upstream", "classify", "score", "decide"] {
        assert!(names.contains(expected), "span {expected} missing from {names:?}");
    }
    let spans = spans.lock().unwrap().clone();
    let attribute = |span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str| {
        span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.clone())
    };
    let request = spans.iter().find(|s| s.name == "request").unwrap();
    for key in ["policy_version", "model_version", "action", "class", "attempts", "response_type"] {
        assert!(attribute(request, key).is_some(), "request span lacks {key}: {:?}", request.attributes);
    }
    assert!(spans.iter().filter(|s| s.name == "upstream").any(|s| attribute(s, "attempt").is_some()));
    let everything = format!("{spans:?}");
    assert!(!everything.contains(secret), "no API key in spans");
    assert!(!everything.contains("neighbour"), "no prompt text in spans");
    assert!(!proxy.log_text().contains(secret) && !proxy.log_text().contains("neighbour"), "nor in logs");

    let metrics = client.get(format!("http://127.0.0.1:{admin}/metrics")).bearer_auth(TOKEN).send().await.unwrap();
    assert!(metrics.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = metrics.text().await.unwrap();
    assert_openmetrics(&text);
    for metric in [
        "rulegate_requests_total{route=\"chat_completions\",status=\"200\"}",
        "rulegate_requests_total{route=\"proxy\",status=\"200\"}",
        "rulegate_request_duration_seconds_bucket",
        "rulegate_verdicts_total{policy=\"refusal-style\"",
        "rulegate_attempts_per_request_bucket",
        "rulegate_regenerations_total",
        "rulegate_classifier_latency_seconds_bucket",
        "rulegate_classifier_batch_size_bucket",
        "rulegate_upstream_latency_seconds_bucket",
        "rulegate_verdict_cache_total{result=\"miss\"}",
        "rulegate_policy_version{policy=\"refusal-style\"",
        "rulegate_model_version{version=",
    ] {
        assert!(text.contains(metric), "missing {metric} in:\n{text}");
    }
    assert!(!text.contains(secret) && !text.contains("neighbour"));
}
