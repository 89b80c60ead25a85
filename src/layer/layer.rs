use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::GuardService;
use crate::access::Selectors;
use crate::classifier::{Classifier, ClassifierError, ClassifierOptions};
use crate::guard::{Guard, GuardError, GuardSelector};
use crate::pipeline::route::{StoredCompletions, UnguardedRoutes};
use crate::pipeline::{FailMode, PipelineOptions, UnjudgedFields, UnreadableInput};
use crate::policy::{Policy, PolicyError};
use crate::reload::GuardStore;

/// A `tower::Layer` that guards the OpenAI chat completions passing through the service it
/// wraps. Cheap to clone; every clone (and every service it makes) shares one [`Guard`],
/// so a policy or model swapped with [`Guard::swap`] applies everywhere at once.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use rulegate::layer::GuardLayer;
///
/// let root = env!("CARGO_MANIFEST_DIR");
/// let layer = GuardLayer::builder()
///     .policy(format!("{root}/policies/refusal-style.yaml"))
///     .model(format!("{root}/models/rulegate-minilm-rbr"))
///     .build()?;
/// // The guard it built can be shared with the rest of the process:
/// let guard = layer.guard().clone();
/// assert_eq!(guard.judge().policy().name(), "refusal-style");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct GuardLayer {
    guards: Arc<dyn GuardSelector>,
    options: PipelineOptions,
    timeout: Duration,
    max_body_bytes: usize,
}

impl std::fmt::Debug for GuardLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardLayer")
            .field("guard", &self.guards.default_guard())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl GuardLayer {
    /// Starts a [`GuardLayerBuilder`]; it needs a policy, a guard or a store.
    pub fn builder() -> GuardLayerBuilder {
        GuardLayerBuilder::default()
    }

    /// The guard requests get when they name no policy (shared by every service made).
    pub fn guard(&self) -> Guard {
        self.guards.default_guard()
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = GuardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GuardService::new(inner, self.guards.clone(), self.options.clone(), self.timeout, self.max_body_bytes)
    }
}

/// Why a [`GuardLayer`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Neither a policy file, a guard nor a store was given.
    #[error("no policy: call `.policy(path)`, `.guard(guard)` or `.store(store)`")]
    NoPolicy,
    /// The policy file could not be read or is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The model could not be loaded.
    #[error(transparent)]
    Classifier(#[from] ClassifierError),
    /// The policy uses a head or label the model lacks.
    #[error(transparent)]
    Guard(#[from] GuardError),
}

/// Builds a [`GuardLayer`] from a policy file and a model directory, or around an existing
/// [`Guard`].
#[derive(Default)]
pub struct GuardLayerBuilder {
    policy: Option<PathBuf>,
    model: Option<PathBuf>,
    guards: Option<Arc<dyn GuardSelector>>,
    classifier: ClassifierOptions,
    options: PipelineOptions,
    timeout: Option<Duration>,
    max_body_bytes: Option<usize>,
}

impl GuardLayerBuilder {
    /// The policy file.
    pub fn policy(mut self, path: impl Into<PathBuf>) -> Self {
        self.policy = Some(path.into());
        self
    }

    /// The model directory (`model.onnx`, `tokenizer.json`, `manifest.json`); default
    /// `models/rulegate-minilm-rbr`, relative to the working directory.
    pub fn model(mut self, dir: impl Into<PathBuf>) -> Self {
        self.model = Some(dir.into());
        self
    }

    /// Use an existing guard instead of loading a policy and model; swaps of that guard
    /// apply to this layer too.
    pub fn guard(mut self, guard: Guard) -> Self {
        self.guards = Some(Arc::new(guard));
        self
    }

    /// Serve every policy of a hot-swappable store (shared, for example, with the admin
    /// API and the file watcher); requests pick one with `x-rulegate-policy` or their API key.
    pub fn store(mut self, store: GuardStore) -> Self {
        self.guards = Some(Arc::new(store));
        self
    }

    /// How the model is run (sessions, threads, batch size, device); unused when a guard or
    /// store is given.
    pub fn classifier_options(mut self, options: ClassifierOptions) -> Self {
        self.classifier = options;
        self
    }

    /// What to do with requests that could generate text on routes the guard does not judge
    /// (default [`UnguardedRoutes::Deny`]: 403).
    pub fn unguarded_routes(mut self, routes: UnguardedRoutes) -> Self {
        self.options.unguarded_routes = routes;
        self
    }

    /// What to do with reads and deletes of stored completions (default
    /// [`StoredCompletions::Deny`]: 403).
    pub fn stored_completions(mut self, stored: StoredCompletions) -> Self {
        self.options.stored_completions = stored;
        self
    }

    /// What to do with fields of an answer rulegate does not know (default
    /// [`UnjudgedFields::Drop`]).
    pub fn unjudged_fields(mut self, mode: UnjudgedFields) -> Self {
        self.options.unjudged_fields = mode;
        self
    }

    /// What to do with requests carrying content the judge cannot read (default
    /// [`UnreadableInput::JudgeText`]).
    pub fn unreadable_input(mut self, mode: UnreadableInput) -> Self {
        self.options.unreadable_input = mode;
        self
    }

    /// Who may pick the policy or state the response type with `x-rulegate-policy` and
    /// `x-rulegate-response-type` (default: nobody; such headers are ignored).
    pub fn selectors(mut self, selectors: Selectors) -> Self {
        self.options.selectors = selectors;
        self
    }

    /// `FailMode::Closed` (default) answers 503 when the classifier fails; `Open` delivers unjudged.
    pub fn on_classifier_error(mut self, mode: FailMode) -> Self {
        self.options.on_classifier_error = mode;
        self
    }

    /// Whether the inner service honours `n` (default true).
    pub fn upstream_supports_n(mut self, yes: bool) -> Self {
        self.options.upstream_supports_n = yes;
        self
    }

    /// How the inner service continues an assistant prefix, for `beam_search` (default:
    /// it cannot, and beam search runs as best-of-n).
    pub fn continuation(mut self, continuation: crate::upstream::Continuation) -> Self {
        self.options.continuation = continuation;
        self
    }

    /// Bound on each call to the inner service (each chunk, for streams). Default 120 s.
    pub fn upstream_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Largest chat request body accepted (default 4 MiB); larger ones get 413.
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.max_body_bytes = Some(limit);
        self
    }

    /// Loads the policy and model (unless a guard was given) and checks them against each other.
    pub fn build(self) -> Result<GuardLayer, BuildError> {
        let guards = match self.guards {
            Some(guards) => guards,
            None => {
                let policy = Arc::new(Policy::from_file(self.policy.ok_or(BuildError::NoPolicy)?)?);
                let model = self.model.unwrap_or_else(|| PathBuf::from("models/rulegate-minilm-rbr"));
                Arc::new(Guard::new(policy, Classifier::load(model, &self.classifier)?)?)
            }
        };
        Ok(GuardLayer {
            guards,
            options: self.options,
            timeout: self.timeout.unwrap_or(Duration::from_secs(120)),
            max_body_bytes: self.max_body_bytes.unwrap_or(crate::pipeline::http::DEFAULT_MAX_BODY_BYTES),
        })
    }
}
