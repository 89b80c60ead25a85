//! The proposition classifier: a tokenizer and a pool of ONNX Runtime sessions, each on its
//! own thread, fed through one queue. Concurrent requests that reach the queue while a
//! session is busy are merged into one batch, so ONNX work never runs on async threads and
//! load turns into larger batches rather than more contention.

pub mod encoder;
pub mod manifest;
pub mod remote;
pub mod runtime;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;

use crossbeam_channel::{Receiver, Sender};
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::Tensor;
use sha2::{Digest, Sha256};

pub use encoder::{EncodedPair, PairEncoder};
pub use manifest::{Activation, Head, HeadKind, Manifest, Quantization};
pub use remote::{Protocol, RemoteOptions};

/// Why a model could not be loaded or a batch could not be classified.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClassifierError {
    /// ONNX Runtime could not be found or loaded; the message says what to run.
    #[error("{0}")]
    Runtime(String),
    /// The model directory is missing, is not a directory, or its files cannot be read.
    #[error("model directory {path}: {message}")]
    ModelDir {
        /// The model directory.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// `manifest.json` could not be read, parsed or validated.
    #[error("manifest {path}: {message}")]
    Manifest {
        /// Path of the manifest file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// `tokenizer.json` could not be loaded, or lacks the encoding's special tokens.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// Path of the tokenizer file.
        path: PathBuf,
        /// The tokenizer's error.
        message: String,
    },
    /// `model.onnx` could not be read or turned into a session, does not match the
    /// manifest, or failed its warm-up inference.
    #[error("model {path}: {message}")]
    Model {
        /// Path of the ONNX file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A pair could not be tokenized (its job alone fails), or ONNX Runtime failed on a
    /// batch or gave outputs of an unexpected shape (every job in the batch fails).
    #[error("inference failed: {0}")]
    Inference(String),
    /// The job got no answer: a worker failed on it (a panic, caught; the worker restarts)
    /// or the workers have stopped.
    #[error("the classifier dropped the job (a worker failed or stopped)")]
    WorkersGone,
    /// The request's deadline passed before the classifier answered; the job was dropped.
    #[error("the request's deadline passed before the classifier answered")]
    DeadlinePassed,
    /// The queue already holds [`ClassifierOptions::max_queued_rows`] pairs: the job is
    /// refused at once rather than waiting behind everyone else (load shedding).
    #[error("the classifier is overloaded: {queued} pairs queued, limit {limit}")]
    Overloaded {
        /// Pairs waiting when the job arrived.
        queued: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The [`ClassifierOptions`] cannot be used (a zero count, or CUDA without the `cuda`
    /// feature).
    #[error("{0}")]
    InvalidOptions(String),
    /// The remote inference server could not be reached, failed, answered something
    /// unusable, or its circuit is open after repeated failures ([`Backend::Remote`]).
    #[error("inference server: {0}")]
    Remote(String),
}

/// Where the model's graph runs.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Backend {
    /// In this process, with ONNX Runtime (`model.onnx` in the model directory).
    #[default]
    Local,
    /// On a shared inference server speaking the Open Inference Protocol (KServe v2);
    /// the model directory needs only `manifest.json` and `tokenizer.json`.
    Remote(RemoteOptions),
}

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// Run on the CPU.
    #[default]
    Cpu,
    /// Use CUDA if this ONNX Runtime and machine support it, else CPU with a warning
    /// (needs the `cuda` feature).
    Cuda {
        /// CUDA device ordinal (`cuda:N` on the command line).
        device_id: i32,
    },
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda { device_id: 0 }),
            other => match other.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(device_id)) => Ok(Device::Cuda { device_id }),
                _ => Err(format!("unknown device `{other}` (expected cpu, cuda or cuda:N)")),
            },
        }
    }
}

