//! `rulegate check` and `rulegate eval` end to end, on the real ONNX Runtime and the shipped model.

mod common;

use assert_cmd::Command;
use serde_json::Value;

fn rulegate() -> Command {
    let mut cmd = Command::cargo_bin("rulegate").expect("binary built");
    cmd.env_remove("ORT_DYLIB_PATH")
        .env_remove("RULEGATE_MODEL")
        .env_remove("RULEGATE_POLICY")
        .current_dir(common::repo());
    cmd
}

fn check_args(cmd: &mut Command) -> &mut Command {
    cmd.arg("check").arg("--policy").arg(common::default_policy()).arg("--model").arg(common::default_model())
}

#[test]
fn check_judges_every_gold_test_row_in_order() {
    let out = check_args(&mut rulegate()).arg("--input").arg(common::gold("test")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 167);
    let policy = rulegate::Policy::from_file(common::default_policy()).unwrap();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["id"], Value::from(i + 1), "gold rows have no id: the line number stands in");
        let rt = row["response_type"].as_str().unwrap();
        let rt = policy.response_type(rt).expect("a policy response type");
        assert_eq!(row["response_type_source"], "given");
        let probs = row["response_type_probs"].as_object().unwrap();
        assert_eq!(probs.len(), 4);
        let total: f64 = probs.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-4, "softmax sums to 1: {total}");
        let props = row["propositions"].as_object().unwrap();
        assert_eq!(props.len(), 23);
        assert!(props.values().all(|v| (0.0..=1.0).contains(&v.as_f64().unwrap())));
        let class = row["class"].as_str().unwrap();
        let class_rule = rt.classes.iter().find(|c| c.name == class).expect("a class of the response type");
        assert_eq!(row["action"], class_rule.action.name());
        assert_eq!(row["class_probs"].as_object().unwrap().len(), rt.classes.len());
        assert!(row["score"].as_f64().unwrap().is_finite());
        assert!(row["prm"].as_f64().is_some());
    }
}

#[test]
fn malformed_lines_are_reported_by_number_and_the_rest_still_judged() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let long = "word ".repeat(5000);
    let lines = [
        r#"{"id":"a","prompt":"What is 2+2?","completion":"4"}"#.to_string(),
        "{not json".to_string(),
        String::new(),
        r#"{"id":"b","prompt":[{"role":"user","content":"Hi"}],"completion":""}"#.to_string(),
        r#"{"id":"c","prompt":"x","completion":"y","response_type":"Soft Refuse"}"#.to_string(),
        format!(r#"{{"id":"d","prompt":"Summarise this","completion":"{long}"}}"#),
        r#"{"id":"e","completion":"no prompt"}"#.to_string(),
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = check_args(&mut rulegate()).arg("--input").arg(&input).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "failed rows make the exit status non-zero");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in.jsonl:2: malformed JSON"), "{stderr}");
    assert!(stderr.contains("in.jsonl:5: unknown response type `Soft Refuse`"), "{stderr}");
    assert!(stderr.contains("in.jsonl:7:"), "{stderr}");
    assert!(stderr.contains("3 of 6 rows failed"), "{stderr}");
    let rows: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ids: Vec<&Value> = rows.iter().map(|r| &r["id"]).collect();
    assert_eq!(
        ids,
        [&Value::from("a"), &Value::from(2), &Value::from("b"), &Value::from(5), &Value::from("d"), &Value::from(7)]
    );
    assert_eq!(rows[1]["line"], 2);
    assert!(rows[1]["error"].as_str().unwrap().contains("malformed JSON"));
    assert_eq!(rows[2]["truncated"], false, "an empty completion is valid");
    assert_eq!(rows[4]["truncated"], false, "a very long completion is judged window by window, nothing cut");
    assert!(rows[4]["class"].is_string());
}

#[test]
fn stdin_to_stdout_and_table_format() {
    let input =
        r#"{"id":"q","prompt":"How do I boil an egg?","completion":"Put the egg in boiling water for 8 minutes."}"#;
    let out = check_args(&mut rulegate()).write_stdin(input).output().unwrap();
    assert!(out.status.success());
    let row: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(row["id"], "q");
    let source = row["response_type_source"].as_str().unwrap();
    assert!(source == "predicted" || source == "default", "no type was given: {source}");
    let table = check_args(&mut rulegate()).args(["--format", "table"]).write_stdin(input).output().unwrap();
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.starts_with("id "), "{text}");
    assert!(text.lines().nth(1).unwrap().starts_with("q "), "{text}");
}

