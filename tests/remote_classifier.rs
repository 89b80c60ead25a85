//! The remote classifier backend (Open Inference Protocol): against Seldon MLServer running the
//! shipped `model.onnx` (deploy/mlserver), remote verdicts equal in-process ones over HTTP and
//! gRPC; against a scripted server (fault injection), retries, the circuit breaker, timeouts
//! and the hot swap of the served model version.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use rulegate::classifier::{Backend, PairText, Protocol, RemoteOptions};
use rulegate::reload::{GuardStore, StoreConfig};
use rulegate::{Classifier, ClassifierError, ClassifierOptions};

/// MLServer on free loopback ports serving the shipped model with deploy/mlserver's runtime;
/// stopped on drop.
struct MlServer {
    child: Child,
    http: u16,
    grpc: u16,
    _dir: tempfile::TempDir,
}

impl Drop for MlServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mlserver() -> MlServer {
    let repo = common::repo();
    let bin = repo.join(".venv-mlserver/bin/mlserver");
    assert!(
        bin.is_file(),
        "MLServer is not installed: run `make setup` (scripts/setup-mlserver.sh creates .venv-mlserver)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (http, grpc, metrics) =
        (common::process::free_port(), common::process::free_port(), common::process::free_port());
    let deploy = repo.join("deploy/mlserver");
    let mut settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy.join("settings.json")).unwrap()).unwrap();
    settings["http_port"] = http.into();
    settings["grpc_port"] = grpc.into();
    settings["metrics_port"] = metrics.into();
    settings["host"] = "127.0.0.1".into();
    std::fs::write(dir.path().join("settings.json"), settings.to_string()).unwrap();
    let name = "rulegate-minilm-rbr";
    let mut model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy.join(name).join("model-settings.json")).unwrap()).unwrap();
    model["parameters"]["uri"] = common::default_model().display().to_string().into();
    std::fs::create_dir(dir.path().join(name)).unwrap();
    std::fs::write(dir.path().join(name).join("model-settings.json"), model.to_string()).unwrap();
    let log = std::fs::File::create(dir.path().join("mlserver.log")).unwrap();
    let child = Command::new(&bin)
        .arg("start")
        .arg(dir.path())
        .env("PYTHONPATH", &deploy)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("start mlserver");
    let server = MlServer { child, http, grpc, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(90);
    let ready = format!("http://127.0.0.1:{http}/v2/models/{name}/ready");
    while Instant::now() < deadline {
        if answers_200(&ready) {
            return server;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let text = std::fs::read_to_string(server._dir.path().join("mlserver.log")).unwrap_or_default();
    panic!("MLServer did not become ready in 90 s; its log:\n{text}");
}

/// Whether `url` (`http://host:port/path`) answers 200, over a plain socket.
fn answers_200(url: &str) -> bool {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Ok(mut stream) = std::net::TcpStream::connect(host) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

fn local_options() -> ClassifierOptions {
    ClassifierOptions { sessions: 1, intra_threads: 1, max_batch: 8, ..ClassifierOptions::default() }
}

fn remote_options(url: String, protocol: Protocol) -> ClassifierOptions {
    let mut remote = RemoteOptions::new(url);
    remote.protocol = protocol;
    remote.timeout = Duration::from_secs(10);
    ClassifierOptions { sessions: 2, max_batch: 8, backend: Backend::Remote(remote), ..ClassifierOptions::default() }
}

/// The model directory without `model.onnx`: all a remote backend needs.
fn model_without_graph() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["manifest.json", "tokenizer.json"] {
        std::fs::copy(common::default_model().join(file), dir.path().join(file)).unwrap();
    }
    dir
}

fn pairs() -> Vec<PairText> {
    let render = |prompt: &serde_json::Value| match prompt {
        serde_json::Value::String(s) => format!("user: {s}"),
        other => other
            .as_array()
            .unwrap()
            .iter()
            .map(|m| format!("{}: {}", m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    let mut pairs: Vec<PairText> = common::read_lines(&common::repo().join("examples/sample.jsonl"))
        .iter()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            PairText { prompt: render(&v["prompt"]), completion: v["completion"].as_str().unwrap().to_string() }
        })
        .collect();
    // A pair longer than the model's window (truncated), and an empty completion.
    pairs.push(PairText { prompt: "user: tell me a story".into(), completion: "Once upon a time. ".repeat(120) });
    pairs.push(PairText { prompt: "user: hi".into(), completion: String::new() });
    pairs
}

#[test]
fn remote_verdicts_equal_local_ones_over_http_and_grpc() {
    let server = mlserver();
    let local = Classifier::load(common::default_model(), &local_options()).unwrap();
    let expected = local.classify_blocking(pairs()).unwrap();
    let dir = model_without_graph();
    for (protocol, port) in [(Protocol::Http, server.http), (Protocol::Grpc, server.grpc)] {
        let remote =
            Classifier::load(dir.path(), &remote_options(format!("http://127.0.0.1:{port}"), protocol)).unwrap();
        assert_ne!(remote.version(), local.version(), "the served model is part of the version");
        let placement = remote.placement();
        assert!(placement.starts_with(&format!("remote http://127.0.0.1:{port} rulegate-minilm-rbr:")), "{placement}");
        assert_eq!(local.placement(), "Cpu");
        assert!(remote.version().starts_with(&format!("{}+", local.manifest().version)));
        let got = remote.classify_blocking(pairs()).unwrap();
        assert_eq!(got.len(), expected.len());
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g.truncated, e.truncated, "{protocol:?} pair {i}");
            let close = |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
            assert!(close(&g.propositions, &e.propositions), "{protocol:?} pair {i}: {g:?} vs {e:?}");
            assert!(close(g.response_type.as_deref().unwrap(), e.response_type.as_deref().unwrap()));
            assert!((g.prm.unwrap() - e.prm.unwrap()).abs() < 1e-5);
        }
        // Concurrent callers are merged into batches and still get their own rows back.
        let handles: Vec<_> = (0..6)
            .map(|k| {
                let remote = remote.clone();
                std::thread::spawn(move || (k, remote.classify_blocking(vec![pairs()[k].clone()]).unwrap()))
            })
            .collect();
        for h in handles {
            let (k, values) = h.join().unwrap();
            assert!((values[0].propositions[0] - expected[k].propositions[0]).abs() < 1e-5, "{protocol:?} row {k}");
        }
    }
}

#[test]
fn a_server_that_goes_away_fails_calls_fast_once_the_circuit_opens() {
    let server = mlserver();
    let dir = model_without_graph();
    let mut options = remote_options(format!("http://127.0.0.1:{}", server.http), Protocol::Http);
    if let Backend::Remote(remote) = &mut options.backend {
        remote.breaker_failures = 2;
        remote.breaker_cooldown = Duration::from_secs(60);
        remote.retries = 0;
        remote.timeout = Duration::from_secs(1);
    }
    let remote = Classifier::load(dir.path(), &options).unwrap();
    drop(server);
    let pair = || vec![PairText { prompt: "user: hi".into(), completion: "Hello!".into() }];
    for _ in 0..2 {
        assert!(matches!(remote.classify_blocking(pair()), Err(ClassifierError::Remote(_))));
    }
    let started = Instant::now();
    let refused = remote.classify_blocking(pair());
    assert!(
        matches!(&refused, Err(ClassifierError::Remote(m)) if m.contains("circuit open")),
        "the third call is refused by the open circuit: {refused:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(500), "without a network call");
}

#[test]
fn a_missing_server_or_model_fails_the_load_with_a_clear_error() {
    let dir = model_without_graph();
    let port = common::process::free_port();
    let mut options = remote_options(format!("http://127.0.0.1:{port}"), Protocol::Http);
    if let Backend::Remote(remote) = &mut options.backend {
        remote.timeout = Duration::from_millis(500);
    }
    let err = Classifier::load(dir.path(), &options).unwrap_err().to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    let bad = remote_options("ftp://somewhere".into(), Protocol::Grpc);
    let err = Classifier::load(dir.path(), &bad).unwrap_err().to_string();
    assert!(err.contains("http://"), "{err}");
}

/// A scripted Open Inference Protocol server: it lists `version`, answers inference with
/// fixed logits, and fails the first `fail_first` inference calls with 503.
#[derive(Clone, Default)]
struct Script {
    version: Arc<Mutex<String>>,
    fail_first: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicUsize>,
}

fn scripted(script: Script) -> (SocketAddr, tokio::runtime::Runtime) {
    use axum::extract::{Json, Path as UrlPath, State};
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::default_model().join("manifest.json")).unwrap()).unwrap();
    let propositions = manifest["heads"].as_array().unwrap().iter().filter(|h| h["kind"] == "proposition").count();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    async fn metadata(State((s, _)): State<(Script, usize)>) -> Json<serde_json::Value> {
        let version = s.version.lock().unwrap().clone();
        Json(serde_json::json!({"name": "rulegate-minilm-rbr", "versions": [version], "platform": "test",
            "inputs": [{"name": "input_ids"}, {"name": "attention_mask"}, {"name": "token_type_ids"}],
            "outputs": [{"name": "proposition_logits"}, {"name": "response_type_logits"}, {"name": "prm_logit"}]}))
    }
    async fn infer(
        State((s, k)): State<(Script, usize)>,
        UrlPath(path): UrlPath<Vec<(String, String)>>,
        Json(body): Json<serde_json::Value>,
    ) -> Result<Json<serde_json::Value>, StatusCode> {
        s.calls.fetch_add(1, Ordering::SeqCst);
        let delay = s.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay as u64)).await;
        }
        if s.fail_first.load(Ordering::SeqCst) > 0 {
            s.fail_first.fetch_sub(1, Ordering::SeqCst);
            return Err(StatusCode::SERVICE_UNAVAILABLE);
        }
        let asked = path.iter().find(|(k, _)| k == "version").map(|(_, v)| v.clone()).unwrap_or_default();
        if asked != *s.version.lock().unwrap() {
            return Err(StatusCode::NOT_FOUND);
        }
        let rows = body["inputs"][0]["shape"][0].as_u64().unwrap() as usize;
        Ok(Json(serde_json::json!({"outputs": [
            {"name": "proposition_logits", "shape": [rows, k], "datatype": "FP32", "data": vec![0.0; rows * k]},
            {"name": "response_type_logits", "shape": [rows, 4], "datatype": "FP32", "data": vec![0.0; rows * 4]},
            {"name": "prm_logit", "shape": [rows, 1], "datatype": "FP32", "data": vec![0.0; rows]},
        ]})))
    }
    let app = axum::Router::new()
        .route("/v2/models/{name}/versions/{version}", get(metadata))
        .route("/v2/models/{name}", get(metadata))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .with_state((script, propositions));
    runtime.spawn(async move { axum::serve(listener, app).await });
    (addr, runtime)
}

