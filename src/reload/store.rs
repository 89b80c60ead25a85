use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use indexmap::IndexMap;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::access::ApiKey;
use crate::classifier::{Classifier, ClassifierError, ClassifierOptions};
use crate::guard::{Guard, GuardError, GuardSelector, Judge, UnknownPolicy, VerdictCache};
use crate::policy::{Policy, PolicyError};
use crate::telemetry::metrics;

/// What the store serves.
#[derive(Clone)]
pub struct StoreConfig {
    /// Policy name (as requests select it) -> policy file.
    pub policies: IndexMap<String, PathBuf>,
    /// The policy requests get when they name none (default: the first).
    pub default_policy: Option<String>,
    /// API key (or `sha256:<hex>` of one) -> policy name.
    pub api_keys: IndexMap<String, String>,
    /// The model directory, shared by every policy.
    pub model: PathBuf,
    /// How the model is run, on first load and on every reload.
    pub classifier: ClassifierOptions,
    /// Verdict cache shared by every policy; `None` for no caching.
    pub cache: Option<VerdictCache>,
}

/// Why a [`GuardStore`] could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A policy file could not be read or is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The model could not be loaded.
    #[error(transparent)]
    Classifier(#[from] ClassifierError),
    /// A policy uses a head or label the model lacks.
    #[error("policy `{policy}`: {source}")]
    Bind {
        /// The policy's name in the store.
        policy: String,
        /// Why it does not bind.
        #[source]
        source: GuardError,
    },
    /// The configuration is inconsistent: no policy, an unknown default policy, or an API
    /// key mapped to an unknown policy or written as a malformed hash.
    #[error("{0}")]
    Config(String),
}

/// The outcome of one reload, per policy and for the model.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// Whether nothing was rejected.
    pub ok: bool,
    /// Per policy, and for the model when its files changed or could not be read.
    pub items: Vec<ItemReport>,
}

/// What one reload did with the model or with one policy.
#[derive(Debug, Clone, Serialize)]
pub struct ItemReport {
    /// `model` or `policy`.
    pub kind: &'static str,
    /// The policy's name, or `model`.
    pub name: String,
    /// `unchanged`, `reloaded` or `rejected`.
    pub outcome: &'static str,
    /// The version now serving: the new one if reloaded, else the previous one.
    pub version: String,
    /// Why it was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// For `GET /admin/status`.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStatus {
    /// The policy requests get when they select none.
    pub default_policy: String,
    /// Every policy served, in configuration order.
    pub policies: Vec<PolicyStatus>,
    /// The model serving now.
    pub model: ModelStatus,
    /// The latest reload, if any since start.
    pub last_reload: Option<LastReload>,
}

/// One policy in [`StoreStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct PolicyStatus {
    /// The name requests select it by.
    pub name: String,
    /// [`Policy::version`] of the version serving.
    pub version: String,
    /// The policy file.
    pub path: String,
    /// When the serving version was loaded, in seconds since the Unix epoch.
    pub loaded_at: String,
}

/// The model in [`StoreStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    /// [`Classifier::version`] of the model serving.
    pub version: String,
    /// The model directory.
    pub dir: String,
    /// Where inference runs, e.g. `Cpu`, `Cuda { device_id: 0 }` or `remote <url> <model> (http)`.
    pub device: String,
    /// When the serving model was loaded, in seconds since the Unix epoch.
    pub loaded_at: String,
}

/// The latest reload in [`StoreStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct LastReload {
    /// When it ran, in seconds since the Unix epoch.
    pub at: String,
    /// Whether nothing was rejected.
    pub ok: bool,
    /// `<kind> <name>: <error>` per rejected item.
    pub errors: Vec<String>,
}

struct PolicySlot {
    path: PathBuf,
    guard: Guard,
    fingerprint: Mutex<[u8; 32]>,
    loaded_at: Mutex<SystemTime>,
}

struct ModelSlot {
    classifier: Classifier,
    fingerprint: [u8; 32],
    loaded_at: SystemTime,
}

struct Inner {
    policies: IndexMap<String, PolicySlot>,
    default_policy: String,
    api_keys: Vec<(ApiKey, String)>,
    model_dir: PathBuf,
    model: ArcSwap<ModelSlot>,
    classifier_options: ClassifierOptions,
    cache: Option<VerdictCache>,
    /// One reload at a time.
    reloading: Mutex<()>,
    last_reload: Mutex<Option<LastReload>>,
}

