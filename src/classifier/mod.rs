//! The proposition classifier: a tokenizer and a pool of ONNX Runtime sessions, each on its
//! own thread, fed through one queue. Concurrent requests that reach the queue while a
//! session is busy are merged into one batch, so ONNX work never runs on async threads and
//! load turns into larger batches rather than more contention.
//!
//! This file is the facade ([`Classifier`]); the rest lives beside it: errors
//! (`error.rs`), options and the device layout (`options.rs`), queue admission
//! (`queue.rs`), the worker pool (`worker.rs`), sessions (`session.rs`), the graph's
//! signature (`signature.rs`), input and output tensors (`tensors.rs`) and model versions
//! (`version.rs`).

pub mod encoder;
mod error;
pub mod manifest;
mod options;
mod queue;
pub mod remote;
pub mod runtime;
mod session;
mod signature;
mod tensors;
mod version;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;

pub use encoder::{EncodedPair, PairEncoder};
pub use error::ClassifierError;
pub use manifest::{Activation, Head, HeadKind, Manifest, Quantization};
pub use options::{Backend, ClassifierOptions, DEFAULT_MAX_QUEUED_ROWS, Device, MAX_DEFAULT_SESSIONS, cores};
pub use remote::{Protocol, RemoteOptions};
pub use version::{served_model, version_of};
#[cfg(test)]
pub(crate) use worker::INJECT_PANIC;

use queue::{Job, Queue, Reply};
use session::build_session;
use signature::check_signature;
use tensors::OutputLayout;
use version::version_of_bytes;
use worker::{Engine, LiveGuard, Source, Worker};

/// One (prompt, completion) pair; the prompt already rendered with
/// [`Classifier::render_prompt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairText {
    /// The conversation up to the completion, as the model reads it.
    pub prompt: String,
    /// The completion to judge.
    pub completion: String,
}

/// Every head's value for one pair, after activation.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadValues {
    /// Probabilities in the order of [`Manifest::proposition_heads`].
    pub propositions: Vec<f32>,
    /// Softmax over the response-type labels, if the model has that head.
    pub response_type: Option<Vec<f32>>,
    /// The process-reward head's value, if the model has that head.
    pub prm: Option<f32>,
    /// Whether the pair was cut to fit the model's maximum sequence length.
    pub truncated: bool,
}

/// A loaded model. Cheap to clone; the workers stop when the last clone is dropped.
#[derive(Clone)]
pub struct Classifier {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    manifest: Manifest,
    version: String,
    encoder: Arc<PairEncoder>,
    queue: Queue,
    device: Device,
    /// `<url> <name>:<version> (<protocol>)` of a remote backend's model.
    remote: Option<String>,
    /// Pairs run through the model since loading.
    rows: Arc<AtomicU64>,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier").field("dir", &self.inner.dir).field("version", &self.inner.version).finish()
    }
}

