//! `rulegate serve` configuration: a YAML file (`--config rulegate.yaml`), overridden by
//! flags. Relative paths in the file are relative to the file.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;

use crate::access::{ApiKey, Selectors, UntrustedSelector};
use crate::classifier::{ClassifierOptions, Device};
use crate::pipeline::route::{StoredCompletions, UnguardedRoutes};
use crate::pipeline::{FailMode, GuardMode, PipelineOptions, UnjudgedFields, UnreadableInput};
use crate::telemetry::decision_log::DecisionLogConfig;

/// Why the `serve` configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// The config file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid YAML or has unknown or mistyped fields.
    #[error("config {path}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The parser's error.
        message: String,
    },
    /// A required setting is absent or a referenced file or value is unusable (no upstream,
    /// no policy, an unreadable policy or token file, an unknown device); the message says
    /// which and how to fix it.
    #[error("{0}")]
    Missing(String),
}

/// The `serve` settings as written in the config file or given as flags; every field is
/// optional so that flags can be layered over the file with [`ServeConfig::overridden_by`].
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address of the guarded OpenAI-compatible listener, e.g. `127.0.0.1:8080`.
    pub listen: Option<String>,
    /// The model API behind the guard.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// A single policy file; requests select it by the name written in it.
    pub policy: Option<PathBuf>,
    /// Model directory; when absent, `serve` looks for `models/rulegate-minilm-rbr`.
    pub model: Option<PathBuf>,
    /// Classifier session pool settings.
    #[serde(default)]
    pub classifier: ClassifierConfig,
    /// Largest accepted request body.
    pub max_body_bytes: Option<usize>,
    /// What to do when the classifier fails: `fail_closed` (503) or `fail_open` (deliver unjudged).
    pub on_classifier_error: Option<FailModeName>,
    /// Worker threads of the proxy.
    pub threads: Option<usize>,
    /// Several policies by name; a request picks one with `x-rulegate-policy: NAME` or its
    /// API key (`api_keys`), else gets `default_policy`. Ignored when `policy` is set.
    #[serde(default)]
    pub policies: IndexMap<String, PathBuf>,
    /// Name of the policy requests get when they select none (default: the first in `policies`).
    pub default_policy: Option<String>,
    /// API key, or `sha256:<hex>` of one (preferred: no secret in the file) -> policy name.
    #[serde(default)]
    pub api_keys: IndexMap<String, String>,
    /// Reload policies and model when their files change (default true).
    pub watch: Option<bool>,
    /// The admin listener (status, reload, metrics).
    #[serde(default)]
    pub admin: AdminConfig,
    /// The verdict cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Tracing export.
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// Requests that could generate text on routes rulegate does not judge (anything but
    /// chat completions, embeddings, moderations and tokenize): `deny` (403, the default)
    /// or `pass` (forwarded unjudged).
    pub unguarded_routes: Option<UnguardedRoutes>,
    /// Reads and deletes of stored completions (`GET .../chat/completions/{id}`, the list
    /// route, `/v1/responses/{id}`, ...): `deny` (403, the default) or `pass`.
    pub stored_completions: Option<StoredCompletions>,
    /// Fields of an upstream answer rulegate does not know: `drop` (the default) or `judge`
    /// (kept, and read by the judge as part of the completion).
    pub unjudged_fields: Option<UnjudgedFields>,
    /// Requests with content the judge cannot read (images, audio, files): `judge_text` (the
    /// default: the text beside it is judged) or `refuse` (400).
    pub unreadable_input: Option<UnreadableInput>,
    /// Who may pick the policy (`x-rulegate-policy`) or state the response type
    /// (`x-rulegate-response-type`) with headers; nobody by default.
    #[serde(default)]
    pub client_selectors: SelectorsConfig,
    /// `enforce` (the default: act on verdicts) or `shadow` (judge and record, deliver the
    /// upstream's answer unchanged).
    pub mode: Option<GuardMode>,
    /// Per policy name, a mode other than `mode` (e.g. `{strict: shadow}` tries a new policy
    /// in shadow while the others enforce).
    #[serde(default)]
    pub policy_modes: IndexMap<String, GuardMode>,
    /// One JSON line per judged request (`--decision-log PATH` sets the path).
    pub decision_log: Option<DecisionLogConfig>,
    /// A policy decided beside the live one on every judged request, from the same
    /// classifier pass (replaced at runtime through `/admin/candidate`).
    pub candidate_policy: Option<PathBuf>,
}

