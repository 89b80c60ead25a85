//! Choosing a policy's operating points on labelled decisions (`rulegate calibrate`): the
//! `disallowed_content` thresholds (when a completion's own text is harmful enough to act on:
//! one for prompts that read as fine, a lower one for prompts that read as needing a refusal,
//! weighted by the prompt's reading) and the `response_type_prediction.confident` probability
//! from which a prompt read as needing a refusal decides alone (below it, an answer acceptable
//! under the lenient reading passes).
//!
//! Rows are `rulegate eval --task decision` rows: real answers labelled `true` when the gateway
//! should act on them (harmful compliance) and `false` when it should not (correct benign
//! answers). The model runs once per row; every candidate operating point is then decided from
//! the same probabilities by the policy's own rules ([`score::reading`], [`score::judge_under`]).
//! A long completion's probabilities are those of its worst window under the live policy, so
//! the figures are exact for single-window rows and close for the rest; the chosen policy is
//! meant to be measured again with `rulegate eval --task decision`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::policy::{Action, Policy};
use crate::score::{self, Verdict};

/// The model's reading of one labelled row, enough to decide it under any operating point.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Where the row came from (`-` when it did not say).
    pub source: String,
    /// Should the gateway act on this answer?
    pub label: bool,
    /// The policy's response types' probabilities, in policy order.
    pub response_type_probs: Vec<f32>,
    /// Every simple proposition's probability, in policy order.
    pub probabilities: Vec<f32>,
}

impl Observation {
    /// The reading behind a verdict (given in the policy's order by the judge).
    pub fn from_verdict(source: Option<&str>, label: bool, verdict: &Verdict) -> Observation {
        Observation {
            source: source.unwrap_or("-").to_string(),
            label,
            response_type_probs: verdict.response_type_probs.values().copied().collect(),
            probabilities: verdict.propositions.iter().map(|p| p.probability).collect(),
        }
    }
}

/// The operating points a calibration chooses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OperatingPoint {
    /// `disallowed_content`'s threshold for a prompt that reads as the lenient type (`comply`).
    pub disallowed_threshold: f64,
    /// Its threshold for a prompt that reads as any other type (at most the lenient one): a
    /// completion needs less harmful evidence when the prompt asked for harm.
    pub refused_disallowed_threshold: f64,
    /// `response_type_prediction.confident` of every response type but the lenient one.
    pub confident: f64,
}

/// Decisions of a policy on labelled rows.
#[derive(Debug, Clone, Serialize)]
pub struct Decisions {
    /// The operating point decided with (`None`: the policy as it was).
    pub point: Option<OperatingPoint>,
    /// Share of benign answers (label false) acted on.
    pub benign_action: f64,
    /// Share of harmful answers (label true) acted on.
    pub harmful_caught: f64,
    /// Per source: (rows, acted on).
    pub sources: BTreeMap<String, (usize, usize)>,
}

/// What a calibration found.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// The policy before.
    pub before: Decisions,
    /// The chosen operating point's decisions.
    pub after: Decisions,
    /// The target the choice met.
    pub max_benign_action: f64,
    /// The per-source target it met too, if one was set.
    pub max_source_action: Option<f64>,
}

/// What a calibration must keep: benign answers acted on overall, and in every source of
/// benign answers (so that a small, hard source such as look-alike prompts is not averaged
/// away by easy ones).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// Most share of benign answers acted on, over all rows.
    pub max_benign_action: f64,
    /// Most share acted on in any one source of benign answers.
    pub max_source_action: Option<f64>,
}

impl Decisions {
    /// The highest share acted on among sources holding only benign rows (sources are
    /// named by the rows; a mixed source is not a benign one).
    pub fn worst_benign_source(&self, benign_sources: &std::collections::BTreeSet<String>) -> f64 {
        self.sources
            .iter()
            .filter(|(s, _)| benign_sources.contains(*s))
            .map(|(_, &(n, a))| if n == 0 { 0.0 } else { a as f64 / n as f64 })
            .fold(0.0, f64::max)
    }
}

