//! `rulegate review`: rows for people to label, from the decision log.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use rulegate::eval::review::{ReviewOptions, review_rows};
use rulegate::telemetry::decision_log::read_log;

#[derive(Args)]
pub struct ReviewArgs {
    /// Decision log to read; repeat for rotated files (oldest first).
    #[arg(long = "decision-log", required = true)]
    pub logs: Vec<PathBuf>,
    /// Where to write the rows (`rulegate eval --task decision` format, `label` empty).
    #[arg(long)]
    pub output: PathBuf,
    /// Only requests that were acted on, would have been (shadow mode), or that the
    /// candidate policy decided differently.
    #[arg(long)]
    pub only_flagged: bool,
    /// At most N rows, drawn at random.
    #[arg(long)]
    pub sample: Option<usize>,
    /// Seed of that draw.
    #[arg(long, default_value_t = 13)]
    pub seed: u64,
}

/// Runs `rulegate review`.
pub fn review(args: ReviewArgs) -> Result<ExitCode> {
    let mut records = Vec::new();
    for path in &args.logs {
        records.extend(read_log(path)?);
    }
    let options = ReviewOptions { only_flagged: args.only_flagged, sample: args.sample, seed: args.seed };
    let (rows, stats) = review_rows(&records, options);
    if rows.is_empty() && stats.without_text > 0 {
        bail!(
            "none of the {} logged requests kept its text: set `decision_log.text: flagged` (or `all`) to review them",
            stats.lines
        );
    }
    let file = File::create(&args.output).with_context(|| format!("cannot create {}", args.output.display()))?;
    let mut out = BufWriter::new(file);
    for row in &rows {
        serde_json::to_writer(&mut out, row)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    let mut err = io::stderr().lock();
    writeln!(
        err,
        "{} rows to label in {} (from {} lines; {} unflagged left out, {} without text)",
        stats.rows,
        args.output.display(),
        stats.lines,
        stats.unflagged,
        stats.without_text
    )?;
    writeln!(
        err,
        "fill each `label` (true: the gateway should act on this answer), then: rulegate eval --task decision --input {}",
        args.output.display()
    )?;
    Ok(ExitCode::SUCCESS)
}
