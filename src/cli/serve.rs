//! `rulegate serve`: the sidecar, with its admin API and reloads.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::model_dir;

/// Flags of `rulegate serve`; each overrides the config file's setting.
#[derive(Args)]
pub struct ServeArgs {
    /// YAML config file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<String>,
    /// Base URL of the OpenAI-compatible model API.
    #[arg(long, env = "RULEGATE_UPSTREAM")]
    upstream: Option<String>,
    #[arg(long, env = "RULEGATE_POLICY")]
    policy: Option<PathBuf>,
    #[arg(long, env = "RULEGATE_MODEL")]
    model: Option<PathBuf>,
    /// Upstream timeout per call (per chunk for streams) [default: 120].
    #[arg(long)]
    upstream_timeout_secs: Option<u64>,
    /// Whether the upstream honours `n` [default: true].
    #[arg(long)]
    upstream_supports_n: Option<bool>,
    /// How the upstream continues an assistant prefix, for `beam_search` [default: none].
    #[arg(long, value_enum)]
    upstream_continuation: Option<rulegate::upstream::Continuation>,
    /// What to do when the classifier fails [default: fail-closed].
    #[arg(long, value_enum)]
    on_classifier_error: Option<rulegate::config::FailModeName>,
    /// Requests that could generate text on routes rulegate does not judge: `deny` (403,
    /// default) or `pass` (forwarded unjudged).
    #[arg(long, value_enum)]
    unguarded_routes: Option<rulegate::pipeline::route::UnguardedRoutes>,
    /// Largest accepted request body in bytes [default: 4 MiB].
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Proxy worker threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// ONNX Runtime sessions [default: one per core, up to 4].
    #[arg(long)]
    sessions: Option<usize>,
    /// Intra-op threads per ONNX session [default: the cores divided among the sessions].
    #[arg(long)]
    classifier_threads: Option<usize>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Admin API listener [default: 127.0.0.1:9090]; `off` disables it.
    #[arg(long)]
    admin_listen: Option<String>,
    /// File holding the admin bearer token (else RULEGATE_ADMIN_TOKEN).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Do not reload policies and model when their files change (SIGHUP and the admin API still do).
    #[arg(long)]
    no_watch: bool,
    /// OTLP/HTTP endpoint for spans, e.g. http://127.0.0.1:4318.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// `enforce` (act on verdicts) or `shadow` (judge and record what enforce would do, deliver
    /// the upstream's answer unchanged) [default: enforce].
    #[arg(long, value_enum)]
    mode: Option<rulegate::pipeline::GuardMode>,
    /// Write one JSON line per judged request to this file (text redacted to hashes unless
    /// the config's `decision_log.text` allows it).
    #[arg(long)]
    decision_log: Option<PathBuf>,
    /// A policy decided beside the live one on every judged request (no second model pass);
    /// disagreements go to the metrics and the decision log.
    #[arg(long)]
    candidate_policy: Option<PathBuf>,
}

