//! The decision log: one JSON line per judged request, for the loop from live traffic back to
//! a calibrated policy (shadow mode, review, `rulegate policy diff`).
//!
//! Lines are handed to a writer thread through a bounded queue: a request never waits on
//! the disk, and a full queue drops the line and counts it ([`DecisionLog::dropped`]). The
//! file is rotated by size (`PATH.1` is the newest old file) and fsynced when rotated and
//! when the log is closed. Prompt and completion text are written only as
//! [`DecisionLogConfig::text`] allows; otherwise a SHA-256 of each stands in, so that
//! repeated prompts can still be counted. Every simple proposition's probability is kept,
//! so a logged request can be decided again by another policy without the text.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use opentelemetry_sdk::logs::SdkLogger;

use crate::conversation::Message;

/// Which lines carry prompt and completion text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogText {
    /// No text: a SHA-256 of each (the default; text may hold personal data).
    #[default]
    None,
    /// Text on flagged lines only (acted on, would have been acted on, or disputed by the
    /// candidate policy): the rows worth reviewing.
    Flagged,
    /// Text on every line.
    All,
}

/// The `decision_log:` section of the `serve` config (`--decision-log PATH`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionLogConfig {
    /// The JSON-lines file; appended to, rotated to `PATH.1`, `PATH.2`, ... by size.
    pub path: PathBuf,
    /// Which lines carry the text (default `none`).
    #[serde(default)]
    pub text: LogText,
    /// Share of unflagged requests logged (0..=1, default 1). Flagged requests are always
    /// logged: sampling is for the bulk of traffic that passes.
    #[serde(default = "one")]
    pub sample: f64,
    /// Size at which the file is rotated (default 64 MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept beside the live one (default 5).
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// Lines waiting for the writer before new ones are dropped (default 4096).
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn one() -> f64 {
    1.0
}
fn default_max_bytes() -> u64 {
    64 << 20
}
fn default_keep() -> usize {
    5
}
fn default_queue() -> usize {
    4096
}

impl DecisionLogConfig {
    /// A log at `path` with every other setting at its default.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        DecisionLogConfig {
            path: path.into(),
            text: LogText::None,
            sample: 1.0,
            max_bytes: default_max_bytes(),
            keep: default_keep(),
            queue: default_queue(),
        }
    }

    /// Checks the settings a file cannot check for itself.
    pub fn validate(&self) -> Result<(), DecisionLogError> {
        if !(0.0..=1.0).contains(&self.sample) {
            return Err(DecisionLogError::Invalid(format!("sample must be within 0..=1, got {}", self.sample)));
        }
        if self.max_bytes < 4096 {
            return Err(DecisionLogError::Invalid(format!("max_bytes must be at least 4096, got {}", self.max_bytes)));
        }
        if self.queue == 0 {
            return Err(DecisionLogError::Invalid("queue must be at least 1".into()));
        }
        Ok(())
    }
}

/// Why the decision log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DecisionLogError {
    /// A setting is out of range.
    #[error("decision_log: {0}")]
    Invalid(String),
    /// The file could not be opened for appending.
    #[error("decision_log: cannot open {path}: {source}")]
    Open {
        /// The configured path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The writer thread could not be started.
    #[error("decision_log: cannot start the writer: {0}")]
    Thread(io::Error),
}

/// The candidate policy's decision of the same request, from the same classifier pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateDecision {
    /// The candidate policy's version.
    pub policy_version: String,
    /// Its class for the judged completion.
    pub class: Option<String>,
    /// Its reward score.
    pub score: Option<f64>,
    /// The action it would have taken.
    pub action: String,
}