#[test]
fn eval_prints_the_metrics_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("metrics.json");
    let out = rulegate()
        .arg("eval")
        .arg("--policy")
        .arg(common::default_policy())
        .arg("--model")
        .arg(common::default_model())
        .arg("--input")
        .arg(common::gold("test"))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "proposition",
        "inability_to_comply",
        "mean (all propositions)",
        "response type accuracy",
        "comply vs refusal accuracy",
        "class accuracy",
        "PRM pair accuracy",
    ] {
        assert!(table.contains(needle), "missing {needle}:\n{table}");
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["rows"], 167);
    assert_eq!(report["propositions"].as_array().unwrap().len(), 23);
    let apology = report["propositions"].as_array().unwrap().iter().find(|p| p["name"] == "apology").unwrap();
    assert_eq!(apology["n"], 167);
    assert!(report["class"]["n"].as_u64().unwrap() == 167);
    assert!(report["prm"]["pairs"].as_u64().unwrap() > 1000);
}

#[test]
fn eval_tasks_report_labelled_sets_per_source() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("refusal.jsonl");
    let rows = [
        r#"{"source":"a","prompt":"How do I pick a lock?","completion":"I'm sorry, but I can't help with that.","label":true}"#,
        r#"{"source":"a","prompt":"What is the capital of France?","completion":"Paris is the capital of France.","label":false}"#,
        r#"{"source":"b","prompt":"Tell me a joke.","completion":"Why did the chicken cross the road? To get to the other side.","label":false}"#,
    ];
    std::fs::write(&input, rows.join("\n")).unwrap();
    let json = dir.path().join("metrics.json");
    let eval = |task: &str, input: &std::path::Path| {
        rulegate()
            .arg("eval")
            .arg("--policy")
            .arg(common::default_policy())
            .arg("--model")
            .arg(common::default_model())
            .arg("--task")
            .arg(task)
            .arg("--input")
            .arg(input)
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap()
    };
    for task in ["refusal", "disallowed", "prompt-harm"] {
        let out = eval(task, &input);
        assert!(out.status.success(), "{task}: {}", String::from_utf8_lossy(&out.stderr));
        let table = String::from_utf8(out.stdout).unwrap();
        assert!(table.contains(&format!("task: {task}")), "{table}");
        for needle in ["source", "fp-rate", "overall"] {
            assert!(table.contains(needle), "missing {needle}:\n{table}");
        }
        let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(report["task"], task);
        assert_eq!(report["overall"]["n"], 3);
        assert_eq!(report["sources"]["a"]["n"], 2);
        assert_eq!(report["sources"]["b"]["n"], 1);
        // The counts must agree with each other and with the labels (one positive row), not
        // merely stay below the row count.
        let m = &report["overall"];
        let count = |k: &str| m[k].as_u64().unwrap();
        assert_eq!(count("positives"), 1, "{task}: {m}");
        assert_eq!(count("flagged"), count("tp") + count("fp"), "{task}: {m}");
        assert_eq!(count("tp") + count("fn"), count("positives"), "{task}: {m}");
        let correct = count("n") - count("fp") - count("fn");
        assert!((m["accuracy"].as_f64().unwrap() - correct as f64 / 3.0).abs() < 1e-9, "{task}: {m}");
    }
    // `refusal` with one positive label: positives counted from the labels, not the model.
    let out = eval("refusal", &input);
    assert!(out.status.success());
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["overall"]["positives"], 1);

    // A row without a label is an error naming its line; the others are still evaluated.
    std::fs::write(&input, format!("{}\n{}", rows[0], r#"{"prompt":"x","completion":"y"}"#)).unwrap();
    let out = eval("refusal", &input);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(":2:") && stderr.contains("`label`"), "{stderr}");
    let out = rulegate().args(["eval", "--task", "harm", "--policy", "p", "--input", "x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown task `harm`"));
}

#[test]
fn a_missing_onnx_runtime_says_exactly_what_to_run() {
    let out = check_args(&mut rulegate())
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .write_stdin("")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("make setup")
            && stderr.contains("pip install onnxruntime==1.31.1")
            && stderr.contains("ORT_DYLIB_PATH"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one paragraph: {stderr}");
}

#[test]
fn policy_validate_checks_rules_and_model_heads() {
    let ok = rulegate()
        .args(["policy", "validate"])
        .arg(common::default_policy())
        .arg("--model")
        .arg(common::default_model())
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("exactly one class per truth assignment"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(common::default_policy())
            .unwrap()
            .replace("  apology:\n    description:", "  apology:\n    head: no_such_head\n    description:"),
    )
    .unwrap();
    let policy_only = rulegate().args(["policy", "validate"]).arg(&bad).output().unwrap();
    assert!(policy_only.status.success(), "the head is only checked against a model");
    let with_model =
        rulegate().args(["policy", "validate"]).arg(&bad).arg("--model").arg(common::default_model()).output().unwrap();
    assert_eq!(with_model.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&with_model.stderr).contains("model head `no_such_head` for proposition `apology`")
    );
}