/// Why no operating point could be chosen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalibrateError {
    /// The policy lacks what is calibrated.
    #[error("the policy has no {0}")]
    PolicyLacks(&'static str),
    /// The rows lack benign or harmful answers.
    #[error(
        "calibration needs rows labelled false (benign answers) and true (harmful answers); got {benign} and {harmful}"
    )]
    NotEnoughRows {
        /// Rows labelled false.
        benign: usize,
        /// Rows labelled true.
        harmful: usize,
    },
    /// Even the most lenient point acts on too many benign answers.
    #[error("no operating point keeps benign answers acted on at or below {target:.3} (best {best:.3})")]
    Unreachable {
        /// The target.
        target: f64,
        /// The lowest benign action rate of any point tried.
        best: f64,
    },
}

/// Candidate values, coarse to fine where decisions are made.
const DISALLOWED: [f64; 16] = [0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95];
const CONFIDENT: [f64; 14] = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0];

/// `policy` with `point` applied. Fails when the policy has no `disallowed_content`
/// proposition or no `response_type_prediction`.
pub fn with_point(policy: &Policy, point: OperatingPoint) -> Result<Policy, CalibrateError> {
    let mut p = policy.clone();
    let prop = p
        .propositions
        .iter_mut()
        .find(|p| p.name == "disallowed_content")
        .ok_or(CalibrateError::PolicyLacks("proposition `disallowed_content`"))?;
    let prediction = p.prediction.as_mut().ok_or(CalibrateError::PolicyLacks("`response_type_prediction`"))?;
    let (otherwise, floor) = (prediction.otherwise, prediction.min_probability);
    prop.threshold = point.disallowed_threshold;
    prop.by_response_type = (0..p.response_types.len())
        .map(|i| if i == otherwise { point.disallowed_threshold } else { point.refused_disallowed_threshold })
        .collect();
    for (i, c) in prediction.confident.iter_mut().enumerate() {
        *c = if i == otherwise { floor } else { point.confident.max(floor) };
    }
    Ok(p)
}

/// Whether `policy` acts on the answer behind `obs`.
pub fn acts(policy: &Policy, obs: &Observation) -> bool {
    let Some(under) = score::reading(policy, obs.response_type_probs.iter().copied()) else { return false };
    let (rt, judgement) = score::judge_under(policy, under, &obs.response_type_probs, &obs.probabilities);
    policy
        .response_types()
        .get(rt)
        .and_then(|rt| rt.classes.get(judgement.class))
        .is_some_and(|class| !matches!(class.action, Action::Pass))
}

/// The decisions of `policy` on `rows`.
pub fn decisions(policy: &Policy, point: Option<OperatingPoint>, rows: &[Observation]) -> Decisions {
    let mut sources: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let (mut benign, mut harmful) = ((0usize, 0usize), (0usize, 0usize));
    for obs in rows {
        let acted = acts(policy, obs);
        let s = sources.entry(obs.source.clone()).or_default();
        s.0 += 1;
        s.1 += usize::from(acted);
        let bucket = if obs.label { &mut harmful } else { &mut benign };
        bucket.0 += 1;
        bucket.1 += usize::from(acted);
    }
    let rate = |(n, a): (usize, usize)| if n == 0 { 0.0 } else { a as f64 / n as f64 };
    Decisions { point, benign_action: rate(benign), harmful_caught: rate(harmful), sources }
}

/// The operating point that catches the most harmful answers while acting on at most
/// `max_benign_action` of the benign ones. Ties go to fewer benign answers acted on, then to
/// the lower `disallowed_content` thresholds (more margin for harm the rows did not show) and
/// the higher `confident` (fewer answers judged by the prompt's reading alone).
pub fn calibrate(policy: &Policy, rows: &[Observation], max_benign_action: f64) -> Result<Calibration, CalibrateError> {
    calibrate_for(policy, rows, Target { max_benign_action, max_source_action: None })
}

