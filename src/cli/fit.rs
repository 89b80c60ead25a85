//! `rulegate fit`: the policy's weights fitted from ranked completions (or RBR gold rows),
//! with a report and the rewritten policy.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use rulegate::guard::Evaluation;

use super::JudgeArgs;
use super::rows::progress;

/// Flags of `rulegate fit`.
#[derive(Args)]
pub struct FitArgs {
    #[command(flatten)]
    judge: JudgeArgs,
    /// Ranked JSONL (`{prompt, response_type, completions: [{completion, class | propositions,
    /// base_reward?}]}`) or RBR gold rows; repeat for several files.
    #[arg(long, required = true)]
    input: Vec<PathBuf>,
    /// Write the policy with the fitted weights here (may be the policy itself).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Write the report (PNG, HTML, JSON) into this directory.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Hinge margin for pairs whose better completion has this class, e.g. `ideal=1.5`.
    #[arg(long = "margin", value_parser = parse_margin)]
    margins: Vec<(String, f64)>,
    #[arg(long, default_value_t = 1.0)]
    default_margin: f64,
    #[arg(long, default_value_t = 0.01)]
    l2: f64,
    #[arg(long, default_value_t = 0.01)]
    learning_rate: f64,
    #[arg(long, default_value_t = 1500)]
    iterations: usize,
    /// Fraction of prompts held out for evaluation.
    #[arg(long, default_value_t = 0.2)]
    holdout: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Coefficient of rows' `base_reward` (an external reward model's score).
    #[arg(long, default_value_t = 1.0)]
    base_reward_coef: f64,
    /// Fit on the valid rows even if some are malformed.
    #[arg(long)]
    skip_invalid: bool,
}

fn parse_margin(s: &str) -> Result<(String, f64), String> {
    let (class, value) = s.split_once('=').ok_or("expected CLASS=MARGIN")?;
    let value: f64 = value.parse().map_err(|_| format!("`{value}` is not a number"))?;
    Ok((class.to_string(), value))
}

/// Runs `rulegate fit`.
pub fn fit(args: FitArgs) -> Result<ExitCode> {
    use rulegate::fit::{FitData, FitOptions, fit_type, problems, report, write};
    let judge = args.judge.load()?;
    let policy = judge.policy().clone();
    let mut data = FitData::default();
    for path in &args.input {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let before = data.errors.len();
        data.read(&text, &policy);
        for e in &data.errors[before..] {
            eprintln!("{}:{}: {}", path.display(), e.line, e.message);
        }
    }
    if !data.errors.is_empty() && !args.skip_invalid {
        bail!("{} malformed rows (listed above); fix them or pass --skip-invalid", data.errors.len());
    }
    if data.completions.is_empty() {
        bail!("no usable rows in the input");
    }

    // Features from the deployed classifier, in one batched pass.
    let bar = progress(Some(data.completions.len() as u64));
    bar.set_message("features");
    let mut features = Vec::with_capacity(data.completions.len());
    for chunk in data.completions.chunks(args.judge.model.batch_size.max(1) * 2) {
        let items: Vec<Evaluation> = chunk
            .iter()
            .map(|c| Evaluation {
                prompt: &data.prompts[c.prompt],
                completion: &c.completion,
                response_type: Some(policy.response_types()[c.response_type].name.as_str()),
            })
            .collect();
        for v in judge.evaluate_batch_blocking(&items)? {
            features.push(v.features());
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();

    let options = FitOptions {
        margins: args.margins.iter().cloned().collect(),
        default_margin: args.default_margin,
        l2: args.l2,
        learning_rate: args.learning_rate,
        iterations: args.iterations,
        holdout: args.holdout,
        seed: args.seed,
        base_reward_coef: args.base_reward_coef,
        ..FitOptions::default()
    };
    let mut fits = Vec::new();
    let mut types = Vec::new();
    for (rt, problem) in policy.response_types().iter().zip(problems(&policy, &data, &features)) {
        if problem.features.is_empty() {
            eprintln!("{}: no examples; its weights are left as they are", rt.name);
            continue;
        }
        let class_names: Vec<String> = rt.classes.iter().map(|c| c.name.clone()).collect();
        let fit = fit_type(&problem, &rt.name, &class_names, rt.feature_names(&policy), &options);
        if fit.train_pairs == 0 {
            // Nothing was learnt: writing the zero start point would erase the current weights.
            eprintln!(
                "{}: {} examples but no pair of different classes; its weights are left as they are",
                rt.name, fit.examples
            );
            continue;
        }
        fits.push(fit);
        types.push(rt);
    }
    let inputs: Vec<String> = args.input.iter().map(|p| p.display().to_string()).collect();
    let pct = report::pct;
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{:<16} {:>8} {:>9} {:>8} {:>9} {:>13} {:>10}",
        "response type", "examples", "prompts", "pairs", "held-out", "held-out acc", "top-1 acc"
    )?;
    for f in &fits {
        writeln!(
            out,
            "{:<16} {:>8} {:>9} {:>8} {:>9} {:>13} {:>10}",
            f.response_type,
            f.examples,
            f.prompts,
            f.train_pairs,
            f.heldout_pairs,
            pct(f.heldout_pair_accuracy),
            pct(f.top1_accuracy)
        )?;
        if f.cross_prompt_pairs > 0 {
            writeln!(
                out,
                "  {} pairs compare completions of different prompts (gold rows carry one completion each)",
                f.cross_prompt_pairs
            )?;
        }
    }
    if let Some(dir) = &args.report {
        report::write(dir, &fits, &inputs, &options)?;
        writeln!(out, "report: {}", dir.join("index.html").display())?;
    }
    if let Some(path) = &args.output {
        let today = civil_date(std::time::SystemTime::now());
        let names: Vec<String> = args
            .input
            .iter()
            .map(|p| p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned()))
            .collect();
        let new: Vec<write::NewWeights> = fits
            .iter()
            .zip(&types)
            .map(|(f, rt)| {
                // The weights come in the order of `ResponseType::feature_names`: the
                // policy's propositions, then the response type's classes.
                let (propositions, classes) = f.weights.split_at(policy.propositions().len().min(f.weights.len()));
                write::NewWeights {
                    response_type: f.response_type.clone(),
                    bias: 0.0,
                    propositions: policy.propositions().iter().map(|p| p.name.clone()).zip(propositions.iter().copied()).collect(),
                    classes: rt.classes.iter().map(|c| c.name.clone()).zip(classes.iter().copied()).collect(),
                    source: format!(
                        "rulegate fit, {today}, on {}: {} completions, {} prompts; held-out pair accuracy {}, top-1 accuracy {}",
                        names.join(" + "),
                        f.examples,
                        f.prompts,
                        pct(f.heldout_pair_accuracy),
                        pct(f.top1_accuracy)
                    ),
                }
            })
            .collect();
        let text = std::fs::read_to_string(&args.judge.policy)?;
        let rewritten = write::replace_weights(&text, &new)?;
        std::fs::write(path, rewritten).with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "weights written to {}", path.display())?;
    }
    if !data.errors.is_empty() {
        eprintln!("{} malformed rows were skipped", data.errors.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `YYYY-MM-DD` (UTC) without a date crate (days-from-civil, inverted).
fn civil_date(t: std::time::SystemTime) -> String {
    let days = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
