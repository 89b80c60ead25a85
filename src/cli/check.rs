//! `rulegate check`: one verdict row out per (prompt, completion) row in, same order.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use indexmap::IndexMap;
use serde::Serialize;
use serde_json::Value;

use rulegate::Verdict;
use rulegate::dataset::Row;
use rulegate::score::ResponseTypeSource;

use super::JudgeArgs;
use super::rows::judge_rows;

/// Flags of `rulegate check`.
#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    judge: JudgeArgs,
    /// JSONL input, `-` for stdin.
    #[arg(long, default_value = "-")]
    input: String,
    /// JSONL output, `-` for stdout.
    #[arg(long, default_value = "-")]
    output: String,
    /// `jsonl` (one verdict row per input row) or `table` (for people).
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Jsonl,
    Table,
}

#[derive(Serialize)]
struct CheckRow<'a> {
    id: &'a Value,
    response_type: &'a str,
    response_type_source: ResponseTypeSource,
    response_type_probs: &'a IndexMap<String, f32>,
    propositions: IndexMap<&'a str, f32>,
    class: &'a str,
    class_probs: &'a IndexMap<String, f64>,
    score: f64,
    action: &'static str,
    prm: Option<f32>,
    truncated: bool,
}

#[derive(Serialize)]
struct ErrorRow<'a> {
    id: Value,
    line: usize,
    error: &'a str,
}

/// Runs `rulegate check`.
pub fn check(args: CheckArgs) -> Result<ExitCode> {
    let judge = args.judge.load()?;
    let mut out: Box<dyn Write> = if args.output == "-" {
        Box::new(BufWriter::new(io::stdout().lock()))
    } else {
        Box::new(BufWriter::new(File::create(&args.output).with_context(|| format!("cannot create {}", args.output))?))
    };
    if args.format == Format::Table {
        writeln!(
            out,
            "{:<16} {:<15} {:<26} {:>7} {:<11} true propositions",
            "id", "response type", "class", "score", "action"
        )?;
    }
    let (rows, failed) = judge_rows(&judge, &args.input, args.judge.model.batch_size, Ok, |line, result| {
        if args.format == Format::Table {
            return write_table_row(&mut out, line, result);
        }
        match result {
            Ok((row, v)) => serde_json::to_writer(
                &mut out,
                &CheckRow {
                    id: &row.id,
                    response_type: &v.response_type,
                    response_type_source: v.response_type_source,
                    response_type_probs: &v.response_type_probs,
                    propositions: v.propositions.iter().map(|p| (p.name.as_str(), p.probability)).collect(),
                    class: &v.class,
                    class_probs: &v.class_probs,
                    score: v.score,
                    action: v.action.name(),
                    prm: v.prm,
                    truncated: v.truncated,
                },
            )?,
            Err(e) => serde_json::to_writer(&mut out, &ErrorRow { id: Value::from(line), line, error: e })?,
        }
        out.write_all(b"\n")?;
        Ok(())
    })?;
    out.flush()?;
    if failed > 0 {
        eprintln!("{failed} of {rows} rows failed (their output rows carry an `error`)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn write_table_row(out: &mut dyn Write, line: usize, result: &Result<(Row, Verdict), String>) -> Result<()> {
    let clip = |s: &str, n: usize| {
        if s.chars().count() > n { format!("{}~", s.chars().take(n - 1).collect::<String>()) } else { s.to_string() }
    };
    match result {
        Ok((row, v)) => {
            let id = match &row.id {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let rt = match v.response_type_source {
                ResponseTypeSource::Given => v.response_type.clone(),
                ResponseTypeSource::Predicted => format!("{}*", v.response_type),
                ResponseTypeSource::Default => format!("{}?", v.response_type),
                ResponseTypeSource::Uncertain => format!("{}~", v.response_type),
            };
            let truths: Vec<&str> = v.propositions.iter().filter(|p| p.value).map(|p| p.name.as_str()).collect();
            writeln!(
                out,
                "{:<16} {:<15} {:<26} {:>7.3} {:<11} {}",
                clip(&id, 16),
                rt,
                v.class,
                v.score,
                v.action.name(),
                truths.join(", ")
            )?;
        }
        Err(e) => writeln!(out, "{:<16} error: {e}", format!("line {line}"))?,
    }
    Ok(())
}