/// Every configured policy bound to the current model, hot-swappable. Cheap to clone.
#[derive(Clone)]
pub struct GuardStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GuardStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardStore").field("policies", &self.inner.policies.keys().collect::<Vec<_>>()).finish()
    }
}

/// Policy name -> the policy as now on disk with its file's fingerprint (`None`: unchanged or invalid).
type Candidates = IndexMap<String, Option<(Arc<Policy>, [u8; 32])>>;

fn fingerprint_file(path: &Path) -> std::io::Result<[u8; 32]> {
    Ok(Sha256::digest(std::fs::read(path)?).into())
}

/// The model directory's files, by identity rather than content: size, inode and
/// modification time catch in-place writes and rename-on-save alike, without reading a
/// weights file on every event. (The version a loaded model reports hashes its content.)
/// With a remote backend, the version the server serves now stands in for `model.onnx`.
/// The error says what failed: a file of `dir`, or the inference server.
fn fingerprint_model(dir: &Path, options: &ClassifierOptions) -> Result<[u8; 32], String> {
    use std::os::unix::fs::MetadataExt;
    let mut hash = Sha256::new();
    let local = matches!(options.backend, crate::classifier::Backend::Local);
    if !local {
        let served = crate::classifier::served_model(dir, options).map_err(|e| e.to_string())?;
        hash.update(served.unwrap_or_default().as_bytes());
    }
    let files: &[&str] =
        if local { &["manifest.json", "tokenizer.json", "model.onnx"] } else { &["manifest.json", "tokenizer.json"] };
    for file in files {
        let path = dir.join(file);
        let meta = std::fs::metadata(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for n in [
            meta.len() as i64,
            meta.ino() as i64,
            meta.dev() as i64,
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
        ] {
            hash.update(n.to_le_bytes());
        }
    }
    Ok(hash.finalize().into())
}

fn timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{secs}")
}

impl GuardStore {
    /// Loads every policy and the model; any failure here is fatal (nothing to serve yet).
    pub fn load(config: StoreConfig) -> Result<GuardStore, StoreError> {
        if config.policies.is_empty() {
            return Err(StoreError::Config("no policy configured".into()));
        }
        let default_policy =
            config.default_policy.clone().unwrap_or_else(|| config.policies.keys().next().cloned().unwrap_or_default());
        if !config.policies.contains_key(&default_policy) {
            return Err(StoreError::Config(format!(
                "default policy `{default_policy}` is not among the configured policies"
            )));
        }
        let mut api_keys = Vec::new();
        for (key, policy) in &config.api_keys {
            if !config.policies.contains_key(policy) {
                return Err(StoreError::Config(format!("an API key maps to unknown policy `{policy}`")));
            }
            let matcher = ApiKey::parse(key).map_err(StoreError::Config)?;
            api_keys.push((matcher, policy.clone()));
        }

        let model_fingerprint = fingerprint_model(&config.model, &config.classifier)
            .map_err(|e| ClassifierError::ModelDir { path: config.model.clone(), message: e })?;
        let classifier = Classifier::load(&config.model, &config.classifier)?;
        metrics().set_model_version(classifier.version());
        let now = SystemTime::now();
        let mut policies = IndexMap::new();
        for (name, path) in &config.policies {
            let fingerprint =
                fingerprint_file(path).map_err(|source| PolicyError::Io { path: path.clone(), source })?;
            let policy = Arc::new(Policy::from_file(path)?);
            let judge = Judge::new(policy, classifier.clone())
                .map_err(|source| StoreError::Bind { policy: name.clone(), source })?
                .with_cache(config.cache.clone());
            metrics().set_policy_version(name, None, judge.policy().version());
            policies.insert(
                name.clone(),
                PolicySlot {
                    path: path.clone(),
                    guard: Guard::from_judge(judge),
                    fingerprint: Mutex::new(fingerprint),
                    loaded_at: Mutex::new(now),
                },
            );
        }
        Ok(GuardStore {
            inner: Arc::new(Inner {
                policies,
                default_policy,
                api_keys,
                model_dir: config.model,
                model: ArcSwap::from_pointee(ModelSlot { classifier, fingerprint: model_fingerprint, loaded_at: now }),
                classifier_options: config.classifier,
                cache: config.cache,
                reloading: Mutex::new(()),
                last_reload: Mutex::new(None),
            }),
        })
    }