/// The `client_selectors:` section.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorsConfig {
    /// Honour the headers from every caller (only behind a gateway that authenticates and
    /// strips them itself). Default false.
    pub trust_all: Option<bool>,
    /// API keys (or `sha256:<hex>` of them) whose callers may use the headers.
    #[serde(default)]
    pub trusted_api_keys: Vec<String>,
    /// `ignore` (default: judge as if the header were absent) or `reject` (403).
    pub untrusted: Option<UntrustedSelector>,
}

/// The `admin:` section: the listener for `/admin/*` and `/metrics`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Admin listener (default `127.0.0.1:9090`); `off` disables it.
    pub listen: Option<String>,
    /// File holding the bearer token.
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the bearer token (default `RULEGATE_ADMIN_TOKEN`).
    pub token_env: Option<String>,
    /// Serve `/metrics` without the token (for scrapers on a trusted network).
    pub metrics_without_token: Option<bool>,
}

/// The `cache:` section: verdicts remembered by policy version, model version and text.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Most verdicts kept (default 10000; 0 disables the cache).
    pub capacity: Option<u64>,
    /// Seconds a verdict is kept (default 600).
    pub ttl_secs: Option<u64>,
}

/// The `upstream:` section: the OpenAI-compatible model API the guard calls.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL of the model API, e.g. `http://127.0.0.1:8000` (paths are appended).
    pub url: Option<String>,
    /// Per call; for streams, per chunk.
    pub timeout_secs: Option<u64>,
    /// Whether the upstream honours `n` (best-of-n then asks once for several candidates).
    pub supports_n: Option<bool>,
    /// How the upstream continues an assistant prefix, for `beam_search`: `none` (default),
    /// `assistant_prefix` or `chatml_completions` (see [`Continuation`](crate::upstream::Continuation)).
    pub continuation: Option<crate::upstream::Continuation>,
}

/// The `classifier:` section; see [`ClassifierOptions`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    /// ONNX sessions (and worker threads) in the pool (default: one per core, up to 4; 4
    /// calls in flight for a remote backend; see
    /// [`ClassifierOptions::layout`](crate::ClassifierOptions::layout)).
    pub sessions: Option<usize>,
    /// Intra-op threads per session (default: the cores divided among the sessions).
    pub threads: Option<usize>,
    /// Most pairs in one ONNX call (default 16).
    pub max_batch: Option<usize>,
    /// `cpu`, `cuda` or `cuda:N` (default: CUDA device 0 with the `cuda` feature, else CPU).
    pub device: Option<String>,
    /// Most pairs waiting for the classifier before requests are refused with 503
    /// (default 256, see [`ClassifierOptions::max_queued_rows`](crate::ClassifierOptions)).
    pub max_queued_rows: Option<usize>,
    /// `local` (ONNX Runtime in this process, the default) or `remote` (a shared inference
    /// server speaking the Open Inference Protocol, set up in `remote`).
    pub backend: Option<BackendName>,
    /// The inference server, for `backend: remote`.
    #[serde(default)]
    pub remote: RemoteConfig,
}

/// `classifier.backend` as written in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendName {
    /// ONNX Runtime in this process.
    Local,
    /// A remote inference server ([`RemoteConfig`]).
    Remote,
}