impl Classifier {
    /// Loads `model.onnx`, `tokenizer.json` and `manifest.json` from `dir`, starts the
    /// session pool and runs one warm-up inference, so a broken model fails here and not on
    /// the first request.
    pub fn load(dir: impl AsRef<Path>, options: &ClassifierOptions) -> Result<Classifier, ClassifierError> {
        let dir = dir.as_ref().to_path_buf();
        if options.sessions == 0 || options.intra_threads == 0 || options.max_batch == 0 {
            return Err(ClassifierError::InvalidOptions(
                "sessions, intra_threads and max_batch must be at least 1".into(),
            ));
        }
        if !dir.is_dir() {
            return Err(ClassifierError::ModelDir { path: dir, message: "is not a directory".into() });
        }
        // Each file is read once: what is loaded is what the version's digest names, even when
        // a file changes on disk during the load (a hot swap under way).
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path)
                .map_err(|e| ClassifierError::ModelDir { path: path.clone(), message: format!("cannot read: {e}") })
        };
        let (manifest_bytes, tokenizer_bytes) = (read("manifest.json")?, read("tokenizer.json")?);
        let manifest = Manifest::from_bytes(&dir.join("manifest.json"), &manifest_bytes)?;
        let encoder = Arc::new(PairEncoder::from_bytes(
            &dir.join("tokenizer.json"),
            &tokenizer_bytes,
            manifest.encoding.clone(),
        )?);
        let files = [tokenizer_bytes.as_slice(), manifest_bytes.as_slice()];
        let model_path = dir.join("model.onnx");
        let layout = Arc::new(OutputLayout::new(&manifest));
        // One engine per worker: an ONNX Runtime session, or a handle on the shared client.
        let mut engines = Vec::with_capacity(options.sessions);
        let mut device = options.device;
        let mut served = None;
        let (version, env) = match &options.backend {
            Backend::Local => {
                let model_bytes = std::fs::read(&model_path).map_err(|e| ClassifierError::Model {
                    path: model_path.clone(),
                    message: format!("cannot read: {e}"),
                })?;
                let version = version_of_bytes(&manifest, &model_bytes, files);
                let env = runtime::environment()?;
                for _ in 0..options.sessions {
                    let (session, used) = build_session(env, &model_bytes, &model_path, options)?;
                    device = used;
                    check_signature(&session, &manifest, &layout, &model_path)?;
                    engines.push(Engine::Local(session));
                }
                (version, Some(env))
            }
            Backend::Remote(remote) => {
                let client = Arc::new(remote::Remote::connect(remote, &manifest, &layout.outputs)?);
                let version = version_of_bytes(&manifest, format!("remote {}", client.served()).as_bytes(), files);
                served = Some(format!("{} {} ({:?})", remote.url, client.served(), remote.protocol).to_lowercase());
                engines.extend((0..options.sessions).map(|_| Engine::Remote(client.clone())));
                device = Device::Cpu;
                (version, None)
            }
        };

        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let queued = Arc::new(AtomicUsize::new(0));
        let live = Arc::new(AtomicUsize::new(0));
        let rows = Arc::new(AtomicU64::new(0));
        let source = Arc::new(Source {
            env,
            dir: dir.clone(),
            model_path: model_path.clone(),
            version: version.clone(),
            options: options.clone(),
        });
        for (worker, engine) in engines.into_iter().enumerate() {
            let ctx = Worker {
                engine,
                source: source.clone(),
                queue: queue.clone(),
                encoder: encoder.clone(),
                layout: layout.clone(),
                max_batch: options.max_batch,
                manifest: manifest.clone(),
                queued: queued.clone(),
                rows: rows.clone(),
                _live: LiveGuard::new(live.clone()),
            };
            thread::Builder::new().name(format!("rulegate-onnx-{worker}")).spawn(move || ctx.run()).map_err(|e| {
                ClassifierError::Model { path: model_path.clone(), message: format!("cannot start worker thread: {e}") }
            })?;
        }
        let max_queued_rows = options.max_queued_rows.max(1);
        let queue = Queue { jobs, queued, max_queued_rows, live };
        let inner = Inner { dir, manifest, version, encoder, queue, device, remote: served, rows };
        let classifier = Classifier { inner: Arc::new(inner) };
        classifier
            .classify_blocking(vec![PairText {
                prompt: "user: hello".into(),
                completion: "Hello! How can I help?".into(),
            }])
            .map_err(|e| ClassifierError::Model {
                path: model_path,
                message: format!("warm-up inference failed: {e}"),
            })?;
        Ok(classifier)
    }

    /// The model's `manifest.json`.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// The directory the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// `<manifest version>+<first 8 hex digits of a SHA-256 over model.onnx, tokenizer.json
    /// and manifest.json>`: a change to any of them is a new version. With a remote backend
    /// the served model's name and version stand in for `model.onnx`.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// The device sessions actually run on (CPU after a CUDA fallback).
    pub fn device(&self) -> Device {
        self.inner.device
    }

    /// Where the graph runs, for people: `Cpu`, `Cuda { device_id: 0 }`, or
    /// `remote <url> <name>:<version> (<protocol>)`.
    pub fn placement(&self) -> String {
        match &self.inner.remote {
            Some(remote) => format!("remote {remote}"),
            None => format!("{:?}", self.inner.device),
        }
    }

    /// The tokenizer, with the model's encoding settings.
    pub fn encoder(&self) -> &PairEncoder {
        &self.inner.encoder
    }

    /// Renders a conversation as the model's prompt text (see [`PairEncoder::render_prompt`]).
    pub fn render_prompt(&self, prompt: &[crate::conversation::Message]) -> String {
        self.inner.encoder.render_prompt(prompt)
    }

    /// Position of a proposition head in [`HeadValues::propositions`].
    pub fn proposition_index(&self, head: &str) -> Option<usize> {
        self.inner.manifest.proposition_heads().position(|h| h.name == head)
    }

    /// Labels of the response-type head, if any.
    pub fn response_type_labels(&self) -> Option<&[String]> {
        self.inner.manifest.response_type_head().and_then(|h| h.labels.as_deref())
    }

    /// Worker threads running (0 when every worker has stopped; `/readyz` reads it).
    pub fn live_workers(&self) -> usize {
        self.inner.queue.live_workers()
    }

    /// Pairs run through the model since loading (each window of a long completion is one).
    pub fn rows_classified(&self) -> u64 {
        self.inner.rows.load(Ordering::Relaxed)
    }

    /// Pairs admitted and waiting for a worker (being tokenized or queued).
    pub fn queued_rows(&self) -> usize {
        self.inner.queue.queued_rows()
    }

    /// Classifies pairs on the worker threads; the caller's task just waits. A caller that
    /// stops waiting (a cancelled request) costs nothing more once a worker reaches its job.
    pub async fn classify(&self, pairs: Vec<PairText>) -> Result<Vec<HeadValues>, ClassifierError> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let slots = self.inner.queue.reserve(pairs.len())?;
        // Tokenizing is the callers' work, on the runtime's blocking pool: the inference
        // threads only run the model, and a long text delays nobody else's verdict.
        let encoder = self.inner.encoder.clone();
        let encode = move || encode_all(&encoder, &pairs);
        let encoded = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime.spawn_blocking(encode).await.map_err(|_| ClassifierError::WorkersGone)??,
            Err(_) => encode()?,
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.inner.queue.submit(Job { pairs: encoded, reply: Reply::Async(reply) }, slots)?;
        answer.await.map_err(|_| ClassifierError::WorkersGone)?
    }

    /// Like [`Classifier::classify`], blocking the calling thread (prefer `classify` on
    /// async runtime threads).
    pub fn classify_blocking(&self, pairs: Vec<PairText>) -> Result<Vec<HeadValues>, ClassifierError> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let slots = self.inner.queue.reserve(pairs.len())?;
        let encoded = encode_all(&self.inner.encoder, &pairs)?;
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.inner.queue.submit(Job { pairs: encoded, reply: Reply::Blocking(reply) }, slots)?;
        answer.recv().map_err(|_| ClassifierError::WorkersGone)?
    }
}

