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
pub struct RouteStatus {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub policy: String,
    pub class: String,
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub kind: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyVersion {
    pub policy: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelVersion {
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailLabels {
    pub mode: String,
}

/// Every metric rulegate exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteStatus, Counter>,
    pub request_duration: Family<Route, Histogram>,
    pub verdicts: Family<VerdictLabels, Counter>,
    pub attempts: Histogram,
    pub regenerations: Counter,
    pub classifier_latency: Histogram,
    pub classifier_batch: Histogram,
    pub classifier_errors: Family<FailLabels, Counter>,
    pub upstream_latency: Histogram,
    pub cache: Family<CacheLabels, Counter>,
    pub reloads: Family<ReloadLabels, Counter>,
    pub policy_version: Family<PolicyVersion, Gauge>,
    pub model_version: Family<ModelVersion, Gauge>,
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
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register("verdict_cache", "Verdict cache lookups by result", cache.clone());
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register("reloads", "Policy and model reloads by outcome", reloads.clone());
        let policy_version = Family::<PolicyVersion, Gauge>::default();
        registry.register("policy_version", "Serving policy versions (1 = current)", policy_version.clone());
        let model_version = Family::<ModelVersion, Gauge>::default();
        registry.register("model_version", "Serving model version (1 = current)", model_version.clone());
        Metrics {
            registry,
            requests,
            request_duration,
            verdicts,
            attempts,
            regenerations,
            classifier_latency,
            classifier_batch,
            classifier_errors,
            upstream_latency,
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

    pub fn request(&self, route: &str, status: u16, elapsed: Duration) {
        self.requests.get_or_create(&RouteStatus { route: route.to_string(), status }).inc();
        self.request_duration.get_or_create(&Route { route: route.to_string() }).observe(elapsed.as_secs_f64());
    }

    pub fn cache_lookups(&self, hits: u64, misses: u64) {
        self.cache.get_or_create(&CacheLabels { result: "hit".into() }).inc_by(hits);
        self.cache.get_or_create(&CacheLabels { result: "miss".into() }).inc_by(misses);
    }

    /// A delivered verdict (one per request and choice 0), with its upstream attempts.
    pub fn verdict(&self, policy: &str, class: &str, action: &str, attempts: u32) {
        self.verdicts
            .get_or_create(&VerdictLabels { policy: policy.into(), class: class.into(), action: action.into() })
            .inc();
        if attempts > 0 {
            self.attempts.observe(f64::from(attempts));
        }
        if attempts > 1 {
            self.regenerations.inc_by(u64::from(attempts - 1));
        }
    }

    pub fn classifier_error(&self, mode: &str) {
        self.classifier_errors.get_or_create(&FailLabels { mode: mode.into() }).inc();
    }

    pub fn reload(&self, kind: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ReloadLabels { kind: kind.to_string(), outcome: outcome.to_string() }).inc();
    }

    /// Marks `version` as the serving version of `policy` (and forgets its previous one).
    pub fn set_policy_version(&self, policy: &str, previous: Option<&str>, version: &str) {
        if let Some(old) = previous.filter(|old| *old != version) {
            self.policy_version.remove(&PolicyVersion { policy: policy.to_string(), version: old.to_string() });
        }
        self.policy_version
            .get_or_create(&PolicyVersion { policy: policy.to_string(), version: version.to_string() })
            .set(1);
    }

    pub fn set_model_version(&self, version: &str) {
        self.model_version.clear();
        self.model_version.get_or_create(&ModelVersion { version: version.to_string() }).set(1);
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
