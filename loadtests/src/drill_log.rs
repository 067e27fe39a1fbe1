//! Figures for replay drills: fills a topic with valid sequenced events over many sessions
//! (straight into Kafka, as fast as the broker takes them), and reads a topic back with a
//! bare librdkafka consumer doing nothing but counting (the floor `agentwire drill verify`'s
//! throughput is measured against). `loadtests/scripts/drill-bench.sh` runs the whole set.

use std::time::{Duration, Instant};

use agentwire_kafka::{KafkaSettings, RecordWriter, ScannedRecord, ensure_topic, watermarks};
use agentwire_protocol::{EventType, Offset, ProducerId, SessionKey, cloudevents};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Message as _, Offset as KafkaOffset, TopicPartitionList};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "agent.events")]
    topic: String,
    /// Records to append before reading (0: only read).
    #[arg(long, default_value_t = 0)]
    fill: u64,
    /// Sessions the filled records are spread over.
    #[arg(long, default_value_t = 100_000)]
    sessions: u64,
    /// Producers numbering the filled records (each session has one).
    #[arg(long, default_value_t = 100)]
    producers: u64,
    /// Tenant of the filled records.
    #[arg(long, default_value = "drill")]
    tenant: String,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Skip the raw read.
    #[arg(long)]
    no_read: bool,
    /// A librdkafka setting for the raw read, `key=value` (repeatable), e.g. to read with the
    /// settings `agentwire drill` uses.
    #[arg(long = "consumer-set")]
    consumer_set: Vec<String>,
    /// Read through agentwire's own streaming scan (`agentwire_kafka::LogScan`, what the
    /// drills read with) instead of a bare consumer, still only counting.
    #[arg(long)]
    via_scan: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let settings = KafkaSettings::new(args.brokers.clone());
    if args.fill > 0 {
        fill(&settings, &args).await?;
    }
    if args.via_scan {
        read_via_scan(&settings, &args.topic).await?;
    } else if !args.no_read {
        read(&settings, &args.topic, &args.consumer_set).await?;
    }
    Ok(())
}

async fn fill(settings: &KafkaSettings, args: &Args) -> anyhow::Result<()> {
    ensure_topic(settings, &args.topic, args.partitions).await?;
    let mut writer = RecordWriter::new(settings, args.topic.clone())?;
    let sessions = args.sessions.max(1);
    let producers = args.producers.max(1);
    let mut next_seq = vec![0u64; usize::try_from(producers)?];
    let started = Instant::now();
    let kind = EventType::new("agent.message")?;
    for n in 0..args.fill {
        let s = n % sessions;
        let p = s % producers;
        let session = SessionKey::parse_parts(&args.tenant, "bench", &format!("s{s}"))?;
        let seq = &mut next_seq[usize::try_from(p)?];
        *seq += 1;
        let mut event = agentwire_protocol::Event::new(session.clone(), kind.clone());
        event.id = Some(uuid::Uuid::now_v7());
        event.producer_id = Some(ProducerId::new(format!("bench-{p}"))?);
        event.producer_seq = Some(*seq);
        event.producer_epoch = Some(0);
        event.text = Some(format!(
            "record {n} of session {s}: the agent called a tool and got an answer"
        ));
        let json = cloudevents::to_json(&event);
        writer
            .write(&ScannedRecord {
                partition: 0,
                offset: Offset(0),
                key: Some(session.to_string().into_bytes()),
                value: Some(json.into_bytes()),
                headers: vec![(
                    "content-type".to_owned(),
                    Some(agentwire_kafka::CLOUDEVENTS_JSON.as_bytes().to_vec()),
                )],
                timestamp_ms: None,
            })
            .await?;
    }
    let written = writer.finish().await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fill: {written} records over {sessions} sessions and {producers} producers into {} in {secs:.1} s ({:.0} records/s)",
        args.topic,
        written as f64 / secs
    );
    Ok(())
}

async fn read(settings: &KafkaSettings, topic: &str, extra: &[String]) -> anyhow::Result<()> {
    let partitions = agentwire_kafka::partition_count(settings, topic).await?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::BTreeMap::new();
    let mut total = 0u64;
    for p in 0..i32::try_from(partitions)? {
        let (low, high) = watermarks(settings, topic, p).await?;
        tpl.add_partition_offset(topic, p, KafkaOffset::Offset(low))?;
        if high > low {
            ends.insert(p, high);
            total += u64::try_from(high - low)?;
        }
    }
    let brokers = settings.brokers.clone();
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow::anyhow!("--consumer-set takes key=value, got {kv:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let shown = if extra.is_empty() {
        "default settings".to_owned()
    } else {
        extra
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (records, bytes, secs) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, u64, f64)> {
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", "agentwire-loadtests-raw-read")
                .set("enable.auto.commit", "false")
                .create()?;
            consumer.assign(&tpl)?;
            let started = Instant::now();
            let (mut records, mut bytes) = (0u64, 0u64);
            while !ends.is_empty() {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        records += 1;
                        bytes += m.payload().map_or(0, <[u8]>::len) as u64;
                        if ends
                            .get(&m.partition())
                            .is_some_and(|end| m.offset() + 1 >= *end)
                        {
                            ends.remove(&m.partition());
                        }
                    }
                    Some(Err(e)) => anyhow::bail!("raw read: {e}"),
                    None if started.elapsed() > Duration::from_secs(600) => {
                        anyhow::bail!("raw read stalled")
                    }
                    None => {}
                }
            }
            Ok((records, bytes, started.elapsed().as_secs_f64()))
        })
        .await??;
    println!(
        "raw read: {records} of {total} records ({:.1} MiB of values) of {topic} in {secs:.2} s: {:.0} records/s (bare librdkafka BaseConsumer, {shown}, counting only)",
        bytes as f64 / 1_048_576.0,
        records as f64 / secs,
    );
    Ok(())
}

async fn read_via_scan(settings: &KafkaSettings, topic: &str) -> anyhow::Result<()> {
    let partitions = agentwire_kafka::partition_count(settings, topic).await?;
    let mut ranges = Vec::new();
    for p in 0..i32::try_from(partitions)? {
        let (low, high) = watermarks(settings, topic, p).await?;
        ranges.push(agentwire_kafka::PartitionRange {
            partition: p,
            from: Offset(u64::try_from(low)?),
            until: Offset(u64::try_from(high)?),
        });
    }
    let started = Instant::now();
    let mut scan = agentwire_kafka::LogScan::start(settings, topic, &ranges)?;
    let mut records = 0u64;
    while let Some(batch) = scan.next().await? {
        records += batch.len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "scan read: {records} records of {topic} in {secs:.2} s: {:.0} records/s (agentwire_kafka::LogScan, counting only)",
        records as f64 / secs
    );
    Ok(())
}