fn encode_all(encoder: &PairEncoder, pairs: &[PairText]) -> Result<Vec<EncodedPair>, ClassifierError> {
    pairs.iter().map(|p| encoder.encode(&p.prompt, &p.completion)).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::thread;

    use super::worker::INJECT_PANIC;

    /// The injected panic is process-wide: these tests (and the admin API's) take turns.
    pub(crate) static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_worker_that_panics_restarts_with_a_fresh_session() {
        let _turn = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/rulegate-minilm-rbr");
        let options = ClassifierOptions { sessions: 1, intra_threads: 1, ..ClassifierOptions::default() };
        let classifier = Classifier::load(&dir, &options).expect("the shipped model loads");
        let pair = || vec![PairText { prompt: "user: hi".into(), completion: "Hello! How can I help?".into() }];
        let before = classifier.classify_blocking(pair()).unwrap();
        let restarts = crate::telemetry::metrics().worker_restarts.get();
        INJECT_PANIC.store(true, Ordering::Release);
        let failed = classifier.classify_blocking(pair());
        assert!(matches!(failed, Err(ClassifierError::WorkersGone)), "the batch fails: {failed:?}");
        assert_eq!(classifier.classify_blocking(pair()).unwrap(), before, "the restarted worker answers the same");
        assert_eq!(classifier.live_workers(), 1);
        assert_eq!(crate::telemetry::metrics().worker_restarts.get(), restarts + 1);
    }

    #[test]
    fn a_worker_whose_model_changed_on_disk_stops_instead_of_restarting() {
        let _turn = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = tempfile::tempdir().unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/rulegate-minilm-rbr");
        for f in ["model.onnx", "tokenizer.json", "manifest.json"] {
            std::fs::copy(shipped.join(f), dir.path().join(f)).unwrap();
        }
        let options = ClassifierOptions { sessions: 1, intra_threads: 1, ..ClassifierOptions::default() };
        let classifier = Classifier::load(dir.path(), &options).expect("the copied model loads");
        // Another tokenizer file: restarting would serve verdicts the loaded version does not name.
        let path = dir.path().join("tokenizer.json");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        let pair = vec![PairText { prompt: "user: hi".into(), completion: "Hello!".into() }];
        INJECT_PANIC.store(true, Ordering::Release);
        assert!(classifier.classify_blocking(pair.clone()).is_err());
        // The caller hears of the failure as the worker unwinds; the worker then tries to restart.
        for _ in 0..200 {
            if classifier.live_workers() == 0 {
                break;
            }
            thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(classifier.live_workers(), 0, "no live worker: /readyz answers 503");
        assert!(matches!(classifier.classify_blocking(pair), Err(ClassifierError::WorkersGone)));
    }
}
