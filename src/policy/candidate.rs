//! [`CandidatePolicy`]: a policy decided beside the live one on every judged request, from the
//! same classifier pass, so an ops team sees what a new version would change before it
//! serves. Swapped at runtime (`/admin/candidate`) without blocking readers.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::{Policy, PolicyError};

/// The slot the candidate policy lives in; clones share it.
#[derive(Clone, Default)]
pub struct CandidatePolicy {
    slot: Arc<ArcSwapOption<Policy>>,
}

impl std::fmt::Debug for CandidatePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.get();
        f.debug_struct("CandidatePolicy").field("version", &current.as_ref().map(|p| p.version().to_string())).finish()
    }
}

/// Why a candidate policy cannot be decided beside the live one.
#[derive(Debug, thiserror::Error)]
pub enum CandidateError {
    /// The candidate is not a valid policy.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// It reads a proposition or response type the live policy's model pass does not give.
    #[error("the candidate reads {kind} `{name}`, which the live policy `{live}` does not ask the model for")]
    Unknown {
        /// `proposition` or `response type`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The live policy's name.
        live: String,
    },
}

impl CandidatePolicy {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// The candidate now, if any.
    pub fn get(&self) -> Option<Arc<Policy>> {
        self.slot.load_full()
    }

    /// Replaces the candidate (`None` removes it).
    pub fn set(&self, policy: Option<Arc<Policy>>) {
        self.slot.store(policy);
    }

    /// Checks that `candidate` can be decided from `live`'s classifier pass: every
    /// proposition and response type it reads is one `live` asks the model for.
    pub fn check(candidate: &Policy, live: &Policy) -> Result<(), CandidateError> {
        for p in candidate.propositions() {
            if !live.propositions().iter().any(|l| l.name == p.name) {
                return Err(CandidateError::Unknown {
                    kind: "proposition",
                    name: p.name.clone(),
                    live: live.name().to_string(),
                });
            }
        }
        for rt in candidate.response_types() {
            if !live.response_types().iter().any(|l| l.name == rt.name) {
                return Err(CandidateError::Unknown {
                    kind: "response type",
                    name: rt.name.clone(),
                    live: live.name().to_string(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/refusal-style.yaml");
        Policy::from_file(path).unwrap()
    }

    #[test]
    fn a_swapped_candidate_is_seen_by_every_clone() {
        let slot = CandidatePolicy::new();
        let other = slot.clone();
        assert!(other.get().is_none());
        slot.set(Some(Arc::new(policy())));
        assert_eq!(other.get().map(|p| p.name().to_string()).as_deref(), Some("refusal-style"));
        slot.set(None);
        assert!(other.get().is_none());
    }

    #[test]
    fn a_candidate_reading_a_proposition_the_live_pass_lacks_is_refused() {
        let live = policy();
        assert!(CandidatePolicy::check(&live, &live).is_ok());
        let mut candidate = live.clone();
        candidate.propositions[0].name = "made_up".into();
        let e = CandidatePolicy::check(&candidate, &live).unwrap_err();
        assert!(e.to_string().contains("made_up"), "{e}");
    }
}
