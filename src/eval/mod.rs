//! Metrics of a model and policy against labelled rows (`rulegate eval`): per-proposition
//! accuracy, precision, recall, F1 and AUPRC next to the majority-class baseline, response
//! type accuracy, class accuracy, and how well the PRM head orders completions.

use serde::Serialize;

pub mod labelled;
pub mod replay;
pub mod review;

use crate::dataset::Row;
use crate::policy::Policy;
use crate::score::Verdict;

/// How well the model's predicted truth values for one proposition match the gold labels.
#[derive(Debug, Clone, Serialize)]
pub struct PropositionMetrics {
    /// The policy's name for the proposition.
    pub name: String,
    /// Whether the policy's class rules read this proposition.
    pub used_by_rules: bool,
    /// Rows with a gold label for this proposition.
    pub n: usize,
    /// Rows whose gold label is true.
    pub positives: usize,
    /// Fraction of labelled rows where the predicted truth value (probability at or above the
    /// threshold) equals the gold label; 0 without rows.
    pub accuracy: f64,
    /// `None` when nothing was predicted true.
    pub precision: Option<f64>,
    /// `None` without positives.
    pub recall: Option<f64>,
    /// `None` when there are neither positives nor predicted positives.
    pub f1: Option<f64>,
    /// Average precision; `None` without positives.
    pub auprc: Option<f64>,
    /// Accuracy of always answering the majority label.
    pub majority_baseline: f64,
}

/// How well the response-type head predicts the gold response type.
#[derive(Debug, Clone, Serialize)]
pub struct ResponseTypeMetrics {
    /// Rows with a gold response type and a predicted one.
    pub n: usize,
    /// Fraction of those rows where the most probable type is the gold one.
    pub accuracy: f64,
    /// Accuracy of "comply" against "any other type" (when the policy has a `comply` type).
    pub comply_vs_refusal_accuracy: Option<f64>,
    /// The policy's response types, indexing both axes of `confusion`.
    pub labels: Vec<String>,
    /// `confusion[gold][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

/// How often the class rules give the gold class when they read predicted rather than gold
/// truth values.
#[derive(Debug, Clone, Serialize)]
pub struct ClassMetrics {
    /// Rows with a gold response type and every proposition labelled.
    pub n: usize,
    /// Rules on predicted truth values against rules on gold labels, with the gold response type.
    pub accuracy: f64,
    /// The policy's classes, indexing both axes of `confusion`.
    pub labels: Vec<String>,
    /// `confusion[gold][predicted]`, by policy class.
    pub confusion: Vec<Vec<usize>>,
}

/// How well the PRM head orders completions of the same response type by class.
#[derive(Debug, Clone, Serialize)]
pub struct PrmMetrics {
    /// Pairs of rows with the same gold response type and different gold classes.
    pub pairs: usize,
    /// Fraction where the better class has the higher PRM value (ties count one half).
    pub pair_accuracy: f64,
}

/// Everything `rulegate eval` reports; serializes to the `--json` output.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Rows evaluated.
    pub rows: usize,
    /// [`Policy::version`] of the policy the verdicts came from; empty without rows.
    pub policy_version: String,
    /// [`Classifier::version`](crate::Classifier::version) of the model; empty without rows.
    pub model_version: String,
    /// One entry per simple proposition, in policy order.
    pub propositions: Vec<PropositionMetrics>,
    /// Mean accuracy over the propositions with at least one gold label.
    pub mean_accuracy: f64,
    /// Mean majority baseline over the same propositions.
    pub mean_majority_baseline: f64,
    /// Means over the propositions the class rules read.
    pub mean_accuracy_used: f64,
    /// Mean majority baseline over the propositions the class rules read.
    pub mean_majority_baseline_used: f64,
    /// `None` without gold response types or a response-type head.
    pub response_type: Option<ResponseTypeMetrics>,
    /// `None` unless some row has a gold response type and every proposition labelled.
    pub class: Option<ClassMetrics>,
    /// `None` without a PRM head or without pairs to compare.
    pub prm: Option<PrmMetrics>,
}

/// Collects verdicts with their gold labels, then computes an [`EvalReport`].
pub struct Evaluator<'p> {
    policy: &'p Policy,
    used: Vec<bool>,
    /// Per proposition: (probability, predicted, gold).
    props: Vec<Vec<(f32, bool, bool)>>,
    response_types: Vec<(usize, usize)>,
    /// Per row with a gold class: (response type, gold class rank, predicted class rank, prm).
    classes: Vec<(usize, usize, usize, Option<f32>)>,
    rows: usize,
    versions: Option<(String, String)>,
}

