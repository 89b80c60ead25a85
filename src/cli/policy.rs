//! `rulegate policy`: policy tools.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use rulegate::guard::Judge;
use rulegate::{Classifier, ClassifierOptions};

use super::load_policy;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file (and, with --model, that the model has every head it uses).
    Validate {
        file: PathBuf,
        #[arg(long)]
        model: Option<PathBuf>,
    },
}

/// Runs a `rulegate policy` subcommand.
pub fn run(command: PolicyCommand) -> Result<ExitCode> {
    match command {
        PolicyCommand::Validate { file, model } => validate(&file, model.as_deref()),
    }
}

fn validate(file: &Path, model: Option<&Path>) -> Result<ExitCode> {
    let policy = load_policy(file)?;
    if let Some(dir) = model {
        let classifier = Classifier::load(
            dir,
            &ClassifierOptions { sessions: 1, intra_threads: 1, ..ClassifierOptions::default() },
        )?;
        Judge::new(policy.clone(), classifier)?;
    }
    let used = policy.propositions_used_by_rules().iter().filter(|&&u| u).count();
    let mut out = io::stdout().lock();
    writeln!(out, "{}: valid", file.display())?;
    writeln!(out, "  policy {} version {}", policy.name(), policy.version())?;
    writeln!(
        out,
        "  {} propositions ({used} read by the rules), {} derived",
        policy.propositions().len(),
        policy.derived().len()
    )?;
    for rt in policy.response_types() {
        let classes: Vec<String> = rt.classes.iter().map(|c| format!("{} -> {}", c.name, c.action.name())).collect();
        writeln!(out, "  {}: {}", rt.name, classes.join(", "))?;
    }
    writeln!(out, "  class rules: exactly one class per truth assignment, for every response type")?;
    writeln!(
        out,
        "  streaming: {}; input check: {}",
        policy.streaming().name(),
        if policy.input_check().is_some() { "on" } else { "off" }
    )?;
    if model.is_some() {
        writeln!(out, "  model: has every head the policy uses")?;
    }
    Ok(ExitCode::SUCCESS)
}
