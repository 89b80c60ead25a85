//! Fitting the RBR weights (`rulegate fit`): a linear reward over proposition and class
//! probabilities, fitted per response type so that better completions score higher. The
//! objective is the RBR paper's: for every ordered pair (better i, worse j),
//! `relu(margin_i + R_j - R_i)` averaged, with `R = base_coef * base + w . phi`, plus L2 on
//! `w`, minimised full-batch with Adam from zero weights (deterministic for a seed).

pub mod calibrate;
pub mod data;
pub mod report;
pub mod write;

use serde::Serialize;

use crate::policy::Policy;

pub use data::{FitData, Labelled};

/// Settings of a fit; the defaults are those of `rulegate fit`.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// Hinge margin per class of the better completion (class name -> margin); others get
    /// `default_margin`. Floats are used as given.
    pub margins: indexmap::IndexMap<String, f64>,
    /// Hinge margin for classes not in `margins` (default 1.0).
    pub default_margin: f64,
    /// L2 penalty on the weights (default 0.01).
    pub l2: f64,
    /// Adam step size (default 0.01).
    pub learning_rate: f64,
    /// Full-batch Adam steps (default 1500).
    pub iterations: usize,
    /// Fraction of prompts held out for evaluation.
    pub holdout: f64,
    /// Seeds the held-out split and pair subsampling; the same seed gives the same fit.
    pub seed: u64,
    /// Coefficient of the external base reward (fixed, as in the paper).
    pub base_reward_coef: f64,
    /// Most pairs per response type and split (deterministic subsample beyond).
    pub max_pairs: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            margins: indexmap::IndexMap::new(),
            default_margin: 1.0,
            l2: 0.01,
            learning_rate: 0.01,
            iterations: 1500,
            holdout: 0.2,
            seed: 0,
            base_reward_coef: 1.0,
            max_pairs: 50_000,
        }
    }
}

/// One response type's examples: features, base rewards, class ranks, prompts.
#[derive(Debug, Clone, Default)]
pub struct Problem {
    /// Per example: the feature vector, in the order of
    /// [`ResponseType::feature_names`](crate::policy::ResponseType::feature_names).
    pub features: Vec<Vec<f64>>,
    /// Per example: the external base reward (0 when the data has none).
    pub base: Vec<f64>,
    /// Per example: its class's position in the response type's order (0 is best).
    pub class_rank: Vec<usize>,
    /// Per example: the index of the prompt it answers.
    pub prompt: Vec<usize>,
    /// Per example: pairs form within its prompt (ranked rows) or across prompts (gold rows).
    pub ranked: Vec<bool>,
}

/// (iteration, train loss, held-out loss).
pub type LossPoint = (usize, f64, Option<f64>);

/// One ordered training pair: `better` should outscore `worse` by at least `margin`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    /// Example index of the completion in the better class.
    pub better: usize,
    /// Example index of the completion in the worse class.
    pub worse: usize,
    /// Hinge margin, set by the better completion's class.
    pub margin: f64,
}

/// What a fit produced for one response type.
#[derive(Debug, Clone, Serialize)]
pub struct TypeFit {
    /// The response type's name.
    pub response_type: String,
    /// Names of the weights, in order: every proposition, then `class.<name>` per class.
    pub feature_names: Vec<String>,
    /// The fitted weights, one per feature name.
    pub weights: Vec<f64>,
    /// Completions of this response type.
    pub examples: usize,
    /// Distinct prompts among them.
    pub prompts: usize,
    /// Prompts held out for evaluation.
    pub heldout_prompts: usize,
    /// Pairs the weights were fitted on.
    pub train_pairs: usize,
    /// Pairs among held-out prompts.
    pub heldout_pairs: usize,
    /// Pairs formed across prompts (gold rows) rather than within one.
    pub cross_prompt_pairs: usize,
    /// Fraction of training pairs the fitted reward orders correctly; `None` without pairs.
    pub train_pair_accuracy: Option<f64>,
    /// Fraction of held-out pairs the fitted reward orders correctly; `None` without pairs.
    pub heldout_pair_accuracy: Option<f64>,
    /// Held-out prompts (with two or more completions) whose top-scored completion is in
    /// the best class present.
    pub top1_accuracy: Option<f64>,
    /// Held-out prompts `top1_accuracy` is computed over.
    pub top1_prompts: usize,
    /// Every few iterations.
    pub loss_curve: Vec<LossPoint>,
    /// (class name, score, held out) per example.
    pub scores: Vec<(String, f64, bool)>,
    /// The response type's classes, best first.
    pub class_names: Vec<String>,
}