/// Runs the sidecar until it is stopped; `log` is the tracing filter.
pub fn serve(args: ServeArgs, log: &str) -> Result<ExitCode> {
    use rulegate::config::{AdminConfig, ClassifierConfig, ServeConfig, UpstreamConfig};
    use rulegate::reload::{GuardStore, StoreConfig};
    use rulegate::telemetry::decision_log::{DecisionLog, DecisionLogConfig};
    let file = match &args.config {
        Some(path) => ServeConfig::from_file(path)?,
        None => ServeConfig::default(),
    };
    let flags = ServeConfig {
        listen: args.listen,
        upstream: UpstreamConfig {
            url: args.upstream,
            timeout_secs: args.upstream_timeout_secs,
            supports_n: args.upstream_supports_n,
            continuation: args.upstream_continuation,
        },
        policy: args.policy,
        model: args.model,
        classifier: ClassifierConfig {
            sessions: args.sessions,
            threads: args.classifier_threads,
            max_batch: None,
            device: args.device,
            max_queued_rows: None,
            ..ClassifierConfig::default()
        },
        max_body_bytes: args.max_body_bytes,
        on_classifier_error: args.on_classifier_error,
        unguarded_routes: args.unguarded_routes,
        threads: args.threads,
        watch: args.no_watch.then_some(false),
        admin: AdminConfig { listen: args.admin_listen, token_file: args.admin_token_file, ..AdminConfig::default() },
        telemetry: rulegate::telemetry::TelemetryConfig { otlp_endpoint: args.otlp_endpoint, ..Default::default() },
        mode: args.mode,
        decision_log: args.decision_log.map(DecisionLogConfig::at),
        candidate_policy: args.candidate_policy,
        ..ServeConfig::default()
    };
    let config = file.overridden_by(flags).resolve()?;
    let telemetry = rulegate::telemetry::init(log, &config.telemetry)?;

    let store = GuardStore::load(StoreConfig {
        policies: config.policies.clone(),
        default_policy: config.default_policy.clone(),
        api_keys: config.api_keys.clone(),
        model: model_dir(config.model.as_deref())?,
        classifier: config.classifier_options(),
        cache: (config.cache_capacity > 0)
            .then(|| rulegate::guard::VerdictCache::new(config.cache_capacity, config.cache_ttl)),
    })?;
    let status = store.status();
    tracing::info!(policies = ?store.policy_names(), default = %status.default_policy, model = %status.model.version, device = %status.model.device, "guard loaded");

    let _watcher = if config.watch { Some(rulegate::reload::watch::watch(store.clone())?) } else { None };
    // A remote model can change on its server with no file event here: ask it now and then.
    let _poller = config.remote_poll.map(|every| rulegate::reload::watch::poll(store.clone(), every)).transpose()?;
    let mut options = config.pipeline_options();
    if let Some(path) = &config.candidate_policy {
        let candidate = rulegate::Policy::from_file(path)
            .with_context(|| format!("cannot load the candidate policy {}", path.display()))?;
        let live = rulegate::guard::GuardSelector::default_guard(&store).judge().policy().clone();
        rulegate::policy::CandidatePolicy::check(&candidate, &live)?;
        tracing::info!(candidate = %candidate.version(), live = %live.version(), "candidate policy decided beside the live one");
        options.candidate.set(Some(std::sync::Arc::new(candidate)));
    }
    let decision_log =
        config.decision_log.as_ref().map(|c| DecisionLog::open_with(c, telemetry.decision_logger())).transpose()?;
    if let Some(log) = &decision_log {
        tracing::info!(path = %log.path().display(), text = ?log.text(), "decision log");
    }
    options.decision_log = decision_log.clone();
    if options.mode == rulegate::pipeline::GuardMode::Shadow {
        tracing::warn!("shadow mode: requests are judged and recorded, never acted on");
    }
    start_admin(&config, store.clone(), options.candidate.clone())?;

    let upstream = rulegate::proxy::upstream(&config.upstream_url, config.upstream_timeout)?;
    let pipeline = rulegate::pipeline::Pipeline::new(store, upstream, options);
    let sidecar = rulegate::proxy::Sidecar::new(pipeline, &config.upstream_url, config.max_body_bytes)?
        .with_io_timeout(config.upstream_timeout);
    tracing::info!(upstream = %config.upstream_url, "proxying");
    let served = rulegate::proxy::run(sidecar, &config.listen, config.threads);
    // Lines still queued are written and the file fsynced before the process ends.
    if let Some(log) = decision_log {
        log.close();
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// The admin API and SIGHUP reloads, on a small runtime of their own beside the proxy's.
fn start_admin(
    config: &rulegate::config::Resolved,
    store: rulegate::reload::GuardStore,
    candidate: rulegate::policy::CandidatePolicy,
) -> Result<()> {
    let listener = match &config.admin_listen {
        Some(addr) => {
            let listener =
                std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr} (admin)"))?;
            listener.set_nonblocking(true)?;
            if config.admin_token.is_none() {
                tracing::warn!(
                    "no admin token configured (admin.token_file or RULEGATE_ADMIN_TOKEN): /admin/* answers 401"
                );
            }
            tracing::info!(listen = %addr, "admin API listening");
            Some(listener)
        }
        None => None,
    };
    let router =
        rulegate::reload::admin::router(store.clone(), config.admin_token.clone(), config.metrics_without_token)
            .merge(rulegate::reload::admin::candidate_router(store.clone(), config.admin_token.clone(), candidate));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("rulegate-admin".into()).spawn(move || {
        runtime.block_on(async move {
            let sighup = async {
                use tokio::signal::unix::{SignalKind, signal};
                let Ok(mut hangups) = signal(SignalKind::hangup()) else { return };
                while hangups.recv().await.is_some() {
                    let store = store.clone();
                    match tokio::task::spawn_blocking(move || store.reload()).await {
                        Ok(report) => tracing::info!(ok = report.ok, "reload on SIGHUP"),
                        Err(e) => tracing::error!(error = %e, "reload on SIGHUP failed"),
                    }
                }
            };
            let admin = async {
                if let Some(listener) = listener
                    && let Ok(listener) = tokio::net::TcpListener::from_std(listener)
                    && let Err(e) = axum::serve(listener, router).await
                {
                    tracing::error!(error = %e, "admin API stopped");
                }
            };
            tokio::join!(sighup, admin);
        });
    })?;
    Ok(())
}
