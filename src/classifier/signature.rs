//! The graph's signature checked against the manifest when a session is built.

use std::path::Path;

use ort::session::Session;

use super::tensors::OutputLayout;
use super::{ClassifierError, Manifest};

/// The graph must take the manifest's three inputs and produce every output a head names.
pub(super) fn check_signature(
    session: &Session,
    manifest: &Manifest,
    layout: &OutputLayout,
    path: &Path,
) -> Result<(), ClassifierError> {
    let bad = |message: String| ClassifierError::Model { path: path.to_path_buf(), message };
    let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    for wanted in [&manifest.inputs.input_ids, &manifest.inputs.attention_mask, &manifest.inputs.token_type_ids] {
        if !inputs.contains(&wanted.as_str()) {
            return Err(bad(format!("the graph has no input `{wanted}` (it has {})", inputs.join(", "))));
        }
    }
    let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    for wanted in &layout.outputs {
        if !outputs.contains(&wanted.as_str()) {
            return Err(bad(format!(
                "the manifest reads output `{wanted}`, which the graph does not have (it has {})",
                outputs.join(", ")
            )));
        }
    }
    Ok(())
}
