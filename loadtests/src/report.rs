//! One run's figures: printed, and written as `result.json`, `summary.md` and `latency.png`
//! under `--out` (default `loadtests/results/<scenario>-<unix time>/`).

use std::path::PathBuf;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procs::Usage;

/// Latency quantiles in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// One measured system in a run: agentwire, a floor or the peer.
#[derive(Clone, Debug, Serialize)]
pub struct Series {
    pub name: String,
    pub latency: Latency,
    pub deliveries_per_sec: f64,
    pub publishes_per_sec: f64,
    /// Durable events acknowledged but never delivered to a subscriber that should have had them.
    pub lost: u64,
    pub duplicated: u64,
    /// Ephemeral messages not delivered (shed by design; not a loss).
    pub shed: u64,
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

impl Series {
    pub fn new(name: &str, histogram: Histogram<u64>, seconds: f64) -> Self {
        let deliveries = histogram.len() as f64 / seconds.max(1e-9);
        Self {
            name: name.to_owned(),
            latency: Latency::of(&histogram),
            deliveries_per_sec: deliveries,
            publishes_per_sec: 0.0,
            lost: 0,
            duplicated: 0,
            shed: 0,
            histogram,
        }
    }
}

/// Everything one scenario run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub parameters: serde_json::Value,
    pub series: Vec<Series>,
    pub processes: Vec<Usage>,
    /// Extra named figures (e.g. the reconnect storm's time to resume).
    pub figures: serde_json::Map<String, serde_json::Value>,
    /// The stack's processes over time (the soak), drawn into `resources.png`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::resources::Trace>,
}

impl Report {
    pub fn new(scenario: &str, parameters: serde_json::Value) -> Self {
        Self {
            scenario: scenario.to_owned(),
            parameters,
            series: Vec::new(),
            processes: Vec::new(),
            figures: serde_json::Map::new(),
            resources: None,
        }
    }

    /// Prints the figures and writes the three files; returns the folder.
    pub fn finish(&self, out: Option<PathBuf>) -> anyhow::Result<PathBuf> {
        let markdown = self.markdown();
        println!("{markdown}");
        let dir = out.unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            crate::package_dir()
                .join("results")
                .join(format!("{}-{now}", self.scenario))
        });
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("result.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("summary.md"), &markdown)?;
        crate::chart::latency_png(&dir.join("latency.png"), &self.scenario, &self.series)?;
        if let Some(trace) = &self.resources {
            crate::chart::resources_png(
                &dir.join("resources.png"),
                &self.scenario,
                &trace.samples,
            )?;
        }
        println!("written: {}", dir.display());
        Ok(dir)
    }

    fn markdown(&self) -> String {
        let mut md = format!(
            "## {}\n\nparameters: `{}`\n\n",
            self.scenario, self.parameters
        );
        md.push_str("| series | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | deliveries/s | publishes/s | lost | duplicated | shed |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for s in &self.series {
            let l = &s.latency;
            md.push_str(&format!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {} | {} | {} |\n",
                s.name,
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.p999_ms,
                l.max_ms,
                s.deliveries_per_sec,
                s.publishes_per_sec,
                s.lost,
                s.duplicated,
                s.shed
            ));
        }
        if let Some(ours) = self.series.first() {
            let mut ratios = String::new();
            for other in self.series.iter().skip(1) {
                let p = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
                // Floors run at their own size: only a peer's deliveries/s compare.
                let deliveries = if other.publishes_per_sec > 0.0 && other.deliveries_per_sec > 0.0
                {
                    format!(
                        "{:.2}x",
                        p(ours.deliveries_per_sec, other.deliveries_per_sec)
                    )
                } else {
                    "–".to_owned()
                };
                ratios.push_str(&format!(
                    "| {} / {} | {:.2}x | {:.2}x | {deliveries} |\n",
                    ours.name,
                    other.name,
                    p(ours.latency.p50_ms, other.latency.p50_ms),
                    p(ours.latency.p99_ms, other.latency.p99_ms),
                ));
            }
            if !ratios.is_empty() {
                md.push_str("\n| ratio | p50 | p99 | deliveries/s |\n|---|---:|---:|---:|\n");
                md.push_str(&ratios);
            }
        }
        if !self.figures.is_empty() {
            md.push('\n');
            for (name, value) in &self.figures {
                md.push_str(&format!("- {name}: {value}\n"));
            }
        }
        if !self.processes.is_empty() {
            md.push_str("\n| process | pid | CPU s | peak RSS MiB |\n|---|---:|---:|---:|\n");
            for p in &self.processes {
                md.push_str(&format!(
                    "| {} | {} | {:.2} | {:.1} |\n",
                    p.name, p.pid, p.cpu_seconds, p.peak_rss_mib
                ));
            }
        }
        if let Some(trace) = &self.resources {
            md.push_str("\nOver time (`resources.png`):\n\n| process | pid | mean CPU % | max CPU % | RSS first MiB | RSS max MiB | RSS last MiB |\n|---|---:|---:|---:|---:|---:|---:|\n");
            for p in trace.summary() {
                md.push_str(&format!(
                    "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} |\n",
                    p.name, p.pid, p.mean_cpu, p.max_cpu, p.first_rss, p.max_rss, p.last_rss
                ));
            }
            if trace.restarts.is_empty() {
                md.push_str("\nNo process was restarted.\n");
            } else {
                md.push_str(&format!(
                    "\nProcesses restarted: {}\n",
                    trace.restarts.join(", ")
                ));
            }
        }
        md
    }
}
