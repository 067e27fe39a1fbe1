//! Reading producer states back from the log: after Valkey starts empty, and to learn whether
//! an abandoned append landed. The log records carry `producerid`, `producerepoch` and
//! `producerseq`, so the log alone says which sequences were accepted and where.

use std::time::Duration;

use agentwire_kafka::{KafkaError, KafkaSettings, read_range, watermarks};
use agentwire_protocol::{Event, Offset, cloudevents};

/// Records read per Kafka fetch round.
const CHUNK: u64 = 5_000;
/// Longest time one chunk read may take.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the newest `depth` records of `partition` and hands each sequenced event whose key
/// passes `key_filter` to `visit` with its offset.
pub async fn scan_partition(
    kafka: &KafkaSettings,
    topic: &str,
    partition: i32,
    depth: u64,
    key_filter: impl Fn(&[u8]) -> bool,
    mut visit: impl FnMut(Event, Offset),
) -> Result<(), KafkaError> {
    let (low, high) = watermarks(kafka, topic, partition).await?;
    let low = u64::try_from(low).unwrap_or(0);
    let high = u64::try_from(high).unwrap_or(0);
    let mut from = low.max(high.saturating_sub(depth));
    while from < high {
        let until = high.min(from.saturating_add(CHUNK));
        let records = read_range(
            kafka,
            topic,
            partition,
            Offset(from),
            Offset(until),
            CHUNK_TIMEOUT,
        )
        .await?;
        for record in records {
            if !record.key.as_deref().is_some_and(&key_filter) {
                continue;
            }
            let Some(event) = record
                .value
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|json| cloudevents::from_json(json).ok())
            else {
                continue;
            };
            if event.producer_id.is_some() && event.producer_seq.is_some() {
                visit(event, record.offset);
            }
        }
        from = until;
    }
    Ok(())
}