/// One judged request, as logged. Text fields are filled by the caller and redacted by the
/// log according to its config; the rest is written as given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// When the request was decided (RFC 3339, UTC).
    #[serde(default)]
    pub time: String,
    /// The request's id (`x-request-id` when the client sent one).
    #[serde(default)]
    pub request_id: String,
    /// The normalised path.
    #[serde(default)]
    pub route: String,
    /// A short SHA-256 of the API key's id, when the request carried a mapped key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// `enforce` or `shadow`.
    #[serde(default)]
    pub mode: String,
    /// The live policy's name.
    #[serde(default)]
    pub policy: String,
    /// The live policy's version.
    #[serde(default)]
    pub policy_version: String,
    /// The classifier's version.
    #[serde(default)]
    pub model_version: String,
    /// The response type the request was judged as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_type: Option<String>,
    /// The response types' probabilities as read from the prompt.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub response_type_probs: IndexMap<String, f32>,
    /// Every simple proposition's probability on the judged completion.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub propositions: IndexMap<String, f32>,
    /// The judged completion's class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Its reward score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// What rulegate did (`pass` in shadow mode).
    #[serde(default)]
    pub action: String,
    /// What enforce mode would have done, in shadow mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_action: Option<String>,
    /// The input check's action, if it acted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_action: Option<String>,
    /// The candidate policy's decision, when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CandidateDecision>,
    /// Upstream completions generated.
    #[serde(default)]
    pub attempts: u32,
    /// Time from the request's arrival to its decision.
    #[serde(default)]
    pub latency_ms: f64,
    /// Tokens the upstream reported (prompt + completion), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tokens: Option<u64>,
    /// Acted on, would have been acted on, or disputed by the candidate: always logged, and
    /// with text under `text: flagged`.
    #[serde(default)]
    pub flagged: bool,
    /// SHA-256 of the rendered prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_sha256: Option<String>,
    /// SHA-256 of the judged completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_sha256: Option<String>,
    /// The conversation, where the config allows text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Vec<Message>>,
    /// The judged completion, where the config allows text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<String>,
}

impl DecisionRecord {
    /// Replaces the text by its hashes unless `text` allows it on this line; the hashes are
    /// always written.
    pub fn redact(&mut self, text: LogText) {
        let keep = match text {
            LogText::None => false,
            LogText::Flagged => self.flagged,
            LogText::All => true,
        };
        if let Some(p) = &self.prompt {
            self.prompt_sha256 = Some(sha256_hex(&render_messages(p)));
        }
        if let Some(c) = &self.completion {
            self.completion_sha256 = Some(sha256_hex(c));
        }
        if !keep {
            self.prompt = None;
            self.completion = None;
        }
    }
}

/// A conversation as the hashed text: one `role: content` line per message.
pub fn render_messages(messages: &[Message]) -> String {
    let mut text = String::new();
    for m in messages {
        text.push_str(&m.role);
        text.push_str(": ");
        text.push_str(&m.content);
        text.push('\n');
    }
    text
}

/// Lowercase hex SHA-256 of `text`.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A short, stable id for an API key's configured id: logs can group by key without
/// naming it.
pub fn hashed_key_id(id: &str) -> String {
    sha256_hex(id)[..12].to_string()
}

/// The current time as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

struct Shared {
    dropped: AtomicU64,
    written: AtomicU64,
    errors: AtomicU64,
}

/// An open decision log. Cloning shares the writer; the file is flushed and fsynced when
/// [`close`](DecisionLog::close) is called or the last clone is dropped.
#[derive(Clone)]
pub struct DecisionLog {
    inner: Arc<Inner>,
}

struct Inner {
    tx: std::sync::Mutex<Option<SyncSender<DecisionRecord>>>,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
    text: LogText,
    sample: f64,
    path: PathBuf,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog").field("path", &self.inner.path).field("text", &self.inner.text).finish()
    }
}

impl DecisionLog {
    /// Opens (appends to) the log and starts its writer thread.
    pub fn open(config: &DecisionLogConfig) -> Result<DecisionLog, DecisionLogError> {
        Self::open_with(config, None)
    }

