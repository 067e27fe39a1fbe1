//! The reference every backend must reproduce: `tests/fixtures/minilm_golden.json` in this
//! crate (32 sentences, their token ids and sentence-transformers embeddings of
//! all-MiniLM-L6-v2, PyTorch CPU f32), and the parity check against it shared by the tests and
//! `agentwire-enricher parity`. The repository carries the fixture so a clone stands alone.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::embedder::{Embedder, cosine};
use crate::error::ModelError;

/// Lowest cosine similarity with the reference that counts as a match.
pub const MIN_COSINE: f32 = 0.999;

#[derive(Debug, Deserialize)]
pub struct Golden {
    pub dim: usize,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
pub struct Case {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub embedding: Vec<f32>,
}

impl Golden {
    /// The fixture committed with this crate.
    pub fn default_path() -> PathBuf {
        package_dir().join("tests/fixtures/minilm_golden.json")
    }

    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::Files(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| ModelError::Files(format!("{}: {e}", path.display())))
    }

    pub fn texts(&self) -> Vec<String> {
        self.cases.iter().map(|c| c.text.clone()).collect()
    }
}

/// One case's similarities with the reference.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub text: String,
    pub tokens_match: bool,
    /// Embedded within one batch of all the checked cases (padded to the longest).
    pub batched: f32,
    /// Embedded alone (no padding).
    pub alone: f32,
    /// Batched against alone: what padding changed.
    pub padding: f32,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.tokens_match
            && self.batched >= MIN_COSINE
            && self.alone >= MIN_COSINE
            && self.padding >= 0.9999
    }
}

/// Embeds `cases` as one batch and each alone, and compares everything with the reference.
pub fn check(embedder: &Embedder, cases: &[&Case]) -> Result<Vec<CaseResult>, ModelError> {
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let batched = embedder.embed(&texts)?;
    let mut results = Vec::with_capacity(cases.len());
    for (case, in_batch) in cases.iter().zip(&batched) {
        let alone = embedder.embed(&[case.text.as_str()])?;
        let alone = alone
            .first()
            .ok_or_else(|| ModelError::Inference("no embedding".into()))?;
        results.push(CaseResult {
            text: case.text.clone(),
            tokens_match: embedder.tokenizer().ids(&case.text)? == case.token_ids,
            batched: cosine(in_batch, &case.embedding),
            alone: cosine(alone, &case.embedding),
            padding: cosine(alone, in_batch),
        });
    }
    Ok(results)
}

/// This package's directory (its test fixtures), wherever the code runs from.
fn package_dir() -> PathBuf {
    agentwire_runtime::paths::package_dir("services/enricher", env!("CARGO_MANIFEST_DIR"))
}
