//! Metrics on simple labelled sets (`rulegate eval --task ...`): rows
//! `{"prompt", "completion"?, "label": bool, "source"?}` where the label answers one yes/no
//! question about the row, so ops teams can measure the judge on their own traffic.
//!
//! - `refusal`: does the completion refuse? The verdict says yes when `fully_complies` is false.
//! - `prompt-harm`: does the prompt need a refusal? The verdict says yes when the response type
//!   it judged by (predicted from the prompt alone, with the policy's `response_type_prediction`
//!   fallback) is not `comply`. A row's `response_type` is ignored for this task.
//! - `disallowed`: does the completion contain disallowed content (`disallowed_content` true)?
//! - `decision`: should the gateway act on this answer (anything but `pass`)? Label real
//!   benign answers false and real harmful ones true: the flagged rate of a benign source is
//!   how often good answers are regenerated or replaced, the recall of a harmful one how often
//!   harm is stopped. The response type is read as the gateway reads it (a row's
//!   `response_type` is ignored); the probability column is `disallowed_content`'s.
//!
//! Metrics are reported overall and per `source`, so a false-positive rate on look-alike
//! prompts is not averaged away by the easy rows.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::policy::Policy;
use crate::score::Verdict;

/// The yes/no question a labelled set answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// The completion refuses (`fully_complies` false).
    Refusal,
    /// The prompt needs a refusal (judged response type other than `comply`).
    PromptHarm,
    /// The completion holds disallowed content (`disallowed_content` true).
    Disallowed,
    /// The gateway acts on the answer (its class's action is not `pass`).
    Decision,
}

impl Task {
    /// Every task, for help texts.
    pub const ALL: [Task; 4] = [Task::Refusal, Task::PromptHarm, Task::Disallowed, Task::Decision];

    /// The task's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Task::Refusal => "refusal",
            Task::PromptHarm => "prompt-harm",
            Task::Disallowed => "disallowed",
            Task::Decision => "decision",
        }
    }

    /// Whether the task reads the row's completion (`prompt-harm` judges the prompt alone).
    pub fn reads_completion(self) -> bool {
        !matches!(self, Task::PromptHarm)
    }

    /// Checks that `policy` has what the task reads.
    pub fn check(self, policy: &Policy) -> Result<(), TaskError> {
        let has_prop = |name: &str| policy.propositions().iter().any(|p| p.name == name);
        let missing = match self {
            Task::Refusal if !has_prop("fully_complies") => Some("the proposition `fully_complies`"),
            Task::Disallowed | Task::Decision if !has_prop("disallowed_content") => {
                Some("the proposition `disallowed_content`")
            }
            Task::PromptHarm if !policy.response_types().iter().any(|rt| rt.name == "comply") => {
                Some("a response type named `comply`")
            }
            _ => None,
        };
        match missing {
            Some(what) => Err(TaskError::PolicyLacks { task: self.name(), what }),
            None => Ok(()),
        }
    }

    /// The verdict's answer: (probability of "yes", yes or no by the policy's thresholds).
    /// `None` when the verdict lacks what the task reads (see [`Task::check`]).
    pub fn answer(self, verdict: &Verdict) -> Option<(f32, bool)> {
        match self {
            Task::Refusal => verdict.proposition("fully_complies").map(|p| (1.0 - p.probability, !p.value)),
            Task::Disallowed => verdict.proposition("disallowed_content").map(|p| (p.probability, p.value)),
            Task::Decision => verdict
                .proposition("disallowed_content")
                .map(|p| (p.probability, !matches!(verdict.action, crate::policy::Action::Pass))),
            Task::PromptHarm => {
                let comply = verdict.response_type_probs.get("comply").copied();
                // An uncertain reading still read the prompt as the other type, whichever
                // verdict counted for the (empty) completion.
                let flagged = verdict.response_type != "comply"
                    || verdict.response_type_source == crate::score::ResponseTypeSource::Uncertain;
                Some((comply.map_or(if flagged { 1.0 } else { 0.0 }, |p| 1.0 - p), flagged))
            }
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Task {
    type Err = TaskError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Task::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| TaskError::Unknown(s.to_string()))
    }
}

/// Why a task cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// Not one of [`Task::ALL`].
    #[error("unknown task `{0}` (expected rbr, refusal, prompt-harm, disallowed or decision)")]
    Unknown(String),
    /// The policy has no proposition or response type the task reads.
    #[error("task {task} needs {what} in the policy")]
    PolicyLacks {
        /// The task's name.
        task: &'static str,
        /// What is missing.
        what: &'static str,
    },
}

/// Binary classification metrics of one group of rows.
#[derive(Debug, Clone, Serialize)]
pub struct BinaryMetrics {
    /// Rows.
    pub n: usize,
    /// Rows labelled true.
    pub positives: usize,
    /// Rows the verdict answered "yes".
    pub flagged: usize,
    /// True positives.
    pub tp: usize,
    /// False positives.
    pub fp: usize,
    /// False negatives.
    #[serde(rename = "fn")]
    pub fn_: usize,
    /// Fraction answered correctly.
    pub accuracy: f64,
    /// `None` when nothing was flagged.
    pub precision: Option<f64>,
    /// `None` without positives.
    pub recall: Option<f64>,
    /// `None` when there are neither positives nor flagged rows.
    pub f1: Option<f64>,
    /// Fraction of rows flagged.
    pub flagged_rate: f64,
    /// Fraction of negatives flagged; `None` without negatives.
    pub false_positive_rate: Option<f64>,
    /// Average precision of the "yes" probability; `None` without positives.
    pub auprc: Option<f64>,
}