/// How a model is loaded and run. The default spreads the cores over sessions as
/// [`ClassifierOptions::layout`] says, with batches of up to 32 pairs.
#[derive(Debug, Clone)]
pub struct ClassifierOptions {
    /// Sessions (and worker threads) in the pool.
    pub sessions: usize,
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: usize,
    /// Most pairs in one ONNX call.
    pub max_batch: usize,
    /// Where to run: CUDA device 0 by default with the `cuda` feature, else CPU.
    pub device: Device,
    /// Most pairs waiting for a worker; a job that would go past it is refused with
    /// [`ClassifierError::Overloaded`] (a job arriving at an empty queue is always taken).
    /// Bounds memory and the wait of every judged request under overload.
    pub max_queued_rows: usize,
    /// In-process ONNX Runtime, or a remote inference server. With a remote backend,
    /// `sessions` is the number of calls in flight at once and the ONNX settings do not apply.
    pub backend: Backend,
}

impl Default for ClassifierOptions {
    fn default() -> Self {
        let device = if cfg!(feature = "cuda") { Device::Cuda { device_id: 0 } } else { Device::Cpu };
        let (sessions, intra_threads) = ClassifierOptions::layout(device, cores(), None, None);
        ClassifierOptions {
            sessions,
            intra_threads,
            max_batch: 32,
            device,
            max_queued_rows: DEFAULT_MAX_QUEUED_ROWS,
            backend: Backend::Local,
        }
    }
}

/// Most sessions [`ClassifierOptions::layout`] starts by itself: each holds its own copy of
/// the weights (about 27 MiB of resident memory with the shipped model: 99 MiB for the
/// sidecar with one session, 125 with two, 181 with four).
pub const MAX_DEFAULT_SESSIONS: usize = 4;

/// CPU cores this process may use.
pub fn cores() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

impl ClassifierOptions {
    /// The default options on `device` (the default device when `None`), with sessions and
    /// threads laid out by [`ClassifierOptions::layout`] over this machine's cores.
    pub fn laid_out(device: Option<Device>, sessions: Option<usize>, threads: Option<usize>) -> Self {
        let defaults = ClassifierOptions::default();
        let device = device.unwrap_or(defaults.device);
        let (sessions, intra_threads) = ClassifierOptions::layout(device, cores(), sessions, threads);
        ClassifierOptions { sessions, intra_threads, device, ..defaults }
    }

    /// Sessions and intra-op threads per session for `cores` cores, filling in what the
    /// user left unset, so that together they use the cores without oversubscribing them.
    ///
    /// On a CPU the shipped (dynamically quantised) graph runs one row per call, and one
    /// short row uses a second thread poorly: rows of concurrent requests go faster on
    /// separate sessions. The default is one session per core, up to
    /// [`MAX_DEFAULT_SESSIONS`], each with `cores / sessions` threads (on 2 cores, 16
    /// concurrent guarded requests: 1.5x the throughput of one 2-thread session, measured in
    /// benches/README.md). On CUDA one session (the GPU runs it; threads only feed it).
    pub fn layout(device: Device, cores: usize, sessions: Option<usize>, threads: Option<usize>) -> (usize, usize) {
        let cores = cores.max(1);
        let per = |sessions: usize| (cores / sessions.max(1)).max(1);
        match (sessions, threads) {
            (Some(s), Some(t)) => (s, t),
            (Some(s), None) => (s, per(s)),
            (None, Some(t)) if device == Device::Cpu => ((cores / t.max(1)).clamp(1, MAX_DEFAULT_SESSIONS), t),
            (None, Some(t)) => (1, t),
            (None, None) if device == Device::Cpu => {
                let s = cores.min(MAX_DEFAULT_SESSIONS);
                (s, per(s))
            }
            (None, None) => (1, cores),
        }
    }
}

/// Default [`ClassifierOptions::max_queued_rows`]: about a second of work for a 2-core CPU
/// at 256-token pairs, far more on a GPU.
pub const DEFAULT_MAX_QUEUED_ROWS: usize = 256;

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
    jobs: Sender<Job>,
    device: Device,
    /// `<url> <name>:<version> (<protocol>)` of a remote backend's model.
    remote: Option<String>,
    /// Pairs admitted (being tokenized or queued) and not yet taken by a worker.
    queued: Arc<AtomicUsize>,
    max_queued_rows: usize,
    /// Worker threads running.
    live: Arc<AtomicUsize>,
    /// Pairs run through the model since loading.
    rows: Arc<AtomicU64>,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier").field("dir", &self.inner.dir).field("version", &self.inner.version).finish()
    }
}

