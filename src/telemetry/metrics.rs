//! Prometheus metrics, in one process-wide registry (`GET /metrics` on the admin listener).

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteStatus {
    pub(crate) route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Route {
    pub(crate) route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct VerdictLabels {
    pub(crate) policy: String,
    pub class: String,
    pub action: String,
    /// `enforce` or `shadow` (where `action` is what enforce would have done).
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CandidateLabels {
    pub(crate) policy: String,
    pub live_class: String,
    pub candidate_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PolicyLabel {
    pub(crate) policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LogLineLabels {
    pub(crate) result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CacheLabels {
    pub(crate) result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReloadLabels {
    pub(crate) kind: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PolicyVersion {
    pub(crate) policy: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ModelVersion {
    pub(crate) version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FailLabels {
    pub(crate) mode: String,
}

/// Every metric rulegate exports.
pub struct Metrics {
    registry: Registry,
    /// `rulegate_requests_total`: requests by route and HTTP status.
    pub(crate) requests: Family<RouteStatus, Counter>,
    /// `rulegate_request_duration_seconds`: end-to-end latency by route.
    pub(crate) request_duration: Family<Route, Histogram>,
    /// `rulegate_verdicts_total`: delivered verdicts by policy, class, action and mode (in
    /// `shadow` mode the action is what enforce would have done).
    pub(crate) verdicts: Family<VerdictLabels, Counter>,
    /// `rulegate_candidate_decisions_total`: requests the candidate policy decided too.
    pub(crate) candidate_decisions: Family<PolicyLabel, Counter>,
    /// `rulegate_candidate_disagreements_total`: requests whose candidate class or action
    /// differs from the live one, by live and candidate class.
    pub(crate) candidate_disagreements: Family<CandidateLabels, Counter>,
    /// `rulegate_decision_log_lines_total`: decision-log lines by `result` (`written`,
    /// `dropped` when the writer was behind, `error` when the file could not be written).
    pub(crate) decision_log_lines: Family<LogLineLabels, Counter>,
    /// `rulegate_attempts_per_request`: upstream completions generated per request.
    pub(crate) attempts: Histogram,
    /// `rulegate_regenerations_total`: extra completions asked for by regenerate and best-of-n.
    pub(crate) regenerations: Counter,
    /// `rulegate_classifier_latency_seconds`: ONNX Runtime time per batch.
    pub(crate) classifier_latency: Histogram,
    /// `rulegate_classifier_batch_size`: pairs per ONNX Runtime call.
    pub(crate) classifier_batch: Histogram,
    /// `rulegate_classifier_errors_total`: classifier failures by `mode` (`fail_open` or
    /// `fail_closed`).
    pub(crate) classifier_errors: Family<FailLabels, Counter>,
    /// `rulegate_upstream_latency_seconds`: time to the upstream's response headers.
    pub(crate) upstream_latency: Histogram,
    /// `rulegate_classifier_worker_panics_total`: batches a classifier worker panicked on
    /// (the worker restarts; the batch's requests failed under the fail mode).
    pub(crate) worker_panics: Counter,
    /// `rulegate_classifier_worker_restarts_total`: classifier workers that started over with a
    /// fresh session after a panic.
    pub(crate) worker_restarts: Counter,
    /// `rulegate_classifier_rows_total`: pairs run through the model (a long completion's
    /// windows each count).
    pub(crate) classifier_rows: Counter,
    /// `rulegate_classifier_shed_total`: classifier jobs refused because the queue was full.
    pub(crate) classifier_shed: Counter,
    /// `rulegate_classifier_queued_rows`: pairs admitted and waiting for a classifier worker
    /// (the signal to scale out on: it grows when the model cannot keep up).
    pub(crate) classifier_queued: Gauge,
    /// `rulegate_classifier_remote_errors_total`: calls to a remote inference server that
    /// failed after their retries (or were refused by the open circuit).
    pub(crate) remote_errors: Counter,
    /// `rulegate_classifier_remote_breaker_opens_total`: times the circuit to the remote
    /// inference server opened after consecutive failures.
    pub(crate) remote_breaker_opens: Counter,
    /// `rulegate_verdict_cache_total`: verdict cache lookups by `result` (`hit` or `miss`).
    pub(crate) cache: Family<CacheLabels, Counter>,
    /// `rulegate_reloads_total`: reloads by `kind` (`policy` or `model`) and `outcome`
    /// (`ok` or `error`).
    pub(crate) reloads: Family<ReloadLabels, Counter>,
    /// `rulegate_policy_version`: 1 for each policy's serving version.
    pub(crate) policy_version: Family<PolicyVersion, Gauge>,
    /// `rulegate_model_version`: 1 for the serving model version.
    pub(crate) model_version: Family<ModelVersion, Gauge>,
}

fn latency() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("rulegate");
        let requests = Family::<RouteStatus, Counter>::default();
        registry.register("requests", "Requests by route and HTTP status", requests.clone());
        let request_duration = Family::<Route, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        registry.register("request_duration_seconds", "End-to-end request latency", request_duration.clone());
        let verdicts = Family::<VerdictLabels, Counter>::default();
        registry.register("verdicts", "Delivered verdicts by policy, class and action", verdicts.clone());
        let attempts = Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0]);
        registry.register("attempts_per_request", "Upstream completions generated per request", attempts.clone());
        let regenerations = Counter::default();
        registry.register(
            "regenerations",
            "Extra upstream completions asked for by regenerate and best_of_n",
            regenerations.clone(),
        );
        let classifier_latency = latency();
        registry.register("classifier_latency_seconds", "ONNX Runtime latency per batch", classifier_latency.clone());
        let classifier_batch = Histogram::new(exponential_buckets(1.0, 2.0, 8));
        registry.register("classifier_batch_size", "Pairs per ONNX Runtime call", classifier_batch.clone());
        let classifier_errors = Family::<FailLabels, Counter>::default();
        registry.register(
            "classifier_errors",
            "Classifier failures, by what the guard then did",
            classifier_errors.clone(),
        );
        let upstream_latency = latency();
        registry.register(
            "upstream_latency_seconds",
            "Time to the upstream's response headers",
            upstream_latency.clone(),
        );
        let worker_panics = Counter::default();
        registry.register(
            "classifier_worker_panics",
            "Batches a classifier worker panicked on (the worker restarts)",
            worker_panics.clone(),
        );
        let worker_restarts = Counter::default();
        registry.register(
            "classifier_worker_restarts",
            "Classifier workers restarted with a fresh session after a panic",
            worker_restarts.clone(),
        );
        let classifier_rows = Counter::default();
        registry.register("classifier_rows", "Pairs run through the model", classifier_rows.clone());
        let classifier_shed = Counter::default();
        registry.register(
            "classifier_shed",
            "Classifier jobs refused because the queue was full",
            classifier_shed.clone(),
        );
        let classifier_queued = Gauge::default();
        registry.register(
            "classifier_queued_rows",
            "Pairs admitted and waiting for a classifier worker",
            classifier_queued.clone(),
        );
        let remote_errors = Counter::default();
        registry.register(
            "classifier_remote_errors",
            "Calls to the remote inference server that failed after their retries",
            remote_errors.clone(),
        );
        let remote_breaker_opens = Counter::default();
        registry.register(
            "classifier_remote_breaker_opens",
            "Times the circuit to the remote inference server opened",
            remote_breaker_opens.clone(),
        );
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register("verdict_cache", "Verdict cache lookups by result", cache.clone());
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register("reloads", "Policy and model reloads by outcome", reloads.clone());
        let policy_version = Family::<PolicyVersion, Gauge>::default();
        registry.register("policy_version", "Serving policy versions (1 = current)", policy_version.clone());
        let model_version = Family::<ModelVersion, Gauge>::default();
        registry.register("model_version", "Serving model version (1 = current)", model_version.clone());
        let candidate_decisions = Family::<PolicyLabel, Counter>::default();
        registry.register(
            "candidate_decisions",
            "Requests the candidate policy decided beside the live policy",
            candidate_decisions.clone(),
        );
        let candidate_disagreements = Family::<CandidateLabels, Counter>::default();
        registry.register(
            "candidate_disagreements",
            "Requests whose candidate decision differs from the live one, by class pair",
            candidate_disagreements.clone(),
        );
        let decision_log_lines = Family::<LogLineLabels, Counter>::default();
        registry.register("decision_log_lines", "Decision-log lines by result", decision_log_lines.clone());
        Metrics {
            registry,
            requests,
            request_duration,
            verdicts,
            candidate_decisions,
            candidate_disagreements,
            decision_log_lines,
            attempts,
            regenerations,
            classifier_latency,
            classifier_batch,
            classifier_errors,
            upstream_latency,
            worker_panics,
            worker_restarts,
            classifier_rows,
            classifier_shed,
            classifier_queued,
            remote_errors,
            remote_breaker_opens,
            cache,
            reloads,
            policy_version,
            model_version,
        }
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts one request on `route` and records its latency.
    pub(crate) fn request(&self, route: &str, status: u16, elapsed: Duration) {
        self.requests.get_or_create(&RouteStatus { route: route.to_string(), status }).inc();
        self.request_duration.get_or_create(&Route { route: route.to_string() }).observe(elapsed.as_secs_f64());
    }

    /// Counts verdict cache hits and misses.
    pub(crate) fn cache_lookups(&self, hits: u64, misses: u64) {
        self.cache.get_or_create(&CacheLabels { result: "hit".into() }).inc_by(hits);
        self.cache.get_or_create(&CacheLabels { result: "miss".into() }).inc_by(misses);
    }

    /// A delivered verdict (one per request and choice 0), with its upstream attempts.
    pub(crate) fn verdict(&self, policy: &str, class: &str, action: &str, mode: &str, attempts: u32) {
        self.verdicts
            .get_or_create(&VerdictLabels {
                policy: policy.into(),
                class: class.into(),
                action: action.into(),
                mode: mode.into(),
            })
            .inc();
        if attempts > 0 {
            self.attempts.observe(f64::from(attempts));
        }
        if attempts > 1 {
            self.regenerations.inc_by(u64::from(attempts - 1));
        }
    }

    /// Counts a request the candidate policy decided, and whether it disagreed.
    pub(crate) fn candidate(&self, policy: &str, live_class: &str, candidate_class: &str, disagrees: bool) {
        self.candidate_decisions.get_or_create(&PolicyLabel { policy: policy.into() }).inc();
        if disagrees {
            self.candidate_disagreements
                .get_or_create(&CandidateLabels {
                    policy: policy.into(),
                    live_class: live_class.into(),
                    candidate_class: candidate_class.into(),
                })
                .inc();
        }
    }

    /// Counts a decision-log line: `written`, `dropped` or `error`.
    pub(crate) fn decision_log_line(&self, result: &str) {
        self.decision_log_lines.get_or_create(&LogLineLabels { result: result.into() }).inc();
    }

    /// Counts a classifier failure; `mode` is `fail_open` or `fail_closed`.
    pub(crate) fn classifier_error(&self, mode: &str) {
        self.classifier_errors.get_or_create(&FailLabels { mode: mode.into() }).inc();
    }

    /// Counts a reload of a `policy` or the `model` that was accepted (`ok`) or rejected.
    pub(crate) fn reload(&self, kind: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ReloadLabels { kind: kind.to_string(), outcome: outcome.to_string() }).inc();
    }

    /// Marks `version` as the serving version of `policy` (and forgets its previous one).
    pub(crate) fn set_policy_version(&self, policy: &str, previous: Option<&str>, version: &str) {
        if let Some(old) = previous.filter(|old| *old != version) {
            self.policy_version.remove(&PolicyVersion { policy: policy.to_string(), version: old.to_string() });
        }
        self.policy_version
            .get_or_create(&PolicyVersion { policy: policy.to_string(), version: version.to_string() })
            .set(1);
    }

    /// Marks `version` as the serving model version, forgetting every other.
    pub(crate) fn set_model_version(&self, version: &str) {
        self.model_version.clear();
        self.model_version.get_or_create(&ModelVersion { version: version.to_string() }).set(1);
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