/// A small deterministic generator (SplitMix64), so fits do not depend on a crate's RNG.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// Prompts held out, chosen by a seeded shuffle: `fraction` of the distinct prompts,
/// rounded, but at least one held out and one kept when there are two or more.
pub(crate) fn heldout_prompts(prompts: &[usize], fraction: f64, seed: u64) -> std::collections::BTreeSet<usize> {
    let mut unique: Vec<usize> = prompts.to_vec();
    unique.sort_unstable();
    unique.dedup();
    SplitMix(seed).shuffle(&mut unique);
    let n = ((unique.len() as f64) * fraction).round() as usize;
    let n = if fraction > 0.0 && unique.len() > 1 { n.clamp(1, unique.len() - 1) } else { 0 };
    unique.into_iter().take(n).collect()
}

/// Ordered pairs among `members` (example indices): within a prompt for ranked examples,
/// across prompts for the others; better = lower class rank. Beyond `max_pairs` a seeded
/// subsample is kept. Also returns how many of the pairs cross prompts.
pub(crate) fn pairs(
    problem: &Problem,
    members: &[usize],
    margin: &dyn Fn(usize) -> f64,
    max_pairs: usize,
    seed: u64,
) -> (Vec<Pair>, usize) {
    let mut out = Vec::new();
    let mut cross = 0;
    for (a, &i) in members.iter().enumerate() {
        for &j in &members[a + 1..] {
            let same_prompt = problem.prompt[i] == problem.prompt[j];
            let allowed = if problem.ranked[i] || problem.ranked[j] { same_prompt } else { !same_prompt };
            if !allowed || problem.class_rank[i] == problem.class_rank[j] {
                continue;
            }
            let (better, worse) = if problem.class_rank[i] < problem.class_rank[j] { (i, j) } else { (j, i) };
            if !same_prompt {
                cross += 1;
            }
            out.push(Pair { better, worse, margin: margin(problem.class_rank[better]) });
        }
    }
    if out.len() > max_pairs {
        SplitMix(seed ^ 0xA5A5).shuffle(&mut out);
        out.truncate(max_pairs);
        cross = out.iter().filter(|p| problem.prompt[p.better] != problem.prompt[p.worse]).count();
    }
    (out, cross)
}

fn score(problem: &Problem, weights: &[f64], base_coef: f64, i: usize) -> f64 {
    base_coef * problem.base[i] + weights.iter().zip(&problem.features[i]).map(|(w, x)| w * x).sum::<f64>()
}

/// Mean hinge loss over pairs (without the L2 term).
fn hinge(problem: &Problem, pairs: &[Pair], weights: &[f64], base_coef: f64) -> f64 {
    if pairs.is_empty() {
        return 0.0;
    }
    let scores: Vec<f64> = (0..problem.features.len()).map(|i| score(problem, weights, base_coef, i)).collect();
    pairs.iter().map(|p| (p.margin + scores[p.worse] - scores[p.better]).max(0.0)).sum::<f64>() / pairs.len() as f64
}

fn pair_accuracy(problem: &Problem, pairs: &[Pair], weights: &[f64], base_coef: f64) -> Option<f64> {
    if pairs.is_empty() {
        return None;
    }
    let right = pairs
        .iter()
        .filter(|p| score(problem, weights, base_coef, p.better) > score(problem, weights, base_coef, p.worse))
        .count();
    Some(right as f64 / pairs.len() as f64)
}

/// Minimises the hinge objective with full-batch Adam from zero weights.
pub(crate) fn optimise(
    problem: &Problem,
    train: &[Pair],
    heldout: &[Pair],
    options: &FitOptions,
) -> (Vec<f64>, Vec<LossPoint>) {
    let dims = problem.features.first().map_or(0, Vec::len);
    let mut w = vec![0.0; dims];
    let (mut m, mut v) = (vec![0.0; dims], vec![0.0; dims]);
    let (beta1, beta2, eps) = (0.9, 0.999, 1e-8);
    // Pair differences are constant: precompute them once.
    let diffs: Vec<(Vec<f64>, f64)> = train
        .iter()
        .map(|p| {
            let d: Vec<f64> =
                problem.features[p.worse].iter().zip(&problem.features[p.better]).map(|(a, b)| a - b).collect();
            let offset = p.margin + options.base_reward_coef * (problem.base[p.worse] - problem.base[p.better]);
            (d, offset)
        })
        .collect();
    let every = (options.iterations / 100).max(1);
    let mut curve = Vec::new();
    for step in 1..=options.iterations {
        let mut grad: Vec<f64> = w.iter().map(|wi| options.l2 * wi).collect();
        if !diffs.is_empty() {
            let scale = 1.0 / diffs.len() as f64;
            for (d, offset) in &diffs {
                let z = offset + d.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
                if z > 0.0 {
                    for (g, di) in grad.iter_mut().zip(d) {
                        *g += scale * di;
                    }
                }
            }
        }
        for k in 0..dims {
            m[k] = beta1 * m[k] + (1.0 - beta1) * grad[k];
            v[k] = beta2 * v[k] + (1.0 - beta2) * grad[k] * grad[k];
            let m_hat = m[k] / (1.0 - beta1.powi(step as i32));
            let v_hat = v[k] / (1.0 - beta2.powi(step as i32));
            w[k] -= options.learning_rate * m_hat / (v_hat.sqrt() + eps);
        }
        if step % every == 0 || step == 1 || step == options.iterations {
            let held = (!heldout.is_empty()).then(|| hinge(problem, heldout, &w, options.base_reward_coef));
            curve.push((step, hinge(problem, train, &w, options.base_reward_coef), held));
        }
    }
    (w, curve)
}