    /// The guard of a policy by name.
    pub fn guard(&self, name: &str) -> Option<Guard> {
        self.inner.policies.get(name).map(|slot| slot.guard.clone())
    }

    /// Names of the policies served, in configuration order.
    pub fn policy_names(&self) -> Vec<String> {
        self.inner.policies.keys().cloned().collect()
    }

    /// The files and directories whose changes trigger a reload.
    pub fn watched_paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.inner.policies.values().map(|s| s.path.clone()).collect();
        paths.push(self.inner.model_dir.clone());
        paths
    }

    /// Re-reads every policy file and the model directory; whatever changed is loaded,
    /// validated and published, whatever is invalid is rejected and keeps its previous
    /// version. Blocking (file I/O, model loading): call it off async threads.
    pub fn reload(&self) -> ReloadReport {
        let _one_at_a_time = self.inner.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let mut items = Vec::new();
        let current = self.inner.model.load_full();

        // The policies as they are on disk now (None: unchanged or unreadable/invalid).
        let mut candidates: Candidates = IndexMap::new();
        for (name, slot) in &self.inner.policies {
            let old_version = slot.guard.judge().policy().version().to_string();
            let fresh = fingerprint_file(&slot.path)
                .map_err(|source| StoreError::Policy(PolicyError::Io { path: slot.path.clone(), source }));
            let known = *slot.fingerprint.lock().unwrap_or_else(|e| e.into_inner());
            let loaded = fresh.and_then(|fp| {
                if fp == known { Ok(None) } else { Ok(Some((Arc::new(Policy::from_file(&slot.path)?), fp))) }
            });
            match loaded {
                Ok(candidate) => {
                    candidates.insert(name.clone(), candidate);
                }
                Err(e) => {
                    items.push(rejected("policy", name, old_version, &e));
                    candidates.insert(name.clone(), None);
                }
            }
        }

        // A new model is accepted only if every policy (new or current) binds to it.
        let mut model = current.clone();
        match fingerprint_model(&self.inner.model_dir, &self.inner.classifier_options) {
            Err(e) => items.push(rejected("model", "model", current.classifier.version().to_string(), &e)),
            Ok(fp) if fp == current.fingerprint => {}
            Ok(fp) => match self.load_model(&candidates) {
                Ok(classifier) => {
                    items.push(ItemReport {
                        kind: "model",
                        name: "model".into(),
                        outcome: "reloaded",
                        version: classifier.version().to_string(),
                        error: None,
                    });
                    model = Arc::new(ModelSlot { classifier, fingerprint: fp, loaded_at: SystemTime::now() });
                }
                Err(e) => items.push(rejected("model", "model", current.classifier.version().to_string(), &e)),
            },
        }
        let model_changed = !Arc::ptr_eq(&model, &current);

        // Bind, then publish.
        let mut publish: Vec<(&PolicySlot, Judge, Option<[u8; 32]>)> = Vec::new();
        for (name, slot) in &self.inner.policies {
            let old = slot.guard.judge();
            let candidate = candidates.get(name).cloned().flatten();
            if candidate.is_none() && !model_changed {
                if !items.iter().any(|i| i.kind == "policy" && &i.name == name) {
                    items.push(ItemReport {
                        kind: "policy",
                        name: name.clone(),
                        outcome: "unchanged",
                        version: old.policy().version().to_string(),
                        error: None,
                    });
                }
                continue;
            }
            let (policy, fingerprint) = match &candidate {
                Some((p, fp)) => (p.clone(), Some(*fp)),
                None => (old.policy().clone(), None),
            };
            match Judge::new(policy, model.classifier.clone()) {
                Ok(judge) => {
                    if candidate.is_some() {
                        items.push(ItemReport {
                            kind: "policy",
                            name: name.clone(),
                            outcome: "reloaded",
                            version: judge.policy().version().to_string(),
                            error: None,
                        });
                    }
                    publish.push((slot, judge.with_cache(self.inner.cache.clone()), fingerprint));
                }
                Err(e) => items.push(rejected("policy", name, old.policy().version().to_string(), &e)),
            }
        }
        if model_changed {
            self.inner.model.store(model.clone());
            metrics().set_model_version(model.classifier.version());
        }
        for (slot, judge, fingerprint) in publish {
            let name = self
                .inner
                .policies
                .iter()
                .find(|(_, s)| std::ptr::eq(*s, slot))
                .map(|(n, _)| n.clone())
                .unwrap_or_default();
            let previous = slot.guard.swap(judge);
            metrics().set_policy_version(
                &name,
                Some(previous.policy().version()),
                slot.guard.judge().policy().version(),
            );
            if let Some(fp) = fingerprint {
                *slot.fingerprint.lock().unwrap_or_else(|e| e.into_inner()) = fp;
                *slot.loaded_at.lock().unwrap_or_else(|e| e.into_inner()) = SystemTime::now();
            }
        }

        let errors: Vec<String> =
            items.iter().filter_map(|i| i.error.as_ref().map(|e| format!("{} {}: {e}", i.kind, i.name))).collect();
        for item in &items {
            match item.outcome {
                "reloaded" => {
                    metrics().reload(item.kind, true);
                    tracing::info!(kind = item.kind, name = %item.name, version = %item.version, "reloaded");
                }
                "rejected" => {
                    metrics().reload(item.kind, false);
                    tracing::error!(kind = item.kind, name = %item.name, serving = %item.version, error = item.error.as_deref().unwrap_or_default(), "reload rejected; the previous version keeps serving");
                }
                _ => {}
            }
        }
        let ok = errors.is_empty();
        *self.inner.last_reload.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(LastReload { at: timestamp(SystemTime::now()), ok, errors });
        ReloadReport { ok, items }
    }

    fn load_model(&self, candidates: &Candidates) -> Result<Classifier, String> {
        let classifier =
            Classifier::load(&self.inner.model_dir, &self.inner.classifier_options).map_err(|e| e.to_string())?;
        for (name, slot) in &self.inner.policies {
            let policy =
                candidates.get(name).cloned().flatten().map_or_else(|| slot.guard.judge().policy().clone(), |(p, _)| p);
            Judge::new(policy, classifier.clone())
                .map_err(|e| format!("the new model does not serve policy `{name}`: {e}"))?;
        }
        Ok(classifier)
    }

    /// The current versions and the latest reload, for `GET /admin/status`.
    pub fn status(&self) -> StoreStatus {
        let model = self.inner.model.load();
        StoreStatus {
            default_policy: self.inner.default_policy.clone(),
            policies: self
                .inner
                .policies
                .iter()
                .map(|(name, slot)| PolicyStatus {
                    name: name.clone(),
                    version: slot.guard.judge().policy().version().to_string(),
                    path: slot.path.display().to_string(),
                    loaded_at: timestamp(*slot.loaded_at.lock().unwrap_or_else(|e| e.into_inner())),
                })
                .collect(),
            model: ModelStatus {
                version: model.classifier.version().to_string(),
                dir: self.inner.model_dir.display().to_string(),
                device: model.classifier.placement(),
                loaded_at: timestamp(model.loaded_at),
            },
            last_reload: self.inner.last_reload.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

fn rejected(kind: &'static str, name: &str, serving: String, error: &dyn std::fmt::Display) -> ItemReport {
    ItemReport { kind, name: name.to_string(), outcome: "rejected", version: serving, error: Some(error.to_string()) }
}

impl GuardSelector for GuardStore {
    fn select(&self, policy: Option<&str>, api_key: Option<&str>) -> Result<Guard, UnknownPolicy> {
        let name = match (policy, api_key) {
            (Some(name), _) => name.to_string(),
            (None, Some(key)) => self
                .inner
                .api_keys
                .iter()
                .find(|(m, _)| m.matches(key))
                .map_or_else(|| self.inner.default_policy.clone(), |(_, p)| p.clone()),
            (None, None) => self.inner.default_policy.clone(),
        };
        self.guard(&name).ok_or_else(|| UnknownPolicy { name, known: self.policy_names().join(", ") })
    }

    fn default_guard(&self) -> Guard {
        self.inner.policies[&self.inner.default_policy].guard.clone()
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("policies", &self.policies)
            .field("default_policy", &self.default_policy)
            .field("api_keys", &format!("<{} redacted>", self.api_keys.len()))
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}
