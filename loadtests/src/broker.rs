//! `broker`: the Kafka-API broker alone, with agentwire's producer settings (the gateway's
//! `EventLog`) and the relay's consumer settings (`LogConsumer`, group, `fetch.wait.max.ms`
//! 4), each phase on a fresh topic with the stack's partition count:
//!
//! - at each `--rates` rate for `--seconds`: produce→ack and produce→consume latency of
//!   `--size`-byte records, and the longest time the consumer received nothing;
//! - catch-up: a `--backlog` of records produced first, then a fresh group consumer times
//!   reading all of it;
//! - with `--pause-pid`, the trigger in `broker_trigger.rs`.
//!
//! Every record carries its sequence number and send time; each is checked against the
//! acknowledged ones (lost, duplicated). Nothing asserts a speed: the figures are printed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentwire_kafka::{
    Appended, ConsumerEvent, ConsumerSettings, EventLog, KafkaError, KafkaSettings, LogConsumer,
    LogRecord, ensure_topic,
};
use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::floor::now_micros;
use crate::report::{Report, Series};
use crate::{broker_trigger, procs, stats};

#[derive(Clone, Debug, clap::Args, serde::Serialize)]
pub struct Args {
    /// The broker's bootstrap address.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Partitions of each fresh topic (the stack's `agent.events` has 8).
    #[arg(long, default_value_t = 8)]
    pub partitions: u32,
    /// Produce rates (records/s) of the latency phases; `0` skips them.
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 5000])]
    pub rates: Vec<u32>,
    /// Seconds of producing per rate.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Records produced before the catch-up consumer starts; 0 skips the phase.
    #[arg(long, default_value_t = 100_000)]
    pub backlog: usize,
    /// A librdkafka consumer property `KEY=VALUE` set over the relay's (repeatable), to try
    /// one setting at a time.
    #[arg(long = "consumer-set", value_parser = key_value)]
    pub consumer_set: Vec<(String, String)>,
    /// How long the consumer may receive nothing, once every record was sent, before the
    /// phase ends and counts what is missing as lost.
    #[arg(long, default_value_t = 30.0)]
    pub quiet_seconds: f64,
    /// How long the consumer may take, once every record was sent, to read them all; what
    /// it has not read by then counts as lost (a consumer that trickles never goes quiet).
    #[arg(long, default_value_t = 120.0)]
    pub drain_seconds: f64,
    /// The broker's process id: pause it (SIGSTOP) past the producers' delivery timeout,
    /// resume it, and check that it serves on (see `broker_trigger.rs`).
    #[arg(long)]
    pub pause_pid: Option<u32>,
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

/// What one phase measured.
#[derive(Debug)]
pub(crate) struct Phase {
    pub ack: Histogram<u64>,
    pub end_to_end: Histogram<u64>,
    pub sent: u64,
    pub acked: BTreeSet<u64>,
    pub failed: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// The longest time between two deliveries while records were outstanding.
    pub longest_gap: Duration,
    /// From the consumer's start (after its assignment) to its first and last record.
    pub first_after: Option<Duration>,
    pub last_after: Option<Duration>,
    pub produce_seconds: f64,
}

/// The one-minute load average now (`/proc/loadavg`), to read the figures against.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let mut report = Report::new("broker", json!(args));
    let snapshot = procs::Snapshot::take();
    let settings = KafkaSettings::new(&args.brokers);
    let run = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    println!(
        "broker: {} ({} partitions per topic), consumer overrides {:?}, load {}",
        args.brokers,
        args.partitions,
        args.consumer_set,
        load_average()
    );

    for &rate in args.rates.iter().filter(|&&r| r > 0) {
        let name = format!("@{rate}/s");
        let outcome = rate_phase(&settings, &run, rate, &args, &mut report).await;
        note_failure(&mut report, &name, outcome);
    }
    if args.backlog > 0 {
        let outcome = catch_up(&settings, &run, &args, &mut report).await;
        note_failure(&mut report, "catch-up", outcome);
    }
    if let Some(pid) = args.pause_pid {
        for trigger in broker_trigger::Producer::ALL {
            let outcome = async {
                let topic =
                    fresh_topic(&settings, &format!("broker-{run}-{trigger}"), &args).await?;
                broker_trigger::run(&settings, &topic, pid, trigger, &args).await
            }
            .await;
            match outcome {
                Ok(outcome) => {
                    println!("trigger ({trigger}): {outcome}");
                    report
                        .figures
                        .insert(format!("trigger: {trigger}"), json!(outcome));
                }
                Err(err) => note_failure(&mut report, &format!("trigger {trigger}"), Err(err)),
            }
        }
    }

    report.processes = snapshot.usage();
    report.finish(args.out.clone())?;
    Ok(report)
}

