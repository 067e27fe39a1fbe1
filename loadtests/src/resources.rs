//! The stack's processes over time: every few seconds, each watched process's CPU use (as a
//! percentage of one core since the last sample) and resident memory. A soak reports the trace
//! as a table and a chart, and whether any process was restarted (a pid that went away or a
//! new one that appeared).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::procs;

/// One process at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Seconds since sampling started.
    pub t: f64,
    pub name: String,
    pub pid: u32,
    /// CPU use since the previous sample, in percent of one core.
    pub cpu_percent: f64,
    pub rss_mib: f64,
}

/// What the sampler saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Trace {
    pub samples: Vec<Sample>,
    /// Processes that went away or appeared while sampling ("broker 1234 gone").
    pub restarts: Vec<String>,
}

/// One process over the whole trace.
#[derive(Clone, Debug)]
pub struct ProcessSummary {
    pub name: String,
    pub pid: u32,
    pub mean_cpu: f64,
    pub max_cpu: f64,
    pub first_rss: f64,
    pub max_rss: f64,
    pub last_rss: f64,
}

impl Trace {
    /// Per process: mean and max CPU %, first, max and last RSS in MiB.
    pub fn summary(&self) -> Vec<ProcessSummary> {
        let mut by: BTreeMap<(String, u32), Vec<&Sample>> = BTreeMap::new();
        for s in &self.samples {
            by.entry((s.name.clone(), s.pid)).or_default().push(s);
        }
        by.into_iter()
            .map(|((name, pid), samples)| {
                let cpu: Vec<f64> = samples.iter().map(|s| s.cpu_percent).collect();
                let mean = cpu.iter().sum::<f64>() / cpu.len().max(1) as f64;
                let max_cpu = cpu.iter().copied().fold(0.0, f64::max);
                let first = samples.first().map_or(0.0, |s| s.rss_mib);
                let last = samples.last().map_or(0.0, |s| s.rss_mib);
                let max_rss = samples.iter().map(|s| s.rss_mib).fold(0.0, f64::max);
                ProcessSummary {
                    name,
                    pid,
                    mean_cpu: mean,
                    max_cpu,
                    first_rss: first,
                    max_rss,
                    last_rss: last,
                }
            })
            .collect()
    }
}

/// A running sampler; [`Sampler::stop`] returns its trace.
#[derive(Debug)]
pub struct Sampler {
    stop: CancellationToken,
    task: JoinHandle<Trace>,
}

impl Sampler {
    /// Samples every `every` until stopped.
    pub fn start(every: Duration) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(sample(every, stop.clone()));
        Self { stop, task }
    }

    pub async fn stop(self) -> Trace {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

async fn sample(every: Duration, stop: CancellationToken) -> Trace {
    let started = Instant::now();
    let mut trace = Trace::default();
    let first = procs::watched();
    let mut last: BTreeMap<(String, u32), (f64, Instant)> = first
        .iter()
        .filter_map(|(name, pid)| {
            Some((
                (name.clone(), *pid),
                (procs::cpu_seconds_of(*pid)?, Instant::now()),
            ))
        })
        .collect();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        let now = procs::watched();
        for (name, pid) in &now {
            let key = (name.clone(), *pid);
            let (Some(cpu), Some(rss)) = (procs::cpu_seconds_of(*pid), procs::rss_mib(*pid)) else {
                continue;
            };
            let at = Instant::now();
            let cpu_percent = last.get(&key).map_or(0.0, |(before, when)| {
                100.0 * (cpu - before) / at.duration_since(*when).as_secs_f64().max(1e-3)
            });
            last.insert(key, (cpu, at));
            trace.samples.push(Sample {
                t: started.elapsed().as_secs_f64(),
                name: name.clone(),
                pid: *pid,
                cpu_percent,
                rss_mib: rss,
            });
        }
        for change in changes(&first, &now) {
            if !trace.restarts.contains(&change) {
                trace.restarts.push(change);
            }
        }
    }
    trace
}

/// The processes of `first` missing from `now`, and those of `now` not in `first`.
fn changes(first: &[(String, u32)], now: &[(String, u32)]) -> Vec<String> {
    let gone = first
        .iter()
        .filter(|p| !now.contains(p))
        .map(|(name, pid)| format!("{name} {pid} gone"));
    let appeared = now
        .iter()
        .filter(|p| !first.contains(p))
        .map(|(name, pid)| format!("{name} {pid} appeared"));
    gone.chain(appeared).collect()
}

#[cfg(test)]
mod tests {
    use super::changes;

    #[test]
    fn a_restarted_process_is_gone_and_appeared() {
        let first = vec![("broker".to_owned(), 10), ("valkey".to_owned(), 11)];
        assert!(changes(&first, &first).is_empty());
        let now = vec![("broker".to_owned(), 12), ("valkey".to_owned(), 11)];
        assert_eq!(
            changes(&first, &now),
            ["broker 10 gone", "broker 12 appeared"]
        );
    }
}
