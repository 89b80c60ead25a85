//! The `rulegate` command line: the sidecar, offline checking, evaluation, fitting and
//! policy validation. Each subcommand lives in its own file under `src/cli/`.

mod cli;

use std::io;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::calibrate::CalibrateArgs;
use cli::check::CheckArgs;
use cli::eval::EvalArgs;
use cli::fit::FitArgs;
use cli::policy::PolicyCommand;
use cli::review::ReviewArgs;
use cli::serve::ServeArgs;

#[derive(Parser)]
#[command(name = "rulegate", version, about = "Guardrail for LLM gateways: judges completions with rule-based rewards")]
struct Cli {
    /// Log filter (tracing syntax), e.g. `info` or `rulegate=debug` [default: `info` for
    /// serve, `warn` otherwise].
    #[arg(long, global = true, env = "RULEGATE_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar: an OpenAI-compatible reverse proxy that guards chat completions.
    Serve(ServeArgs),
    /// Judge JSONL rows of (prompt, completion): one verdict row out per row in, same order.
    Check(CheckArgs),
    /// Compare verdicts with gold labels (RBR gold format) and print metrics.
    Eval(EvalArgs),
    /// Fit the policy's weights from ranked completions (or RBR gold rows).
    Fit(FitArgs),
    /// Choose the policy's operating points (disallowed_content threshold, confident
    /// response-type reading) on labelled decisions for a target over-action rate.
    Calibrate(CalibrateArgs),
    /// Rows to label from a decision log (`serve --decision-log`), in the `eval --task
    /// decision` format with an empty `label`.
    Review(ReviewArgs),
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" };
    let log = cli.log.as_deref().unwrap_or(default_log);
    if !matches!(cli.command, Command::Serve(_)) {
        // `serve` sets up logging with its tracing exporter once its config is read.
        let filter = tracing_subscriber::EnvFilter::try_new(log)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log));
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr).init();
    }
    let result = match cli.command {
        Command::Serve(args) => cli::serve::serve(args, log),
        Command::Check(args) => cli::check::check(args),
        Command::Eval(args) => cli::eval::eval(args),
        Command::Fit(args) => cli::fit::fit(args),
        Command::Calibrate(args) => cli::calibrate::calibrate(args),
        Command::Review(args) => cli::review::review(args),
        Command::Policy { command } => cli::policy::run(command),
    };
    match result {
        Ok(code) => code,
        // A closed pipe (`rulegate check ... | head`) is the reader's choice, not a failure.
        Err(e) if e.chain().any(is_broken_pipe) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(error: &(dyn std::error::Error + 'static)) -> bool {
    let kind = error
        .downcast_ref::<io::Error>()
        .map(io::Error::kind)
        .or_else(|| error.downcast_ref::<serde_json::Error>().and_then(serde_json::Error::io_error_kind));
    kind == Some(io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    /// Every subcommand's flags are consistent (clap checks names, e.g. that no subcommand
    /// reuses the global `--log`, at parse time only for the subcommand run).
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