/// One paced phase at `rate`, on a fresh topic, consumed as it is produced.
async fn rate_phase(
    settings: &KafkaSettings,
    run: &str,
    rate: u32,
    args: &Args,
    report: &mut Report,
) -> anyhow::Result<()> {
    let name = format!("@{rate}/s");
    let topic = fresh_topic(settings, &format!("broker-{run}-r{rate}"), args).await?;
    let load_before = load_average();
    let events = (f64::from(rate) * args.seconds).round() as u64;
    let mut consumer = start_consumer(settings, &topic, args).await?;
    let produced = produce(
        settings,
        &topic,
        events,
        Some(rate),
        args.size,
        Some(&mut consumer),
    )
    .await?;
    let phase = consume(consumer, produced, args).await?;
    print_phase(&name, &phase);
    push_series(report, &name, &phase);
    report.figures.insert(
        format!("{name} load average before, after"),
        json!([load_before, load_average()]),
    );
    Ok(())
}

/// A backlog produced first, then read by a fresh group consumer.
async fn catch_up(
    settings: &KafkaSettings,
    run: &str,
    args: &Args,
    report: &mut Report,
) -> anyhow::Result<()> {
    let topic = fresh_topic(settings, &format!("broker-{run}-backlog"), args).await?;
    let load_before = load_average();
    let backlog = u64::try_from(args.backlog)?;
    let produced = produce(settings, &topic, backlog, None, args.size, None).await?;
    let producing = produced.done.elapsed_after_start();
    println!(
        "catch-up: {backlog} records produced at {:.0}/s",
        backlog as f64 / producing
    );
    let consumer = start_consumer(settings, &topic, args).await?;
    let phase = consume(consumer, produced, args).await?;
    print_phase("catch-up", &phase);
    println!("  (produce→consume here is the age of each backlog record when read)");
    let rate =
        |d: Option<Duration>| d.map_or(0.0, |d| phase.received as f64 / d.as_secs_f64().max(1e-9));
    let read_after_first = phase
        .last_after
        .zip(phase.first_after)
        .map(|(last, first)| last.saturating_sub(first));
    report.figures.insert(
        "catch-up".into(),
        json!({
            "backlog": backlog,
            "produced_per_sec": backlog as f64 / producing,
            "acked": phase.acked.len(),
            "received": phase.received,
            "lost": phase.lost,
            "duplicated": phase.duplicated,
            "first_record_after_s": phase.first_after.map(|d| d.as_secs_f64()),
            "all_read_after_s": phase.last_after.map(|d| d.as_secs_f64()),
            "records_per_sec": rate(phase.last_after),
            "records_per_sec_after_first": rate(read_after_first),
            "longest_gap_s": phase.longest_gap.as_secs_f64(),
            "load_average_before_after": [load_before, load_average()],
        }),
    );
    println!(
        "catch-up: {} of {} read in {:.1} s: {:.0} records/s (first record after {:.2} s)",
        phase.received,
        phase.acked.len(),
        phase.last_after.unwrap_or_default().as_secs_f64(),
        rate(phase.last_after),
        phase.first_after.unwrap_or_default().as_secs_f64()
    );
    Ok(())
}

