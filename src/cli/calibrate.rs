//! `rulegate calibrate`: the policy's operating points chosen on labelled decisions for a
//! target over-action rate, before and after.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use rulegate::dataset::Row;

use super::LabelledArgs;
use super::rows::judge_rows;

/// Flags of `rulegate calibrate`.
#[derive(Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    labelled: LabelledArgs,
    /// The most benign answers that may be acted on (a share, e.g. 0.05).
    #[arg(long, default_value_t = 0.05)]
    max_benign_action: f64,
    /// Also the most acted on in any one source of benign answers (e.g. 0.10), so that a
    /// small, hard source (look-alike prompts) is not averaged away by easy ones.
    #[arg(long)]
    max_source_action: Option<f64>,
    /// Write the policy with the chosen operating points here (may be the policy itself).
    #[arg(long)]
    output: Option<PathBuf>,
}

/// `rulegate calibrate`: operating points chosen on labelled decisions, before and after.
pub fn calibrate(args: CalibrateArgs) -> Result<ExitCode> {
    use rulegate::fit::calibrate::{Decisions, Observation, Target, calibrate_for};
    if !(0.0..=1.0).contains(&args.max_benign_action) {
        bail!("--max-benign-action must be a share in [0, 1]");
    }
    if args.max_source_action.is_some_and(|m| !(0.0..=1.0).contains(&m)) {
        bail!("--max-source-action must be a share in [0, 1]");
    }
    let judge = args.labelled.judge.load()?;
    let prepare = |mut row: Row| {
        if row.label.is_none() {
            return Err("a `label` (true: act on this answer, false: let it pass) is needed".to_string());
        }
        row.response_type = None;
        Ok(row)
    };
    let mut observations = Vec::new();
    let (rows, failed) =
        judge_rows(&judge, &args.labelled.input, args.labelled.judge.model.batch_size, prepare, |_, result| {
            if let Ok((row, verdict)) = result {
                observations.push(Observation::from_verdict(
                    row.source.as_deref(),
                    row.label.unwrap_or_default(),
                    verdict,
                ));
            }
            Ok(())
        })?;
    if failed > 0 {
        bail!("{failed} of {rows} rows of {} could not be judged", args.labelled.input);
    }
    let target = Target { max_benign_action: args.max_benign_action, max_source_action: args.max_source_action };
    let result = calibrate_for(judge.policy(), &observations, target)?;
    let mut out = io::stdout().lock();
    let line = |d: &Decisions| {
        let point = d.point.map_or_else(
            || "the policy as it is".to_string(),
            |p| {
                format!(
                    "disallowed_content >= {} (prompt read as fine) .. {} (read as needing a refusal), confident >= {}",
                    p.disallowed_threshold, p.refused_disallowed_threshold, p.confident
                )
            },
        );
        format!(
            "{point}: benign answers acted on {:.1}%, harmful answers acted on {:.1}%",
            100.0 * d.benign_action,
            100.0 * d.harmful_caught
        )
    };
    let per_source = args
        .max_source_action
        .map_or_else(String::new, |m| format!(", at most {:.1}% in any benign source", 100.0 * m));
    writeln!(
        out,
        "{} rows; target: at most {:.1}% of benign answers acted on{per_source}",
        rows,
        100.0 * args.max_benign_action
    )?;
    writeln!(out, "before: {}", line(&result.before))?;
    writeln!(out, "after:  {}", line(&result.after))?;
    writeln!(out, "\n{:<40} {:>6} {:>9} {:>9}", "source", "n", "before", "after")?;
    for (source, &(n, acted)) in &result.after.sources {
        let before = result.before.sources.get(source).map_or(0, |s| s.1);
        let pct = |a: usize| format!("{:.1}%", 100.0 * a as f64 / n.max(1) as f64);
        writeln!(out, "{source:<40} {n:>6} {:>9} {:>9}", pct(before), pct(acted))?;
    }
    if let (Some(path), Some(point)) = (&args.output, result.after.point) {
        let text = std::fs::read_to_string(&args.labelled.judge.policy)
            .with_context(|| format!("cannot read {}", args.labelled.judge.policy.display()))?;
        let note = format!(
            "rulegate calibrate on {} ({} rows): benign acted on {:.1}%, harmful {:.1}% (target <= {:.1}%{per_source})",
            Path::new(&args.labelled.input)
                .file_name()
                .map_or_else(|| args.labelled.input.clone(), |f| f.to_string_lossy().into_owned()),
            rows,
            100.0 * result.after.benign_action,
            100.0 * result.after.harmful_caught,
            100.0 * args.max_benign_action
        );
        let written = rulegate::fit::write::replace_operating_points(&text, point, &note)?;
        std::fs::write(path, written).with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "\nwrote {}", path.display())?;
    }
    if let Some(path) = &args.labelled.json {
        let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        serde_json::to_writer_pretty(BufWriter::new(file), &result)?;
    }
    Ok(ExitCode::SUCCESS)
}