/// The `classifier.remote:` section; see [`RemoteOptions`](crate::classifier::RemoteOptions).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// Base URL of the server's HTTP or gRPC port, e.g. `http://inference:8080`.
    pub url: Option<String>,
    /// `http` (default) or `grpc`.
    pub protocol: Option<crate::classifier::Protocol>,
    /// Model name on the server (default: the manifest's `name`).
    pub model: Option<String>,
    /// Model version (default: the newest the server lists, re-resolved on every reload).
    pub version: Option<String>,
    /// Longest wait per call, in milliseconds (default 2000).
    pub timeout_ms: Option<u64>,
    /// Further attempts after a failed call (default 1).
    pub retries: Option<u32>,
    /// Consecutive failures that open the circuit (default 5).
    pub breaker_failures: Option<u32>,
    /// Seconds an open circuit waits before a trial call (default 5).
    pub breaker_cooldown_secs: Option<u64>,
    /// Seconds between checks of the version the server serves; a new one is loaded and
    /// swapped in like a new model on disk (default 30; 0 turns polling off).
    pub poll_secs: Option<u64>,
}

/// [`FailMode`] as written in the config file and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FailModeName {
    /// Deliver the completion unjudged ([`FailMode::Open`]).
    FailOpen,
    /// Answer 503 ([`FailMode::Closed`]).
    FailClosed,
}

impl From<FailModeName> for FailMode {
    fn from(name: FailModeName) -> FailMode {
        match name {
            FailModeName::FailOpen => FailMode::Open,
            FailModeName::FailClosed => FailMode::Closed,
        }
    }
}

/// Everything `serve` needs, defaults applied and paths resolved.
#[derive(Clone)]
pub struct Resolved {
    /// Act on verdicts, or only record them (default enforce).
    pub mode: GuardMode,
    /// Per policy name, a mode other than `mode`.
    pub policy_modes: std::collections::HashMap<String, GuardMode>,
    /// The decision log's settings, validated; opened by `serve`.
    pub decision_log: Option<DecisionLogConfig>,
    /// The candidate policy's file.
    pub candidate_policy: Option<PathBuf>,
    /// Address of the guarded listener (default `127.0.0.1:8080`).
    pub listen: String,
    /// Policy name -> file (one entry when configured with `policy`).
    pub policies: IndexMap<String, PathBuf>,
    /// The policy requests get when they select none; `None` means the first in `policies`.
    pub default_policy: Option<String>,
    /// API key, or `sha256:<hex>` of one -> policy name.
    pub api_keys: IndexMap<String, String>,
    /// Whether to reload policies and model when their files change (default true).
    pub watch: bool,
    /// `None` when the admin listener is off.
    pub admin_listen: Option<String>,
    /// Bearer token for the admin API, from `token_file` or the token environment variable,
    /// trimmed; `None` when neither gives a non-empty one.
    pub admin_token: Option<String>,
    /// Serve `/metrics` without the token (default false).
    pub metrics_without_token: bool,
    /// Most verdicts cached; 0 disables the cache (default 10000).
    pub cache_capacity: u64,
    /// How long a verdict is cached (default 600 s).
    pub cache_ttl: std::time::Duration,
    /// Tracing export settings, as given.
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// Base URL of the model API; required.
    pub upstream_url: String,
    /// Per upstream call, per chunk for streams (default 120 s).
    pub upstream_timeout: std::time::Duration,
    /// Whether the upstream honours `n` (default true).
    pub upstream_supports_n: bool,
    /// How the upstream continues an assistant prefix (default: it cannot).
    pub upstream_continuation: crate::upstream::Continuation,
    /// Model directory; `None` leaves the search for the default model to the caller.
    pub model: Option<PathBuf>,
    /// ONNX sessions in the pool; `None` leaves it to
    /// [`ClassifierOptions::layout`](crate::ClassifierOptions::layout).
    pub sessions: Option<usize>,
    /// Intra-op threads per session; `None` leaves it to
    /// [`ClassifierOptions::layout`](crate::ClassifierOptions::layout).
    pub classifier_threads: Option<usize>,
    /// Most pairs in one ONNX call (default 16).
    pub max_batch: usize,
    /// In-process ONNX Runtime or a remote inference server.
    pub backend: crate::classifier::Backend,
    /// How often to check the remote server's model version (`None`: never).
    pub remote_poll: Option<std::time::Duration>,
    /// Most pairs waiting for the classifier (default 256).
    pub max_queued_rows: usize,
    /// Where inference runs; `None` uses the classifier's default.
    pub device: Option<Device>,
    /// Largest accepted request body (default 4 MiB).
    pub max_body_bytes: usize,
    /// What to do when the classifier fails (default [`FailMode::Closed`]).
    pub on_classifier_error: FailMode,
    /// Worker threads of the proxy (default: every core).
    pub threads: usize,
    /// What happens to requests on generation routes rulegate does not judge.
    pub unguarded_routes: UnguardedRoutes,
    /// What happens to reads of stored completions.
    pub stored_completions: StoredCompletions,
    /// What happens to unknown fields of an upstream answer.
    pub unjudged_fields: UnjudgedFields,
    /// What happens to requests with content the judge cannot read.
    pub unreadable_input: UnreadableInput,
    /// Who may use the selector headers.
    pub selectors: Selectors,
}

