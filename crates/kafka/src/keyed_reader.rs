//! Reading one key's records out of a partition range, within a budget, with consumers that
//! are reused: what the gateway does to serve a session's history the Valkey window cannot.
//!
//! Each record is checked against the key while it is polled, so only the key's records are
//! copied out of librdkafka's buffers, and the read stops once it holds `budget.records`
//! records or `budget.bytes` of values (one record at least, however large, so a reader of
//! the range always makes progress), or once it has examined `budget.scanned` records of any
//! key: a session with few records in a busy partition costs a bounded read, and the caller
//! reads on from [`KeyedRead::next`]. At most `max_readers` reads run at once; their
//! consumers are kept for the next read instead of being created (threads, a broker
//! connection) per read.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentwire_protocol::Offset;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use tokio::sync::Semaphore;

use crate::config::KafkaSettings;
use crate::consumer::LogMessage;
use crate::error::KafkaError;
use crate::reader::reader;

/// How much one read may return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadBudget {
    /// Most records returned.
    pub records: usize,
    /// Most bytes of record values returned (exceeded only by a read's first record).
    pub bytes: usize,
    /// Most records examined, of any key (at least one).
    pub scanned: usize,
}

/// What a keyed read found.
#[derive(Debug)]
pub struct KeyedRead {
    /// The key's records, in offset order.
    pub records: Vec<LogMessage>,
    /// The read stopped at its budget: records of the key may follow before the end of the
    /// range, from [`KeyedRead::next`] on.
    pub more: bool,
    /// The first offset the read did not examine (where a further read starts).
    pub next: Offset,
    /// Records examined, of any key.
    pub scanned: usize,
}

/// Reads one key's records out of partition ranges, with a small pool of reused consumers.
#[derive(Clone)]
pub struct KeyedReader {
    settings: KafkaSettings,
    idle: Arc<Mutex<Vec<BaseConsumer>>>,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for KeyedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedReader")
            .field("free_slots", &self.slots.available_permits())
            .finish_non_exhaustive()
    }
}

/// One read's parameters, moved to the blocking thread.
struct Range {
    topic: String,
    partition: i32,
    key: Vec<u8>,
    from: Offset,
    until: Offset,
    budget: ReadBudget,
    stall: Duration,
}

impl KeyedRead {
    /// Nothing read yet, starting at `from`.
    fn at(from: Offset) -> Self {
        Self {
            records: Vec::new(),
            more: false,
            next: from,
            scanned: 0,
        }
    }
}

impl KeyedReader {
    /// A reader running at most `max_readers` reads (and holding as many consumers) at once.
    pub fn new(settings: &KafkaSettings, max_readers: usize) -> Self {
        Self {
            settings: settings.clone(),
            idle: Arc::new(Mutex::new(Vec::new())),
            slots: Arc::new(Semaphore::new(max_readers.max(1))),
        }
    }

    /// The records of `partition` with key `key` and offsets in `[from, until)` (`until`
    /// exclusive), up to `budget`. Fails when no record arrives for `stall` (the broker does
    /// not answer), or when no reader frees up within `stall`.
    #[allow(clippy::too_many_arguments)]
    pub async fn read(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        from: Offset,
        until: Offset,
        budget: ReadBudget,
        stall: Duration,
    ) -> Result<KeyedRead, KafkaError> {
        if from >= until {
            return Ok(KeyedRead::at(from));
        }
        let _slot = tokio::time::timeout(stall, self.slots.acquire())
            .await
            .map_err(|_| KafkaError::Timeout(stall))?
            .map_err(|_| KafkaError::ConsumerStopped)?;
        let consumer = match self.take_idle() {
            Some(consumer) => consumer,
            None => reader(&self.settings)?,
        };
        let range = Range {
            topic: topic.to_owned(),
            partition,
            key: key.to_vec(),
            from,
            until,
            budget,
            stall,
        };
        let (consumer, result) = tokio::task::spawn_blocking(move || {
            let result = read_blocking(&consumer, &range);
            (consumer, result)
        })
        .await
        .map_err(|_| KafkaError::ConsumerStopped)?;
        // A consumer whose read failed may be in any state: it is dropped, not reused.
        if result.is_ok() && consumer.unassign().is_ok() {
            self.idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(consumer);
        }
        result
    }

    fn take_idle(&self) -> Option<BaseConsumer> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }
}

fn read_blocking(consumer: &BaseConsumer, range: &Range) -> Result<KeyedRead, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    let start = i64::try_from(range.from.0).unwrap_or(i64::MAX);
    tpl.add_partition_offset(&range.topic, range.partition, KafkaOffset::Offset(start))
        .map_err(KafkaError::Read)?;
    consumer.assign(&tpl).map_err(KafkaError::Read)?;
    let mut out = KeyedRead::at(range.from);
    let mut bytes = 0usize;
    let mut deadline = Instant::now() + range.stall;
    while out.next < range.until {
        if out.scanned >= range.budget.scanned.max(1) {
            out.more = true;
            break;
        }
        if Instant::now() >= deadline {
            return Err(KafkaError::Timeout(range.stall));
        }
        let message = match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => message,
            Some(Err(err)) => return Err(KafkaError::Read(err)),
            None => continue,
        };
        deadline = Instant::now() + range.stall;
        let offset = Offset(u64::try_from(message.offset()).unwrap_or_default());
        if offset >= range.until {
            out.next = range.until;
            break;
        }
        out.scanned += 1;
        if message.key() != Some(range.key.as_slice()) {
            out.next = offset.next().unwrap_or(range.until);
            continue;
        }
        let size = message.payload().map_or(0, <[u8]>::len);
        if !out.records.is_empty() && bytes.saturating_add(size) > range.budget.bytes {
            // Not taken: the next read starts with it.
            out.more = true;
            break;
        }
        out.next = offset.next().unwrap_or(range.until);
        bytes = bytes.saturating_add(size);
        out.records.push(LogMessage::from_kafka_message(&message));
        if out.records.len() >= range.budget.records {
            out.more = out.next < range.until;
            break;
        }
    }
    Ok(out)
}