impl<'p> Evaluator<'p> {
    /// An empty evaluation against `policy`, which must be the policy of the verdicts added.
    pub fn new(policy: &'p Policy) -> Self {
        let used = policy.propositions_used_by_rules();
        Evaluator {
            policy,
            used,
            props: vec![Vec::new(); policy.propositions().len()],
            response_types: Vec::new(),
            classes: Vec::new(),
            rows: 0,
            versions: None,
        }
    }

    /// Adds one row's verdict; `gold_response_type` is the index of the row's labelled type.
    pub fn add(&mut self, row: &Row, verdict: &Verdict, gold_response_type: Option<usize>) {
        self.rows += 1;
        self.versions.get_or_insert_with(|| (verdict.policy_version.clone(), verdict.model_version.clone()));
        let gold = row.propositions.as_ref();
        for (i, p) in self.policy.propositions().iter().enumerate() {
            if let (Some(&label), Some(v)) = (gold.and_then(|g| g.get(&p.name)), verdict.proposition(&p.name)) {
                self.props[i].push((v.probability, v.value, label));
            }
        }
        let Some(rt_index) = gold_response_type else { return };
        if let Some(predicted) = argmax(verdict.response_type_probs.values().copied()) {
            self.response_types.push((rt_index, predicted));
        }
        let rt = &self.policy.response_types()[rt_index];
        let gold_truth: Option<Vec<bool>> =
            gold.and_then(|g| self.policy.propositions().iter().map(|p| g.get(&p.name).copied()).collect());
        if let Some(truth) = gold_truth {
            let gold_class = self.policy.classify(rt, &truth);
            let predicted_class = rt.class_index(&verdict.class).unwrap_or(gold_class);
            self.classes.push((rt_index, gold_class, predicted_class, verdict.prm));
        }
    }

    /// Computes the metrics over every row added.
    pub fn finish(self) -> EvalReport {
        let propositions: Vec<PropositionMetrics> = self
            .policy
            .propositions()
            .iter()
            .zip(&self.props)
            .zip(&self.used)
            .map(|((p, obs), &used)| proposition_metrics(&p.name, used, obs))
            .collect();
        let mean = |f: &dyn Fn(&PropositionMetrics) -> f64, only_used: bool| {
            let xs: Vec<f64> =
                propositions.iter().filter(|m| m.n > 0 && (!only_used || m.used_by_rules)).map(f).collect();
            if xs.is_empty() { 0.0 } else { xs.iter().sum::<f64>() / xs.len() as f64 }
        };
        let (policy_version, model_version) = self.versions.clone().unwrap_or_default();
        EvalReport {
            rows: self.rows,
            policy_version,
            model_version,
            mean_accuracy: mean(&|m| m.accuracy, false),
            mean_majority_baseline: mean(&|m| m.majority_baseline, false),
            mean_accuracy_used: mean(&|m| m.accuracy, true),
            mean_majority_baseline_used: mean(&|m| m.majority_baseline, true),
            response_type: self.response_type_metrics(),
            class: self.class_metrics(),
            prm: self.prm_metrics(),
            propositions,
        }
    }

    fn response_type_metrics(&self) -> Option<ResponseTypeMetrics> {
        if self.response_types.is_empty() {
            return None;
        }
        let labels: Vec<String> = self.policy.response_types().iter().map(|rt| rt.name.clone()).collect();
        let mut confusion = vec![vec![0; labels.len()]; labels.len()];
        for &(gold, predicted) in &self.response_types {
            confusion[gold][predicted] += 1;
        }
        let n = self.response_types.len();
        let correct = self.response_types.iter().filter(|(g, p)| g == p).count();
        let comply = labels.iter().position(|l| l == "comply");
        let comply_vs_refusal_accuracy = comply
            .map(|c| self.response_types.iter().filter(|(g, p)| (*g == c) == (*p == c)).count() as f64 / n as f64);
        Some(ResponseTypeMetrics {
            n,
            accuracy: correct as f64 / n as f64,
            comply_vs_refusal_accuracy,
            labels,
            confusion,
        })
    }

