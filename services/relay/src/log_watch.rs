//! Notices when the log is reset under the relay: the topic deleted and re-created, its offsets
//! restarted at 0 under session windows, relay marks and consumer-group offsets that belong to
//! the old log. Nothing in the record stream shows it (the consumer may simply go on at its old
//! position, skipping the new log's first records), so the relay remembers one record of each
//! partition in Valkey (a [`LogProbe`]) and checks every few seconds that the log still holds it:
//! a probe at or past the log's end, or another record at its offset, is a reset. The relay then
//! stops with [`RelayError::LogReset`] rather than mix two logs in one window; the remedy is
//! in `docs/ARCHITECTURE.md` ("Re-creating the log topic").
//!
//! A reset that happens before any probe was taken (a new Valkey and a re-created topic at
//! once) is not seen: there is nothing to compare with.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agentwire_kafka::{
    KafkaSettings, KeyedReader, Partitions, ReadBudget, Watermarks, murmur2, read_range,
};
use agentwire_protocol::Offset;
use agentwire_valkey::{LogProbe, LogProbes};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::RelayError;
use crate::metrics as m;

/// How often the log's watermarks are compared with the probes.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How often each probe's record is read back even when the log only grew (a re-created
/// topic may outgrow the old one between two checks).
const VERIFY_EVERY: Duration = Duration::from_secs(5);
/// Longest wait for one record or watermark answer.
const READ_STALL: Duration = Duration::from_secs(10);

/// A reset found in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogReset {
    pub partition: i32,
    /// What the log holds now where the probe was.
    pub found: String,
}

/// The watch over one topic's partitions.
pub struct LogWatch {
    settings: KafkaSettings,
    topic: String,
    partitions: Partitions,
    watermarks: Watermarks,
    reader: KeyedReader,
    probes: LogProbes,
    /// The high watermark each partition had at the last check.
    highs: HashMap<i32, i64>,
    /// When each partition's probe was last read back.
    verified: HashMap<i32, Instant>,
}

impl LogWatch {
    pub fn new(
        settings: &KafkaSettings,
        topic: &str,
        probes: LogProbes,
    ) -> Result<Self, RelayError> {
        Ok(Self {
            settings: settings.clone(),
            topic: topic.to_owned(),
            partitions: Partitions::new(settings, topic, CHECK_EVERY * 5)?,
            watermarks: Watermarks::new(settings)?,
            reader: KeyedReader::new(settings, 1),
            probes,
            highs: HashMap::new(),
            verified: HashMap::new(),
        })
    }

    /// Checks until `stop` is cancelled (`None`) or a reset is found.
    pub async fn run(mut self, stop: CancellationToken) -> Option<LogReset> {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return None,
            }
            match self.check_all().await {
                Ok(Some(reset)) => return Some(reset),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "log reset check failed; trying again");
                }
            }
        }
    }

    async fn check_all(&mut self) -> Result<Option<LogReset>, RelayError> {
        let count = i32::try_from(self.partitions.count().await?).unwrap_or(i32::MAX);
        for partition in 0..count {
            if let Some(reset) = self.check(partition).await? {
                return Ok(Some(reset));
            }
        }
        Ok(None)
    }

    async fn check(&mut self, partition: i32) -> Result<Option<LogReset>, RelayError> {
        let (low, high) = self.watermarks.get(&self.topic, partition).await?;
        let shrank = self
            .highs
            .insert(partition, high)
            .is_some_and(|before| high < before);
        let Some(probe) = self.probes.get(partition).await? else {
            self.take_probe(partition, low, high).await?;
            return Ok(None);
        };
        let at = i64::try_from(probe.offset.0).unwrap_or(i64::MAX);
        if at >= high {
            return Ok(Some(LogReset {
                partition,
                found: format!(
                    "the log ends before offset {high}, but offset {at} was read from it before"
                ),
            }));
        }
        if at < low {
            // Retention deleted the probe's record: remember one that is still there.
            self.take_probe(partition, low, high).await?;
            return Ok(None);
        }
        let due = shrank
            || self
                .verified
                .get(&partition)
                .is_none_or(|when| when.elapsed() >= VERIFY_EVERY);
        if !due {
            return Ok(None);
        }
        let budget = ReadBudget {
            records: 1,
            bytes: usize::MAX,
            scanned: 1,
        };
        let read = self
            .reader
            .read(
                &self.topic,
                partition,
                &probe.key,
                probe.offset,
                Offset(probe.offset.0.saturating_add(1)),
                budget,
                READ_STALL,
            )
            .await?;
        self.verified.insert(partition, Instant::now());
        Ok(match read.records.first() {
            Some(record) if digest(record.value.as_deref()) == probe.digest => None,
            Some(_) => Some(LogReset {
                partition,
                found: format!("offset {at} holds another record of the same key"),
            }),
            None => Some(LogReset {
                partition,
                found: format!("offset {at} holds a record of another key"),
            }),
        })
    }

    /// Remembers the partition's first retained record.
    async fn take_probe(&mut self, partition: i32, low: i64, high: i64) -> Result<(), RelayError> {
        if high <= low {
            return Ok(());
        }
        let from = Offset(u64::try_from(low).unwrap_or(0));
        let until = Offset(from.0.saturating_add(1));
        let records = read_range(
            &self.settings,
            &self.topic,
            partition,
            from,
            until,
            READ_STALL,
        )
        .await?;
        let Some(record) = records.first() else {
            return Ok(());
        };
        let probe = LogProbe {
            offset: record.offset,
            key: record.key.clone().unwrap_or_default(),
            digest: digest(record.value.as_deref()),
        };
        self.probes.set(partition, &probe).await?;
        self.verified.insert(partition, Instant::now());
        metrics::counter!(m::LOG_PROBES_TAKEN).increment(1);
        tracing::debug!(partition, offset = %probe.offset, "log probe taken");
        Ok(())
    }
}

/// A digest of a record's value: its murmur2 hash and its length.
fn digest(value: Option<&[u8]>) -> u64 {
    let value = value.unwrap_or_default();
    (u64::from(murmur2(value)) << 32) | u64::from(u32::try_from(value.len()).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::digest;

    #[test]
    fn digests_tell_records_apart() {
        assert_eq!(digest(Some(b"abc")), digest(Some(b"abc")));
        assert_ne!(digest(Some(b"abc")), digest(Some(b"abd")));
        assert_ne!(digest(Some(b"abc")), digest(Some(b"abcd")));
        assert_ne!(digest(None), digest(Some(b"x")));
    }
}
