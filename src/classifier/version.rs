//! Model versions: what names a loaded model (for cached verdicts, headers and reloads).

use std::path::Path;

use sha2::{Digest, Sha256};

use super::tensors::OutputLayout;
use super::{Backend, ClassifierError, ClassifierOptions, Manifest, remote};

/// For a remote backend, `name:version` of the model its server serves now (one metadata
/// call); `None` for the local backend.
pub fn served_model(dir: impl AsRef<Path>, options: &ClassifierOptions) -> Result<Option<String>, ClassifierError> {
    let Backend::Remote(remote) = &options.backend else { return Ok(None) };
    let manifest = Manifest::from_file(&dir.as_ref().join("manifest.json"))?;
    let layout = OutputLayout::new(&manifest);
    Ok(Some(remote::Remote::connect(remote, &manifest, &layout.outputs)?.served()))
}

/// The version a model directory loads as (see
/// [`Classifier::version`](super::Classifier::version)), without loading it.
pub fn version_of(dir: impl AsRef<Path>) -> Result<String, ClassifierError> {
    let dir = dir.as_ref();
    let manifest = Manifest::from_file(&dir.join("manifest.json"))?;
    let model_path = dir.join("model.onnx");
    let model_bytes = std::fs::read(&model_path)
        .map_err(|e| ClassifierError::Model { path: model_path.clone(), message: format!("cannot read: {e}") })?;
    version_from(&manifest, &model_bytes, dir)
}

/// `<manifest version>+<digest>`: everything that changes a verdict is in the digest (cached
/// verdicts are keyed by the version): the graph, the tokenizer, and the manifest.
pub(super) fn version_from(manifest: &Manifest, model_bytes: &[u8], dir: &Path) -> Result<String, ClassifierError> {
    let mut files = Vec::new();
    for file in ["tokenizer.json", "manifest.json"] {
        let path = dir.join(file);
        let bytes = std::fs::read(&path)
            .map_err(|e| ClassifierError::ModelDir { path: path.clone(), message: format!("cannot read: {e}") })?;
        files.push(bytes);
    }
    Ok(version_of_bytes(manifest, model_bytes, [files[0].as_slice(), files[1].as_slice()]))
}

/// [`version_from`] over bytes already read: `files` are `tokenizer.json` and `manifest.json`.
pub(super) fn version_of_bytes(manifest: &Manifest, model_bytes: &[u8], files: [&[u8]; 2]) -> String {
    let mut digest = Sha256::new();
    digest.update(model_bytes);
    for bytes in files {
        digest.update((bytes.len() as u64).to_le_bytes());
        digest.update(bytes);
    }
    format!("{}+{}", manifest.version, &hex::encode(digest.finalize())[..8])
}
