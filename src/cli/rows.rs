//! Reading JSONL rows and judging them in batches, in input order: what `check`, `eval`
//! and `calibrate` share.

use std::fs::File;
use std::io::{self, BufRead, BufReader};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use rulegate::Verdict;
use rulegate::dataset::{Row, parse_row};
use rulegate::guard::{Evaluation, Judge};

fn open_input(input: &str) -> Result<(Box<dyn BufRead>, Option<u64>)> {
    if input == "-" {
        return Ok((Box::new(BufReader::new(io::stdin())), None));
    }
    let file = File::open(input).with_context(|| format!("cannot open {input}"))?;
    let lines =
        BufReader::new(File::open(input)?).lines().map_while(Result::ok).filter(|l| !l.trim().is_empty()).count();
    Ok((Box::new(BufReader::new(file)), Some(lines as u64)))
}

/// A progress bar over `total` rows (a spinner when unknown).
pub(super) fn progress(total: Option<u64>) -> ProgressBar {
    // indicatif draws nothing when stderr is not a terminal.
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} rows {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// A line of input: a parsed row or why it could not be used.
type Line = (usize, Result<Row, String>);

/// Reads rows in windows and judges each window in batches, keeping input order; rows
/// that fail (to parse, or `prepare`) are reported by line and the rest go on.
pub(super) fn judge_rows(
    judge: &Judge,
    input: &str,
    batch_size: usize,
    prepare: impl Fn(Row) -> Result<Row, String>,
    mut emit: impl FnMut(usize, &Result<(Row, Verdict), String>) -> Result<()>,
) -> Result<(usize, usize)> {
    let (reader, total) = open_input(input)?;
    let bar = progress(total);
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let window = batch_size.max(1) * 8;
    let (mut rows, mut failed) = (0usize, 0usize);
    let mut pending: Vec<Line> = Vec::with_capacity(window);
    let mut lines = reader.lines().enumerate();
    loop {
        let next = lines.next();
        let done = next.is_none();
        if let Some((i, line)) = next {
            let line_no = i + 1;
            match line {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => {
                    pending.push((line_no, parse_row(&text, line_no).map_err(|e| e.message).and_then(&prepare)))
                }
                Err(e) => pending.push((line_no, Err(format!("cannot read: {e}")))),
            }
        }
        if pending.len() >= window || (done && !pending.is_empty()) {
            let results = runtime.block_on(judge_window(judge, std::mem::take(&mut pending), batch_size));
            for (line_no, result) in results {
                rows += 1;
                if let Err(message) = &result {
                    failed += 1;
                    bar.suspend(|| eprintln!("{input}:{line_no}: {message}"));
                }
                emit(line_no, &result)?;
                bar.inc(1);
            }
        }
        if done {
            break;
        }
    }
    bar.finish_and_clear();
    Ok((rows, failed))
}

async fn judge_window(
    judge: &Judge,
    lines: Vec<Line>,
    batch_size: usize,
) -> Vec<(usize, Result<(Row, Verdict), String>)> {
    // Rows whose response type the policy does not know fail alone, before batching.
    let lines: Vec<(usize, Result<Row, String>)> = lines
        .into_iter()
        .map(|(n, row)| {
            let row = row.and_then(|r| match r.response_type.as_deref().map(|l| judge.response_type_index(l)) {
                Some(Err(e)) => Err(e.to_string()),
                _ => Ok(r),
            });
            (n, row)
        })
        .collect();
    let valid: Vec<&Row> = lines.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    let batches = valid.chunks(batch_size.max(1)).map(|chunk| async move {
        let items: Vec<Evaluation> = chunk
            .iter()
            .map(|r| Evaluation {
                prompt: &r.prompt,
                completion: &r.completion,
                response_type: r.response_type.as_deref(),
            })
            .collect();
        let outcome = judge.evaluate_batch(&items).await;
        (chunk.len(), outcome)
    });
    let mut verdicts: Vec<Result<Verdict, String>> = Vec::with_capacity(valid.len());
    for (n, outcome) in futures::future::join_all(batches).await {
        match outcome {
            Ok(v) => verdicts.extend(v.into_iter().map(|v| Ok(std::sync::Arc::unwrap_or_clone(v)))),
            Err(e) => verdicts.extend((0..n).map(|_| Err(e.to_string()))),
        }
    }
    let mut verdicts = verdicts.into_iter();
    lines
        .into_iter()
        .map(|(n, row)| {
            let result = match row {
                Ok(row) => match verdicts.next() {
                    Some(Ok(v)) => Ok((row, v)),
                    Some(Err(e)) => Err(e),
                    None => Err("internal error: verdict missing".to_string()),
                },
                Err(e) => Err(e),
            };
            (n, result)
        })
        .collect()
}
