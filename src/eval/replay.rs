//! Deciding logged requests again under another policy, without the model and without the
//! text (`rulegate policy diff OLD NEW --log FILE`, and the candidate policy judged beside
//! the live one): a decision-log line keeps every proposition's and response type's
//! probability, and a policy's decision is a function of those alone.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde::Serialize;

use crate::policy::{Action, Policy};
use crate::score;
use crate::telemetry::decision_log::DecisionRecord;

/// A policy's decision of one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decided {
    /// The response type the completion was judged under.
    pub response_type: String,
    /// Its class.
    pub class: String,
    /// The class's action (`pass`, `regenerate`, `fallback`, ...).
    pub action: &'static str,
    /// Whether the gateway acts on the completion (any action but `pass`).
    pub acts: bool,
    /// The reward score.
    pub score: f64,
}

/// Why a request could not be decided again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The line lacks a probability the policy reads (a line written without them, or a
    /// policy for another model).
    #[error("no probability for {kind} `{name}` (the policy reads it; the log line was written without it)")]
    Missing {
        /// `proposition` or `response type`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The policy has no response types to judge under.
    #[error("the policy has no response types")]
    NoResponseTypes,
}

/// Decides a completion from its probabilities, keyed by name, as the pipeline decides it:
/// the response type read by [`score::reading`], the class by [`score::judge_under`].
pub fn decide(
    policy: &Policy,
    response_type_probs: &IndexMap<String, f32>,
    propositions: &IndexMap<String, f32>,
) -> Result<Decided, ReplayError> {
    let probabilities = policy
        .propositions()
        .iter()
        .map(|p| {
            propositions
                .get(&p.name)
                .copied()
                .ok_or_else(|| ReplayError::Missing { kind: "proposition", name: p.name.clone() })
        })
        .collect::<Result<Vec<f32>, _>>()?;
    let rt_probs = policy
        .response_types()
        .iter()
        .map(|rt| {
            response_type_probs
                .get(&rt.name)
                .copied()
                .ok_or_else(|| ReplayError::Missing { kind: "response type", name: rt.name.clone() })
        })
        .collect::<Result<Vec<f32>, _>>()?;
    decide_ordered(policy, &rt_probs, &probabilities)
}

/// [`decide`] from probabilities already in the policy's order.
pub fn decide_ordered(
    policy: &Policy,
    response_type_probs: &[f32],
    probabilities: &[f32],
) -> Result<Decided, ReplayError> {
    let under = score::reading(policy, response_type_probs.iter().copied()).ok_or(ReplayError::NoResponseTypes)?;
    let (rt, judgement) = score::judge_under(policy, under, response_type_probs, probabilities);
    let rt = policy.response_types().get(rt).ok_or(ReplayError::NoResponseTypes)?;
    let (class, action) = match rt.classes.get(judgement.class) {
        Some(c) => (c.name.clone(), &c.action),
        None => (String::from("-"), &Action::Pass),
    };
    Ok(Decided {
        response_type: rt.name.clone(),
        class,
        action: action.name(),
        acts: !matches!(action, Action::Pass),
        score: judgement.score,
    })
}

/// What a new policy changes on logged requests.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyDiff {
    /// Lines decided by both policies.
    pub decided: usize,
    /// Lines that could not be decided (no probabilities; see `first_error`).
    pub skipped: usize,
    /// Why the first skipped line was skipped.
    pub first_error: Option<String>,
    /// Lines the old policy acts on.
    pub old_acts: usize,
    /// Lines the new policy acts on.
    pub new_acts: usize,
    /// Lines whose class or action differs.
    pub changed: usize,
    /// `(old class/action, new class/action)` -> lines, for the lines that changed.
    pub transitions: BTreeMap<String, usize>,
    /// Up to 20 changed lines: request id, old and new decision.
    pub examples: Vec<(String, Decided, Decided)>,
}

impl PolicyDiff {
    /// Share of decided lines each policy acts on.
    pub fn action_rates(&self) -> (f64, f64) {
        let n = self.decided.max(1) as f64;
        (self.old_acts as f64 / n, self.new_acts as f64 / n)
    }

    /// A plain-text report.
    pub fn render(&self, old: &Policy, new: &Policy) -> String {
        let (a, b) = self.action_rates();
        let mut s = format!(
            "old: {} {}\nnew: {} {}\nlines decided: {} (skipped {})\nacted on: old {:.1}% ({}), new {:.1}% ({})\nchanged: {}\n",
            old.name(),
            old.version(),
            new.name(),
            new.version(),
            self.decided,
            self.skipped,
            100.0 * a,
            self.old_acts,
            100.0 * b,
            self.new_acts,
            self.changed
        );
        if let Some(e) = &self.first_error {
            s.push_str(&format!("first skipped line: {e}\n"));
        }
        if !self.transitions.is_empty() {
            s.push_str("\nold -> new (class/action): lines\n");
            let mut t: Vec<_> = self.transitions.iter().collect();
            t.sort_by(|x, y| y.1.cmp(x.1).then(x.0.cmp(y.0)));
            for (k, n) in t {
                s.push_str(&format!("  {k}: {n}\n"));
            }
        }
        if !self.examples.is_empty() {
            s.push_str("\nexamples (request id):\n");
            for (id, o, n) in &self.examples {
                s.push_str(&format!("  {id}: {}/{} -> {}/{}\n", o.class, o.action, n.class, n.action));
            }
        }
        s
    }
}

