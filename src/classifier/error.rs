//! Why a model could not be loaded or a batch could not be classified.

use std::path::PathBuf;

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
    /// The queue already holds [`ClassifierOptions::max_queued_rows`](super::ClassifierOptions::max_queued_rows) pairs: the job is
    /// refused at once rather than waiting behind everyone else (load shedding).
    #[error("the classifier is overloaded: {queued} pairs queued, limit {limit}")]
    Overloaded {
        /// Pairs waiting when the job arrived.
        queued: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The [`ClassifierOptions`](super::ClassifierOptions) cannot be used (a zero count, or CUDA without the `cuda`
    /// feature).
    #[error("{0}")]
    InvalidOptions(String),
    /// The remote inference server could not be reached, failed, answered something
    /// unusable, or its circuit is open after repeated failures ([`Backend::Remote`](super::Backend::Remote)).
    #[error("inference server: {0}")]
    Remote(String),
}