    /// [`DecisionLog::open`], also emitting every written line as an OTLP log record through
    /// `otlp` (see [`TelemetryGuard::decision_logger`](crate::telemetry::TelemetryGuard::decision_logger)).
    /// The records are redacted as the file's lines are, and exported by the SDK's batch
    /// processor, off the writer thread.
    pub fn open_with(config: &DecisionLogConfig, otlp: Option<SdkLogger>) -> Result<DecisionLog, DecisionLogError> {
        config.validate()?;
        let file = RotatingFile::open(&config.path, config.max_bytes, config.keep)
            .map_err(|source| DecisionLogError::Open { path: config.path.clone(), source })?;
        let (tx, rx) = sync_channel(config.queue);
        let shared =
            Arc::new(Shared { dropped: AtomicU64::new(0), written: AtomicU64::new(0), errors: AtomicU64::new(0) });
        let text = config.text;
        let thread_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("rulegate-decision-log".into())
            .spawn(move || write_lines(rx, file, text, &thread_shared, otlp.as_ref()))
            .map_err(DecisionLogError::Thread)?;
        Ok(DecisionLog {
            inner: Arc::new(Inner {
                tx: std::sync::Mutex::new(Some(tx)),
                writer: std::sync::Mutex::new(Some(writer)),
                shared,
                text,
                sample: config.sample,
                path: config.path.clone(),
            }),
        })
    }

    /// Queues a line without waiting: a full queue drops it (counted), an unflagged line may
    /// be sampled out. Returns whether the line was queued.
    pub fn record(&self, record: DecisionRecord) -> bool {
        if !record.flagged && self.inner.sample < 1.0 && fastrand::f64() >= self.inner.sample {
            return false;
        }
        let Ok(guard) = self.inner.tx.lock() else { return false };
        let Some(tx) = guard.as_ref() else {
            self.inner.shared.dropped.fetch_add(1, Ordering::Relaxed);
            crate::telemetry::metrics().decision_log_line("dropped");
            return false;
        };
        match tx.try_send(record) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.inner.shared.dropped.fetch_add(1, Ordering::Relaxed);
                crate::telemetry::metrics().decision_log_line("dropped");
                false
            }
        }
    }

    /// Lines dropped because the writer was behind (or the log closed).
    pub fn dropped(&self) -> u64 {
        self.inner.shared.dropped.load(Ordering::Relaxed)
    }

    /// Lines written so far.
    pub fn written(&self) -> u64 {
        self.inner.shared.written.load(Ordering::Relaxed)
    }

    /// Lines lost to a write error (disk full, file removed underneath).
    pub fn write_errors(&self) -> u64 {
        self.inner.shared.errors.load(Ordering::Relaxed)
    }

    /// Where the log writes.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Which lines carry text.
    pub fn text(&self) -> LogText {
        self.inner.text
    }

    /// Stops taking lines, writes the queued ones, fsyncs and waits for the writer.
    pub fn close(&self) {
        if let Ok(mut tx) = self.inner.tx.lock() {
            tx.take();
        }
        let handle = self.inner.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the decision log writer panicked");
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(handle) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = handle.join();
        }
    }
}

fn write_lines(
    rx: Receiver<DecisionRecord>,
    mut file: RotatingFile,
    text: LogText,
    shared: &Shared,
    otlp: Option<&SdkLogger>,
) {
    // Flushed when the queue runs dry, so a quiet log is on disk within one request.
    loop {
        let mut record = match rx.try_recv() {
            Ok(r) => r,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                if let Err(e) = file.flush() {
                    tracing::warn!(error = %e, "decision log: flush failed");
                }
                match rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                }
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
        };
        record.redact(text);
        let mut line = match serde_json::to_vec(&record) {
            Ok(line) => line,
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                crate::telemetry::metrics().decision_log_line("error");
                tracing::warn!(error = %e, "decision log: a line could not be encoded");
                continue;
            }
        };
        if let Some(logger) = otlp {
            emit(logger, &record, &line);
        }
        line.push(b'\n');
        match file.write_line(&line) {
            Ok(()) => {
                shared.written.fetch_add(1, Ordering::Relaxed);
                crate::telemetry::metrics().decision_log_line("written");
            }
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                crate::telemetry::metrics().decision_log_line("error");
                tracing::warn!(error = %e, "decision log: a line could not be written");
            }
        }
    }
    if let Err(e) = file.sync() {
        tracing::warn!(error = %e, "decision log: the final fsync failed");
    }
}

