//! The `rulegate` command line: offline checking, evaluation and policy validation.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use indexmap::IndexMap;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;

use rulegate::dataset::{Row, parse_row};
use rulegate::eval::Evaluator;
use rulegate::eval::labelled::{LabelledEvaluator, Task};
use rulegate::guard::{Evaluation, Judge};
use rulegate::score::ResponseTypeSource;
use rulegate::{Classifier, ClassifierOptions, Device, Policy, Verdict};

/// The model shipped with rulegate, looked up relative to the working directory, the
/// executable and the source checkout.
const DEFAULT_MODEL: &str = "models/rulegate-minilm-rbr";

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
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file (and, with --model, that the model has every head it uses).
    Validate {
        file: PathBuf,
        #[arg(long)]
        model: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ModelArgs {
    /// Model directory (model.onnx, tokenizer.json, manifest.json).
    #[arg(long, env = "RULEGATE_MODEL")]
    model: Option<PathBuf>,
    /// ONNX Runtime sessions (worker threads) [default: one per core, up to 4].
    #[arg(long)]
    sessions: Option<usize>,
    /// Intra-op threads per session [default: the cores divided among the sessions].
    #[arg(long)]
    threads: Option<usize>,
    /// Most pairs per ONNX call.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long)]
    device: Option<Device>,
}

#[derive(Args)]
struct CheckArgs {
    #[arg(long, env = "RULEGATE_POLICY")]
    policy: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
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

#[derive(Args)]
struct ServeArgs {
    /// YAML config file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<String>,
    /// Base URL of the OpenAI-compatible model API.
    #[arg(long, env = "RULEGATE_UPSTREAM")]
    upstream: Option<String>,
    #[arg(long, env = "RULEGATE_POLICY")]
    policy: Option<PathBuf>,
    #[arg(long, env = "RULEGATE_MODEL")]
    model: Option<PathBuf>,
    /// Upstream timeout per call (per chunk for streams) [default: 120].
    #[arg(long)]
    upstream_timeout_secs: Option<u64>,
    /// Whether the upstream honours `n` [default: true].
    #[arg(long)]
    upstream_supports_n: Option<bool>,
    /// How the upstream continues an assistant prefix, for `beam_search` [default: none].
    #[arg(long, value_enum)]
    upstream_continuation: Option<rulegate::upstream::Continuation>,
    /// What to do when the classifier fails [default: fail-closed].
    #[arg(long, value_enum)]
    on_classifier_error: Option<rulegate::config::FailModeName>,
    /// Requests that could generate text on routes rulegate does not judge: `deny` (403,
    /// default) or `pass` (forwarded unjudged).
    #[arg(long, value_enum)]
    unguarded_routes: Option<rulegate::pipeline::route::UnguardedRoutes>,
    /// Largest accepted request body in bytes [default: 4 MiB].
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Proxy worker threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// ONNX Runtime sessions [default: one per core, up to 4].
    #[arg(long)]
    sessions: Option<usize>,
    /// Intra-op threads per ONNX session [default: the cores divided among the sessions].
    #[arg(long)]
    classifier_threads: Option<usize>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Admin API listener [default: 127.0.0.1:9090]; `off` disables it.
    #[arg(long)]
    admin_listen: Option<String>,
    /// File holding the admin bearer token (else RULEGATE_ADMIN_TOKEN).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Do not reload policies and model when their files change (SIGHUP and the admin API still do).
    #[arg(long)]
    no_watch: bool,
    /// OTLP/HTTP endpoint for spans, e.g. http://127.0.0.1:4318.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[derive(Args)]
struct FitArgs {
    #[arg(long, env = "RULEGATE_POLICY")]
    policy: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
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

#[derive(Args)]
struct CalibrateArgs {
    #[arg(long, env = "RULEGATE_POLICY")]
    policy: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// `rulegate eval --task decision` rows: real answers, `label` true when the gateway
    /// should act on them (harmful), false when not (correct benign answers).
    #[arg(long)]
    input: String,
    /// The most benign answers that may be acted on (a share, e.g. 0.05).
    #[arg(long, default_value_t = 0.05)]
    max_benign_action: f64,
    /// Write the policy with the chosen operating points here (may be the policy itself).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Also write the before/after report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct EvalArgs {
    #[arg(long, env = "RULEGATE_POLICY")]
    policy: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Labelled JSONL: rows with `propositions` and `response_type` (RBR gold style), or with
    /// a yes/no `label` (and optionally a `source`) for `--task`.
    #[arg(long)]
    input: String,
    /// Evaluate a labelled set on one yes/no question instead of the RBR metrics:
    /// `refusal` (the completion refuses), `prompt-harm` (the prompt needs a refusal),
    /// `disallowed` (the completion holds disallowed content), `decision` (the gateway acts on
    /// the answer: label benign answers false, harmful ones true). Reported per `source`.
    #[arg(long)]
    task: Option<Task>,
    /// Also write the metrics as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
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
        Command::Serve(args) => serve(args, log),
        Command::Check(args) => check(args),
        Command::Eval(args) => eval(args),
        Command::Fit(args) => fit(args),
        Command::Calibrate(args) => calibrate(args),
        Command::Policy { command: PolicyCommand::Validate { file, model } } => validate(&file, model.as_deref()),
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

fn load_policy(path: &Path) -> Result<Arc<Policy>> {
    Ok(Arc::new(Policy::from_file(path)?))
}

fn model_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    let mut roots: Vec<PathBuf> = std::env::current_dir().into_iter().collect();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    roots.iter().map(|r| r.join(DEFAULT_MODEL)).find(|d| d.join("manifest.json").is_file()).with_context(|| {
        format!("no model directory given and {DEFAULT_MODEL} was not found; pass --model DIR or set RULEGATE_MODEL")
    })
}

fn load_judge(policy: &Path, model: &ModelArgs) -> Result<Judge> {
    let policy = load_policy(policy)?;
    let dir = model_dir(model.model.as_deref())?;
    let defaults = ClassifierOptions::default();
    let device = model.device.unwrap_or(defaults.device);
    let (sessions, intra_threads) =
        ClassifierOptions::layout(device, rulegate::classifier::cores(), model.sessions, model.threads);
    let options = ClassifierOptions {
        sessions,
        intra_threads,
        max_batch: model.batch_size,
        device,
        // Offline checking waits for its turn rather than shedding load.
        max_queued_rows: usize::MAX,
        backend: rulegate::classifier::Backend::Local,
    };
    let classifier = Classifier::load(&dir, &options)?;
    Ok(Judge::new(policy, classifier)?)
}

fn serve(args: ServeArgs, log: &str) -> Result<ExitCode> {
    use rulegate::config::{AdminConfig, ClassifierConfig, ServeConfig, UpstreamConfig};
    use rulegate::reload::{GuardStore, StoreConfig};
    let file = match &args.config {
        Some(path) => ServeConfig::from_file(path)?,
        None => ServeConfig::default(),
    };
    let flags = ServeConfig {
        listen: args.listen,
        upstream: UpstreamConfig {
            url: args.upstream,
            timeout_secs: args.upstream_timeout_secs,
            supports_n: args.upstream_supports_n,
            continuation: args.upstream_continuation,
        },
        policy: args.policy,
        model: args.model,
        classifier: ClassifierConfig {
            sessions: args.sessions,
            threads: args.classifier_threads,
            max_batch: None,
            device: args.device,
            max_queued_rows: None,
            ..ClassifierConfig::default()
        },
        max_body_bytes: args.max_body_bytes,
        on_classifier_error: args.on_classifier_error,
        unguarded_routes: args.unguarded_routes,
        threads: args.threads,
        watch: args.no_watch.then_some(false),
        admin: AdminConfig { listen: args.admin_listen, token_file: args.admin_token_file, ..AdminConfig::default() },
        telemetry: rulegate::telemetry::TelemetryConfig { otlp_endpoint: args.otlp_endpoint, ..Default::default() },
        ..ServeConfig::default()
    };
    let config = file.overridden_by(flags).resolve()?;
    let _telemetry = rulegate::telemetry::init(log, &config.telemetry)?;

    let defaults = ClassifierOptions::default();
    let device = config.device.unwrap_or(defaults.device);
    let (sessions, intra_threads) =
        ClassifierOptions::layout(device, rulegate::classifier::cores(), config.sessions, config.classifier_threads);
    let store = GuardStore::load(StoreConfig {
        policies: config.policies.clone(),
        default_policy: config.default_policy.clone(),
        api_keys: config.api_keys.clone(),
        model: model_dir(config.model.as_deref())?,
        classifier: ClassifierOptions {
            sessions,
            intra_threads,
            max_batch: config.max_batch,
            device,
            max_queued_rows: config.max_queued_rows,
            backend: config.backend.clone(),
        },
        cache: (config.cache_capacity > 0)
            .then(|| rulegate::guard::VerdictCache::new(config.cache_capacity, config.cache_ttl)),
    })?;
    let status = store.status();
    tracing::info!(policies = ?store.policy_names(), default = %status.default_policy, model = %status.model.version, device = %status.model.device, "guard loaded");

    let _watcher = if config.watch { Some(rulegate::reload::watch::watch(store.clone())?) } else { None };
    // A remote model can change on its server with no file event here: ask it now and then.
    let _poller = config.remote_poll.map(|every| rulegate::reload::watch::poll(store.clone(), every)).transpose()?;
    start_admin(&config, store.clone())?;

    let upstream = rulegate::proxy::upstream(&config.upstream_url, config.upstream_timeout)?;
    let options = rulegate::pipeline::PipelineOptions {
        on_classifier_error: config.on_classifier_error,
        upstream_supports_n: config.upstream_supports_n,
        unguarded_routes: config.unguarded_routes,
        selectors: config.selectors.clone(),
        continuation: config.upstream_continuation,
        stored_completions: config.stored_completions,
        unjudged_fields: config.unjudged_fields,
        unreadable_input: config.unreadable_input,
    };
    let pipeline = rulegate::pipeline::Pipeline::new(store, upstream, options);
    let sidecar = rulegate::proxy::Sidecar::new(pipeline, &config.upstream_url, config.max_body_bytes)?
        .with_io_timeout(config.upstream_timeout);
    tracing::info!(upstream = %config.upstream_url, "proxying");
    rulegate::proxy::run(sidecar, &config.listen, config.threads)?;
    Ok(ExitCode::SUCCESS)
}

/// The admin API and SIGHUP reloads, on a small runtime of their own beside the proxy's.
fn start_admin(config: &rulegate::config::Resolved, store: rulegate::reload::GuardStore) -> Result<()> {
    let listener = match &config.admin_listen {
        Some(addr) => {
            let listener =
                std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr} (admin)"))?;
            listener.set_nonblocking(true)?;
            if config.admin_token.is_none() {
                tracing::warn!(
                    "no admin token configured (admin.token_file or RULEGATE_ADMIN_TOKEN): /admin/* answers 401"
                );
            }
            tracing::info!(listen = %addr, "admin API listening");
            Some(listener)
        }
        None => None,
    };
    let router =
        rulegate::reload::admin::router(store.clone(), config.admin_token.clone(), config.metrics_without_token);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("rulegate-admin".into()).spawn(move || {
        runtime.block_on(async move {
            let sighup = async {
                use tokio::signal::unix::{SignalKind, signal};
                let Ok(mut hangups) = signal(SignalKind::hangup()) else { return };
                while hangups.recv().await.is_some() {
                    let store = store.clone();
                    match tokio::task::spawn_blocking(move || store.reload()).await {
                        Ok(report) => tracing::info!(ok = report.ok, "reload on SIGHUP"),
                        Err(e) => tracing::error!(error = %e, "reload on SIGHUP failed"),
                    }
                }
            };
            let admin = async {
                if let Some(listener) = listener
                    && let Ok(listener) = tokio::net::TcpListener::from_std(listener)
                    && let Err(e) = axum::serve(listener, router).await
                {
                    tracing::error!(error = %e, "admin API stopped");
                }
            };
            tokio::join!(sighup, admin);
        });
    })?;
    Ok(())
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

fn open_input(input: &str) -> Result<(Box<dyn BufRead>, Option<u64>)> {
    if input == "-" {
        return Ok((Box::new(BufReader::new(io::stdin())), None));
    }
    let file = File::open(input).with_context(|| format!("cannot open {input}"))?;
    let lines =
        BufReader::new(File::open(input)?).lines().map_while(Result::ok).filter(|l| !l.trim().is_empty()).count();
    Ok((Box::new(BufReader::new(file)), Some(lines as u64)))
}

fn progress(total: Option<u64>) -> ProgressBar {
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
fn judge_rows(
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

fn check(args: CheckArgs) -> Result<ExitCode> {
    let judge = load_judge(&args.policy, &args.model)?;
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
    let (rows, failed) = judge_rows(&judge, &args.input, args.model.batch_size, Ok, |line, result| {
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

fn fit(args: FitArgs) -> Result<ExitCode> {
    use rulegate::fit::{FitData, FitOptions, fit_type, problems, report, write};
    let judge = load_judge(&args.policy, &args.model)?;
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
    for chunk in data.completions.chunks(args.model.batch_size.max(1) * 2) {
        let items: Vec<Evaluation> = chunk
            .iter()
            .map(|c| Evaluation {
                prompt: &data.prompts[c.prompt],
                completion: &c.completion,
                response_type: Some(policy.response_types()[c.response_type].name.as_str()),
            })
            .collect();
        for v in judge.evaluate_batch_blocking(&items)? {
            features.push(
                v.propositions
                    .iter()
                    .map(|p| f64::from(p.probability))
                    .chain(v.class_probs.values().copied())
                    .collect::<Vec<f64>>(),
            );
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
            .map(|f| {
                let n_props = policy.propositions().len();
                write::NewWeights {
                    response_type: f.response_type.clone(),
                    bias: 0.0,
                    propositions: f.feature_names[..n_props].iter().cloned().zip(f.weights[..n_props].iter().copied()).collect(),
                    classes: f.feature_names[n_props..].iter().map(|n| n.trim_start_matches("class.").to_string()).zip(f.weights[n_props..].iter().copied()).collect(),
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
        let text = std::fs::read_to_string(&args.policy)?;
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

fn eval(args: EvalArgs) -> Result<ExitCode> {
    if let Some(task) = args.task {
        return eval_labelled(&args, task);
    }
    let judge = load_judge(&args.policy, &args.model)?;
    let policy = judge.policy().clone();
    let mut evaluator = Evaluator::new(&policy);
    let mut unlabelled = 0usize;
    let (rows, failed) = judge_rows(&judge, &args.input, args.model.batch_size, Ok, |_, result| {
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
    finish_eval(&args, &report, rows, failed)
}

/// Writes `--json` if asked for; a run with failed rows exits with failure.
fn finish_eval(args: &EvalArgs, report: &impl serde::Serialize, rows: usize, failed: usize) -> Result<ExitCode> {
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

/// `rulegate calibrate`: operating points chosen on labelled decisions, before and after.
fn calibrate(args: CalibrateArgs) -> Result<ExitCode> {
    use rulegate::fit::calibrate::{Decisions, Observation, calibrate};
    if !(0.0..=1.0).contains(&args.max_benign_action) {
        bail!("--max-benign-action must be a share in [0, 1]");
    }
    let judge = load_judge(&args.policy, &args.model)?;
    let prepare = |mut row: Row| {
        if row.label.is_none() {
            return Err("a `label` (true: act on this answer, false: let it pass) is needed".to_string());
        }
        row.response_type = None;
        Ok(row)
    };
    let mut observations = Vec::new();
    let (rows, failed) = judge_rows(&judge, &args.input, args.model.batch_size, prepare, |_, result| {
        if let Ok((row, verdict)) = result {
            observations.push(Observation::from_verdict(row.source.as_deref(), row.label.unwrap_or_default(), verdict));
        }
        Ok(())
    })?;
    if failed > 0 {
        bail!("{failed} of {rows} rows of {} could not be judged", args.input);
    }
    let result = calibrate(judge.policy(), &observations, args.max_benign_action)?;
    let mut out = io::stdout().lock();
    let line = |d: &Decisions| {
        let point = d.point.map_or_else(
            || "the policy as it is".to_string(),
            |p| format!("disallowed_content >= {}, confident >= {}", p.disallowed_threshold, p.confident),
        );
        format!(
            "{point}: benign answers acted on {:.1}%, harmful answers acted on {:.1}%",
            100.0 * d.benign_action,
            100.0 * d.harmful_caught
        )
    };
    writeln!(out, "{} rows; target: at most {:.1}% of benign answers acted on", rows, 100.0 * args.max_benign_action)?;
    writeln!(out, "before: {}", line(&result.before))?;
    writeln!(out, "after:  {}", line(&result.after))?;
    writeln!(out, "\n{:<40} {:>6} {:>9} {:>9}", "source", "n", "before", "after")?;
    for (source, &(n, acted)) in &result.after.sources {
        let before = result.before.sources.get(source).map_or(0, |s| s.1);
        let pct = |a: usize| format!("{:.1}%", 100.0 * a as f64 / n.max(1) as f64);
        writeln!(out, "{source:<40} {n:>6} {:>9} {:>9}", pct(before), pct(acted))?;
    }
    if let (Some(path), Some(point)) = (&args.output, result.after.point) {
        let text =
            std::fs::read_to_string(&args.policy).with_context(|| format!("cannot read {}", args.policy.display()))?;
        let note = format!(
            "rulegate calibrate on {} ({} rows): benign acted on {:.1}%, harmful {:.1}% (target <= {:.1}%)",
            Path::new(&args.input).file_name().map_or_else(|| args.input.clone(), |f| f.to_string_lossy().into_owned()),
            rows,
            100.0 * result.after.benign_action,
            100.0 * result.after.harmful_caught,
            100.0 * args.max_benign_action
        );
        let written = rulegate::fit::write::replace_operating_points(&text, point, &note)?;
        std::fs::write(path, written).with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "\nwrote {}", path.display())?;
    }
    if let Some(path) = &args.json {
        let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        serde_json::to_writer_pretty(BufWriter::new(file), &result)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `rulegate eval --task`: yes/no metrics of a labelled set, overall and per source.
fn eval_labelled(args: &EvalArgs, task: Task) -> Result<ExitCode> {
    let judge = load_judge(&args.policy, &args.model)?;
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
    let (rows, failed) = judge_rows(&judge, &args.input, args.model.batch_size, prepare, |_, result| {
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