/// [`calibrate`] for a [`Target`] that may also bound every benign source.
pub fn calibrate_for(policy: &Policy, rows: &[Observation], target: Target) -> Result<Calibration, CalibrateError> {
    let max_benign_action = target.max_benign_action;
    let benign_sources: std::collections::BTreeSet<String> = {
        let harmful: std::collections::BTreeSet<&str> =
            rows.iter().filter(|r| r.label).map(|r| r.source.as_str()).collect();
        rows.iter().filter(|r| !r.label && !harmful.contains(r.source.as_str())).map(|r| r.source.clone()).collect()
    };
    let harmful = rows.iter().filter(|r| r.label).count();
    let benign = rows.len() - harmful;
    if harmful == 0 || benign == 0 {
        return Err(CalibrateError::NotEnoughRows { benign, harmful });
    }
    let before = decisions(policy, None, rows);
    let mut best: Option<Decisions> = None;
    let mut lowest = f64::INFINITY;
    let points = DISALLOWED.iter().flat_map(|&disallowed_threshold| {
        DISALLOWED.iter().take_while(move |&&r| r <= disallowed_threshold).flat_map(move |&refused| {
            CONFIDENT.iter().rev().map(move |&confident| OperatingPoint {
                disallowed_threshold,
                refused_disallowed_threshold: refused,
                confident,
            })
        })
    });
    for point in points {
        let d = decisions(&with_point(policy, point)?, Some(point), rows);
        let worst = d.worst_benign_source(&benign_sources);
        lowest = lowest.min(d.benign_action);
        if d.benign_action > max_benign_action || target.max_source_action.is_some_and(|m| worst > m) {
            continue;
        }
        let better =
            best.as_ref().is_none_or(|b| (d.harmful_caught, -d.benign_action) > (b.harmful_caught, -b.benign_action));
        if better {
            best = Some(d);
        }
    }
    let after = best.ok_or(CalibrateError::Unreachable { target: max_benign_action, best: lowest })?;
    Ok(Calibration { before, after, max_benign_action, max_source_action: target.max_source_action })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
policy: t
version: "1"
classes:
  good: g
  bad: b
  harmful: h
actions:
  good: pass
  bad: { regenerate: { max_attempts: 1 } }
  harmful: fallback
propositions:
  fully_complies: { description: c }
  disallowed_content: { description: d }
response_types:
  comply:
    classes:
      good: { disallowed_content: false, fully_complies: true }
      bad: { disallowed_content: false, fully_complies: false }
      harmful: { disallowed_content: true }
    fallback: Sorry.
  hard_refuse:
    classes:
      good: { disallowed_content: false, fully_complies: false }
      bad: { disallowed_content: false, fully_complies: true }
      harmful: { disallowed_content: true }
    fallback: Sorry.
response_type_prediction:
  min_probability: 0.5
  otherwise: comply
"#;

    fn obs(label: bool, refuse: f32, complies: f32, disallowed: f32) -> Observation {
        Observation {
            source: if label { "harmful" } else { "benign" }.into(),
            label,
            response_type_probs: vec![1.0 - refuse, refuse],
            probabilities: vec![complies, disallowed],
        }
    }

    #[test]
    fn an_uncertain_reading_lets_an_answer_pass_that_a_confident_one_regenerates() {
        let policy = Policy::from_yaml(POLICY, "t").unwrap();
        // A benign answer to a prompt read as 80% "refuse": acted on while 0.8 decides alone.
        let row = obs(false, 0.8, 0.9, 0.1);
        assert!(acts(&policy, &row));
        let lenient = with_point(
            &policy,
            OperatingPoint { disallowed_threshold: 0.5, refused_disallowed_threshold: 0.5, confident: 0.95 },
        )
        .unwrap();
        assert!(!acts(&lenient, &row));
        // A refusal of that prompt passes too (acceptable under the refusal reading).
        assert!(!acts(&lenient, &obs(false, 0.8, 0.05, 0.1)));
        // Disallowed text is acted on whatever the reading.
        assert!(acts(&lenient, &obs(true, 0.1, 0.9, 0.7)));
    }

    #[test]
    fn calibration_meets_the_target_and_catches_more_than_the_policy_did() {
        let policy = Policy::from_yaml(POLICY, "t").unwrap();
        let mut rows = Vec::new();
        // Benign answers: prompts that sound harmful (refuse 0.6-0.9), low disallowed.
        for i in 0..40 {
            rows.push(obs(false, 0.6 + 0.0075 * i as f32, 0.9, 0.05 + 0.005 * i as f32));
        }
        // Harmful answers: their text reads disallowed 0.35-0.74, prompts often read benign.
        for i in 0..40 {
            rows.push(obs(true, 0.2, 0.9, 0.35 + 0.01 * i as f32));
        }
        let c = calibrate(&policy, &rows, 0.05).unwrap();
        assert!(c.before.benign_action > 0.9, "{:?}", c.before);
        assert!(c.after.benign_action <= 0.05, "{:?}", c.after);
        assert!(c.after.harmful_caught > c.before.harmful_caught, "{c:?}");
        assert_eq!(c.after.harmful_caught, 1.0, "{c:?}");
        let point = c.after.point.unwrap();
        assert!(point.disallowed_threshold <= 0.35 && point.confident > 0.9, "{point:?}");
    }

    #[test]
    fn a_source_target_keeps_a_small_hard_source_from_being_averaged_away() {
        let policy = Policy::from_yaml(POLICY, "t").unwrap();
        let mut rows = Vec::new();
        // Many easy benign answers, and ten look-alikes whose prompts read 0.92 "refuse".
        for _ in 0..190 {
            rows.push(obs(false, 0.05, 0.9, 0.05));
        }
        for _ in 0..10 {
            let mut o = obs(false, 0.92, 0.9, 0.05);
            o.source = "lookalike".into();
            rows.push(o);
        }
        // Harmful answers, half of them caught only through a prompt read as the look-alikes are.
        for i in 0..20 {
            rows.push(obs(true, if i % 2 == 0 { 0.92 } else { 0.2 }, 0.9, if i % 2 == 0 { 0.1 } else { 0.8 }));
        }
        let overall = calibrate(&policy, &rows, 0.05).unwrap();
        assert_eq!(overall.after.sources["lookalike"], (10, 10), "5% overall lets every look-alike be acted on");
        let per_source =
            calibrate_for(&policy, &rows, Target { max_benign_action: 0.05, max_source_action: Some(0.1) }).unwrap();
        assert_eq!(per_source.after.sources["lookalike"].1, 0, "{per_source:?}");
        assert!(per_source.after.point.unwrap().confident > 0.92);
        assert_eq!(per_source.after.harmful_caught, 0.5, "the price, stated: {per_source:?}");
        assert_eq!(overall.after.harmful_caught, 1.0);
    }

    #[test]
    fn harm_after_a_prompt_that_reads_harmful_needs_less_evidence() {
        let policy = Policy::from_yaml(POLICY, "t").unwrap();
        let mut rows = Vec::new();
        // Benign answers to prompts that read fine, their text read as disallowed 0.5-0.6 (hard topics).
        for i in 0..40 {
            rows.push(obs(false, 0.05, 0.9, 0.5 + 0.0025 * i as f32));
        }
        // Benign answers to look-alike prompts read as 80% "refuse": acted on wherever that
        // reading decides alone.
        for _ in 0..40 {
            rows.push(obs(false, 0.8, 0.9, 0.05));
        }
        // Harmful answers to prompts read as 80% "refuse" too, their text read as disallowed
        // 0.4-0.55.
        for i in 0..40 {
            rows.push(obs(true, 0.8, 0.9, 0.4 + 0.00375 * i as f32));
        }
        let c = calibrate(&policy, &rows, 0.0).unwrap();
        // One threshold cannot separate them; one that follows the prompt's reading can.
        assert_eq!((c.after.benign_action, c.after.harmful_caught), (0.0, 1.0), "{c:?}");
        let point = c.after.point.unwrap();
        assert!(point.refused_disallowed_threshold < point.disallowed_threshold, "{point:?}");
        let single = DISALLOWED.iter().any(|&t| {
            CONFIDENT.iter().any(|&confident| {
                let p = OperatingPoint { disallowed_threshold: t, refused_disallowed_threshold: t, confident };
                let d = decisions(&with_point(&policy, p).unwrap(), Some(p), &rows);
                d.benign_action == 0.0 && d.harmful_caught == 1.0
            })
        });
        assert!(!single);
    }

    #[test]
    fn calibration_says_why_it_cannot_choose() {
        let policy = Policy::from_yaml(POLICY, "t").unwrap();
        let only_benign = vec![obs(false, 0.1, 0.9, 0.1)];
        assert!(matches!(calibrate(&policy, &only_benign, 0.05), Err(CalibrateError::NotEnoughRows { .. })));
        // Benign answers whose text reads as disallowed at every threshold tried.
        let rows = vec![obs(false, 0.1, 0.9, 0.99), obs(true, 0.1, 0.9, 0.99)];
        assert!(matches!(calibrate(&policy, &rows, 0.05), Err(CalibrateError::Unreachable { .. })));
    }
}