struct Job {
    /// Already tokenized and packed by the caller.
    pairs: Vec<EncodedPair>,
    reply: Reply,
}

type Answer = Result<Vec<HeadValues>, ClassifierError>;

/// Async callers await a oneshot; blocking callers (the CLI, model loading, which may run
/// inside a runtime) wait on a plain channel, which is safe anywhere.
enum Reply {
    Async(tokio::sync::oneshot::Sender<Answer>),
    Blocking(crossbeam_channel::Sender<Answer>),
}

impl Reply {
    /// Whether nobody waits for the answer any more.
    fn abandoned(&self) -> bool {
        match self {
            Reply::Async(tx) => tx.is_closed(),
            Reply::Blocking(_) => false,
        }
    }

    fn send(self, answer: Answer) {
        // The caller may have gone away (a cancelled request); nothing to do then.
        let _ = match self {
            Reply::Async(tx) => tx.send(answer).map_err(drop),
            Reply::Blocking(tx) => tx.send(answer).map_err(drop),
        };
    }
}

/// Where each head is read from in the graph's outputs.
#[derive(Debug)]
struct OutputLayout {
    /// Distinct graph outputs to fetch.
    outputs: Vec<String>,
    /// (output index, column, activation) per proposition head.
    propositions: Vec<(usize, usize, Activation)>,
    /// (output index, number of labels, activation).
    response_type: Option<(usize, usize, Activation)>,
    prm: Option<(usize, usize, Activation)>,
}

impl OutputLayout {
    fn new(manifest: &Manifest) -> Self {
        let mut outputs: Vec<String> = Vec::new();
        let mut slot = |name: &str| match outputs.iter().position(|o| o == name) {
            Some(i) => i,
            None => {
                outputs.push(name.to_string());
                outputs.len() - 1
            }
        };
        let propositions =
            manifest.proposition_heads().map(|h| (slot(&h.output), h.index.unwrap_or(0), h.activation)).collect();
        let response_type = manifest
            .response_type_head()
            .map(|h| (slot(&h.output), h.labels.as_ref().map_or(0, Vec::len), h.activation));
        let prm = manifest.prm_head().map(|h| (slot(&h.output), h.index.unwrap_or(0), h.activation));
        OutputLayout { outputs, propositions, response_type, prm }
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
        let inner = Inner {
            dir,
            manifest,
            version,
            encoder,
            jobs,
            device,
            remote: served,
            queued,
            max_queued_rows,
            live,
            rows,
        };
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
        self.inner.live.load(Ordering::Acquire)
    }

    /// Pairs run through the model since loading (each window of a long completion is one).
    pub fn rows_classified(&self) -> u64 {
        self.inner.rows.load(Ordering::Relaxed)
    }

    /// Pairs admitted and waiting for a worker (being tokenized or queued).
    pub fn queued_rows(&self) -> usize {
        self.inner.queued.load(Ordering::Acquire)
    }

