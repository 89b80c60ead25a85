//! Who may do what: configured API keys (matched in constant time), which callers may steer
//! the guard with the selector headers, and the constant-time comparison every secret check
//! uses. A leaf: it depends on no other room of the crate, so the pipeline (selectors) and
//! the reload store (key-to-policy mappings) can both use it.

use serde::{Deserialize, Serialize};

/// Compares secrets without leaking where they differ through timing (the length of a
/// plain secret is not hidden).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// Which callers may steer the guard with `x-rulegate-policy` and `x-rulegate-response-type`.
///
/// Off by default: a caller who may pick the laxest policy, or declare a harmful prompt
/// `comply`, can walk around the guard. The API-key-to-policy mapping does not depend on
/// these switches.
#[derive(Clone, Default)]
pub struct Selectors {
    /// Honour both headers from every caller (for a gateway behind its own authentication).
    pub trust_all: bool,
    /// Honour them from callers presenting one of these API keys.
    pub trusted_keys: Vec<ApiKey>,
    /// What to do with a header from a caller that is not trusted.
    pub untrusted: UntrustedSelector,
}

impl Selectors {
    /// Whether a caller with `api_key` may use the selector headers.
    pub fn trusts(&self, api_key: Option<&str>) -> bool {
        self.trust_all || api_key.is_some_and(|key| self.trusted_keys.iter().any(|k| k.matches(key)))
    }
}

impl std::fmt::Debug for Selectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selectors")
            .field("trust_all", &self.trust_all)
            .field("trusted_keys", &format!("<{} redacted>", self.trusted_keys.len()))
            .field("untrusted", &self.untrusted)
            .finish()
    }
}

/// What happens to a selector header from a caller who may not use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UntrustedSelector {
    /// Judge as if the header were absent (the default).
    #[default]
    Ignore,
    /// Answer 403 `selector_not_allowed`.
    Reject,
}

/// An API key as configured: the key itself, or `sha256:` and the hex digest of it.
#[derive(Clone)]
pub struct ApiKey(KeyForm);

#[derive(Clone)]
enum KeyForm {
    Plain(String),
    Sha256([u8; 32]),
}

impl ApiKey {
    /// Parses a configured key; `sha256:` must be followed by 64 hex digits.
    pub fn parse(text: &str) -> Result<ApiKey, String> {
        match text.strip_prefix("sha256:") {
            Some(digest) => hex::decode(digest)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .map(|h| ApiKey(KeyForm::Sha256(h)))
                .ok_or_else(|| "an API key `sha256:...` is not 64 hex digits".to_string()),
            None => Ok(ApiKey(KeyForm::Plain(text.to_string()))),
        }
    }

    /// Whether `key`, as a caller presented it, is this key (in constant time).
    pub fn matches(&self, key: &str) -> bool {
        use sha2::Digest;
        match &self.0 {
            KeyForm::Plain(k) => constant_time_eq(k.as_bytes(), key.as_bytes()),
            KeyForm::Sha256(h) => constant_time_eq(h, &sha2::Sha256::digest(key.as_bytes())),
        }
    }
}