/// A phase that failed (a broker that died, say) is reported, and the next one still runs.
fn note_failure(report: &mut Report, phase: &str, outcome: anyhow::Result<()>) {
    if let Err(err) = outcome {
        println!("{phase}: FAILED: {err:#}");
        report
            .figures
            .insert(format!("{phase} failed"), json!(format!("{err:#}")));
    }
}

async fn fresh_topic(settings: &KafkaSettings, name: &str, args: &Args) -> anyhow::Result<String> {
    ensure_topic(settings, name, i32::try_from(args.partitions)?)
        .await
        .with_context(|| format!("create topic {name}"))?;
    Ok(name.to_owned())
}

fn push_series(report: &mut Report, name: &str, phase: &Phase) {
    let mut ack = Series::new(
        &format!("ack {name}"),
        phase.ack.clone(),
        phase.produce_seconds,
    );
    ack.publishes_per_sec = phase.acked.len() as f64 / phase.produce_seconds.max(1e-9);
    ack.deliveries_per_sec = 0.0;
    report.series.push(ack);
    let mut e2e = Series::new(
        &format!("produce→consume {name}"),
        phase.end_to_end.clone(),
        phase.produce_seconds,
    );
    e2e.lost = phase.lost;
    e2e.duplicated = phase.duplicated;
    report.series.push(e2e);
    report.figures.insert(
        format!("{name} longest consumer gap s"),
        json!(phase.longest_gap.as_secs_f64()),
    );
    report.figures.insert(
        format!("{name} sent, acked, failed"),
        json!([phase.sent, phase.acked.len(), phase.failed]),
    );
}

fn print_phase(name: &str, phase: &Phase) {
    println!(
        "{name}: sent {} acked {} failed {} received {} lost {} duplicated {}; longest gap {:.2} s",
        phase.sent,
        phase.acked.len(),
        phase.failed,
        phase.received,
        phase.lost,
        phase.duplicated,
        phase.longest_gap.as_secs_f64()
    );
    println!("  ack:              {}", stats::summary(&phase.ack));
    println!("  produce→consume:  {}", stats::summary(&phase.end_to_end));
}

/// A record's value: its sequence number, its send time in µs, padding to `size` bytes.
pub(crate) fn record(seq: u64, size: usize) -> LogRecord {
    let mut value = format!("{seq} {} ", now_micros());
    value.extend(std::iter::repeat_n('x', size.saturating_sub(value.len())));
    LogRecord {
        content_type: agentwire_kafka::CLOUDEVENTS_JSON,
        key: format!("broker:{}", seq % 64),
        value,
        traceparent: None,
        tracestate: None,
    }
}

/// The sequence number and send time (µs) of a record's value.
pub(crate) fn parse(value: &[u8]) -> Option<(u64, u128)> {
    let text = std::str::from_utf8(value.get(..value.len().min(64))?).ok()?;
    let mut parts = text.split(' ');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// A consumer group member that has its partitions.
pub(crate) struct Started {
    consumer: LogConsumer,
    rx: mpsc::Receiver<ConsumerEvent>,
    stop: CancellationToken,
    at: Instant,
}

pub(crate) async fn start_consumer(
    settings: &KafkaSettings,
    topic: &str,
    args: &Args,
) -> anyhow::Result<Started> {
    let consumer_settings = ConsumerSettings {
        overrides: args.consumer_set.clone(),
        ..ConsumerSettings::new(format!("broker-{}", uuid::Uuid::now_v7()), topic)
    };
    let (tx, mut rx) = mpsc::channel(64);
    let stop = CancellationToken::new();
    let (consumer, _offsets) = LogConsumer::start(settings, &consumer_settings, tx, stop.clone())?;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .context("the consumer was not assigned its partitions within 30 s")?
        {
            Some(ConsumerEvent::Assigned(_)) => break,
            Some(_) => {}
            None => anyhow::bail!("the consumer stopped"),
        }
    }
    Ok(Started {
        consumer,
        rx,
        stop,
        at: Instant::now(),
    })
}