/// Fits one response type.
pub fn fit_type(
    problem: &Problem,
    response_type: &str,
    class_names: &[String],
    feature_names: Vec<String>,
    options: &FitOptions,
) -> TypeFit {
    let held = heldout_prompts(&problem.prompt, options.holdout, options.seed);
    let n = problem.features.len();
    let (heldout_members, train_members): (Vec<usize>, Vec<usize>) =
        (0..n).partition(|&i| held.contains(&problem.prompt[i]));
    let margin = |rank: usize| {
        class_names.get(rank).and_then(|c| options.margins.get(c)).copied().unwrap_or(options.default_margin)
    };
    let (train, cross_train) = pairs(problem, &train_members, &margin, options.max_pairs, options.seed);
    let (heldout, cross_held) =
        pairs(problem, &heldout_members, &margin, options.max_pairs, options.seed.wrapping_add(1));
    let (weights, loss_curve) = optimise(problem, &train, &heldout, options);

    // Top-1 over held-out ranked prompts with at least two completions.
    let mut by_prompt: std::collections::BTreeMap<usize, Vec<usize>> = std::collections::BTreeMap::new();
    for &i in &heldout_members {
        if problem.ranked[i] {
            by_prompt.entry(problem.prompt[i]).or_default().push(i);
        }
    }
    let eligible: Vec<&Vec<usize>> = by_prompt.values().filter(|m| m.len() >= 2).collect();
    let top1_right = eligible
        .iter()
        .filter(|members| {
            let best_rank = members.iter().map(|&i| problem.class_rank[i]).min().unwrap_or(0);
            let top = members.iter().copied().max_by(|&a, &b| {
                score(problem, &weights, options.base_reward_coef, a).total_cmp(&score(
                    problem,
                    &weights,
                    options.base_reward_coef,
                    b,
                ))
            });
            top.is_some_and(|t| problem.class_rank[t] == best_rank)
        })
        .count();

    TypeFit {
        response_type: response_type.to_string(),
        feature_names,
        examples: n,
        prompts: {
            let mut p = problem.prompt.clone();
            p.sort_unstable();
            p.dedup();
            p.len()
        },
        heldout_prompts: held.len(),
        train_pairs: train.len(),
        heldout_pairs: heldout.len(),
        cross_prompt_pairs: cross_train + cross_held,
        train_pair_accuracy: pair_accuracy(problem, &train, &weights, options.base_reward_coef),
        heldout_pair_accuracy: pair_accuracy(problem, &heldout, &weights, options.base_reward_coef),
        top1_accuracy: (!eligible.is_empty()).then(|| top1_right as f64 / eligible.len() as f64),
        top1_prompts: eligible.len(),
        scores: (0..n)
            .map(|i| {
                (
                    class_names.get(problem.class_rank[i]).cloned().unwrap_or_default(),
                    score(problem, &weights, options.base_reward_coef, i),
                    held.contains(&problem.prompt[i]),
                )
            })
            .collect(),
        class_names: class_names.to_vec(),
        loss_curve,
        weights,
    }
}

