//! The guard: a policy bound to a classifier. [`Judge`] is one immutable snapshot of both;
//! [`Guard`] is the handle applications keep, whose snapshot can be swapped atomically
//! while requests in flight finish on the one they started with.

use std::sync::Arc;

use arc_swap::ArcSwap;
use indexmap::IndexMap;

use crate::classifier::{Classifier, ClassifierError, HeadValues, PairText};
use crate::conversation::Message;
use crate::policy::{Policy, ResponseType};
use crate::score::{self, PropositionValue, ResponseTypeSource, Under, Verdict};

/// Why a policy and a model cannot be bound together, or an item cannot be judged.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The caller named a response type the policy does not know by name, alias or category.
    #[error("unknown response type `{label}` (this policy knows {known})")]
    UnknownResponseType {
        /// The label as given.
        label: String,
        /// The policy's response type names, comma-separated.
        known: String,
    },
    /// A policy proposition reads a head the model does not have.
    #[error(
        "the policy uses model head `{head}` for proposition `{proposition}`, but the model in {model} has no such head"
    )]
    MissingHead {
        /// The policy's proposition.
        proposition: String,
        /// The head it reads.
        head: String,
        /// The model directory.
        model: String,
    },
    /// A policy response type reads a label the model's response-type head does not have.
    #[error(
        "response type `{response_type}` reads label `{label}` of the model's response-type head, which has labels {labels}"
    )]
    MissingLabel {
        /// The policy's response type.
        response_type: String,
        /// The `model_label` it reads.
        label: String,
        /// The head's labels, comma-separated.
        labels: String,
    },
    /// No response type was given and the model cannot predict one.
    #[error("no response type given and the model has no response-type head to predict one")]
    NoResponseType,
    /// The classifier failed.
    #[error(transparent)]
    Classifier(#[from] ClassifierError),
}

/// One item to judge.
#[derive(Debug, Clone, Copy)]
pub struct Evaluation<'a> {
    /// The conversation up to the completion.
    pub prompt: &'a [Message],
    /// The completion to judge; empty to judge the prompt alone (its response type).
    pub completion: &'a str,
    /// What the prompt wants (a response type's name, alias or category); predicted when `None`.
    pub response_type: Option<&'a str>,
}

/// Verdicts already computed, keyed by policy version, model version, the prompt as the
/// model reads it, the completion and the requested response type. Shared by every judge
/// (the versions in the key keep snapshots apart).
#[derive(Clone)]
pub struct VerdictCache {
    cache: moka::sync::Cache<[u8; 32], Arc<Verdict>>,
    /// The model's outputs per window of a completion too long to read at once, keyed by
    /// model version, prompt and window text: a completion judged again with more text (a
    /// stream's growing prefix in `window` mode) costs only its new windows.
    windows: moka::sync::Cache<[u8; 32], HeadValues>,
}

impl std::fmt::Debug for VerdictCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerdictCache").field("entries", &self.cache.entry_count()).finish()
    }
}

impl VerdictCache {
    /// At most `capacity` verdicts, each kept at most `ttl`.
    pub fn new(capacity: u64, ttl: std::time::Duration) -> Self {
        VerdictCache {
            cache: moka::sync::Cache::builder().max_capacity(capacity).time_to_live(ttl).build(),
            windows: moka::sync::Cache::builder().max_capacity(capacity).time_to_live(ttl).build(),
        }
    }

    fn key(policy: &str, model: &str, prompt: &str, completion: &str, response_type: Option<&str>) -> [u8; 32] {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        for part in [policy, model, prompt, completion, response_type.unwrap_or("\u{0}predicted")] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
        hash.finalize().into()
    }

    /// Verdicts now cached (approximate: expired and evicted entries leave lazily).
    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }
}