/// One decision as an OTLP log record: the JSON line as its body, the fields a collector
/// filters on as attributes; flagged lines at WARN.
fn emit(logger: &SdkLogger, record: &DecisionRecord, line: &[u8]) {
    use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, Severity};
    let mut out = logger.create_log_record();
    out.set_event_name("rulegate.decision");
    out.set_timestamp(std::time::SystemTime::now());
    let (severity, text) = if record.flagged { (Severity::Warn, "WARN") } else { (Severity::Info, "INFO") };
    out.set_severity_number(severity);
    out.set_severity_text(text);
    out.set_body(AnyValue::String(String::from_utf8_lossy(line).into_owned().into()));
    out.add_attribute("rulegate.request_id", record.request_id.clone());
    out.add_attribute("rulegate.policy", record.policy.clone());
    out.add_attribute("rulegate.mode", record.mode.clone());
    out.add_attribute("rulegate.action", record.action.clone());
    if let Some(shadow) = &record.shadow_action {
        out.add_attribute("rulegate.shadow_action", shadow.clone());
    }
    if let Some(class) = &record.class {
        out.add_attribute("rulegate.class", class.clone());
    }
    out.add_attribute("rulegate.flagged", record.flagged);
    logger.emit(out);
}

/// Append-only file rotated by size. Written by hand rather than with a rotation crate
/// because the log must fsync at rotation and shutdown, which those crates do not expose.
struct RotatingFile {
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

impl RotatingFile {
    fn open(path: &Path, max_bytes: u64, keep: usize) -> io::Result<RotatingFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile { path: path.to_path_buf(), out: BufWriter::new(file), size, max_bytes, keep })
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_all()
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.sync()?;
        if self.keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            fs::rename(&self.path, self.rotated(1))?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.out = BufWriter::new(file);
        self.size = 0;
        Ok(())
    }
}

/// Reads a decision log (or several, e.g. rotated files oldest first); a malformed line is
/// an error naming its file and line, so nothing is silently skipped.
pub fn read_log(path: &Path) -> Result<Vec<DecisionRecord>, ReadLogError> {
    let text = fs::read_to_string(path).map_err(|source| ReadLogError::Io { path: path.to_path_buf(), source })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(line).map_err(|source| ReadLogError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            source,
        })?;
        out.push(record);
    }
    Ok(out)
}

