//! The short fuzz run CI does: every input of the committed AFL corpus (`fuzz/corpus/*`),
//! then random mutations of it, through the same target bodies the AFL binaries run
//! (`fuzz/targets.rs`). The long coverage-guided campaigns are in `fuzz/README.md`.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::PathBuf;

use proptest::prelude::*;

/// Each target's name and corpus inputs.
type Corpora = Vec<(&'static str, Vec<Vec<u8>>)>;

/// Every input of a target's corpus, read once per test binary.
fn corpus(target: &str) -> &'static [Vec<u8>] {
    static CORPORA: std::sync::OnceLock<Corpora> = std::sync::OnceLock::new();
    let all = CORPORA.get_or_init(|| targets::TARGETS.iter().map(|&t| (t, read_corpus(t))).collect());
    all.iter().find(|(t, _)| *t == target).map_or(&[], |(_, inputs)| inputs.as_slice())
}

fn read_corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn every_corpus_input_passes_its_target() {
    for target in targets::TARGETS {
        let inputs = corpus(target);
        assert!(!inputs.is_empty(), "fuzz/corpus/{target} is empty");
        for input in inputs {
            targets::run(target, input);
        }
    }
}

/// A corpus input with some bytes replaced, some inserted and its tail cut.
fn mutated() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    (
        0..targets::TARGETS.len(),
        any::<prop::sample::Index>(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<bool>()), 0..8),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(t, pick, edits, cut)| {
            let target = targets::TARGETS[t];
            let inputs = corpus(target);
            let mut input = inputs[pick.index(inputs.len())].clone();
            for (at, byte, insert) in edits {
                let i = at.index(input.len() + 1);
                if insert || i == input.len() {
                    input.insert(i, byte);
                } else {
                    input[i] = byte;
                }
            }
            input.truncate(cut.index(input.len() + 1).max(input.len() / 2));
            (target, input)
        })
}

proptest! {
    #[test]
    fn mutated_corpus_inputs_pass_their_targets((target, input) in mutated()) {
        targets::run(target, &input);
    }

    #[test]
    fn arbitrary_bytes_pass_every_target(input in prop::collection::vec(any::<u8>(), 0..300)) {
        for target in targets::TARGETS {
            targets::run(target, &input);
        }
    }
}