/// The producing side of a phase, still running (paced) or finished (backlog).
pub(crate) struct Produced {
    pub done: Done,
    acks: mpsc::UnboundedReceiver<(u64, Duration, Result<Appended, KafkaError>)>,
    sent: Arc<AtomicU64>,
}

pub(crate) struct Done {
    started: Instant,
    task: tokio::task::JoinHandle<anyhow::Result<f64>>,
}

impl Produced {
    /// Records acknowledged earlier (by another producer), for a consumer to check.
    pub(crate) fn finished(acked: Vec<u64>) -> Self {
        let (tx, acks) = mpsc::unbounded_channel();
        let sent = Arc::new(AtomicU64::new(acked.len() as u64));
        for seq in acked {
            let appended = Appended {
                partition: 0,
                offset: agentwire_protocol::Offset(seq),
            };
            let _ = tx.send((seq, Duration::ZERO, Ok(appended)));
        }
        let done = Done {
            started: Instant::now(),
            task: tokio::spawn(async { anyhow::Ok(0.0) }),
        };
        Self { done, acks, sent }
    }
}

impl Done {
    fn elapsed_after_start(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// Produces `events` records with agentwire's producer, paced at `rate` per second or, with
/// none, as fast as the producer takes them; waits for every acknowledgement when unpaced.
/// With `consumer`, the warm-up record must reach it first.
pub(crate) async fn produce(
    settings: &KafkaSettings,
    topic: &str,
    events: u64,
    rate: Option<u32>,
    size: usize,
    consumer: Option<&mut Started>,
) -> anyhow::Result<Produced> {
    let log = EventLog::new(settings, topic)?;
    // One warm-up record, acknowledged (and read, with a consumer) before the measured ones,
    // so they do not include the producer's id request or the consumer's first fetches. Its
    // value does not parse as a measured record.
    let warm_up = LogRecord {
        value: "warm-up".into(),
        ..record(0, 0)
    };
    log.append(&warm_up).await.context("the warm-up record")?;
    if let Some(consumer) = consumer {
        loop {
            let received = tokio::time::timeout(Duration::from_secs(30), consumer.rx.recv())
                .await
                .context("the warm-up record was not read within 30 s")?;
            match received {
                Some(ConsumerEvent::Batch(_)) => break,
                Some(_) => {}
                None => anyhow::bail!("the consumer stopped"),
            }
        }
        consumer.at = Instant::now();
    }
    let (ack_tx, acks) = mpsc::unbounded_channel();
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let task = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut tick = rate
                .map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(r.max(1)))));
            let mut pending = tokio::task::JoinSet::new();
            for seq in 0..events {
                if let Some(tick) = tick.as_mut() {
                    tick.tick().await;
                }
                let at = Instant::now();
                let delivery = log.enqueue(&record(seq, size)).await;
                sent.fetch_add(1, Ordering::Relaxed);
                let ack_tx = ack_tx.clone();
                pending.spawn(async move {
                    let result = match delivery {
                        Ok(delivery) => delivery.await,
                        Err(err) => Err(err),
                    };
                    let _ = ack_tx.send((seq, at.elapsed(), result));
                });
            }
            let produced = started.elapsed().as_secs_f64();
            pending.join_all().await;
            anyhow::Ok(produced)
        })
    };
    let task = if rate.is_none() {
        // A backlog is complete before its consumer starts: wait for it, and keep its result
        // for whoever asks the task later.
        let produced = task.await.map_err(anyhow::Error::from).and_then(|r| r);
        tokio::spawn(std::future::ready(produced))
    } else {
        task
    };
    let done = Done { started, task };
    Ok(Produced { done, acks, sent })
}

