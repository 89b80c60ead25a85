//! Child processes for end-to-end tests (the sidecar, a model server), killed on drop.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Running {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `program args...` with stdout and stderr in a log file and waits until `addr`
/// accepts connections (or the process dies, or `patience` runs out).
pub fn spawn(program: &Path, args: &[String], envs: &[(&str, &str)], addr: SocketAddr, patience: Duration) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("process.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut command = Command::new(program);
    command
        .args(args)
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .env_remove("ORT_DYLIB_PATH")
        // llama_cpp.server reads PORT and HOST over its --port/--host flags.
        .env_remove("PORT")
        .env_remove("HOST");
    for (k, v) in envs {
        command.env(k, v);
    }
    let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    let mut running = Running { child, addr, log, _dir: dir };
    let started = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return running;
        }
        if let Ok(Some(status)) = running.child.try_wait() {
            panic!("{} exited with {status} before listening:\n{}", program.display(), running.log_text());
        }
        if started.elapsed() > patience {
            panic!("{} did not listen on {addr} within {patience:?}:\n{}", program.display(), running.log_text());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `rulegate serve` with the shipped policy (unless `extra` names one) and model in front of
/// `upstream`, plus `extra` flags.
pub fn sidecar(upstream: &str, extra: &[&str]) -> Running {
    sidecar_with_env(upstream, extra, &[])
}

/// [`sidecar`] with extra environment variables. The admin listener is off unless `extra`
/// configures it.
pub fn sidecar_with_env(upstream: &str, extra: &[&str], envs: &[(&str, &str)]) -> Running {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut args: Vec<String> =
        vec!["serve".into(), "--listen".into(), addr.to_string(), "--upstream".into(), upstream.into()];
    if !extra.contains(&"--policy") {
        args.extend(["--policy".to_string(), super::default_policy().display().to_string()]);
    }
    if !extra.contains(&"--model") {
        args.extend(["--model".to_string(), super::default_model().display().to_string()]);
    }
    args.extend(["--threads".to_string(), "2".to_string()]);
    if !extra.contains(&"--admin-listen") {
        args.extend(["--admin-listen".to_string(), "off".to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut all_envs = vec![("RULEGATE_LOG", "info")];
    all_envs.extend_from_slice(envs);
    spawn(Path::new(env!("CARGO_BIN_EXE_rulegate")), &args, &all_envs, addr, Duration::from_secs(60))
}

/// Runs `examples/openai_client.py` (the official `openai` client) against the sidecar with
/// `--json` and `args`; one JSON object per call. Fails with the client's error and the
/// sidecar's log.
pub async fn openai_client(proxy: &Running, args: &[&str]) -> Vec<serde_json::Value> {
    let out = tokio::process::Command::new(super::repo().join(".venv/bin/python"))
        .arg(super::repo().join("examples/openai_client.py"))
        .args(["--base-url", &format!("{}/v1", proxy.url()), "--json"])
        .args(args)
        .output()
        .await
        .expect("run .venv/bin/python (make setup)");
    assert!(
        out.status.success(),
        "client failed: {}\nsidecar log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        proxy.log_text()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}