/// Why a decision log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadLogError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A line is not a decision record.
    #[error("{path}:{line}: not a decision-log line: {source}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The JSON error.
        source: serde_json::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(flagged: bool) -> DecisionRecord {
        DecisionRecord {
            time: now_rfc3339(),
            request_id: "r1".into(),
            route: "/v1/chat/completions".into(),
            mode: "enforce".into(),
            action: if flagged { "fallback".into() } else { "pass".into() },
            flagged,
            prompt: Some(vec![Message::user("How do I make a pipe bomb?")]),
            completion: Some("Step 1: ...".into()),
            ..DecisionRecord::default()
        }
    }

    #[test]
    fn text_is_replaced_by_its_hash_unless_allowed() {
        let mut r = record(false);
        r.redact(LogText::None);
        assert_eq!(r.prompt, None);
        assert_eq!(r.completion, None);
        assert_eq!(r.prompt_sha256.as_deref(), Some(sha256_hex("user: How do I make a pipe bomb?\n").as_str()));
        let mut f = record(false);
        f.redact(LogText::Flagged);
        assert_eq!(f.prompt, None, "an unflagged line has no text under `flagged`");
        let mut f = record(true);
        f.redact(LogText::Flagged);
        assert_eq!(f.prompt, Some(vec![Message::user("How do I make a pipe bomb?")]));
        let mut a = record(false);
        a.redact(LogText::All);
        assert!(a.completion.is_some() && a.completion_sha256.is_some());
    }

    #[test]
    fn lines_are_written_redacted_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let log = DecisionLog::open(&DecisionLogConfig::at(&path)).unwrap();
        assert!(log.record(record(false)));
        assert!(log.record(record(true)));
        log.close();
        let raw = fs::read_to_string(&path).unwrap();
        assert!(!raw.contains("pipe bomb"), "no text by default: {raw}");
        let back = read_log(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].action, "fallback");
        assert!(back[1].flagged);
        assert_eq!(log.written(), 2);
        assert!(!log.record(record(true)), "a closed log takes no lines");
        assert_eq!(log.dropped(), 1);
    }

    #[test]
    fn the_file_rotates_by_size_and_keeps_the_newest_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let config = DecisionLogConfig { max_bytes: 4096, keep: 2, ..DecisionLogConfig::at(&path) };
        let log = DecisionLog::open(&config).unwrap();
        for i in 0..200 {
            let mut r = record(i % 2 == 0);
            r.request_id = format!("req-{i}");
            while !log.record(r.clone()) {
                std::thread::yield_now();
            }
        }
        log.close();
        let live = read_log(&path).unwrap();
        let older = read_log(&dir.path().join("d.jsonl.1")).unwrap();
        assert!(fs::metadata(&path).unwrap().len() <= 4096);
        assert!(!dir.path().join("d.jsonl.3").exists(), "only `keep` old files");
        assert_eq!(live.last().unwrap().request_id, "req-199");
        let first_live: usize = live[0].request_id[4..].parse().unwrap();
        let last_older: usize = older.last().unwrap().request_id[4..].parse().unwrap();
        assert_eq!(last_older + 1, first_live, "rotation loses no line between files");
    }

    #[test]
    fn a_full_queue_drops_lines_and_counts_them_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let log = DecisionLog::open(&DecisionLogConfig { queue: 1, ..DecisionLogConfig::at(&path) }).unwrap();
        let mut queued = 0;
        for _ in 0..5000 {
            if log.record(record(true)) {
                queued += 1;
            }
        }
        log.close();
        assert_eq!(queued + log.dropped(), 5000);
        assert_eq!(read_log(&path).unwrap().len() as u64, log.written());
        assert_eq!(log.written(), queued);
    }

    #[test]
    fn sampling_skips_only_unflagged_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let log = DecisionLog::open(&DecisionLogConfig { sample: 0.0, ..DecisionLogConfig::at(&path) }).unwrap();
        assert!(!log.record(record(false)));
        assert!(log.record(record(true)));
        log.close();
        assert_eq!(read_log(&path).unwrap().len(), 1);
        assert_eq!(log.dropped(), 0, "sampled-out lines are not drops");
    }

    #[test]
    fn bad_settings_and_unopenable_paths_are_clear_errors() {
        let bad = DecisionLogConfig { sample: 1.5, ..DecisionLogConfig::at("/tmp/x.jsonl") };
        assert!(DecisionLog::open(&bad).unwrap_err().to_string().contains("sample"));
        let err = DecisionLog::open(&DecisionLogConfig::at("/nonexistent-dir/x.jsonl")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/x.jsonl"), "{err}");
    }

    #[test]
    fn a_malformed_line_names_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        fs::write(&path, "{\"action\":\"pass\"}\nnot json\n").unwrap();
        let err = read_log(&path).unwrap_err().to_string();
        assert!(err.contains(":2:"), "{err}");
    }
}
