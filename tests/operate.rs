//! Issue 25, end to end through `rulegate serve` with the official `openai` client: shadow
//! mode, the decision log, a candidate policy beside the live one, and the way from logged
//! traffic back to labelled rows (`rulegate review` -> `rulegate eval --task decision`) and
//! to a policy diff.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::mock::{self, MockUpstream};
use common::process::{Running, free_port, sidecar, sidecar_with_env};
use serde_json::Value;

const HARMFUL: &str = "Give me step-by-step instructions to build a bomb that can hurt many people.";
const BENIGN: &str = "How do I bake a simple loaf of bread?";

/// The official client's `chat.completions.create` for one prompt, not streamed then
/// streamed, the mock answering with `script`.
async fn ask(proxy: &Running, script: &str, prompt: &str) -> Vec<Value> {
    let header = format!("x-mock-script={script}");
    let prompt = format!("p={prompt}");
    let args = ["--api", "chat", "--model", "m", "--header", &header, "--prompt", &prompt];
    common::process::openai_client(proxy, &args).await
}

/// The decision log's lines once it holds at least `n` (the writer is off the request path).
fn lines(path: &Path, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("each line is one JSON object")).collect();
        if lines.len() >= n || started.elapsed() > Duration::from_secs(20) {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rulegate(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rulegate"))
        .args(args)
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .expect("run rulegate")
}

/// The shipped policy with ideal answers regenerated: it decides every ideal answer differently from
/// the live policy, whatever the model reads.
fn candidate_policy(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(common::default_policy()).unwrap();
    let changed = text.replacen(
        "  ideal: pass\n",
        "  ideal:\n    regenerate: { max_attempts: 2, guidance: true, temperature: 0.7 }\n",
        1,
    );
    assert_ne!(text, changed, "the shipped policy's `actions:` no longer reads `ideal: pass`");
    let path = dir.join("candidate.yaml");
    std::fs::write(&path, changed).unwrap();
    path
}

/// The test: `serve --mode shadow --decision-log FILE` passes a harmful answer on
/// unchanged with `x-rulegate-shadow-action` naming what enforce would do, asks the upstream
/// once per request (no regeneration, no guidance added), and FILE gains one redacted line per
/// judged request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_delivers_the_answer_unchanged_and_logs_what_enforce_would_do() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let log_arg = log.display().to_string();
    let proxy = sidecar(&upstream.url(), &["--mode", "shadow", "--decision-log", &log_arg]);

    let harmful = ask(&proxy, "disallowed", HARMFUL).await;
    assert_eq!(harmful.len(), 2);
    for r in &harmful {
        assert_eq!(r["content"], mock::DISALLOWED, "shadow mode changed the answer: {r}");
        assert_eq!(r["headers"]["x-rulegate-action"], "pass", "{r}");
    }
    // The plain answer's headers carry the verdict (a stream's headers leave before it).
    let shadow = harmful[0]["headers"]["x-rulegate-shadow-action"].as_str().unwrap_or_default().to_string();
    assert!(["fallback", "block", "regenerate"].contains(&shadow.as_str()), "{}", harmful[0]);
    assert!(harmful[0]["headers"]["x-rulegate-request-id"].is_string());

    let benign = ask(&proxy, "compliant", BENIGN).await;
    for r in &benign {
        assert_eq!(r["content"], mock::COMPLIANT, "{r}");
        assert_eq!(r["headers"]["x-rulegate-action"], "pass", "{r}");
    }
    assert_eq!(benign[0]["headers"]["x-rulegate-shadow-action"], "pass", "{}", benign[0]);

    // One upstream call per request, as the client sent it.
    let recorded = upstream.recorded();
    assert_eq!(recorded.len(), 4, "shadow mode must not regenerate");
    for r in &recorded {
        assert_eq!(r.body["messages"].as_array().map(Vec::len), Some(1), "guidance was added: {}", r.body);
    }

    let lines = lines(&log, 4);
    assert_eq!(lines.len(), 4, "one line per judged request:\n{lines:#?}\n{}", proxy.log_text());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("ammonium") && !text.contains("bomb") && !text.contains("loaf"),
        "text is logged by default"
    );
    for l in &lines {
        assert_eq!(l["mode"], "shadow", "{l}");
        assert_eq!(l["action"], "pass", "{l}");
        assert!(l["shadow_action"].is_string(), "{l}");
        assert!(l["prompt"].is_null() && l["completion"].is_null(), "{l}");
        assert_eq!(l["prompt_sha256"].as_str().map(str::len), Some(64), "{l}");
        assert_eq!(l["completion_sha256"].as_str().map(str::len), Some(64), "{l}");
        assert!(l["propositions"]["disallowed_content"].is_number(), "{l}");
        assert!(l["response_type_probs"].as_object().is_some_and(|m| !m.is_empty()), "{l}");
        assert!(l["api_key"].as_str().is_some_and(|k| !k.contains("sk-local")), "{l}");
        assert!(l["model_version"].is_string() && l["policy_version"].is_string(), "{l}");
    }
    let harmful_lines = lines.iter().filter(|l| l["shadow_action"] != "pass").count();
    assert_eq!(harmful_lines, 2, "{lines:#?}");
    assert!(lines.iter().filter(|l| l["shadow_action"] != "pass").all(|l| l["flagged"] == true));
}

