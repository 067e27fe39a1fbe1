//! Inference throughput: sentences/s and per-batch latency at several batch sizes, on one
//! device, over a fixed list of sentences (the golden fixture's, cycled), so the figures can
//! be set beside sentence-transformers run on the same sentences
//! (`loadtests/enricher/st_bench.py`; `cargo xtask bench-enricher` runs both).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::embedder::Embedder;
use crate::error::ModelError;

/// One batch size's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub batch: usize,
    pub batches: usize,
    pub sentences_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// How long each batch size runs: at least `min_batches` batches and `min_time`.
#[derive(Debug, Clone, Copy)]
pub struct BenchPlan {
    pub min_batches: usize,
    pub min_time: Duration,
}

/// Runs `plan` for each of `batch_sizes`, after an untimed warm-up pass over the sentences
/// at each size (shader compilation and autotuning happen there).
pub fn run(
    embedder: &Embedder,
    sentences: &[String],
    batch_sizes: &[usize],
    plan: BenchPlan,
) -> Result<Vec<BenchRow>, ModelError> {
    if sentences.is_empty() {
        return Err(ModelError::Inference("no sentences to benchmark".into()));
    }
    let mut cursor = 0usize;
    let mut next_batch = |size: usize| -> Vec<&str> {
        let batch = (0..size)
            .map(|i| sentences[(cursor + i) % sentences.len()].as_str())
            .collect();
        cursor = (cursor + size) % sentences.len();
        batch
    };
    let mut rows = Vec::new();
    for &size in batch_sizes {
        // Warm-up: one pass over the sentences, so every shape this size meets is compiled.
        for _ in 0..sentences.len().div_ceil(size).max(1) {
            embedder.embed(&next_batch(size))?;
        }
        let mut latencies = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
            .map_err(|e| ModelError::Inference(format!("histogram: {e}")))?;
        let started = Instant::now();
        let mut batches = 0usize;
        while batches < plan.min_batches || started.elapsed() < plan.min_time {
            let texts = next_batch(size);
            let t = Instant::now();
            let out = embedder.embed(&texts)?;
            let micros = t.elapsed().as_micros() as u64;
            if out.len() != size {
                return Err(ModelError::Inference(format!(
                    "{} embeddings for {size} texts",
                    out.len()
                )));
            }
            latencies.saturating_record(micros.clamp(1, 600_000_000));
            batches += 1;
        }
        let elapsed = started.elapsed().as_secs_f64();
        rows.push(BenchRow {
            batch: size,
            batches,
            sentences_per_s: (batches * size) as f64 / elapsed,
            p50_ms: latencies.value_at_quantile(0.50) as f64 / 1000.0,
            p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
        });
    }
    Ok(rows)
}