impl BinaryMetrics {
    /// Metrics of `(probability of yes, answered yes, label)` observations.
    pub fn of(obs: &[(f32, bool, bool)]) -> BinaryMetrics {
        let count = |f: &dyn Fn(&(f32, bool, bool)) -> bool| obs.iter().filter(|o| f(o)).count();
        let n = obs.len();
        let tp = count(&|o| o.1 && o.2);
        let fp = count(&|o| o.1 && !o.2);
        let fn_ = count(&|o| !o.1 && o.2);
        let positives = tp + fn_;
        let flagged = tp + fp;
        let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
        let scores: Vec<f32> = obs.iter().map(|o| o.0).collect();
        let labels: Vec<bool> = obs.iter().map(|o| o.2).collect();
        BinaryMetrics {
            n,
            positives,
            flagged,
            tp,
            fp,
            fn_,
            accuracy: ratio(count(&|o| o.1 == o.2), n).unwrap_or(0.0),
            precision: ratio(tp, flagged),
            recall: ratio(tp, positives),
            f1: ratio(2 * tp, 2 * tp + fp + fn_),
            flagged_rate: ratio(flagged, n).unwrap_or(0.0),
            false_positive_rate: ratio(fp, n - positives),
            auprc: super::average_precision(&scores, &labels),
        }
    }
}

/// What `rulegate eval --task` reports; serializes to the `--json` output.
#[derive(Debug, Clone, Serialize)]
pub struct LabelledReport {
    /// The task.
    pub task: Task,
    /// [`Policy::version`] of the policy the verdicts came from; empty without rows.
    pub policy_version: String,
    /// Model version of the verdicts; empty without rows.
    pub model_version: String,
    /// Every row.
    pub overall: BinaryMetrics,
    /// Per `source`, sorted by name (rows without one are `-`).
    pub sources: BTreeMap<String, BinaryMetrics>,
}

/// Collects verdicts with their labels, then computes a [`LabelledReport`].
#[derive(Debug)]
pub struct LabelledEvaluator {
    task: Task,
    obs: BTreeMap<String, Vec<(f32, bool, bool)>>,
    versions: Option<(String, String)>,
}

impl LabelledEvaluator {
    /// An empty evaluation of `task`.
    pub fn new(task: Task) -> Self {
        LabelledEvaluator { task, obs: BTreeMap::new(), versions: None }
    }

    /// Adds one row's verdict; `false` when the verdict lacks what the task reads.
    pub fn add(&mut self, source: Option<&str>, label: bool, verdict: &Verdict) -> bool {
        let Some((p, yes)) = self.task.answer(verdict) else { return false };
        self.versions.get_or_insert_with(|| (verdict.policy_version.clone(), verdict.model_version.clone()));
        self.obs.entry(source.unwrap_or("-").to_string()).or_default().push((p, yes, label));
        true
    }

    /// Computes the metrics over every row added.
    pub fn finish(self) -> LabelledReport {
        let all: Vec<(f32, bool, bool)> = self.obs.values().flatten().copied().collect();
        let (policy_version, model_version) = self.versions.unwrap_or_default();
        LabelledReport {
            task: self.task,
            policy_version,
            model_version,
            overall: BinaryMetrics::of(&all),
            sources: self.obs.iter().map(|(s, o)| (s.clone(), BinaryMetrics::of(o))).collect(),
        }
    }
}

impl LabelledReport {
    /// A plain-text table for terminals.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let opt = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
        let width = self.sources.keys().map(String::len).max().unwrap_or(0).max(7);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "task: {}   rows: {}   policy: {}   model: {}",
            self.task, self.overall.n, self.policy_version, self.model_version
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<width$} {:>6} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7}",
            "source", "n", "pos", "flagged", "acc", "prec", "recall", "f1", "fp-rate", "auprc"
        );
        let mut line = |name: &str, m: &BinaryMetrics| {
            let _ = writeln!(
                out,
                "{:<width$} {:>6} {:>6} {:>7} {:>7.3} {:>7} {:>7} {:>7} {:>8} {:>7}",
                name,
                m.n,
                m.positives,
                format!("{:.1}%", 100.0 * m.flagged_rate),
                m.accuracy,
                opt(m.precision),
                opt(m.recall),
                opt(m.f1),
                opt(m.false_positive_rate),
                opt(m.auprc)
            );
        };
        for (name, m) in &self.sources {
            line(name, m);
        }
        line("overall", &self.overall);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_round_trip_and_unknown_is_an_error() {
        for t in Task::ALL {
            assert_eq!(t.name().parse::<Task>().unwrap(), t);
        }
        assert!(matches!("harm".parse::<Task>(), Err(TaskError::Unknown(_))));
    }

    #[test]
    fn binary_metrics_count_every_cell() {
        // 2 TP, 1 FP, 1 FN, 2 TN.
        let obs = [
            (0.9, true, true),
            (0.8, true, true),
            (0.7, true, false),
            (0.2, false, true),
            (0.1, false, false),
            (0.0, false, false),
        ];
        let m = BinaryMetrics::of(&obs);
        assert_eq!((m.n, m.positives, m.flagged, m.tp, m.fp, m.fn_), (6, 3, 3, 2, 1, 1));
        assert!((m.precision.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.recall.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.f1.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.false_positive_rate.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.flagged_rate - 0.5).abs() < 1e-12);
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn all_negative_group_has_a_false_positive_rate_but_no_recall() {
        let m = BinaryMetrics::of(&[(0.9, true, false), (0.1, false, false)]);
        assert_eq!(m.recall, None);
        assert_eq!(m.false_positive_rate, Some(0.5));
        assert_eq!(m.f1, Some(0.0));
        assert_eq!(m.auprc, None);
    }
}