    /// Classifies pairs on the worker threads; the caller's task just waits. A caller that
    /// stops waiting (a cancelled request) costs nothing more once a worker reaches its job.
    pub async fn classify(&self, pairs: Vec<PairText>) -> Result<Vec<HeadValues>, ClassifierError> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let slots = self.reserve(pairs.len())?;
        // Tokenizing is the callers' work, on the runtime's blocking pool: the inference
        // threads only run the model, and a long text delays nobody else's verdict.
        let encoder = self.inner.encoder.clone();
        let encode = move || encode_all(&encoder, &pairs);
        let encoded = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime.spawn_blocking(encode).await.map_err(|_| ClassifierError::WorkersGone)??,
            Err(_) => encode()?,
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(Job { pairs: encoded, reply: Reply::Async(reply) }, slots)?;
        answer.await.map_err(|_| ClassifierError::WorkersGone)?
    }

    /// Takes queue slots for `rows` pairs before any work on them, unless the queue is full
    /// (see [`ClassifierOptions::max_queued_rows`]) or no worker is left to serve it.
    fn reserve(&self, rows: usize) -> Result<Slots, ClassifierError> {
        if self.live_workers() == 0 {
            return Err(ClassifierError::WorkersGone);
        }
        let limit = self.inner.max_queued_rows;
        let before = self.inner.queued.fetch_add(rows, Ordering::AcqRel);
        queued_gauge(before.saturating_add(rows));
        let slots = Slots { queued: self.inner.queued.clone(), rows };
        // A job arriving at an empty queue is always taken, however large.
        if before > 0 && before.saturating_add(rows) > limit {
            crate::telemetry::metrics().classifier_shed.inc();
            return Err(ClassifierError::Overloaded { queued: before, limit });
        }
        Ok(slots)
    }

    /// Queues a job in the slots taken for it; the worker that takes it gives them back.
    fn submit(&self, job: Job, mut slots: Slots) -> Result<(), ClassifierError> {
        self.inner.jobs.send(job).map_err(|_| ClassifierError::WorkersGone)?;
        slots.rows = 0;
        Ok(())
    }

    /// Like [`Classifier::classify`], blocking the calling thread (prefer `classify` on
    /// async runtime threads).
    pub fn classify_blocking(&self, pairs: Vec<PairText>) -> Result<Vec<HeadValues>, ClassifierError> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let slots = self.reserve(pairs.len())?;
        let encoded = encode_all(&self.inner.encoder, &pairs)?;
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.submit(Job { pairs: encoded, reply: Reply::Blocking(reply) }, slots)?;
        answer.recv().map_err(|_| ClassifierError::WorkersGone)?
    }
}

/// Queue slots held for a job from before its pairs are tokenized until it is queued (then a
/// worker gives them back when it takes the job); dropped early (an error, a cancelled
/// caller), they are given back at once.
struct Slots {
    queued: Arc<AtomicUsize>,
    rows: usize,
}

impl Drop for Slots {
    fn drop(&mut self) {
        let before = self.queued.fetch_sub(self.rows, Ordering::AcqRel);
        if self.rows > 0 {
            queued_gauge(before.saturating_sub(self.rows));
        }
    }
}

/// Publishes the queue's length (`rulegate_classifier_queued_rows`).
fn queued_gauge(rows: usize) {
    crate::telemetry::metrics().classifier_queued.set(i64::try_from(rows).unwrap_or(i64::MAX));
}

fn encode_all(encoder: &PairEncoder, pairs: &[PairText]) -> Result<Vec<EncodedPair>, ClassifierError> {
    pairs.iter().map(|p| encoder.encode(&p.prompt, &p.completion)).collect()
}

/// For a remote backend, `name:version` of the model its server serves now (one metadata
/// call); `None` for the local backend.
pub fn served_model(dir: impl AsRef<Path>, options: &ClassifierOptions) -> Result<Option<String>, ClassifierError> {
    let Backend::Remote(remote) = &options.backend else { return Ok(None) };
    let manifest = Manifest::from_file(&dir.as_ref().join("manifest.json"))?;
    let layout = OutputLayout::new(&manifest);
    Ok(Some(remote::Remote::connect(remote, &manifest, &layout.outputs)?.served()))
}

/// The version a model directory loads as (see [`Classifier::version`]), without loading it.
pub fn version_of(dir: impl AsRef<Path>) -> Result<String, ClassifierError> {
    let dir = dir.as_ref();
    let manifest = Manifest::from_file(&dir.join("manifest.json"))?;
    let model_path = dir.join("model.onnx");
    let model_bytes = std::fs::read(&model_path)
        .map_err(|e| ClassifierError::Model { path: model_path.clone(), message: format!("cannot read: {e}") })?;
    version_from(&manifest, &model_bytes, dir)
}

