//! Tensors in and out of the graph: where each head is read from in the graph's outputs,
//! rows packed into padded input tensors, and output tensors turned into head values.

use super::{Activation, ClassifierError, EncodedPair, HeadValues, Manifest};

/// Where each head is read from in the graph's outputs.
#[derive(Debug)]
pub(super) struct OutputLayout {
    /// Distinct graph outputs to fetch.
    pub(super) outputs: Vec<String>,
    /// (output index, column, activation) per proposition head.
    propositions: Vec<(usize, usize, Activation)>,
    /// (output index, number of labels, activation).
    response_type: Option<(usize, usize, Activation)>,
    prm: Option<(usize, usize, Activation)>,
}

impl OutputLayout {
    pub(super) fn new(manifest: &Manifest) -> Self {
        let mut outputs: Vec<String> = Vec::new();
        let mut slot = |name: &str| match outputs.iter().position(|o| o == name) {
            Some(i) => i,
            None => {
                outputs.push(name.to_string());
                outputs.len() - 1
            }
        };
        let propositions =
            manifest.proposition_heads().map(|h| (slot(&h.output), h.index.unwrap_or(0), h.activation)).collect();
        let response_type = manifest
            .response_type_head()
            .map(|h| (slot(&h.output), h.labels.as_ref().map_or(0, Vec::len), h.activation));
        let prm = manifest.prm_head().map(|h| (slot(&h.output), h.index.unwrap_or(0), h.activation));
        OutputLayout { outputs, propositions, response_type, prm }
    }
}

/// A batch of rows as the graph's three input tensors, padded to the longest row.
pub(super) struct Inputs {
    /// `[batch, seq]`.
    pub(super) shape: [usize; 2],
    pub(super) ids: Vec<i64>,
    pub(super) mask: Vec<i64>,
    pub(super) types: Vec<i64>,
    /// Per row: whether it was cut to fit the model.
    pub(super) truncated: Vec<bool>,
}

impl Inputs {
    /// Packs `pairs`, padding with `pad`.
    pub(super) fn pack<'a>(pairs: impl ExactSizeIterator<Item = &'a EncodedPair> + Clone, pad: i64) -> Inputs {
        let batch = pairs.len();
        let seq = pairs.clone().map(|p| p.input_ids.len()).max().unwrap_or(0);
        let mut ids = vec![pad; batch * seq];
        let mut mask = vec![0i64; batch * seq];
        let mut types = vec![0i64; batch * seq];
        let mut truncated = Vec::with_capacity(batch);
        for (row, pair) in pairs.enumerate() {
            let at = row * seq;
            let n = pair.input_ids.len();
            ids[at..at + n].copy_from_slice(&pair.input_ids);
            mask[at..at + n].fill(1);
            types[at..at + n].copy_from_slice(&pair.token_type_ids);
            truncated.push(pair.truncated);
        }
        Inputs { shape: [batch, seq], ids, mask, types, truncated }
    }
}

impl OutputLayout {
    /// Every row's head values from the graph's outputs (`(shape, data)` per output, in the
    /// order of [`OutputLayout::outputs`]), checking each output's shape.
    pub(super) fn head_values(
        &self,
        tensors: Vec<(Vec<i64>, Vec<f32>)>,
        truncated: &[bool],
    ) -> Result<Vec<HeadValues>, ClassifierError> {
        let batch = truncated.len();
        let mut columns: Vec<(usize, Vec<f32>)> = Vec::with_capacity(tensors.len());
        for (name, (out_shape, data)) in self.outputs.iter().zip(tensors) {
            let width = match out_shape.len() {
                1 => 1,
                2 => usize::try_from(out_shape[1]).unwrap_or(0),
                _ => {
                    return Err(ClassifierError::Inference(format!(
                        "output `{name}` has rank {}, expected [batch, k]",
                        out_shape.len()
                    )));
                }
            };
            if out_shape.first().copied() != i64::try_from(batch).ok() || data.len() != batch * width {
                return Err(ClassifierError::Inference(format!(
                    "output `{name}` has shape {out_shape:?} for a batch of {batch}"
                )));
            }
            columns.push((width, data));
        }
        let cell =
            |(output, column, activation): (usize, usize, Activation), row: usize| -> Result<f32, ClassifierError> {
                let (width, data) = &columns[output];
                if column >= *width {
                    return Err(ClassifierError::Inference(format!(
                        "output `{}` has {width} columns; a head reads column {column}",
                        self.outputs[output]
                    )));
                }
                Ok(activate(data[row * width + column], activation))
            };
        (0..batch)
            .map(|row| {
                let propositions =
                    self.propositions.iter().map(|&slot| cell(slot, row)).collect::<Result<Vec<_>, _>>()?;
                let response_type = match self.response_type {
                    Some((output, labels, activation)) => {
                        let (width, data) = &columns[output];
                        if *width != labels {
                            return Err(ClassifierError::Inference(format!(
                                "response-type output has {width} columns for {labels} labels"
                            )));
                        }
                        let logits = &data[row * width..(row + 1) * width];
                        Some(match activation {
                            Activation::Softmax => softmax(logits),
                            other => logits.iter().map(|&x| activate(x, other)).collect(),
                        })
                    }
                    None => None,
                };
                let prm = self.prm.map(|slot| cell(slot, row)).transpose()?;
                Ok(HeadValues { propositions, response_type, prm, truncated: truncated[row] })
            })
            .collect()
    }
}

fn activate(x: f32, activation: Activation) -> f32 {
    match activation {
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Identity | Activation::Softmax => x,
    }
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}