/// A policy and a classifier, checked against each other.
#[derive(Debug, Clone)]
pub struct Judge {
    policy: Arc<Policy>,
    classifier: Classifier,
    /// Policy proposition -> position in [`HeadValues::propositions`].
    heads: Vec<usize>,
    /// Policy response type -> column of the response-type head.
    labels: Option<Vec<usize>>,
    cache: Option<VerdictCache>,
}

impl Judge {
    /// Binds a policy to a model; fails if the policy uses a head or label the model lacks.
    pub fn new(policy: Arc<Policy>, classifier: Classifier) -> Result<Judge, GuardError> {
        let model = classifier.dir().display().to_string();
        let heads = policy
            .propositions()
            .iter()
            .map(|p| {
                classifier.proposition_index(&p.head).ok_or_else(|| GuardError::MissingHead {
                    proposition: p.name.clone(),
                    head: p.head.clone(),
                    model: model.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let labels = match classifier.response_type_labels() {
            Some(model_labels) => Some(
                policy
                    .response_types()
                    .iter()
                    .map(|rt| {
                        model_labels.iter().position(|l| l == &rt.model_label).ok_or_else(|| GuardError::MissingLabel {
                            response_type: rt.name.clone(),
                            label: rt.model_label.clone(),
                            labels: model_labels.join(", "),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        Ok(Judge { policy, classifier, heads, labels, cache: None })
    }

    /// The same judge, remembering verdicts in `cache`.
    pub fn with_cache(mut self, cache: Option<VerdictCache>) -> Judge {
        self.cache = cache;
        self
    }

    /// The policy of this snapshot.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The model of this snapshot.
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Judges one completion; `response_type` (name, alias or category) is predicted when
    /// `None`.
    pub async fn evaluate(
        &self,
        prompt: &[Message],
        completion: &str,
        response_type: Option<&str>,
    ) -> Result<Arc<Verdict>, GuardError> {
        let mut verdicts = self.evaluate_batch(&[Evaluation { prompt, completion, response_type }]).await?;
        verdicts.pop().ok_or(GuardError::Classifier(ClassifierError::WorkersGone))
    }

    /// Judges many items with one classifier job (batched ONNX calls); cached verdicts
    /// skip the classifier. A completion longer than the model reads at once is judged
    /// window by window ([`PairEncoder::completion_windows`](crate::classifier::PairEncoder::completion_windows))
    /// and gets the verdict of its worst window. Verdicts are shared with the cache, not
    /// copied: a cache hit costs a reference count.
    pub async fn evaluate_batch(&self, items: &[Evaluation<'_>]) -> Result<Vec<Arc<Verdict>>, GuardError> {
        use tracing::Instrument;
        let given = self.resolve_given(items)?;
        let prompts: Vec<String> = items.iter().map(|item| self.classifier.render_prompt(item.prompt)).collect();
        let keys: Vec<Option<[u8; 32]>> = match &self.cache {
            Some(_) => prompts
                .iter()
                .zip(items)
                .map(|(prompt, item)| {
                    Some(VerdictCache::key(
                        self.policy.version(),
                        self.classifier.version(),
                        prompt,
                        item.completion,
                        item.response_type,
                    ))
                })
                .collect(),
            None => vec![None; items.len()],
        };
        let mut verdicts: Vec<Option<Arc<Verdict>>> =
            keys.iter().map(|k| k.and_then(|k| self.cache.as_ref().and_then(|c| c.cache.get(&k)))).collect();
        let hits = verdicts.iter().filter(|v| v.is_some()).count();
        if self.cache.is_some() {
            crate::telemetry::metrics().cache_lookups(hits as u64, (items.len() - hits) as u64);
        }
        let missing: Vec<usize> = (0..items.len()).filter(|&i| verdicts[i].is_none()).collect();
        if !missing.is_empty() {
            let (windows, pairs) = self.window_pairs(missing.iter().map(|&i| (&prompts[i], items[i].completion)))?;
            let span = tracing::info_span!(
                "classify",
                batch = pairs.len(),
                cache_hits = hits,
                model_version = self.classifier.version()
            );
            let values = self.classify_windows(pairs, &windows).instrument(span).await?;
            let _score =
                tracing::info_span!("score", batch = missing.len(), policy_version = self.policy.version()).entered();
            let mut rest = values.as_slice();
            for (&i, &n) in missing.iter().zip(&windows) {
                let (own, tail) = rest.split_at(n.min(rest.len()));
                rest = tail;
                let verdict = Arc::new(self.windowed_verdict(own, given[i])?);
                if let (Some(cache), Some(key)) = (&self.cache, keys[i]) {
                    cache.cache.insert(key, verdict.clone());
                }
                verdicts[i] = Some(verdict);
            }
        }
        verdicts.into_iter().map(|v| v.ok_or(GuardError::Classifier(ClassifierError::WorkersGone))).collect()
    }

    /// Runs the model on `pairs` (`windows[i]` of them per item); with a cache, the windows
    /// of multi-window completions already computed are taken from it.
    async fn classify_windows(&self, pairs: Vec<PairText>, windows: &[usize]) -> Result<Vec<HeadValues>, GuardError> {
        let Some(cache) = &self.cache else { return Ok(self.classifier.classify(pairs).await?) };
        // A single-window completion is the whole text, which the verdict cache covers.
        let keys: Vec<Option<[u8; 32]>> = windows
            .iter()
            .flat_map(|&n| std::iter::repeat_n(n > 1, n))
            .zip(&pairs)
            .map(|(multi, pair)| {
                multi.then(|| VerdictCache::key("", self.classifier.version(), &pair.prompt, &pair.completion, None))
            })
            .collect();
        let mut values: Vec<Option<HeadValues>> =
            keys.iter().map(|k| k.as_ref().and_then(|k| cache.windows.get(k))).collect();
        let missing: Vec<usize> = (0..pairs.len()).filter(|&i| values[i].is_none()).collect();
        if !missing.is_empty() {
            let mut pairs: Vec<Option<PairText>> = pairs.into_iter().map(Some).collect();
            let todo: Vec<PairText> = missing.iter().filter_map(|&i| pairs[i].take()).collect();
            let computed = self.classifier.classify(todo).await?;
            for (&i, v) in missing.iter().zip(computed) {
                if let Some(key) = keys[i] {
                    cache.windows.insert(key, v.clone());
                }
                values[i] = Some(v);
            }
        }
        values.into_iter().map(|v| v.ok_or(GuardError::Classifier(ClassifierError::WorkersGone))).collect()
    }

    /// Blocking form of [`Judge::evaluate_batch`] for synchronous callers (the CLI).
    pub fn evaluate_batch_blocking(&self, items: &[Evaluation<'_>]) -> Result<Vec<Verdict>, GuardError> {
        let given = self.resolve_given(items)?;
        let prompts: Vec<String> = items.iter().map(|item| self.classifier.render_prompt(item.prompt)).collect();
        let (windows, pairs) = self.window_pairs(prompts.iter().zip(items.iter().map(|item| item.completion)))?;
        let values = self.classifier.classify_blocking(pairs)?;
        let mut rest = values.as_slice();
        windows
            .iter()
            .zip(given)
            .map(|(&n, given)| {
                let (own, tail) = rest.split_at(n.min(rest.len()));
                rest = tail;
                self.windowed_verdict(own, given)
            })
            .collect()
    }

    /// The pairs to classify for (rendered prompt, completion) items, one per window of each
    /// completion, and how many windows each item has.
    fn window_pairs<'a>(
        &self,
        items: impl Iterator<Item = (&'a String, &'a str)>,
    ) -> Result<(Vec<usize>, Vec<PairText>), GuardError> {
        let (mut windows, mut pairs) = (Vec::new(), Vec::new());
        for (prompt, completion) in items {
            let ranges = self.classifier.encoder().completion_windows(completion)?;
            windows.push(ranges.len());
            pairs.extend(ranges.into_iter().map(|r| PairText {
                prompt: prompt.clone(),
                completion: completion.get(r).unwrap_or_default().to_string(),
            }));
        }
        Ok((windows, pairs))
    }

    /// The verdict on a completion from its windows' head values: the worst window's (class
    /// order, then score), every window judged under the response type(s) read for the first.
    fn windowed_verdict(&self, windows: &[HeadValues], given: Option<usize>) -> Result<Verdict, GuardError> {
        let (first, later) = windows.split_first().ok_or(GuardError::Classifier(ClassifierError::WorkersGone))?;
        // The response type is read once, from the first window; later windows reuse it.
        let probs = self.response_type_probs(first);
        let under = self.reading(&probs, given)?;
        // The prompt's reading weights every window's thresholds, not only the first's.
        let weights: Vec<f32> = probs.values().copied().collect();
        let mut worst = self.verdict(first, under, probs.clone(), &weights);
        if later.is_empty() {
            return Ok(worst);
        }
        for values in later {
            let verdict = self.verdict(values, under, IndexMap::new(), &weights);
            if worst.better_than(&verdict) {
                worst = verdict;
            }
        }
        worst.response_type_probs = probs;
        worst.truncated = windows.iter().any(|v| v.truncated);
        Ok(worst)
    }

    fn resolve_given(&self, items: &[Evaluation<'_>]) -> Result<Vec<Option<usize>>, GuardError> {
        items.iter().map(|item| item.response_type.map(|label| self.response_type_index(label)).transpose()).collect()
    }

    /// Index of a response type by name, alias or category.
    pub fn response_type_index(&self, label: &str) -> Result<usize, GuardError> {
        let rt = self.policy.resolve_response_type(label).ok_or_else(|| GuardError::UnknownResponseType {
            label: label.to_string(),
            known: self.policy.response_types().iter().map(|rt| rt.name.as_str()).collect::<Vec<_>>().join(", "),
        })?;
        Ok(self.policy.response_types().iter().position(|r| std::ptr::eq(r, rt)).unwrap_or(0))
    }

    /// The policy's response types with the model's probabilities, if it predicts them.
    fn response_type_probs(&self, values: &HeadValues) -> IndexMap<String, f32> {
        match (&self.labels, &values.response_type) {
            (Some(columns), Some(probs)) => self
                .policy
                .response_types()
                .iter()
                .zip(columns)
                .map(|(rt, &c)| (rt.name.clone(), probs.get(c).copied().unwrap_or(0.0)))
                .collect(),
            _ => IndexMap::new(),
        }
    }

    /// Which response type(s) a completion is judged under: the caller's, or the prediction
    /// from the prompt as the policy's `response_type_prediction` settles it.
    fn reading(&self, probs: &IndexMap<String, f32>, given: Option<usize>) -> Result<Under, GuardError> {
        match given {
            Some(i) => Ok(Under::One(i, ResponseTypeSource::Given)),
            None => score::reading(&self.policy, probs.values().copied()).ok_or(GuardError::NoResponseType),
        }
    }

    /// `rt_probs`: the prompt's response-type probabilities in policy order (the values of the
    /// first window's `response_type_probs`), which weight the thresholds.
    fn verdict(
        &self,
        values: &HeadValues,
        under: Under,
        response_type_probs: IndexMap<String, f32>,
        rt_probs: &[f32],
    ) -> Verdict {
        let probabilities: Vec<f32> =
            self.heads.iter().map(|&h| values.propositions.get(h).copied().unwrap_or(0.0)).collect();
        let (index, judgement) = score::judge_under(&self.policy, under, rt_probs, &probabilities);
        let source = match under {
            Under::One(_, source) => source,
            Under::Either(..) => ResponseTypeSource::Uncertain,
        };
        let rt: &ResponseType = &self.policy.response_types()[index];
        let class = &rt.classes[judgement.class];
        Verdict {
            response_type: rt.name.clone(),
            response_type_source: source,
            response_type_probs,
            propositions: self
                .policy
                .propositions()
                .iter()
                .zip(&probabilities)
                .zip(&judgement.truth)
                .map(|((p, &probability), &value)| PropositionValue { name: p.name.clone(), probability, value })
                .collect(),
            class: class.name.clone(),
            class_rank: judgement.class,
            class_probs: rt.classes.iter().map(|c| c.name.clone()).zip(judgement.class_probs.iter().copied()).collect(),
            score: judgement.score,
            action: class.action.clone(),
            prm: values.prm,
            truncated: values.truncated,
            policy_version: self.policy.version().to_string(),
            model_version: self.classifier.version().to_string(),
        }
    }
}

/// Picks the guard (the policy, with the model) for a request.
pub trait GuardSelector: Send + Sync + 'static {
    /// `policy` is the name a request asked for (`x-rulegate-policy`); `api_key` the key it
    /// carries (`Authorization: Bearer ...` or `api-key`), for key-to-policy mappings.
    fn select(&self, policy: Option<&str>, api_key: Option<&str>) -> Result<Guard, UnknownPolicy>;

    /// The guard requests get when they name none.
    fn default_guard(&self) -> Guard;
}

/// A request named a policy that is not loaded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown policy `{name}` (this gateway serves {known})")]
pub struct UnknownPolicy {
    /// The policy name the request gave.
    pub name: String,
    /// The policies this gateway serves, comma-separated.
    pub known: String,
}

impl GuardSelector for Guard {
    fn select(&self, policy: Option<&str>, _api_key: Option<&str>) -> Result<Guard, UnknownPolicy> {
        let own = self.judge().policy().name().to_string();
        match policy {
            Some(name) if name != own => Err(UnknownPolicy { name: name.to_string(), known: own }),
            _ => Ok(self.clone()),
        }
    }

    fn default_guard(&self) -> Guard {
        self.clone()
    }
}

/// The guard applications hold: cheap to clone, every clone sees the same current
/// [`Judge`], and [`Guard::swap`] replaces it atomically without blocking readers.
#[derive(Clone)]
pub struct Guard {
    current: Arc<ArcSwap<Judge>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let judge = self.current.load();
        f.debug_struct("Guard")
            .field("policy", &judge.policy.version())
            .field("model", &judge.classifier.version())
            .finish()
    }
}

impl Guard {
    /// Binds a policy to a model (see [`Judge::new`]) and makes it the first snapshot.
    pub fn new(policy: Arc<Policy>, classifier: Classifier) -> Result<Guard, GuardError> {
        Ok(Guard::from_judge(Judge::new(policy, classifier)?))
    }

    /// A guard whose first snapshot is `judge`.
    pub fn from_judge(judge: Judge) -> Guard {
        Guard { current: Arc::new(ArcSwap::from_pointee(judge)) }
    }

    /// The current snapshot; keep it for the whole of a request so that every verdict of the
    /// request comes from the same policy and model.
    pub fn judge(&self) -> Arc<Judge> {
        self.current.load_full()
    }

    /// Publishes a new snapshot; requests holding the old one finish on it.
    pub fn swap(&self, judge: Judge) -> Arc<Judge> {
        self.current.swap(Arc::new(judge))
    }

    /// Judges one completion with the current snapshot.
    pub async fn evaluate(
        &self,
        prompt: &[Message],
        completion: &str,
        response_type: Option<&str>,
    ) -> Result<Arc<Verdict>, GuardError> {
        self.judge().evaluate(prompt, completion, response_type).await
    }

    /// Judges many completions with the current snapshot, in one classifier job.
    pub async fn evaluate_batch(&self, items: &[Evaluation<'_>]) -> Result<Vec<Arc<Verdict>>, GuardError> {
        self.judge().evaluate_batch(items).await
    }
}
