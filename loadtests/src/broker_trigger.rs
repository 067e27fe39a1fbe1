//! The timeout/epoch-bump trigger of the `broker` scenario: a producer sends at a steady
//! rate, the broker is paused (SIGSTOP) for longer than the delivery timeout so that the
//! deliveries in flight time out, then resumed (SIGCONT), and the producer carries on.
//! Afterwards: is the broker process alive, are the records sent after the resume
//! acknowledged, does a fresh producer get an ack, and does a fresh group consumer read
//! every acknowledged record (lost, duplicated)?
//!
//! Two producers, since they leave the broker in different states: agentwire's `EventLog`
//! replaces itself after a timeout (a new producer id), while a plain idempotent producer
//! with the same settings keeps its id and librdkafka bumps its epoch (KIP-360), which is
//! what tansu 0.6.0 was seen to panic on.

use std::time::{Duration, Instant};

use agentwire_kafka::{EventLog, KafkaSettings};
use futures::FutureExt as _;
use futures::future::BoxFuture;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

use crate::broker::{self, Args, record};

/// Records per second while the trigger runs.
const RATE: u32 = 200;
/// Sending before the pause and after the resume.
const BEFORE: Duration = Duration::from_secs(3);
const AFTER: Duration = Duration::from_secs(15);
/// How long past the delivery timeout the broker stays paused.
const PAUSE_PAST_TIMEOUT: Duration = Duration::from_secs(3);
/// Records sent this long after the resume should all be acknowledged.
const SETTLE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
pub enum Producer {
    /// agentwire's `EventLog`: replaced by a fresh producer after a delivery timeout.
    EventLog,
    /// A plain idempotent rdkafka producer with the same settings: its epoch is bumped.
    Plain,
}

impl Producer {
    pub const ALL: [Self; 2] = [Self::EventLog, Self::Plain];
}

impl std::fmt::Display for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::EventLog => "eventlog-replaced",
            Self::Plain => "plain-epoch-bump",
        })
    }
}

/// What happened to the broker and the records.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub survived: bool,
    pub broker_alive: bool,
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    /// Records sent at least `SETTLE` after the resume, and how many of them were acked.
    pub sent_after_settle: u64,
    pub acked_after_settle: u64,
    /// Seconds from the resume to the first acknowledgement of a record sent after it.
    pub first_ack_after_resume_s: Option<f64>,
    pub fresh_producer_acked: bool,
    pub consumer_received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub first_errors: Vec<String>,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "survived={} alive={} sent={} acked={} failed={} after-settle {}/{} acked, first ack {:?} s after resume, fresh producer acked={}, consumer read {} lost={} duplicated={}, errors {:?}",
            self.survived,
            self.broker_alive,
            self.sent,
            self.acked,
            self.failed,
            self.acked_after_settle,
            self.sent_after_settle,
            self.first_ack_after_resume_s,
            self.fresh_producer_acked,
            self.consumer_received,
            self.lost,
            self.duplicated,
            self.first_errors
        )
    }
}

enum Sender {
    Log(EventLog),
    Plain(FutureProducer),
}

impl Sender {
    fn new(kind: Producer, settings: &KafkaSettings, topic: &str) -> anyhow::Result<Self> {
        Ok(match kind {
            Producer::EventLog => Self::Log(EventLog::new(settings, topic)?),
            // agentwire's producer settings on a bare librdkafka producer (no delivery
            // bookkeeping of `EventLog`'s own).
            Producer::Plain => Self::Plain(agentwire_kafka::producer_config(settings).create()?),
        })
    }

    /// Enqueues record `seq`; the future is its delivery.
    async fn send(
        &self,
        topic: &str,
        seq: u64,
        size: usize,
    ) -> BoxFuture<'static, Result<(), String>> {
        let record = record(seq, size);
        match self {
            Self::Log(log) => match log.enqueue(&record).await {
                Ok(delivery) => delivery
                    .map(|r| r.map(drop).map_err(|e| e.to_string()))
                    .boxed(),
                Err(err) => futures::future::ready(Err(err.to_string())).boxed(),
            },
            Self::Plain(producer) => {
                let future = FutureRecord::to(topic)
                    .key(record.key.as_str())
                    .payload(record.value.as_str());
                match producer.send_result(future) {
                    Ok(delivery) => delivery
                        .map(|r| match r {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err((err, _))) => Err(err.to_string()),
                            Err(_) => Err("delivery cancelled".to_owned()),
                        })
                        .boxed(),
                    Err((err, _)) => futures::future::ready(Err(err.to_string())).boxed(),
                }
            }
        }
    }
}

fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{name} {pid} failed: {status}");
    Ok(())
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

pub async fn run(
    settings: &KafkaSettings,
    topic: &str,
    pid: u32,
    kind: Producer,
    args: &Args,
) -> anyhow::Result<Outcome> {
    let sender = Sender::new(kind, settings, topic)?;
    let pause = settings.delivery_timeout + PAUSE_PAST_TIMEOUT;
    let total = BEFORE + pause + AFTER;
    let started = Instant::now();
    let pauser = tokio::spawn(async move {
        tokio::time::sleep(BEFORE).await;
        signal(pid, "STOP")?;
        tokio::time::sleep(pause).await;
        // Resume whatever happens to the caller.
        signal(pid, "CONT")?;
        anyhow::Ok(Instant::now())
    });
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(RATE)));
    let mut deliveries = tokio::task::JoinSet::new();
    let mut seq = 0_u64;
    while started.elapsed() < total {
        tick.tick().await;
        let sent_at = Instant::now();
        let delivery = sender.send(topic, seq, args.size).await;
        deliveries.spawn(async move { (seq, sent_at, delivery.await, Instant::now()) });
        seq += 1;
    }
    let resumed = pauser.await??;
    let mut outcome = Outcome {
        survived: false,
        broker_alive: false,
        sent: seq,
        acked: 0,
        failed: 0,
        sent_after_settle: 0,
        acked_after_settle: 0,
        first_ack_after_resume_s: None,
        fresh_producer_acked: false,
        consumer_received: 0,
        lost: 0,
        duplicated: 0,
        first_errors: Vec::new(),
    };
    let mut acked = Vec::new();
    let limit = settings.delivery_timeout * 3;
    while let Ok(Some(done)) = tokio::time::timeout(limit, deliveries.join_next()).await {
        let (seq, sent_at, result, at) = done?;
        let after_settle = sent_at >= resumed + SETTLE;
        outcome.sent_after_settle += u64::from(after_settle);
        match result {
            Ok(()) => {
                outcome.acked += 1;
                acked.push(seq);
                outcome.acked_after_settle += u64::from(after_settle);
                if sent_at >= resumed {
                    let after = at.saturating_duration_since(resumed).as_secs_f64();
                    let first = outcome.first_ack_after_resume_s.get_or_insert(after);
                    *first = first.min(after);
                }
            }
            Err(err) => {
                outcome.failed += 1;
                if outcome.first_errors.len() < 3 && !outcome.first_errors.contains(&err) {
                    outcome.first_errors.push(err);
                }
            }
        }
    }
    deliveries.abort_all();
    outcome.broker_alive = alive(pid);

    let fresh = EventLog::new(settings, topic)?;
    outcome.fresh_producer_acked = tokio::time::timeout(
        settings.delivery_timeout * 2,
        fresh.append(&record(seq, 64)),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if outcome.fresh_producer_acked {
        acked.push(seq);
    }

    match broker::start_consumer(settings, topic, args).await {
        Ok(consumer) => {
            let phase = broker::consume(consumer, broker::Produced::finished(acked), args).await?;
            outcome.consumer_received = phase.received;
            outcome.lost = phase.lost;
            outcome.duplicated = phase.duplicated;
        }
        Err(err) => {
            outcome.lost = outcome.acked;
            outcome.first_errors.push(format!("consumer: {err:#}"));
        }
    }
    outcome.survived = outcome.broker_alive
        && outcome.sent_after_settle > 0
        && outcome.acked_after_settle == outcome.sent_after_settle
        && outcome.fresh_producer_acked
        && outcome.lost == 0;
    Ok(outcome)
}
