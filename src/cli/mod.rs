//! The subcommands of the `rulegate` binary, one file each, and what they share: the
//! policy and model flags, and loading a judge from them.

pub mod calibrate;
pub mod check;
pub mod eval;
pub mod fit;
pub mod policy;
pub mod review;
mod rows;
pub mod serve;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use rulegate::guard::Judge;
use rulegate::{Classifier, ClassifierOptions, Device, Policy};

/// The model shipped with rulegate, looked up relative to the working directory, the
/// executable and the source checkout.
const DEFAULT_MODEL: &str = "models/rulegate-minilm-rbr";

/// How the offline subcommands load the model.
#[derive(Args)]
pub struct ModelArgs {
    /// Model directory (model.onnx, tokenizer.json, manifest.json).
    #[arg(long, env = "RULEGATE_MODEL")]
    pub model: Option<PathBuf>,
    /// ONNX Runtime sessions (worker threads) [default: one per core, up to 4].
    #[arg(long)]
    pub sessions: Option<usize>,
    /// Intra-op threads per session [default: the cores divided among the sessions].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Most pairs per ONNX call.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long)]
    pub device: Option<Device>,
}

/// The policy and model an offline subcommand judges with.
#[derive(Args)]
pub struct JudgeArgs {
    #[arg(long, env = "RULEGATE_POLICY")]
    pub policy: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
}

impl JudgeArgs {
    /// The judge these flags describe.
    pub fn load(&self) -> Result<Judge> {
        let policy = load_policy(&self.policy)?;
        let dir = model_dir(self.model.model.as_deref())?;
        let mut options = ClassifierOptions::laid_out(self.model.device, self.model.sessions, self.model.threads);
        options.max_batch = self.model.batch_size;
        // Offline checking waits for its turn rather than shedding load.
        options.max_queued_rows = usize::MAX;
        let classifier = Classifier::load(&dir, &options)?;
        Ok(Judge::new(policy, classifier)?)
    }
}

/// Reads and compiles a policy file.
pub fn load_policy(path: &Path) -> Result<Arc<Policy>> {
    Ok(Arc::new(Policy::from_file(path)?))
}

/// The model directory: `explicit`, else the shipped model found near the working
/// directory, the executable or the source checkout.
pub fn model_dir(explicit: Option<&Path>) -> Result<PathBuf> {
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

/// What `eval` and `calibrate` share: a labelled input judged with a policy and model, and
/// an optional JSON copy of the report.
#[derive(Args)]
pub struct LabelledArgs {
    #[command(flatten)]
    pub judge: JudgeArgs,
    /// Labelled JSONL, `-` for stdin: for `eval`, rows with `propositions` and
    /// `response_type` (RBR gold style), or with a yes/no `label` (and optionally a `source`)
    /// for `--task`; for `calibrate`, `rulegate eval --task decision` rows (real answers,
    /// `label` true when the gateway should act on them).
    #[arg(long)]
    pub input: String,
    /// Also write the report (metrics, or calibrate's before/after) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}