/// Reads until every acknowledged record arrived or nothing arrived for `--quiet-seconds`
/// after the producer finished; then stops the consumer.
pub(crate) async fn consume(
    started: Started,
    mut produced: Produced,
    args: &Args,
) -> anyhow::Result<Phase> {
    let Started {
        consumer,
        mut rx,
        stop,
        at,
    } = started;
    let quiet = Duration::from_secs_f64(args.quiet_seconds);
    let mut ack = stats::histogram()?;
    let mut end_to_end = stats::histogram()?;
    let (mut acked, mut seen) = (BTreeSet::new(), BTreeSet::new());
    let (mut failed, mut received, mut duplicated) = (0_u64, 0_u64, 0_u64);
    let mut produce_seconds = None;
    let (mut first_after, mut last_after) = (None, None);
    let mut last_delivery = Instant::now();
    let mut longest_gap = Duration::ZERO;
    let drain = Duration::from_secs_f64(args.drain_seconds);
    let mut drained_at: Option<Instant> = None;
    let mut progress = Instant::now();
    loop {
        while let Ok((seq, latency, result)) = produced.acks.try_recv() {
            match result {
                Ok(_) => {
                    stats::record(&mut ack, latency);
                    acked.insert(seq);
                }
                Err(_) => failed += 1,
            }
        }
        if produce_seconds.is_none() && produced.done.task.is_finished() {
            produce_seconds = Some((&mut produced.done.task).await??);
            continue;
        }
        let producing_done = produce_seconds.is_some() && produced.acks.is_empty();
        if producing_done && acked.is_subset(&seen) {
            break;
        }
        if producing_done && last_delivery.elapsed() >= quiet {
            break;
        }
        if producing_done && drained_at.is_none() {
            drained_at = Some(Instant::now());
        }
        if drained_at.is_some_and(|at| at.elapsed() >= drain) {
            break;
        }
        if progress.elapsed() >= Duration::from_secs(5) {
            progress = Instant::now();
            println!(
                "  … {} of {} sent read, {} acked",
                seen.len(),
                produced.sent.load(Ordering::Relaxed),
                acked.len()
            );
        }
        let event = match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => anyhow::bail!("the consumer stopped"),
            Err(_) => continue,
        };
        let ConsumerEvent::Batch(batch) = event else {
            continue;
        };
        let now = now_micros();
        let outstanding = produced.sent.load(Ordering::Relaxed) > received;
        if outstanding && received > 0 {
            longest_gap = longest_gap.max(last_delivery.elapsed());
        }
        last_delivery = Instant::now();
        first_after.get_or_insert_with(|| at.elapsed());
        last_after = Some(at.elapsed());
        for message in batch {
            let Some((seq, sent)) = message.value.as_deref().and_then(parse) else {
                continue;
            };
            received += 1;
            if !seen.insert(seq) {
                duplicated += 1;
            }
            let micros = u64::try_from(now.saturating_sub(sent)).unwrap_or(u64::MAX);
            stats::record(&mut end_to_end, Duration::from_micros(micros));
        }
    }
    stop.cancel();
    drop(rx);
    tokio::task::spawn_blocking(move || consumer.join()).await?;
    let lost = acked.difference(&seen).count() as u64;
    Ok(Phase {
        ack,
        end_to_end,
        sent: produced.sent.load(Ordering::Relaxed),
        received: seen.len() as u64,
        acked,
        failed,
        lost,
        duplicated,
        longest_gap,
        first_after,
        last_after,
        produce_seconds: produce_seconds.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_has_the_asked_size_and_reads_back_its_sequence_and_time() {
        let before = now_micros();
        let r = record(123_456, 1024);
        assert_eq!(r.value.len(), 1024);
        let (seq, sent) = parse(r.value.as_bytes()).expect("a record parses");
        assert_eq!(seq, 123_456);
        assert!(sent >= before && sent <= now_micros());
    }

    #[test]
    fn the_warm_up_record_is_not_a_measured_one() {
        assert_eq!(parse(b"warm-up"), None);
    }

    #[test]
    fn consumer_settings_are_key_value_pairs() {
        assert_eq!(
            key_value("fetch.wait.max.ms = 100"),
            Ok(("fetch.wait.max.ms".to_owned(), "100".to_owned()))
        );
        assert!(key_value("fetch.wait.max.ms").is_err());
    }
}