impl ServeConfig {
    /// Reads a config file; relative paths in it are made relative to the file's directory.
    pub fn from_file(path: &Path) -> Result<ServeConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        let mut config: ServeConfig = serde_saphyr::from_str(&text)
            .map_err(|e| ConfigError::Invalid { path: path.to_path_buf(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut Option<PathBuf>| {
            if let Some(rel) = p.as_ref().filter(|p| p.is_relative()) {
                *p = Some(base.join(rel));
            }
        };
        resolve(&mut config.policy);
        resolve(&mut config.model);
        resolve(&mut config.admin.token_file);
        resolve(&mut config.candidate_policy);
        if let Some(log) = config.decision_log.as_mut()
            && log.path.is_relative()
        {
            log.path = base.join(&log.path);
        }
        for path in config.policies.values_mut() {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        Ok(config)
    }

    /// `other`'s settings win where it has them (flags over the file).
    pub fn overridden_by(self, other: ServeConfig) -> ServeConfig {
        // A policy given as a flag replaces the file's policies.
        let flag_policy = other.policy.is_some() || !other.policies.is_empty();
        ServeConfig {
            listen: other.listen.or(self.listen),
            upstream: UpstreamConfig {
                url: other.upstream.url.or(self.upstream.url),
                timeout_secs: other.upstream.timeout_secs.or(self.upstream.timeout_secs),
                supports_n: other.upstream.supports_n.or(self.upstream.supports_n),
                continuation: other.upstream.continuation.or(self.upstream.continuation),
            },
            policy: if flag_policy { other.policy } else { self.policy },
            policies: if flag_policy { other.policies } else { self.policies },
            model: other.model.or(self.model),
            classifier: ClassifierConfig {
                sessions: other.classifier.sessions.or(self.classifier.sessions),
                threads: other.classifier.threads.or(self.classifier.threads),
                max_batch: other.classifier.max_batch.or(self.classifier.max_batch),
                device: other.classifier.device.or(self.classifier.device),
                max_queued_rows: other.classifier.max_queued_rows.or(self.classifier.max_queued_rows),
                backend: other.classifier.backend.or(self.classifier.backend),
                remote: RemoteConfig {
                    url: other.classifier.remote.url.or(self.classifier.remote.url),
                    protocol: other.classifier.remote.protocol.or(self.classifier.remote.protocol),
                    model: other.classifier.remote.model.or(self.classifier.remote.model),
                    version: other.classifier.remote.version.or(self.classifier.remote.version),
                    timeout_ms: other.classifier.remote.timeout_ms.or(self.classifier.remote.timeout_ms),
                    retries: other.classifier.remote.retries.or(self.classifier.remote.retries),
                    breaker_failures: other
                        .classifier
                        .remote
                        .breaker_failures
                        .or(self.classifier.remote.breaker_failures),
                    breaker_cooldown_secs: other
                        .classifier
                        .remote
                        .breaker_cooldown_secs
                        .or(self.classifier.remote.breaker_cooldown_secs),
                    poll_secs: other.classifier.remote.poll_secs.or(self.classifier.remote.poll_secs),
                },
            },
            mode: other.mode.or(self.mode),
            policy_modes: if other.policy_modes.is_empty() { self.policy_modes } else { other.policy_modes },
            // A `--decision-log PATH` flag keeps the file's other log settings.
            decision_log: match (other.decision_log, self.decision_log) {
                (Some(flag), Some(file)) => Some(DecisionLogConfig { path: flag.path, ..file }),
                (flag, file) => flag.or(file),
            },
            candidate_policy: other.candidate_policy.or(self.candidate_policy),
            max_body_bytes: other.max_body_bytes.or(self.max_body_bytes),
            on_classifier_error: other.on_classifier_error.or(self.on_classifier_error),
            threads: other.threads.or(self.threads),
            default_policy: other.default_policy.or(self.default_policy),
            api_keys: if other.api_keys.is_empty() { self.api_keys } else { other.api_keys },
            watch: other.watch.or(self.watch),
            admin: AdminConfig {
                listen: other.admin.listen.or(self.admin.listen),
                token_file: other.admin.token_file.or(self.admin.token_file),
                token_env: other.admin.token_env.or(self.admin.token_env),
                metrics_without_token: other.admin.metrics_without_token.or(self.admin.metrics_without_token),
            },
            cache: CacheConfig {
                capacity: other.cache.capacity.or(self.cache.capacity),
                ttl_secs: other.cache.ttl_secs.or(self.cache.ttl_secs),
            },
            telemetry: crate::telemetry::TelemetryConfig {
                otlp_endpoint: other.telemetry.otlp_endpoint.or(self.telemetry.otlp_endpoint),
                service_name: other.telemetry.service_name.or(self.telemetry.service_name),
                log_content: other.telemetry.log_content || self.telemetry.log_content,
            },
            unguarded_routes: other.unguarded_routes.or(self.unguarded_routes),
            stored_completions: other.stored_completions.or(self.stored_completions),
            unjudged_fields: other.unjudged_fields.or(self.unjudged_fields),
            unreadable_input: other.unreadable_input.or(self.unreadable_input),
            client_selectors: SelectorsConfig {
                trust_all: other.client_selectors.trust_all.or(self.client_selectors.trust_all),
                trusted_api_keys: if other.client_selectors.trusted_api_keys.is_empty() {
                    self.client_selectors.trusted_api_keys
                } else {
                    other.client_selectors.trusted_api_keys
                },
                untrusted: other.client_selectors.untrusted.or(self.client_selectors.untrusted),
            },
        }
    }

    /// Applies defaults, loads a single `policy` to learn its name and reads the admin token;
    /// fails without an upstream URL or a policy.
    pub fn resolve(self) -> Result<Resolved, ConfigError> {
        let upstream_url = self.upstream.url.ok_or_else(|| {
            ConfigError::Missing("no upstream: pass --upstream URL or set upstream.url in the config".into())
        })?;
        let mut policies = self.policies;
        if let Some(path) = &self.policy {
            // One policy: requests select it by the name written in the file.
            let name =
                crate::Policy::from_file(path).map_err(|e| ConfigError::Missing(e.to_string()))?.name().to_string();
            policies = IndexMap::from([(name, path.clone())]);
        }
        if policies.is_empty() {
            return Err(ConfigError::Missing(
                "no policy: pass --policy FILE, or set policy or policies in the config".into(),
            ));
        }
        let token_env = self.admin.token_env.unwrap_or_else(|| "RULEGATE_ADMIN_TOKEN".into());
        let admin_token = match &self.admin.token_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .map_err(|e| ConfigError::Missing(format!("cannot read admin token file {}: {e}", file.display())))?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var(&token_env).ok().map(|t| t.trim().to_string()),
        }
        .filter(|t| !t.is_empty());
        let device =
            self.classifier.device.as_deref().map(str::parse::<Device>).transpose().map_err(ConfigError::Missing)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let remote = &self.classifier.remote;
        let (backend, remote_poll) = match self.classifier.backend {
            None | Some(BackendName::Local) => (crate::classifier::Backend::Local, None),
            Some(BackendName::Remote) => {
                let url = remote.url.clone().ok_or_else(|| {
                    ConfigError::Missing("classifier.backend is remote but classifier.remote.url is not set".into())
                })?;
                let mut options = crate::classifier::RemoteOptions::new(url);
                options.protocol = remote.protocol.unwrap_or_default();
                options.model = remote.model.clone();
                options.version = remote.version.clone();
                if let Some(ms) = remote.timeout_ms {
                    options.timeout = std::time::Duration::from_millis(ms);
                }
                options.retries = remote.retries.unwrap_or(options.retries);
                options.breaker_failures = remote.breaker_failures.unwrap_or(options.breaker_failures);
                if let Some(secs) = remote.breaker_cooldown_secs {
                    options.breaker_cooldown = std::time::Duration::from_secs(secs);
                }
                if options.timeout.is_zero() || options.breaker_failures == 0 {
                    return Err(ConfigError::Missing(
                        "classifier.remote.timeout_ms and breaker_failures must be above zero".into(),
                    ));
                }
                let poll = remote.poll_secs.unwrap_or(30);
                (crate::classifier::Backend::Remote(options), (poll > 0).then(|| std::time::Duration::from_secs(poll)))
            }
        };
        // A remote call mostly waits on the network: several in flight keep the server's
        // batcher fed; local sessions each take cores.
        let default_sessions = (self.classifier.backend == Some(BackendName::Remote)).then_some(4);
        let trusted_keys = self
            .client_selectors
            .trusted_api_keys
            .iter()
            .map(|k| ApiKey::parse(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::Missing(format!("client_selectors.trusted_api_keys: {e}")))?;
        if let Some(log) = &self.decision_log {
            log.validate().map_err(|e| ConfigError::Missing(e.to_string()))?;
        }
        if let Some(name) = self.policy_modes.keys().find(|n| !policies.contains_key(*n)) {
            return Err(ConfigError::Missing(format!(
                "policy_modes names `{name}`, which is not a loaded policy ({})",
                policies.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(Resolved {
            mode: self.mode.unwrap_or_default(),
            policy_modes: self.policy_modes.into_iter().collect(),
            decision_log: self.decision_log,
            candidate_policy: self.candidate_policy,
            unguarded_routes: self.unguarded_routes.unwrap_or_default(),
            stored_completions: self.stored_completions.unwrap_or_default(),
            unjudged_fields: self.unjudged_fields.unwrap_or_default(),
            unreadable_input: self.unreadable_input.unwrap_or_default(),
            selectors: Selectors {
                trust_all: self.client_selectors.trust_all.unwrap_or(false),
                trusted_keys,
                untrusted: self.client_selectors.untrusted.unwrap_or_default(),
            },
            listen: self.listen.unwrap_or_else(|| "127.0.0.1:8080".into()),
            policies,
            default_policy: self.default_policy,
            api_keys: self.api_keys,
            watch: self.watch.unwrap_or(true),
            admin_listen: match self.admin.listen.as_deref() {
                Some("off") => None,
                Some(addr) => Some(addr.to_string()),
                None => Some("127.0.0.1:9090".into()),
            },
            admin_token,
            metrics_without_token: self.admin.metrics_without_token.unwrap_or(false),
            cache_capacity: self.cache.capacity.unwrap_or(10_000),
            cache_ttl: std::time::Duration::from_secs(self.cache.ttl_secs.unwrap_or(600)),
            telemetry: self.telemetry,
            upstream_url,
            upstream_timeout: std::time::Duration::from_secs(self.upstream.timeout_secs.unwrap_or(120)),
            upstream_supports_n: self.upstream.supports_n.unwrap_or(true),
            upstream_continuation: self.upstream.continuation.unwrap_or_default(),
            model: self.model,
            sessions: self.classifier.sessions.or(default_sessions),
            backend,
            remote_poll,
            classifier_threads: self.classifier.threads,
            max_batch: self.classifier.max_batch.unwrap_or(16),
            max_queued_rows: self.classifier.max_queued_rows.unwrap_or(crate::classifier::DEFAULT_MAX_QUEUED_ROWS),
            device,
            max_body_bytes: self.max_body_bytes.unwrap_or(crate::pipeline::http::DEFAULT_MAX_BODY_BYTES),
            on_classifier_error: self.on_classifier_error.map_or(FailMode::Closed, Into::into),
            threads: self.threads.unwrap_or(cores),
        })
    }
}

impl Resolved {
    /// The classifier's options: sessions and threads laid out over the cores, with the
    /// configured batch size, queue bound and backend.
    pub fn classifier_options(&self) -> ClassifierOptions {
        ClassifierOptions {
            max_batch: self.max_batch,
            max_queued_rows: self.max_queued_rows,
            backend: self.backend.clone(),
            ..ClassifierOptions::laid_out(self.device, self.sessions, self.classifier_threads)
        }
    }

    /// The guarded pipeline's options.
    pub fn pipeline_options(&self) -> PipelineOptions {
        PipelineOptions {
            mode: self.mode,
            policy_modes: self.policy_modes.clone(),
            // Opened (a file, a writer thread) and loaded by `serve`, which owns them.
            decision_log: None,
            candidate: crate::policy::CandidatePolicy::new(),
            on_classifier_error: self.on_classifier_error,
            upstream_supports_n: self.upstream_supports_n,
            unguarded_routes: self.unguarded_routes,
            selectors: self.selectors.clone(),
            continuation: self.upstream_continuation,
            stored_completions: self.stored_completions,
            unjudged_fields: self.unjudged_fields,
            unreadable_input: self.unreadable_input,
        }
    }
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("listen", &self.listen)
            .field("policies", &self.policies)
            .field("api_keys", &format!("<{} redacted>", self.api_keys.len()))
            .field("admin_listen", &self.admin_listen)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<redacted>"))
            .field("upstream_url", &self.upstream_url)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
            .field("policy", &self.policy)
            .field("policies", &self.policies)
            .field("api_keys", &format!("<{} redacted>", self.api_keys.len()))
            .field("model", &self.model)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_paths_are_relative_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rulegate.yaml");
        // resolve() reads the policy's name from the file.
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/refusal-style.yaml");
        std::fs::copy(shipped, dir.path().join("p.yaml")).unwrap();
        std::fs::write(&path, "listen: 0.0.0.0:9000\nupstream:\n  url: http://a:1\n  timeout_secs: 5\npolicy: p.yaml\nclassifier:\n  sessions: 2\n").unwrap();
        let file = ServeConfig::from_file(&path).unwrap();
        assert_eq!(file.policy.as_deref(), Some(dir.path().join("p.yaml").as_path()));
        let flags = ServeConfig { listen: Some("127.0.0.1:1".into()), ..ServeConfig::default() };
        let r = file.overridden_by(flags).resolve().unwrap();
        assert_eq!(r.listen, "127.0.0.1:1");
        // The admin API listens on loopback unless told otherwise (SECURITY.md).
        assert_eq!(r.admin_listen.as_deref(), Some("127.0.0.1:9090"));
        assert_eq!(r.upstream_url, "http://a:1");
        assert_eq!(r.upstream_timeout.as_secs(), 5);
        assert_eq!(r.sessions, Some(2));
        assert_eq!(r.on_classifier_error, FailMode::Closed);
        assert_eq!(r.policies.get("refusal-style").map(PathBuf::as_path), Some(dir.path().join("p.yaml").as_path()));
        // Secure defaults: unguarded generation routes refused, selector headers untrusted.
        assert_eq!(r.unguarded_routes, UnguardedRoutes::Deny);
        assert_eq!(r.stored_completions, StoredCompletions::Deny);
        assert_eq!(r.unjudged_fields, UnjudgedFields::Drop);
        assert_eq!(r.unreadable_input, UnreadableInput::JudgeText);
        assert!(!r.selectors.trusts(None) && !r.selectors.trusts(Some("any-key")));
        assert_eq!(r.selectors.untrusted, UntrustedSelector::Ignore);
        assert_eq!(r.upstream_continuation, crate::upstream::Continuation::None);
    }

    #[test]
    fn selectors_and_routes_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/refusal-style.yaml");
        std::fs::write(
            &path,
            format!(
                "upstream: {{url: 'http://a:1', continuation: chatml_completions}}\npolicy: {}\nunguarded_routes: pass\nstored_completions: pass\nunjudged_fields: judge\nunreadable_input: refuse\nclient_selectors:\n  trusted_api_keys: [sk-ops]\n  untrusted: reject\n",
                shipped.display()
            ),
        )
        .unwrap();
        let r = ServeConfig::from_file(&path).unwrap().resolve().unwrap();
        assert_eq!(r.unguarded_routes, UnguardedRoutes::Pass);
        assert_eq!(r.stored_completions, StoredCompletions::Pass);
        assert_eq!(r.unjudged_fields, UnjudgedFields::Judge);
        assert_eq!(r.unreadable_input, UnreadableInput::Refuse);
        assert_eq!(r.upstream_continuation, crate::upstream::Continuation::ChatmlCompletions);
        assert!(r.selectors.trusts(Some("sk-ops")) && !r.selectors.trusts(Some("sk-other")));
        assert_eq!(r.selectors.untrusted, UntrustedSelector::Reject);
        std::fs::write(&path, "upstream: {url: 'http://a:1'}\npolicies: {a: x.yaml}\nclient_selectors: {trusted_api_keys: ['sha256:zz']}\n").unwrap();
        let err = ServeConfig::from_file(&path).unwrap().resolve().unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }

    #[test]
    fn mode_decision_log_and_candidate_from_the_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/refusal-style.yaml");
        std::fs::write(
            &path,
            format!(
                "upstream: {{url: 'http://a:1'}}\npolicy: {}\nmode: shadow\npolicy_modes: {{refusal-style: enforce}}\ndecision_log: {{path: d.jsonl, text: flagged, sample: 0.5}}\ncandidate_policy: next.yaml\n",
                shipped.display()
            ),
        )
        .unwrap();
        let file = ServeConfig::from_file(&path).unwrap();
        let r = file.clone().resolve().unwrap();
        assert_eq!(r.mode, GuardMode::Shadow);
        let options = r.pipeline_options();
        assert_eq!(options.mode_for("refusal-style"), GuardMode::Enforce, "the per-policy mode wins");
        assert_eq!(options.mode_for("other"), GuardMode::Shadow);
        let log = r.decision_log.clone().unwrap();
        assert_eq!(log.path, dir.path().join("d.jsonl"), "relative to the config file");
        assert_eq!(log.text, crate::telemetry::decision_log::LogText::Flagged);
        assert_eq!(r.candidate_policy.as_deref(), Some(dir.path().join("next.yaml").as_path()));
        // `--decision-log PATH` moves the file and keeps the file's other settings.
        let flags = ServeConfig {
            mode: Some(GuardMode::Enforce),
            decision_log: Some(DecisionLogConfig::at("/tmp/x.jsonl")),
            ..ServeConfig::default()
        };
        let r = file.overridden_by(flags).resolve().unwrap();
        assert_eq!(r.mode, GuardMode::Enforce);
        let log = r.decision_log.unwrap();
        assert_eq!(
            (log.path.as_path(), log.text, log.sample),
            (Path::new("/tmp/x.jsonl"), crate::telemetry::decision_log::LogText::Flagged, 0.5)
        );
        // A mode for a policy that is not loaded, and an out-of-range sample, are errors.
        std::fs::write(
            &path,
            format!("upstream: {{url: 'http://a:1'}}\npolicy: {}\npolicy_modes: {{nope: shadow}}\n", shipped.display()),
        )
        .unwrap();
        let err = ServeConfig::from_file(&path).unwrap().resolve().unwrap_err();
        assert!(err.to_string().contains("`nope`"), "{err}");
        std::fs::write(
            &path,
            format!(
                "upstream: {{url: 'http://a:1'}}\npolicy: {}\ndecision_log: {{path: d, sample: 2}}\n",
                shipped.display()
            ),
        )
        .unwrap();
        let err = ServeConfig::from_file(&path).unwrap().resolve().unwrap_err();
        assert!(err.to_string().contains("sample"), "{err}");
    }

    #[test]
    fn unknown_fields_and_missing_settings_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "upstrem: {}\n").unwrap();
        assert!(ServeConfig::from_file(&path).unwrap_err().to_string().contains("unknown field `upstrem`"));
        let err = ServeConfig::default().resolve().unwrap_err();
        assert!(err.to_string().contains("--upstream"), "{err}");
    }
}