/// `<manifest version>+<digest>`: everything that changes a verdict is in the digest (cached
/// verdicts are keyed by the version): the graph, the tokenizer, and the manifest.
fn version_from(manifest: &Manifest, model_bytes: &[u8], dir: &Path) -> Result<String, ClassifierError> {
    let mut files = Vec::new();
    for file in ["tokenizer.json", "manifest.json"] {
        let path = dir.join(file);
        let bytes = std::fs::read(&path)
            .map_err(|e| ClassifierError::ModelDir { path: path.clone(), message: format!("cannot read: {e}") })?;
        files.push(bytes);
    }
    Ok(version_of_bytes(manifest, model_bytes, [files[0].as_slice(), files[1].as_slice()]))
}

/// [`version_from`] over bytes already read: `files` are `tokenizer.json` and `manifest.json`.
fn version_of_bytes(manifest: &Manifest, model_bytes: &[u8], files: [&[u8]; 2]) -> String {
    let mut digest = Sha256::new();
    digest.update(model_bytes);
    for bytes in files {
        digest.update((bytes.len() as u64).to_le_bytes());
        digest.update(bytes);
    }
    format!("{}+{}", manifest.version, &hex::encode(digest.finalize())[..8])
}

fn build_session(
    env: &ort::environment::Environment,
    model: &[u8],
    path: &Path,
    options: &ClassifierOptions,
) -> Result<(Session, Device), ClassifierError> {
    let fail = |message: String| ClassifierError::Model { path: path.to_path_buf(), message };
    let builder = || -> Result<SessionBuilder, ClassifierError> {
        let e = |e: ort::Error<SessionBuilder>| fail(e.to_string());
        Session::builder(env)
            .map_err(|e| fail(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(e)?
            .with_intra_threads(options.intra_threads)
            .map_err(e)?
            .with_inter_threads(1)
            .map_err(e)?
            // Spinning intra-op threads would steal the CPU from the proxy between requests.
            .with_intra_op_spinning(false)
            .map_err(e)
    };
    if let Device::Cuda { device_id } = options.device {
        let mut cuda = builder()?;
        if register_cuda(&mut cuda, device_id)? {
            match cuda.commit_from_memory(model) {
                Ok(session) => return Ok((session, options.device)),
                // Some CUDA failures only surface when the session is created.
                Err(e) => tracing::warn!(error = %e, "CUDA session could not be created; running on CPU"),
            }
        }
    }
    let session = builder()?.commit_from_memory(model).map_err(|e| fail(e.to_string()))?;
    Ok((session, Device::Cpu))
}

#[cfg(feature = "cuda")]
/// Registers the CUDA execution provider; `false` (after a warning) where it cannot run.
fn register_cuda(builder: &mut SessionBuilder, device_id: i32) -> Result<bool, ClassifierError> {
    use ort::ep::{CUDA, ExecutionProvider};
    if !matches!(CUDA::is_available(), Ok(true)) {
        tracing::warn!(
            "CUDA requested, but this ONNX Runtime library has no CUDA execution provider (install the onnxruntime-gpu wheel: `scripts/setup.sh --gpu`); running on CPU"
        );
        return Ok(false);
    }
    match CUDA::default().with_device_id(device_id).register(builder) {
        Ok(()) => Ok(true),
        Err(e) => {
            tracing::warn!(error = %e, device_id, "CUDA execution provider could not start; running on CPU");
            Ok(false)
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn register_cuda(_builder: &mut SessionBuilder, _device_id: i32) -> Result<bool, ClassifierError> {
    Err(ClassifierError::InvalidOptions("this rulegate was built without the `cuda` feature; rebuild with `cargo build --release --features cuda` or use --device cpu".into()))
}

/// The graph must take the manifest's three inputs and produce every output a head names.
fn check_signature(
    session: &Session,
    manifest: &Manifest,
    layout: &OutputLayout,
    path: &Path,
) -> Result<(), ClassifierError> {
    let bad = |message: String| ClassifierError::Model { path: path.to_path_buf(), message };
    let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    for wanted in [&manifest.inputs.input_ids, &manifest.inputs.attention_mask, &manifest.inputs.token_type_ids] {
        if !inputs.contains(&wanted.as_str()) {
            return Err(bad(format!("the graph has no input `{wanted}` (it has {})", inputs.join(", "))));
        }
    }
    let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    for wanted in &layout.outputs {
        if !outputs.contains(&wanted.as_str()) {
            return Err(bad(format!(
                "the manifest reads output `{wanted}`, which the graph does not have (it has {})",
                outputs.join(", ")
            )));
        }
    }
    Ok(())
}

/// What runs a batch: a session of this process's ONNX Runtime, or the shared remote client.
enum Engine {
    Local(Session),
    Remote(Arc<remote::Remote>),
}

struct Worker {
    engine: Engine,
    source: Arc<Source>,
    queue: Receiver<Job>,
    encoder: Arc<PairEncoder>,
    layout: Arc<OutputLayout>,
    max_batch: usize,
    manifest: Manifest,
    queued: Arc<AtomicUsize>,
    rows: Arc<AtomicU64>,
    _live: LiveGuard,
}

/// What a worker needs to start over with a fresh session. The model is read again from disk
/// rather than kept in memory, and only if it is still the loaded version.
struct Source {
    /// `None` for a remote backend (nothing to rebuild).
    env: Option<&'static ort::environment::Environment>,
    dir: PathBuf,
    model_path: PathBuf,
    version: String,
    options: ClassifierOptions,
}

/// Makes the next batch any worker takes panic, to test the restart (and readiness).
#[cfg(test)]
pub(crate) static INJECT_PANIC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Counts a worker thread as live until it ends, however it ends.
struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn new(live: Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::AcqRel);
        LiveGuard(live)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Worker {
    /// Serves the queue until the classifier is dropped. A panic fails the batch it happened
    /// on (its callers see `WorkersGone`); the worker then starts over with a fresh session,
    /// or ends (and `/readyz` reports it) when the model on disk is no longer the one loaded.
    fn run(mut self) {
        loop {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve_queue())).is_ok() {
                return;
            }
            crate::telemetry::metrics().worker_panics.inc();
            match self.restart() {
                Ok(()) => {
                    crate::telemetry::metrics().worker_restarts.inc();
                    tracing::error!("a classifier worker panicked on a batch; its jobs failed, the worker restarted");
                }
                Err(e) => {
                    tracing::error!(error = %e, "a classifier worker panicked and could not restart; it has stopped");
                    return;
                }
            }
        }
    }

    fn serve_queue(&mut self) {
        while let Ok(first) = self.queue.recv() {
            // Merge whatever else is already waiting, up to one full batch.
            let mut rows = first.pairs.len();
            let mut jobs = vec![first];
            while rows < self.max_batch {
                match self.queue.try_recv() {
                    Ok(job) => {
                        rows += job.pairs.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            let before = self.queued.fetch_sub(rows, Ordering::AcqRel);
            queued_gauge(before.saturating_sub(rows));
            #[cfg(test)]
            if INJECT_PANIC.swap(false, Ordering::AcqRel) {
                panic!("injected worker panic");
            }
            self.serve(jobs);
        }
    }

    fn restart(&mut self) -> Result<(), ClassifierError> {
        let source = &self.source;
        // The remote client holds no per-worker state a panic could have broken.
        let Some(env) = source.env else { return Ok(()) };
        let bytes = std::fs::read(&source.model_path).map_err(|e| ClassifierError::Model {
            path: source.model_path.clone(),
            message: format!("cannot read: {e}"),
        })?;
        if version_from(&self.manifest, &bytes, &source.dir)? != source.version {
            return Err(ClassifierError::Model {
                path: source.model_path.clone(),
                message: "the model on disk changed since it was loaded".into(),
            });
        }
        let (session, _) = build_session(env, &bytes, &source.model_path, &source.options)?;
        check_signature(&session, &self.manifest, &self.layout, &source.model_path)?;
        self.engine = Engine::Local(session);
        Ok(())
    }

    fn serve(&mut self, jobs: Vec<Job>) {
        let mut encoded: Vec<(usize, EncodedPair)> = Vec::new();
        // (reply, first row, rows) per job.
        let mut live: Vec<(Reply, usize, usize)> = Vec::new();
        // Jobs whose caller went away (a cancelled request) are not computed.
        for job in jobs.into_iter().filter(|job| !job.reply.abandoned()) {
            live.push((job.reply, encoded.len(), job.pairs.len()));
            encoded.extend(job.pairs.into_iter().map(|p| (0, p)));
        }
        for (i, row) in encoded.iter_mut().enumerate() {
            row.0 = i;
        }
        // Similar lengths in one ONNX call waste less work on padding.
        encoded.sort_by_key(|(_, p)| p.input_ids.len());
        let mut results: Vec<Option<HeadValues>> = vec![None; encoded.len()];
        let mut failure = None;
        // A dynamically quantised graph scales activations per input tensor: batching rows
        // would make each row's result depend on its neighbours, so they run one by one.
        let rows_per_run =
            if self.manifest.quantization == Some(manifest::Quantization::Dynamic) { 1 } else { self.max_batch };
        for chunk in encoded.chunks(rows_per_run) {
            match self.run_batch(chunk.iter().map(|(_, p)| p)) {
                Ok(values) => {
                    for ((i, _), v) in chunk.iter().zip(values) {
                        results[*i] = Some(v);
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        for (reply, start, n) in live {
            let answer = match &failure {
                Some(error) => Err(error.clone()),
                None => {
                    results[start..start + n].iter_mut().map(|r| r.take().ok_or(ClassifierError::WorkersGone)).collect()
                }
            };
            reply.send(answer);
        }
    }

    fn run_batch<'a>(
        &mut self,
        pairs: impl ExactSizeIterator<Item = &'a EncodedPair> + Clone,
    ) -> Result<Vec<HeadValues>, ClassifierError> {
        let batch = pairs.len();
        self.rows.fetch_add(batch as u64, Ordering::Relaxed);
        crate::telemetry::metrics().classifier_rows.inc_by(batch as u64);
        let seq = pairs.clone().map(|p| p.input_ids.len()).max().unwrap_or(0);
        let pad = self.encoder.pad_id();
        let mut ids = vec![pad; batch * seq];
        let mut mask = vec![0i64; batch * seq];
        let mut types = vec![0i64; batch * seq];
        let mut truncated = Vec::with_capacity(batch);
        for (row, pair) in pairs.enumerate() {
            let at = row * seq;
            let n = pair.input_ids.len();
            ids[at..at + n].copy_from_slice(&pair.input_ids);
            mask[at..at + n].fill(1);
            types[at..at + n].copy_from_slice(&pair.token_type_ids);
            truncated.push(pair.truncated);
        }
        let names = &self.manifest.inputs;
        let started = std::time::Instant::now();
        let tensors: Vec<(Vec<i64>, Vec<f32>)> = match &mut self.engine {
            Engine::Local(session) => {
                let shape = [batch, seq];
                let err = |e: ort::Error| ClassifierError::Inference(e.to_string());
                let inputs = ort::inputs![
                    names.input_ids.as_str() => Tensor::from_array((shape, ids)).map_err(err)?,
                    names.attention_mask.as_str() => Tensor::from_array((shape, mask)).map_err(err)?,
                    names.token_type_ids.as_str() => Tensor::from_array((shape, types)).map_err(err)?,
                ];
                let outputs = session.run(inputs).map_err(err)?;
                let mut tensors = Vec::with_capacity(self.layout.outputs.len());
                for name in &self.layout.outputs {
                    let value = outputs
                        .get(name.as_str())
                        .ok_or_else(|| ClassifierError::Inference(format!("output `{name}` missing")))?;
                    let (out_shape, data) = value
                        .try_extract_tensor::<f32>()
                        .map_err(|e| ClassifierError::Inference(format!("output `{name}`: {e}")))?;
                    tensors.push((out_shape.to_vec(), data.to_vec()));
                }
                tensors
            }
            Engine::Remote(client) => {
                let input = remote::InputBatch {
                    names: [&names.input_ids, &names.attention_mask, &names.token_type_ids],
                    shape: [batch, seq],
                    tensors: [&ids, &mask, &types],
                };
                client.infer(&input, &self.layout.outputs)?.into_iter().map(|t| (t.shape, t.data)).collect()
            }
        };
        let metrics = crate::telemetry::metrics();
        metrics.classifier_latency.observe(started.elapsed().as_secs_f64());
        metrics.classifier_batch.observe(batch as f64);
        let mut columns: Vec<(usize, Vec<f32>)> = Vec::with_capacity(tensors.len());
        for (name, (out_shape, data)) in self.layout.outputs.iter().zip(tensors) {
            let width = match out_shape.len() {
                1 => 1,
                2 => usize::try_from(out_shape[1]).unwrap_or(0),
                _ => {
                    return Err(ClassifierError::Inference(format!(
                        "output `{name}` has rank {}, expected [batch, k]",
                        out_shape.len()
                    )));
                }
            };
            if out_shape.first().copied() != i64::try_from(batch).ok() || data.len() != batch * width {
                return Err(ClassifierError::Inference(format!(
                    "output `{name}` has shape {out_shape:?} for a batch of {batch}"
                )));
            }
            columns.push((width, data));
        }
        let cell =
            |(output, column, activation): (usize, usize, Activation), row: usize| -> Result<f32, ClassifierError> {
                let (width, data) = &columns[output];
                if column >= *width {
                    return Err(ClassifierError::Inference(format!(
                        "output `{}` has {width} columns; a head reads column {column}",
                        self.layout.outputs[output]
                    )));
                }
                Ok(activate(data[row * width + column], activation))
            };
        (0..batch)
            .map(|row| {
                let propositions =
                    self.layout.propositions.iter().map(|&slot| cell(slot, row)).collect::<Result<Vec<_>, _>>()?;
                let response_type = match self.layout.response_type {
                    Some((output, labels, activation)) => {
                        let (width, data) = &columns[output];
                        if *width != labels {
                            return Err(ClassifierError::Inference(format!(
                                "response-type output has {width} columns for {labels} labels"
                            )));
                        }
                        let logits = &data[row * width..(row + 1) * width];
                        Some(match activation {
                            Activation::Softmax => softmax(logits),
                            other => logits.iter().map(|&x| activate(x, other)).collect(),
                        })
                    }
                    None => None,
                };
                let prm = self.layout.prm.map(|slot| cell(slot, row)).transpose()?;
                Ok(HeadValues { propositions, response_type, prm, truncated: truncated[row] })
            })
            .collect()
    }
}

fn activate(x: f32, activation: Activation) -> f32 {
    match activation {
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Identity | Activation::Softmax => x,
    }
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The injected panic is process-wide: these tests (and the admin API's) take turns.
    pub(crate) static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn the_default_layout_fills_the_cores_without_oversubscribing_them() {
        let cpu = |cores, s, t| ClassifierOptions::layout(Device::Cpu, cores, s, t);
        assert_eq!(cpu(1, None, None), (1, 1));
        assert_eq!(cpu(2, None, None), (2, 1));
        assert_eq!(cpu(16, None, None), (MAX_DEFAULT_SESSIONS, 16 / MAX_DEFAULT_SESSIONS));
        assert_eq!(cpu(6, None, None), (4, 1), "sessions x threads never passes the cores");
        assert_eq!(cpu(8, Some(1), None), (1, 8), "one session takes every core");
        assert_eq!(cpu(8, None, Some(2)), (4, 2));
        assert_eq!(cpu(2, None, Some(4)), (1, 4), "what the user sets is kept");
        assert_eq!(cpu(2, Some(3), Some(3)), (3, 3));
        assert_eq!(cpu(0, None, None), (1, 1));
        let cuda = Device::Cuda { device_id: 0 };
        assert_eq!(ClassifierOptions::layout(cuda, 8, None, None), (1, 8));
        for cores in 1..=64 {
            let (s, t) = cpu(cores, None, None);
            assert!(s >= 1 && t >= 1 && s * t <= cores, "{cores} cores: {s} x {t}");
        }
    }

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
