//! Building an ONNX Runtime session on the asked-for device (CUDA where it can run, else
//! the CPU).

use std::path::Path;

use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};

use super::{ClassifierError, ClassifierOptions, Device};

/// A session over `model` (read from `path`) and the device it actually runs on.
pub(super) fn build_session(
    env: &ort::environment::Environment,
    model: &[u8],
    path: &Path,
    options: &ClassifierOptions,
) -> Result<(Session, Device), ClassifierError> {
    let fail = |message: String| ClassifierError::Model { path: path.to_path_buf(), message };
    let builder = || -> Result<SessionBuilder, ClassifierError> {
        let e = |e: ort::Error<SessionBuilder>| fail(e.to_string());
        Session::builder(env)
            .map_err(|e| fail(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(e)?
            .with_intra_threads(options.intra_threads)
            .map_err(e)?
            .with_inter_threads(1)
            .map_err(e)?
            // Spinning intra-op threads would steal the CPU from the proxy between requests.
            .with_intra_op_spinning(false)
            .map_err(e)
    };
    if let Device::Cuda { device_id } = options.device {
        let mut cuda = builder()?;
        if register_cuda(&mut cuda, device_id)? {
            match cuda.commit_from_memory(model) {
                Ok(session) => return Ok((session, options.device)),
                // Some CUDA failures only surface when the session is created.
                Err(e) => tracing::warn!(error = %e, "CUDA session could not be created; running on CPU"),
            }
        }
    }
    let session = builder()?.commit_from_memory(model).map_err(|e| fail(e.to_string()))?;
    Ok((session, Device::Cpu))
}

#[cfg(feature = "cuda")]
/// Registers the CUDA execution provider; `false` (after a warning) where it cannot run.
fn register_cuda(builder: &mut SessionBuilder, device_id: i32) -> Result<bool, ClassifierError> {
    use ort::ep::{CUDA, ExecutionProvider};
    if !matches!(CUDA::is_available(), Ok(true)) {
        tracing::warn!(
            "CUDA requested, but this ONNX Runtime library has no CUDA execution provider (install the onnxruntime-gpu wheel: `scripts/setup.sh --gpu`); running on CPU"
        );
        return Ok(false);
    }
    match CUDA::default().with_device_id(device_id).register(builder) {
        Ok(()) => Ok(true),
        Err(e) => {
            tracing::warn!(error = %e, device_id, "CUDA execution provider could not start; running on CPU");
            Ok(false)
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn register_cuda(_builder: &mut SessionBuilder, _device_id: i32) -> Result<bool, ClassifierError> {
    Err(ClassifierError::InvalidOptions("this rulegate was built without the `cuda` feature; rebuild with `cargo build --release --features cuda` or use --device cpu".into()))
}
