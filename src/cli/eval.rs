//! `rulegate eval`: verdicts compared with gold labels (RBR metrics), or a labelled set's
//! yes/no metrics for one task, overall and per source.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use rulegate::dataset::Row;
use rulegate::eval::Evaluator;
use rulegate::eval::labelled::{LabelledEvaluator, Task};

use super::LabelledArgs;
use super::rows::judge_rows;

/// Flags of `rulegate eval`.
#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    labelled: LabelledArgs,
    /// Evaluate a labelled set on one yes/no question instead of the RBR metrics:
    /// `refusal` (the completion refuses), `prompt-harm` (the prompt needs a refusal),
    /// `disallowed` (the completion holds disallowed content), `decision` (the gateway acts on
    /// the answer: label benign answers false, harmful ones true). Reported per `source`.
    #[arg(long)]
    task: Option<Task>,
}

/// Runs `rulegate eval`.
pub fn eval(args: EvalArgs) -> Result<ExitCode> {
    if let Some(task) = args.task {
        return eval_labelled(&args.labelled, task);
    }
    let args = &args.labelled;
    let judge = args.judge.load()?;
    let policy = judge.policy().clone();
    let mut evaluator = Evaluator::new(&policy);
    let mut unlabelled = 0usize;
    let (rows, failed) = judge_rows(&judge, &args.input, args.judge.model.batch_size, Ok, |_, result| {
        if let Ok((row, verdict)) = result {
            let gold = row.response_type.as_deref().and_then(|l| judge.response_type_index(l).ok());
            if row.propositions.is_none() {
                unlabelled += 1;
            }
            evaluator.add(row, verdict, gold);
        }
        Ok(())
    })?;
    if rows == failed {
        bail!("no row of {} could be evaluated", args.input);
    }
    let report = evaluator.finish();
    let mut out = io::stdout().lock();
    write!(out, "{}", report.render())?;
    if unlabelled > 0 {
        writeln!(
            out,
            "\n{unlabelled} rows had no `propositions` labels and count only towards response-type accuracy"
        )?;
    }
    finish_eval(args, &report, rows, failed)
}

/// Writes `--json` if asked for; a run with failed rows exits with failure.
fn finish_eval(args: &LabelledArgs, report: &impl serde::Serialize, rows: usize, failed: usize) -> Result<ExitCode> {
    if let Some(path) = &args.json {
        let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        serde_json::to_writer_pretty(BufWriter::new(file), report)?;
    }
    if failed > 0 {
        eprintln!("{failed} of {rows} rows failed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `rulegate eval --task`: yes/no metrics of a labelled set, overall and per source.
fn eval_labelled(args: &LabelledArgs, task: Task) -> Result<ExitCode> {
    let judge = args.judge.load()?;
    task.check(judge.policy())?;
    let mut evaluator = LabelledEvaluator::new(task);
    let prepare = |mut row: Row| {
        if row.label.is_none() {
            return Err(format!("a `label` (true or false) is needed for --task {task}"));
        }
        if !task.reads_completion() {
            // What the prompt needs is read from the prompt alone, never from a stated type.
            row.completion.clear();
            row.response_type = None;
        }
        if task == Task::Decision {
            // Decided as the gateway decides: the prompt is read by the model.
            row.response_type = None;
        }
        Ok(row)
    };
    let (rows, failed) = judge_rows(&judge, &args.input, args.judge.model.batch_size, prepare, |_, result| {
        if let Ok((row, verdict)) = result {
            let label = row.label.unwrap_or_default();
            evaluator.add(row.source.as_deref(), label, verdict);
        }
        Ok(())
    })?;
    if rows == failed {
        bail!("no row of {} could be evaluated", args.input);
    }
    let report = evaluator.finish();
    write!(io::stdout().lock(), "{}", report.render())?;
    finish_eval(args, &report, rows, failed)
}
