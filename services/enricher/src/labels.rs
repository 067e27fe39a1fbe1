//! Zero-shot labelling: each label is the normalised mean embedding of a few descriptive
//! sentences (`infra/labels.toml`), embedded once at start; an event scores the cosine with
//! each label, and the best ones at or above a minimum are reported.

use std::path::Path;

use agentwire_protocol::{LabelScore, ModelVersion};
use serde::Deserialize;

use crate::embedder::{Embedder, cosine};
use crate::error::LabelError;

#[derive(Debug, Deserialize)]
struct LabelFile {
    label: Vec<LabelSpec>,
}

#[derive(Debug, Deserialize)]
struct LabelSpec {
    name: String,
    examples: Vec<String>,
}

/// The label set, with one unit-length centroid per label.
#[derive(Debug, Clone)]
pub struct LabelSet {
    labels: Vec<(String, Vec<f32>)>,
    min_score: f32,
    top_k: usize,
    /// The label file's names and examples, and the thresholds, digested in file order.
    digest: ModelVersion,
}

impl LabelSet {
    /// Reads `path` and embeds every example with `embedder`.
    pub fn load(
        path: &Path,
        embedder: &Embedder,
        min_score: f32,
        top_k: usize,
    ) -> Result<Self, LabelError> {
        let fail = |message: String| LabelError::File {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let file: LabelFile = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        if file.label.is_empty() {
            return Err(fail("no [[label]] entries".into()));
        }
        let mut labels = Vec::with_capacity(file.label.len());
        let mut digest = ModelVersion::default();
        for spec in file.label {
            if spec.name.is_empty() || spec.examples.is_empty() {
                return Err(fail(format!(
                    "label {:?} needs a name and at least one example",
                    spec.name
                )));
            }
            digest = digest.part("label", &spec.name);
            for example in &spec.examples {
                digest = digest.part("example", example);
            }
            let texts: Vec<&str> = spec.examples.iter().map(String::as_str).collect();
            let embeddings = embedder.embed(&texts)?;
            labels.push((spec.name, centroid(&embeddings)));
        }
        Ok(Self {
            labels,
            min_score,
            top_k,
            digest: digest.part("min_score", min_score).part("top_k", top_k),
        })
    }

    /// What of the label set changes the enricher's output (every name and example, the
    /// minimum score, the most labels reported), for the enrichment version.
    pub fn digest(&self) -> ModelVersion {
        self.digest
    }

    /// Names of all labels, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.labels.iter().map(|(name, _)| name.as_str())
    }

    /// The best labels for `embedding`: at most `top_k`, each scoring at least `min_score`.
    pub fn score(&self, embedding: &[f32]) -> Vec<LabelScore> {
        let mut scored: Vec<LabelScore> = self
            .labels
            .iter()
            .map(|(label, center)| LabelScore {
                label: label.clone(),
                score: cosine(embedding, center),
            })
            .filter(|s| s.score >= self.min_score)
            .collect();
        scored.sort_by(|a, b| b.score.total_cmp(&a.score));
        scored.truncate(self.top_k);
        scored
    }
}

/// Normalised mean of unit vectors.
fn centroid(vectors: &[Vec<f32>]) -> Vec<f32> {
    let dim = vectors.first().map_or(0, Vec::len);
    let mut sum = vec![0.0f32; dim];
    for v in vectors {
        for (s, x) in sum.iter_mut().zip(v) {
            *s += x;
        }
    }
    let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    sum.iter_mut().for_each(|x| *x /= norm);
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centroid_is_unit_length_and_between_its_inputs() {
        let c = centroid(&[vec![1.0, 0.0], vec![0.0, 1.0]]);
        assert!((c[0] - c[1]).abs() < 1e-6);
        assert!((c.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn scores_are_filtered_sorted_and_capped() {
        let set = LabelSet {
            labels: vec![
                ("a".into(), vec![1.0, 0.0]),
                ("b".into(), vec![0.0, 1.0]),
                ("c".into(), vec![-1.0, 0.0]),
            ],
            min_score: 0.1,
            top_k: 1,
            digest: ModelVersion::default(),
        };
        let got = set.score(&[0.6, 0.8]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].label, "b");
        assert!((got[0].score - 0.8).abs() < 1e-5);
    }
}
