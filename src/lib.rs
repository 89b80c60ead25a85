#![warn(missing_docs)]
//! rulegate: guardrail middleware for LLM gateways.
//!
//! A [`Policy`] names propositions about a completion, rules that map their truth values to
//! a class per response type, and a linear reward; a [`Classifier`] (an ONNX encoder with
//! one head per proposition) gives their probabilities; a [`Guard`] binds the two and turns
//! a (prompt, completion) pair into a [`Verdict`].

pub mod access;
pub mod classifier;
pub mod config;
pub mod conversation;
pub mod dataset;
pub mod eval;
pub mod fit;
pub mod guard;
pub mod layer;
pub mod openai;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod score;
pub mod telemetry;
pub mod upstream;

pub use classifier::{Classifier, ClassifierError, ClassifierOptions, Device};
pub use conversation::Message;
pub use guard::{Evaluation, Guard, GuardError, Judge};
pub use policy::{Action, Policy, PolicyError};
pub use score::Verdict;
