//! The worker pool: threads that each own an engine (an ONNX Runtime session or a handle on
//! the remote client), take jobs off the queue, merge them into batches and answer them; a
//! worker that panics starts over with a fresh session.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_channel::Receiver;
use ort::session::Session;
use ort::value::Tensor;

use super::queue::{Job, Reply, queued_gauge};
use super::session::build_session;
use super::signature::check_signature;
use super::tensors::{Inputs, OutputLayout};
use super::version::version_from;
use super::{ClassifierError, ClassifierOptions, EncodedPair, HeadValues, Manifest, PairEncoder, manifest, remote};

/// What runs a batch: a session of this process's ONNX Runtime, or the shared remote client.
pub(super) enum Engine {
    Local(Session),
    Remote(Arc<remote::Remote>),
}

pub(super) struct Worker {
    pub(super) engine: Engine,
    pub(super) source: Arc<Source>,
    pub(super) queue: Receiver<Job>,
    pub(super) encoder: Arc<PairEncoder>,
    pub(super) layout: Arc<OutputLayout>,
    pub(super) max_batch: usize,
    pub(super) manifest: Manifest,
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) rows: Arc<AtomicU64>,
    pub(super) _live: LiveGuard,
}

/// What a worker needs to start over with a fresh session. The model is read again from disk
/// rather than kept in memory, and only if it is still the loaded version.
pub(super) struct Source {
    /// `None` for a remote backend (nothing to rebuild).
    pub(super) env: Option<&'static ort::environment::Environment>,
    pub(super) dir: PathBuf,
    pub(super) model_path: PathBuf,
    pub(super) version: String,
    pub(super) options: ClassifierOptions,
}

/// Makes the next batch any worker takes panic, to test the restart (and readiness).
#[cfg(test)]
pub(crate) static INJECT_PANIC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Counts a worker thread as live until it ends, however it ends.
pub(super) struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    pub(super) fn new(live: Arc<AtomicUsize>) -> Self {
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
    pub(super) fn run(mut self) {
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
        let Inputs { shape, ids, mask, types, truncated } = Inputs::pack(pairs, self.encoder.pad_id());
        let names = &self.manifest.inputs;
        let started = std::time::Instant::now();
        let tensors: Vec<(Vec<i64>, Vec<f32>)> = match &mut self.engine {
            Engine::Local(session) => {
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
                    shape,
                    tensors: [&ids, &mask, &types],
                };
                client.infer(&input, &self.layout.outputs)?.into_iter().map(|t| (t.shape, t.data)).collect()
            }
        };
        let metrics = crate::telemetry::metrics();
        metrics.classifier_latency.observe(started.elapsed().as_secs_f64());
        metrics.classifier_batch.observe(batch as f64);
        self.layout.head_values(tensors, &truncated)
    }
}