    fn class_metrics(&self) -> Option<ClassMetrics> {
        if self.classes.is_empty() {
            return None;
        }
        let labels: Vec<String> = self.policy.classes().iter().map(|c| c.name.clone()).collect();
        let mut confusion = vec![vec![0; labels.len()]; labels.len()];
        let global = |rt: usize, rank: usize| self.policy.response_types()[rt].classes[rank].class;
        for &(rt, gold, predicted, _) in &self.classes {
            confusion[global(rt, gold)][global(rt, predicted)] += 1;
        }
        let correct = self.classes.iter().filter(|(_, g, p, _)| g == p).count();
        Some(ClassMetrics {
            n: self.classes.len(),
            accuracy: correct as f64 / self.classes.len() as f64,
            labels,
            confusion,
        })
    }

    fn prm_metrics(&self) -> Option<PrmMetrics> {
        let mut pairs = 0usize;
        let mut correct = 0.0;
        for (i, a) in self.classes.iter().enumerate() {
            for b in &self.classes[i + 1..] {
                let (Some(pa), Some(pb)) = (a.3, b.3) else { continue };
                if a.0 != b.0 || a.1 == b.1 {
                    continue;
                }
                pairs += 1;
                // Lower rank is the better class.
                let (better, worse) = if a.1 < b.1 { (pa, pb) } else { (pb, pa) };
                correct += if better > worse {
                    1.0
                } else if better == worse {
                    0.5
                } else {
                    0.0
                };
            }
        }
        (pairs > 0).then(|| PrmMetrics { pairs, pair_accuracy: correct / pairs as f64 })
    }
}

fn argmax(values: impl Iterator<Item = f32>) -> Option<usize> {
    values.enumerate().max_by(|a, b| a.1.total_cmp(&b.1)).map(|(i, _)| i)
}

fn proposition_metrics(name: &str, used_by_rules: bool, obs: &[(f32, bool, bool)]) -> PropositionMetrics {
    let n = obs.len();
    let count = |f: &dyn Fn(&(f32, bool, bool)) -> bool| obs.iter().filter(|o| f(o)).count();
    let tp = count(&|o| o.1 && o.2);
    let fp = count(&|o| o.1 && !o.2);
    let fn_ = count(&|o| !o.1 && o.2);
    let positives = tp + fn_;
    let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, positives);
    let f1 = ratio(2 * tp, 2 * tp + fp + fn_);
    let accuracy = ratio(count(&|o| o.1 == o.2), n).unwrap_or(0.0);
    let majority_baseline = ratio(positives.max(n - positives), n).unwrap_or(0.0);
    let scores: Vec<f32> = obs.iter().map(|o| o.0).collect();
    let labels: Vec<bool> = obs.iter().map(|o| o.2).collect();
    PropositionMetrics {
        name: name.to_string(),
        used_by_rules,
        n,
        positives,
        accuracy,
        precision,
        recall,
        f1,
        auprc: average_precision(&scores, &labels),
        majority_baseline,
    }
}

/// Average precision (area under the precision-recall curve as a step function over
/// distinct thresholds, as scikit-learn computes it); `None` without positives.
pub fn average_precision(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let positives = labels.iter().filter(|&&l| l).count();
    if positives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp, mut ap, mut last_recall) = (0usize, 0usize, 0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        // All items tied at this score enter together.
        let threshold = scores[order[i]];
        while i < order.len() && scores[order[i]] == threshold {
            if labels[order[i]] {
                tp += 1
            } else {
                fp += 1
            }
            i += 1;
        }
        let recall = tp as f64 / positives as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - last_recall) * precision;
        last_recall = recall;
    }
    Some(ap)
}

