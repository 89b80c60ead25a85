//! Finding and loading the ONNX Runtime shared library (`load-dynamic`), once per process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

use super::ClassifierError;

/// The version the project's setup installs (`onnxruntime==1.31.1` from PyPI).
pub const TESTED_ORT_VERSION: &str = "1.31.1";

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime (first call only) and returns the process-wide environment.
pub(crate) fn environment() -> Result<&'static Environment, ClassifierError> {
    let result = ENVIRONMENT.get_or_init(|| {
        let path = locate_library().map_err(|e| e.to_string())?;
        let builder =
            ort::init_from(&path).map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?;
        let env = builder
            .with_name("rulegate")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))?;
        tracing::debug!(path = %path.display(), "loaded ONNX Runtime");
        Ok(env)
    });
    result.as_ref().map_err(|message| ClassifierError::Runtime(message.clone()))
}

/// Where the library is looked for, in order. `ORT_DYLIB_PATH`, when set, is the only place.
pub(crate) fn search_locations() -> Vec<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(path)];
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    // An installed binary sits in <checkout>/target/<profile>/; walk up to find the checkout.
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let venvs: &[&str] = if cfg!(feature = "cuda") { &[".venv-gpu", ".venv"] } else { &[".venv"] };
    let mut out: Vec<PathBuf> = Vec::new();
    for root in roots {
        for venv in venvs {
            let candidate = root.join(venv);
            if !out.contains(&candidate) {
                out.push(candidate);
            }
        }
    }
    out
}

fn locate_library() -> Result<PathBuf, ClassifierError> {
    let locations = search_locations();
    if std::env::var_os("ORT_DYLIB_PATH").is_some_and(|p| !p.is_empty()) {
        let path = &locations[0];
        return if path.is_file() { Ok(path.clone()) } else { Err(not_found(&locations)) };
    }
    locations.iter().find_map(|venv| library_in_venv(venv)).ok_or_else(|| not_found(&locations))
}

/// `<venv>/lib/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so*`.
fn library_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    let mut found: Vec<PathBuf> = lib
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .filter_map(|e| std::fs::read_dir(e.path().join("site-packages/onnxruntime/capi")).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so")))
        .collect();
    found.sort();
    found.pop()
}

fn not_found(locations: &[PathBuf]) -> ClassifierError {
    let looked: Vec<String> = locations.iter().map(|p| p.display().to_string()).collect();
    let env_note = if std::env::var_os("ORT_DYLIB_PATH").is_some() {
        "ORT_DYLIB_PATH points at"
    } else {
        "looked in the virtualenvs"
    };
    ClassifierError::Runtime(format!(
        "rulegate needs the ONNX Runtime shared library (libonnxruntime.so, 1.24 or newer; {TESTED_ORT_VERSION} is tested) and did not find it; \
         {env_note} {}. To fix it, run `make setup` in the rulegate checkout (it creates .venv with onnxruntime=={TESTED_ORT_VERSION}), \
         or run `python3 -m venv .venv && .venv/bin/pip install onnxruntime=={TESTED_ORT_VERSION}` in the directory you start rulegate from, \
         or set ORT_DYLIB_PATH to the full path of an existing libonnxruntime.so (for example \
         .venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.{TESTED_ORT_VERSION}).",
        looked.join(", ")
    ))
}