/// Decides every record under `old` and `new` and counts what changes.
pub fn diff(old: &Policy, new: &Policy, records: &[DecisionRecord]) -> PolicyDiff {
    let mut d = PolicyDiff::default();
    for r in records {
        let decided = decide(old, &r.response_type_probs, &r.propositions)
            .and_then(|o| decide(new, &r.response_type_probs, &r.propositions).map(|n| (o, n)));
        let (o, n) = match decided {
            Ok(pair) => pair,
            Err(e) => {
                d.skipped += 1;
                if d.first_error.is_none() {
                    d.first_error = Some(format!("{}: {e}", r.request_id));
                }
                continue;
            }
        };
        d.decided += 1;
        d.old_acts += usize::from(o.acts);
        d.new_acts += usize::from(n.acts);
        if o.class != n.class || o.action != n.action {
            d.changed += 1;
            *d.transitions.entry(format!("{}/{} -> {}/{}", o.class, o.action, n.class, n.action)).or_default() += 1;
            if d.examples.len() < 20 {
                d.examples.push((r.request_id.clone(), o, n));
            }
        }
    }
    d
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
  harmful: { description: h, threshold: 0.5 }
  refuses: { description: r }
response_types:
  comply:
    classes:
      good: { harmful: false, refuses: false }
      bad: { harmful: false, refuses: true }
      harmful: { harmful: true }
    fallback: Sorry.
  hard_refuse:
    classes:
      good: { harmful: false, refuses: true }
      bad: { harmful: false, refuses: false }
      harmful: { harmful: true }
    fallback: Sorry.
response_type_prediction:
  min_probability: 0.6
  otherwise: comply
  confident: { hard_refuse: 0.9 }
"#;

    fn policy(yaml: &str) -> Policy {
        Policy::from_yaml(yaml, "test").expect("test policy compiles")
    }

    fn record(id: &str, harmful: f32, hard: f32) -> DecisionRecord {
        DecisionRecord {
            request_id: id.into(),
            response_type_probs: [("comply".to_string(), 1.0 - hard), ("hard_refuse".to_string(), hard)]
                .into_iter()
                .collect(),
            propositions: [("harmful".to_string(), harmful), ("refuses".to_string(), 0.1)].into_iter().collect(),
            ..DecisionRecord::default()
        }
    }

    #[test]
    fn a_logged_line_is_decided_as_the_pipeline_decides() {
        let p = policy(POLICY);
        let d = decide(&p, &record("a", 0.8, 0.1).response_type_probs, &record("a", 0.8, 0.1).propositions).unwrap();
        assert_eq!(
            (d.response_type.as_str(), d.class.as_str(), d.action, d.acts),
            ("comply", "harmful", "fallback", true)
        );
        let r = record("b", 0.1, 0.95);
        let d = decide(&p, &r.response_type_probs, &r.propositions).unwrap();
        assert_eq!(
            (d.response_type.as_str(), d.class.as_str(), d.action, d.acts),
            ("hard_refuse", "bad", "regenerate", true)
        );
        let r = record("c", 0.1, 0.1);
        assert!(!decide(&p, &r.response_type_probs, &r.propositions).unwrap().acts);
    }

    #[test]
    fn a_stricter_threshold_shows_as_changed_lines() {
        let old = policy(POLICY);
        let new = policy(&POLICY.replace("threshold: 0.5", "threshold: 0.3"));
        let records = vec![record("a", 0.4, 0.1), record("b", 0.1, 0.1), record("c", 0.9, 0.1)];
        let d = diff(&old, &new, &records);
        assert_eq!((d.decided, d.old_acts, d.new_acts, d.changed), (3, 1, 2, 1));
        assert_eq!(d.transitions.get("good/pass -> harmful/fallback"), Some(&1));
        assert_eq!(d.examples[0].0, "a");
        assert!(d.render(&old, &new).contains("changed: 1"));
    }

    #[test]
    fn a_line_without_probabilities_is_skipped_with_its_reason() {
        let p = policy(POLICY);
        let records =
            vec![DecisionRecord { request_id: "x".into(), ..DecisionRecord::default() }, record("y", 0.1, 0.1)];
        let d = diff(&p, &p, &records);
        assert_eq!((d.decided, d.skipped, d.changed), (1, 1, 0));
        assert!(d.first_error.unwrap().contains("x: no probability for proposition `harmful`"));
    }
}