impl EvalReport {
    /// A plain-text table for terminals.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let opt = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
        let mut out = String::new();
        let _ = writeln!(out, "rows: {}   policy: {}   model: {}", self.rows, self.policy_version, self.model_version);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<38} {:>4} {:>4} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8}",
            "proposition", "n", "pos", "acc", "prec", "recall", "f1", "auprc", "majority"
        );
        for m in &self.propositions {
            let name = if m.used_by_rules { m.name.clone() } else { format!("{} (unused)", m.name) };
            let _ = writeln!(
                out,
                "{:<38} {:>4} {:>4} {:>7.3} {:>7} {:>7} {:>7} {:>7} {:>8.3}",
                name,
                m.n,
                m.positives,
                m.accuracy,
                opt(m.precision),
                opt(m.recall),
                opt(m.f1),
                opt(m.auprc),
                m.majority_baseline
            );
        }
        let _ = writeln!(
            out,
            "{:<38} {:>4} {:>4} {:>7.3} {:>7} {:>7} {:>7} {:>7} {:>8.3}",
            "mean (all propositions)", "", "", self.mean_accuracy, "", "", "", "", self.mean_majority_baseline
        );
        let _ = writeln!(
            out,
            "{:<38} {:>4} {:>4} {:>7.3} {:>7} {:>7} {:>7} {:>7} {:>8.3}",
            "mean (used by the rules)",
            "",
            "",
            self.mean_accuracy_used,
            "",
            "",
            "",
            "",
            self.mean_majority_baseline_used
        );
        let _ = writeln!(out);
        match &self.response_type {
            Some(rt) => {
                let _ = writeln!(out, "response type accuracy: {:.3} (n={})", rt.accuracy, rt.n);
                if let Some(b) = rt.comply_vs_refusal_accuracy {
                    let _ = writeln!(out, "comply vs refusal accuracy: {b:.3}");
                }
                render_confusion(&mut out, "gold \\ predicted", &rt.labels, &rt.confusion);
            }
            None => {
                let _ = writeln!(
                    out,
                    "response type accuracy: - (no gold response types, or the model has no response-type head)"
                );
            }
        }
        let _ = writeln!(out);
        match &self.class {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "class accuracy (rules on predicted vs gold propositions): {:.3} (n={})",
                    c.accuracy, c.n
                );
                render_confusion(&mut out, "gold \\ predicted", &c.labels, &c.confusion);
            }
            None => {
                let _ = writeln!(out, "class accuracy: - (rows need a response type and every proposition labelled)");
            }
        }
        if let Some(p) = &self.prm {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "PRM pair accuracy (same response type, different gold class): {:.3} over {} pairs",
                p.pair_accuracy, p.pairs
            );
        }
        out
    }
}

fn render_confusion(out: &mut String, corner: &str, labels: &[String], matrix: &[Vec<usize>]) {
    use std::fmt::Write;
    let width = labels.iter().map(String::len).max().unwrap_or(4).max(corner.len());
    let _ = write!(out, "  {corner:<width$}");
    for (i, _) in labels.iter().enumerate() {
        let _ = write!(out, " {:>6}", format!("[{i}]"));
    }
    let _ = writeln!(out);
    for (i, (label, row)) in labels.iter().zip(matrix).enumerate() {
        let _ = write!(out, "  {:<width$}", format!("[{i}] {label}"), width = width);
        for v in row {
            let _ = write!(out, " {v:>6}");
        }
        let _ = writeln!(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_precision_matches_hand_computation() {
        // sorted: 0.9(+) 0.8(-) 0.7(+) 0.1(-): AP = 0.5*1 + 0.5*(2/3)
        let ap = average_precision(&[0.1, 0.7, 0.8, 0.9], &[false, true, false, true]).unwrap();
        assert!((ap - (0.5 + 1.0 / 3.0)).abs() < 1e-12, "{ap}");
        assert_eq!(average_precision(&[0.3], &[false]), None);
        // a perfect ranking has AP 1
        assert_eq!(average_precision(&[0.9, 0.8, 0.1], &[true, true, false]), Some(1.0));
    }

    #[test]
    fn ties_enter_together() {
        // all tied: precision 0.5 at recall 1
        assert_eq!(average_precision(&[0.5, 0.5], &[true, false]), Some(0.5));
    }

    #[test]
    fn binary_metrics() {
        let obs = [(0.9, true, true), (0.8, true, false), (0.2, false, true), (0.1, false, false)];
        let m = proposition_metrics("x", true, &obs);
        assert_eq!((m.n, m.positives), (4, 2));
        assert_eq!(m.accuracy, 0.5);
        assert_eq!(m.precision, Some(0.5));
        assert_eq!(m.recall, Some(0.5));
        assert_eq!(m.f1, Some(0.5));
        assert_eq!(m.majority_baseline, 0.5);
        let none = proposition_metrics("y", false, &[(0.1, false, false)]);
        assert_eq!(none.precision, None);
        assert_eq!(none.f1, None);
        assert_eq!(none.majority_baseline, 1.0);
    }
}
