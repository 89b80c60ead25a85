//! What the guard does, made visible: Prometheus metrics (always on), tracing spans per
//! stage exported over OTLP when an endpoint is configured, and logs. Prompt and
//! completion text stay out of all three unless [`TelemetryConfig::log_content`] is set.

pub mod decision_log;
mod metrics;
mod tracer;

pub use metrics::{Metrics, metrics};
pub use tracer::{TelemetryConfig, TelemetryError, TelemetryGuard, init};

use std::sync::atomic::{AtomicBool, Ordering};

static LOG_CONTENT: AtomicBool = AtomicBool::new(false);

/// Whether prompt and completion text may be logged (off unless configured).
pub fn log_content() -> bool {
    LOG_CONTENT.load(Ordering::Relaxed)
}

/// Allows or forbids logging prompt and completion text, process-wide; [`init`] sets it
/// from [`TelemetryConfig::log_content`].
pub(crate) fn set_log_content(enabled: bool) {
    LOG_CONTENT.store(enabled, Ordering::Relaxed);
}