#[test]
fn transient_failures_are_retried_and_slow_answers_time_out() {
    let script = Script::default();
    *script.version.lock().unwrap() = "1".into();
    let (addr, _server) = scripted(script.clone());
    let dir = model_without_graph();
    let mut options = remote_options(format!("http://{addr}"), Protocol::Http);
    if let Backend::Remote(remote) = &mut options.backend {
        remote.retries = 2;
        remote.timeout = Duration::from_millis(300);
    }
    let remote = Classifier::load(dir.path(), &options).unwrap();
    let pair = || vec![PairText { prompt: "user: hi".into(), completion: "Hello!".into() }];
    let before = script.calls.load(Ordering::SeqCst);
    script.fail_first.store(2, Ordering::SeqCst);
    let values = remote.classify_blocking(pair()).expect("two 503s, then an answer");
    assert_eq!(values[0].propositions[0], 0.5, "sigmoid of the scripted zero logit");
    assert_eq!(script.calls.load(Ordering::SeqCst) - before, 3);
    script.fail_first.store(3, Ordering::SeqCst);
    let failed = remote.classify_blocking(pair());
    assert!(matches!(&failed, Err(ClassifierError::Remote(m)) if m.contains("503")), "{failed:?}");
    script.fail_first.store(0, Ordering::SeqCst);
    script.delay_ms.store(1000, Ordering::SeqCst);
    let started = Instant::now();
    let slow = remote.classify_blocking(pair());
    assert!(matches!(&slow, Err(ClassifierError::Remote(m)) if m.contains("no answer within")), "{slow:?}");
    assert!(started.elapsed() < Duration::from_millis(1500), "3 attempts of 300 ms, not 3 s");
}