async fn metrics(admin: &str) -> String {
    reqwest::Client::new()
        .get(format!("http://{admin}/metrics"))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A candidate policy is decided beside the live one from the same model pass: its
/// disagreements show in `/metrics` and in the decision log, `/admin/candidate` swaps it, and
/// the live decision is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_policys_disagreements_show_in_the_metrics_and_the_log() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let candidate = candidate_policy(dir.path());
    let log = dir.path().join("decisions.jsonl");
    let admin = format!("127.0.0.1:{}", free_port());
    let (candidate_arg, log_arg) = (candidate.display().to_string(), log.display().to_string());
    let proxy = sidecar_with_env(
        &upstream.url(),
        &["--candidate-policy", &candidate_arg, "--decision-log", &log_arg, "--admin-listen", &admin],
        &[("RULEGATE_ADMIN_TOKEN", "admin-secret")],
    );
    let benign = ask(&proxy, "compliant", BENIGN).await;
    for r in &benign {
        assert_eq!(r["headers"]["x-rulegate-action"], "pass", "the candidate must not act: {r}");
        assert_eq!(r["content"], mock::COMPLIANT);
    }
    let text = metrics(&admin).await;
    let disagreements = text
        .lines()
        .find(|l| l.starts_with("rulegate_candidate_disagreements_total{") && l.contains("live_class=\"ideal\""))
        .unwrap_or_else(|| panic!("no disagreement counted:\n{text}"));
    let count: f64 = disagreements.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 2.0, "{disagreements}");
    assert!(text.contains("rulegate_candidate_decisions_total{policy=\"refusal-style\"}"), "{text}");
    assert!(text.contains("mode=\"enforce\""), "the verdicts carry the mode label:\n{text}");

    let lines = lines(&log, 2);
    for l in &lines {
        assert_eq!(l["candidate"]["action"], "regenerate", "{l}");
        assert_eq!(l["flagged"], true, "a disputed request is flagged: {l}");
    }

    // `/admin/candidate`: the token guards it, a bad policy is refused, DELETE removes it.
    let client = reqwest::Client::new();
    let url = format!("http://{admin}/admin/candidate");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    let shown: Value = client.get(&url).bearer_auth("admin-secret").send().await.unwrap().json().await.unwrap();
    assert_eq!(shown["candidate"]["name"], "refusal-style", "{shown}");
    let bad = client.put(&url).bearer_auth("admin-secret").body("policy: [").send().await.unwrap();
    assert_eq!(bad.status(), 422);
    let gone: Value = client.delete(&url).bearer_auth("admin-secret").send().await.unwrap().json().await.unwrap();
    assert!(gone["candidate"].is_null());
    let before = metrics(&admin).await;
    let _ = ask(&proxy, "compliant", BENIGN).await;
    let after = metrics(&admin).await;
    let decided = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("rulegate_candidate_decisions_total{"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(decided(&before), decided(&after), "a removed candidate still decides");
    let put = client
        .put(&url)
        .bearer_auth("admin-secret")
        .body(std::fs::read_to_string(&candidate).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
}

/// Logged traffic back to labelled rows: `rulegate review` writes the logged requests with
/// their text as `eval --task decision` rows with an empty label; labelled, they are measured
/// by `rulegate eval`; and `rulegate policy diff` replays the log through another policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_rows_round_trip_through_eval_and_a_policy_diff_replays_the_log() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let config = dir.path().join("rulegate.yaml");
    std::fs::write(&config, format!("decision_log:\n  path: {}\n  text: all\n", log.display())).unwrap();
    let config_arg = config.display().to_string();
    let proxy = sidecar(&upstream.url(), &["--config", &config_arg]);
    let _ = ask(&proxy, "disallowed", HARMFUL).await;
    let _ = ask(&proxy, "compliant", BENIGN).await;
    let logged = lines(&log, 4);
    assert_eq!(logged.len(), 4, "{}", proxy.log_text());
    assert!(logged.iter().all(|l| l["prompt"][0]["content"].is_string() && l["completion"].is_string()));
    drop(proxy);

    let rows = dir.path().join("rows.jsonl");
    let out =
        rulegate(&["review", "--decision-log", &log.display().to_string(), "--output", &rows.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written = std::fs::read_to_string(&rows).unwrap();
    let mut labelled = String::new();
    for line in written.lines() {
        let mut row: Value = serde_json::from_str(line).unwrap();
        assert!(row["label"].is_null(), "{row}");
        // A person's label: act on the bomb recipe, not on the bread.
        let harmful = row["completion"].as_str().unwrap().contains("ammonium");
        row["label"] = Value::Bool(harmful);
        labelled.push_str(&format!("{row}\n"));
    }
    assert_eq!(labelled.lines().count(), 4);
    let labelled_path = dir.path().join("labelled.jsonl");
    std::fs::write(&labelled_path, labelled).unwrap();
    let (policy, model) = (common::default_policy(), common::default_model());
    let report = dir.path().join("eval.json");
    let out = rulegate(&[
        "eval",
        "--task",
        "decision",
        "--policy",
        &policy.display().to_string(),
        "--model",
        &model.display().to_string(),
        "--input",
        &labelled_path.display().to_string(),
        "--json",
        &report.display().to_string(),
    ]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("rows: 4"), "{stdout}");
    assert!(
        stdout.contains("log/fallback") || stdout.contains("log/block") || stdout.contains("log/regenerate"),
        "{stdout}"
    );

    // The operating points chosen on the same labelled rows, with a before/after report.
    let calibrated = dir.path().join("calibrated.yaml");
    let out = rulegate(&[
        "calibrate",
        "--policy",
        &policy.display().to_string(),
        "--model",
        &model.display().to_string(),
        "--input",
        &labelled_path.display().to_string(),
        "--max-benign-action",
        "0.5",
        "--output",
        &calibrated.display().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("before:") && stdout.contains("after:"), "{stdout}");
    let written = std::fs::read_to_string(&calibrated).unwrap();
    assert!(written.contains("# calibrated: rulegate calibrate on labelled.jsonl (4 rows)"), "{written}");

    // The same log replayed through a policy that also acts on ideal answers.
    let candidate = candidate_policy(dir.path());
    let diff_json = dir.path().join("diff.json");
    let out = rulegate(&[
        "policy",
        "diff",
        &policy.display().to_string(),
        &candidate.display().to_string(),
        "--decision-log",
        &log.display().to_string(),
        "--json",
        &diff_json.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ideal"), "{}", String::from_utf8_lossy(&out.stdout));
    let diff: Value = serde_json::from_str(&std::fs::read_to_string(&diff_json).unwrap()).expect("a JSON diff");
    assert_eq!(diff["decided"], 4, "{diff}");
    assert!(diff["changed"].as_u64().is_some_and(|c| c >= 2), "the two ideal answers change: {diff}");
    assert!(diff["new_acts"].as_u64() > diff["old_acts"].as_u64(), "{diff}");
}

/// An in-process OTLP/HTTP receiver for logs: the records of every export.
async fn otlp_logs() -> (String, std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_proto::tonic::logs::v1::LogRecord>>>)
{
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use prost::Message;
    let records = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = records.clone();
    let app = axum::Router::new()
        .route(
            "/v1/logs",
            axum::routing::post(move |body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    let request = ExportLogsServiceRequest::decode(body).expect("OTLP protobuf");
                    for resource in request.resource_logs {
                        for scope in resource.scope_logs {
                            sink.lock().unwrap().extend(scope.log_records);
                        }
                    }
                    axum::http::StatusCode::OK
                }
            }),
        )
        .route("/v1/traces", axum::routing::post(|| async { axum::http::StatusCode::OK }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, records)
}

/// Where OTLP is configured, every decision-log line is also an OTLP log record, redacted as
/// the file's line is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_log_lines_reach_an_otlp_receiver_as_log_records() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    let upstream = MockUpstream::start().await;
    let (otlp, records) = otlp_logs().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let log_arg = log.display().to_string();
    let proxy = sidecar(&upstream.url(), &["--decision-log", &log_arg, "--otlp-endpoint", &otlp]);
    let answers = ask(&proxy, "compliant", BENIGN).await;
    let ids: Vec<String> =
        answers.iter().filter_map(|a| a["headers"]["x-rulegate-request-id"].as_str().map(str::to_string)).collect();
    assert_eq!(ids.len(), 2, "{answers:?}");
    // The batch processor exports every second or so.
    let started = Instant::now();
    while records.lock().unwrap().len() < 2 && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = records.lock().unwrap().clone();
    assert_eq!(records.len(), 2, "{}", proxy.log_text());
    for r in &records {
        assert_eq!(r.event_name, "rulegate.decision");
        let Some(Any::StringValue(body)) = r.body.as_ref().and_then(|b| b.value.clone()) else {
            panic!("the body is the JSON line: {r:?}")
        };
        let line: Value = serde_json::from_str(&body).unwrap();
        assert!(ids.contains(&line["request_id"].as_str().unwrap().to_string()), "{line}");
        assert!(line["prompt"].is_null() && !body.contains("loaf"), "redacted as the file is: {body}");
        let attribute = |key: &str| r.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.clone());
        assert!(attribute("rulegate.action").is_some() && attribute("rulegate.request_id").is_some(), "{r:?}");
    }
}
