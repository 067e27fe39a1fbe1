//! Latency histograms (HDR, microsecond resolution) and their one-line summary.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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

/// One thread's histogram, locked only by that thread and by the final merge.
type Shared = Arc<Mutex<Histogram<u64>>>;

/// Latencies recorded from many tasks into one histogram per worker thread, merged at the
/// end: a reader task costs no histogram of its own (each is ~140 KB; thousands of readers
/// would hold hundreds of MB on the cores the stack runs on), and threads never contend.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    id: u64,
    threads: Arc<Mutex<Vec<Shared>>>,
}

thread_local! {
    /// This thread's histogram of each `Latencies` it recorded into, by id.
    static MINE: RefCell<HashMap<u64, Shared>> = RefCell::new(HashMap::new());
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Latencies {
    pub fn new() -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            threads: Arc::default(),
        }
    }

    /// Records one latency into this thread's histogram.
    pub fn record(&self, latency: Duration) {
        MINE.with(|mine| {
            let mut mine = mine.borrow_mut();
            let h = mine.entry(self.id).or_insert_with(|| {
                // Constant bounds that `histogram()` uses everywhere: they cannot fail.
                let h = Arc::new(Mutex::new(histogram().expect("valid histogram bounds")));
                locked(&self.threads).push(h.clone());
                h
            });
            record(&mut locked(h), latency);
        });
    }

    /// Every thread's histogram, merged.
    pub fn merged(&self) -> anyhow::Result<Histogram<u64>> {
        let mut all = histogram()?;
        for h in locked(&self.threads).iter() {
            all.add(&*locked(h))?;
        }
        Ok(all)
    }
}
