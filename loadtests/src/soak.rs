//! The soak: durable fanout held for minutes (by default 10 at 5,000 events/s to 2,000
//! subscribers), every delivery checked (lost, duplicated), with the stack's processes sampled
//! over time: CPU and resident memory of the broker, gateway, relay and Valkey, drawn into
//! `resources.png`, and whether any was restarted.

use std::time::Duration;

use serde_json::json;

use crate::fanout;
use crate::report::Report;
use crate::resources::Sampler;
use crate::{procs, wsload};

#[derive(Clone, Debug, clap::Args, serde::Serialize)]
pub struct Args {
    /// The gateway's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub gateway: String,
    #[arg(long, default_value_t = 100)]
    pub sessions: usize,
    #[arg(long, default_value_t = 2000)]
    pub subscribers: usize,
    #[arg(long, default_value_t = 8)]
    pub publishers: usize,
    /// Durable events per second, in total.
    #[arg(long, default_value_t = 5000)]
    pub rate: u32,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 600.0)]
    pub seconds: f64,
    /// Extra bytes of text per event.
    #[arg(long, default_value_t = 64)]
    pub padding: usize,
    /// Seconds to wait for deliveries after the last publish.
    #[arg(long, default_value_t = 30.0)]
    pub drain_seconds: f64,
    /// Seconds between two samples of the processes.
    #[arg(long, default_value_t = 5.0)]
    pub sample_seconds: f64,
    /// Where to write result.json, summary.md, latency.png and resources.png.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

impl Args {
    fn load(&self) -> fanout::Args {
        fanout::Args {
            gateway: self.gateway.clone(),
            brokers: String::new(),
            topic: String::new(),
            valkey: String::new(),
            sessions: self.sessions,
            subscribers: self.subscribers,
            publishers: self.publishers,
            rate: self.rate,
            seconds: self.seconds,
            padding: self.padding,
            no_floors: true,
            peer: false,
            drain_seconds: self.drain_seconds,
            out: self.out.clone(),
        }
    }
}

/// Runs the soak; the figures are in the returned report (and printed, and written).
pub async fn run(args: Args) -> anyhow::Result<Report> {
    let load = &args.load();
    println!(
        "soak: {} sessions, {} subscribers, {} publishers, {} durable events/s for {} s, sampling every {} s",
        load.sessions,
        load.subscribers,
        load.publishers,
        load.rate,
        load.seconds,
        args.sample_seconds
    );
    let mut report = Report::new("soak", json!(args));
    let snapshot = procs::Snapshot::take();
    let sampler = Sampler::start(Duration::from_secs_f64(args.sample_seconds.max(0.1)));
    let series = fanout::agentwire(load, wsload::Class::Durable).await;
    let trace = sampler.stop().await;
    report.processes = snapshot.usage();
    report.series.push(series?);
    report
        .figures
        .insert("samples".into(), json!(trace.samples.len()));
    report
        .figures
        .insert("processes restarted".into(), json!(trace.restarts.len()));
    report.resources = Some(trace);
    report.finish(load.out.clone())?;
    Ok(report)
}
