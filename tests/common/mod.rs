//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn default_policy() -> PathBuf {
    repo().join("policies/refusal-style.yaml")
}

/// The shipped model (or `RULEGATE_TEST_MODEL`, to try another).
pub fn default_model() -> PathBuf {
    std::env::var_os("RULEGATE_TEST_MODEL").map_or_else(|| repo().join("models/rulegate-minilm-rbr"), PathBuf::from)
}

/// `../shared/data` next to the checkout (or `RULEGATE_DATA_DIR`). The shared data is never
/// copied into the repository; tests that need it fail loudly when it cannot be found.
pub fn shared_data() -> PathBuf {
    if let Some(dir) = std::env::var_os("RULEGATE_DATA_DIR") {
        return PathBuf::from(dir);
    }
    let found = repo()
        .ancestors()
        .map(|a| a.join("shared/data"))
        .chain([PathBuf::from("/work/shared/data")])
        .find(|d| d.join("rbr-gold/test.jsonl").is_file());
    found.unwrap_or_else(|| {
        panic!("../shared/data/rbr-gold not found next to {}; set RULEGATE_DATA_DIR", repo().display())
    })
}

pub fn gold(split: &str) -> PathBuf {
    shared_data().join("rbr-gold").join(format!("{split}.jsonl"))
}

pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[path = "mock.rs"]
pub mod mock;

#[path = "process.rs"]
pub mod process;