/// The per-response-type problems from labelled completions and their feature vectors
/// (in the order of [`crate::policy::ResponseType::feature_names`]).
pub fn problems(policy: &Policy, data: &FitData, features: &[Vec<f64>]) -> Vec<Problem> {
    let mut out = vec![Problem::default(); policy.response_types().len()];
    for (c, f) in data.completions.iter().zip(features) {
        let p = &mut out[c.response_type];
        p.features.push(f.clone());
        p.base.push(c.base_reward);
        p.class_rank.push(c.class_rank);
        p.prompt.push(c.prompt);
        p.ranked.push(data.ranked[c.prompt]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Examples whose class is decided by known weights: better classes score higher.
    fn separable(prompts: usize, seed: u64) -> Problem {
        let truth = [2.0, -1.5, 0.5, 0.0];
        let mut rng = SplitMix(seed);
        let mut p = Problem::default();
        for prompt in 0..prompts {
            for _ in 0..5 {
                let x: Vec<f64> = (0..4).map(|_| (rng.next() % 1000) as f64 / 1000.0).collect();
                let s: f64 = truth.iter().zip(&x).map(|(a, b)| a * b).sum();
                // Four classes by score thresholds: rank 0 is best.
                let rank = if s > 1.2 {
                    0
                } else if s > 0.4 {
                    1
                } else if s > -0.4 {
                    2
                } else {
                    3
                };
                p.features.push(x);
                p.base.push(0.0);
                p.class_rank.push(rank);
                p.prompt.push(prompt);
                p.ranked.push(true);
            }
        }
        p
    }

    fn names() -> Vec<String> {
        ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn known_separating_weights_are_recovered_with_no_heldout_violations() {
        let problem = separable(120, 7);
        let options = FitOptions {
            margins: indexmap::IndexMap::new(),
            default_margin: 0.05,
            l2: 0.0,
            iterations: 3000,
            learning_rate: 0.05,
            ..FitOptions::default()
        };
        let fit = fit_type(&problem, "t", &names(), vec!["x0".into(), "x1".into(), "x2".into(), "x3".into()], &options);
        assert!(fit.heldout_pairs > 100);
        assert_eq!(fit.heldout_pair_accuracy, Some(1.0), "held-out violations: {fit:?}");
        assert_eq!(fit.top1_accuracy, Some(1.0));
        // Direction of the recovered weights matches the truth.
        assert!(fit.weights[0] > 0.0 && fit.weights[1] < 0.0 && fit.weights[0] > fit.weights[2], "{:?}", fit.weights);
    }

    #[test]
    fn refitting_is_deterministic() {
        let problem = separable(40, 3);
        let options = FitOptions { iterations: 300, ..FitOptions::default() };
        let a = fit_type(&problem, "t", &names(), vec!["a".into(); 4], &options);
        let b = fit_type(&problem, "t", &names(), vec!["a".into(); 4], &options);
        assert_eq!(a.weights, b.weights);
        assert_eq!(a.loss_curve, b.loss_curve);
        let other_seed = fit_type(&problem, "t", &names(), vec!["a".into(); 4], &FitOptions { seed: 1, ..options });
        assert_ne!(a.heldout_prompts, 0);
        assert!(other_seed.weights != a.weights || other_seed.heldout_pairs != a.heldout_pairs);
    }

    #[test]
    fn gold_rows_pair_across_prompts_and_ranked_rows_within() {
        let mut p = Problem::default();
        // prompts 0 and 1 are gold (one completion each), prompt 2 ranked with two completions
        for (prompt, rank, ranked) in [(0, 0, false), (1, 2, false), (2, 0, true), (2, 1, true)] {
            p.features.push(vec![0.0]);
            p.base.push(0.0);
            p.class_rank.push(rank);
            p.prompt.push(prompt);
            p.ranked.push(ranked);
        }
        let (pairs, cross) = pairs(&p, &[0, 1, 2, 3], &|_| 1.0, 100, 0);
        assert_eq!(pairs.len(), 2);
        assert_eq!(cross, 1);
        assert!(pairs.contains(&Pair { better: 0, worse: 1, margin: 1.0 }));
        assert!(pairs.contains(&Pair { better: 2, worse: 3, margin: 1.0 }));
    }

    #[test]
    fn margins_are_floats_per_better_class() {
        let mut p = separable(2, 1);
        p.class_rank = vec![0, 1, 2, 3, 0, 1, 2, 3, 1, 2];
        let options = FitOptions {
            margins: [("a".to_string(), 0.25)].into_iter().collect(),
            default_margin: 1.5,
            ..FitOptions::default()
        };
        let margin = |rank: usize| {
            names().get(rank).and_then(|c| options.margins.get(c)).copied().unwrap_or(options.default_margin)
        };
        let (pairs, _) = pairs(&p, &(0..10).collect::<Vec<_>>(), &margin, 100, 0);
        assert!(pairs.iter().any(|q| q.margin == 0.25));
        assert!(pairs.iter().any(|q| q.margin == 1.5));
    }
}