#[test]
fn a_new_version_on_the_server_is_swapped_in_on_reload() {
    let script = Script::default();
    *script.version.lock().unwrap() = "1".into();
    let (addr, server) = scripted(script.clone());
    let dir = model_without_graph();
    let store = GuardStore::load(StoreConfig {
        policies: IndexMap::from([("default".to_string(), common::default_policy())]),
        default_policy: None,
        api_keys: IndexMap::new(),
        model: PathBuf::from(dir.path()),
        classifier: remote_options(format!("http://{addr}"), Protocol::Http),
        cache: None,
    })
    .unwrap();
    let first = store.status().model.version;
    let unchanged = store.reload();
    assert!(unchanged.ok && unchanged.items.iter().all(|i| i.outcome == "unchanged"), "{unchanged:?}");
    *script.version.lock().unwrap() = "2".into();
    let report = store.reload();
    assert!(report.ok, "{report:?}");
    assert!(report.items.iter().any(|i| i.kind == "model" && i.outcome == "reloaded"), "{report:?}");
    let second = store.status().model.version;
    assert_ne!(first, second, "the served version is part of the model version");
    // The new classifier asks for version 2 (the scripted server refuses any other).
    let guard = store.guard("default").unwrap();
    let values = guard
        .judge()
        .classifier()
        .classify_blocking(vec![PairText { prompt: "user: hi".into(), completion: "Hello!".into() }]);
    assert!(values.is_ok(), "{values:?}");
    // A server that cannot be reached at a reload: the running model keeps serving, and the
    // rejection names the server, not a file.
    drop(server);
    let report = store.reload();
    assert!(!report.ok);
    let error = report.items.iter().find(|i| i.kind == "model").and_then(|i| i.error.clone()).unwrap_or_default();
    assert!(error.starts_with("inference server: "), "{error}");
    assert_eq!(store.status().model.version, second);
}
