//! `rulegate policy`: policy tools.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use rulegate::eval::replay;
use rulegate::guard::Judge;
use rulegate::telemetry::decision_log::read_log;
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
    /// What a new policy would change: every request of a decision log decided again by
    /// both policies, from the probabilities the log kept (no model run, no text needed).
    Diff {
        /// The policy the log was decided with (or any baseline).
        old: PathBuf,
        /// The policy to try.
        new: PathBuf,
        /// Decision log to replay; repeat for rotated files.
        #[arg(long = "decision-log", required = true)]
        logs: Vec<PathBuf>,
        /// Also write the comparison as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// Runs a `rulegate policy` subcommand.
pub fn run(command: PolicyCommand) -> Result<ExitCode> {
    match command {
        PolicyCommand::Validate { file, model } => validate(&file, model.as_deref()),
        PolicyCommand::Diff { old, new, logs, json } => diff(&old, &new, &logs, json.as_deref()),
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

fn diff(old: &Path, new: &Path, logs: &[PathBuf], json: Option<&Path>) -> Result<ExitCode> {
    let (old_policy, new_policy) = (load_policy(old)?, load_policy(new)?);
    let mut records = Vec::new();
    for path in logs {
        records.extend(read_log(path)?);
    }
    let d = replay::diff(&old_policy, &new_policy, &records);
    write!(io::stdout().lock(), "{}", d.render(&old_policy, &new_policy))?;
    if let Some(path) = json {
        let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(file), &d)?;
    }
    if d.decided == 0 && d.skipped > 0 {
        bail!("no logged request could be decided: {}", d.first_error.unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}
