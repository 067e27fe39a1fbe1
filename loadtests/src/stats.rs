//! Latency histograms (HDR, microsecond resolution) and their one-line summary.

use std::time::Duration;

use hdrhistogram::Histogram;

/// A latency histogram from 1 µs to 60 s with 3 significant digits.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

pub fn record(h: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, 60_000_000);
    // In bounds by the clamp above.
    let _ = h.record(micros);
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// `n=… p50=… p90=… p99=… p99.9=… max=…` in milliseconds.
pub fn summary(h: &Histogram<u64>) -> String {
    format!(
        "n={} p50={:.2}ms p90={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms",
        h.len(),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.9)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max())
    )
}
