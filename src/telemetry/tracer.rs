//! Logging and tracing setup: a `tracing` subscriber that writes logs to stderr and, when
//! an OTLP endpoint is configured, exports spans over OTLP/HTTP (protobuf) with a batch
//! processor and the blocking HTTP client (which shuts down cleanly), and decision-log lines
//! as OTLP log records (`/v1/logs`).

use opentelemetry::logs::LoggerProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Deserialize;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The `telemetry:` section of the `serve` config: span export and content logging.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP endpoint, e.g. `http://127.0.0.1:4318` (spans go to `/v1/traces`, decision-log
    /// lines to `/v1/logs`).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of exported spans (default `rulegate`).
    pub service_name: Option<String>,
    /// Log prompt and completion text (debug level). Off by default: they may hold personal data.
    #[serde(default)]
    pub log_content: bool,
}

/// Why logging or span export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("cannot set up the OTLP exporter for {endpoint}: {message}")]
    Otlp {
        /// The endpoint as configured.
        endpoint: String,
        /// The exporter's error.
        message: String,
    },
    /// [`init`] was called when the process already had a global subscriber.
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Flushes and shuts the exporter down when dropped.
#[must_use = "spans are flushed when the guard is dropped"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    logs: Option<SdkLoggerProvider>,
}

impl TelemetryGuard {
    /// Where decision-log lines go as OTLP log records, when an endpoint is configured.
    pub fn decision_logger(&self) -> Option<SdkLogger> {
        self.logs.as_ref().map(|p| p.logger("rulegate.decisions"))
    }

    /// Exports every finished span now.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.force_flush()
        {
            tracing::warn!(error = %e, "flushing spans failed");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(logs) = self.logs.take()
            && let Err(e) = logs.shutdown()
        {
            eprintln!("rulegate: shutting the log exporter down failed: {e}");
        }
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("rulegate: shutting the span exporter down failed: {e}");
        }
    }
}

/// The tracer provider for `config`, if it names an endpoint.
pub(crate) fn provider(config: &TelemetryConfig) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let Some(endpoint) = config.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else {
        return Ok(None);
    };
    let url = if endpoint.ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .build()
        .map_err(|e| TelemetryError::Otlp { endpoint: endpoint.to_string(), message: e.to_string() })?;
    let resource =
        Resource::builder().with_service_name(config.service_name.clone().unwrap_or_else(|| "rulegate".into())).build();
    Ok(Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build()))
}

/// The logger provider for decision-log lines, if `config` names an endpoint.
pub(crate) fn log_provider(config: &TelemetryConfig) -> Result<Option<SdkLoggerProvider>, TelemetryError> {
    let Some(endpoint) = config.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else {
        return Ok(None);
    };
    let base = endpoint.trim_end_matches('/').trim_end_matches("/v1/traces");
    let exporter = opentelemetry_otlp::LogExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{base}/v1/logs"))
        .build()
        .map_err(|e| TelemetryError::Otlp { endpoint: endpoint.to_string(), message: e.to_string() })?;
    let resource =
        Resource::builder().with_service_name(config.service_name.clone().unwrap_or_else(|| "rulegate".into())).build();
    Ok(Some(SdkLoggerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build()))
}

/// Installs logging (filter `log`, e.g. `info`) and, if configured, OTLP span export.
pub fn init(log: &str, config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    super::set_log_content(config.log_content);
    let filter = EnvFilter::try_new(log).unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = provider(config)?;
    let otel = provider.as_ref().map(|p| {
        // Spans go out whatever the log level says; only rulegate's own spans.
        tracing_opentelemetry::layer().with_tracer(p.tracer("rulegate")).with_filter(EnvFilter::new("rulegate=info"))
    });
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter))
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider, logs: log_provider(config)? })
}
