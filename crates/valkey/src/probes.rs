//! Log probes: one record of each partition of the log, remembered by its offset, key and a
//! digest of its value. A record never changes while the log exists, so finding another
//! record (or none) at a probe's offset later means the log was reset under this Valkey: the
//! topic deleted and re-created, its offsets restarted. The relay takes and checks them.

use agentwire_protocol::Offset;
use redis::AsyncCommands as _;

use crate::connection::Connection;
use crate::error::ValkeyError;
use crate::keys;

/// One remembered record of a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub offset: Offset,
    pub key: Vec<u8>,
    pub digest: u64,
}

/// The probes of one topic's partitions.
#[derive(Clone)]
pub struct LogProbes {
    conn: Connection,
    topic: String,
}

impl std::fmt::Debug for LogProbes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogProbes")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl LogProbes {
    pub fn new(conn: Connection, topic: &str) -> Self {
        Self {
            conn,
            topic: topic.to_owned(),
        }
    }

    /// The probe of `partition`, if one was taken (and Valkey kept it).
    pub async fn get(&self, partition: i32) -> Result<Option<Probe>, ValkeyError> {
        let (offset, key, digest): (Option<u64>, Option<Vec<u8>>, Option<u64>) =
            redis::cmd("HMGET")
                .arg(keys::log_probe(&self.topic, partition))
                .arg("offset")
                .arg("key")
                .arg("digest")
                .query_async(&mut self.conn.clone())
                .await?;
        Ok(match (offset, key, digest) {
            (Some(offset), Some(key), Some(digest)) => Some(Probe {
                offset: Offset(offset),
                key,
                digest,
            }),
            _ => None,
        })
    }

    /// Remembers `probe` for `partition`, replacing the one before.
    pub async fn set(&self, partition: i32, probe: &Probe) -> Result<(), ValkeyError> {
        let _: () = self
            .conn
            .clone()
            .hset_multiple(
                keys::log_probe(&self.topic, partition),
                &[
                    ("offset", probe.offset.0.to_string().into_bytes()),
                    ("key", probe.key.clone()),
                    ("digest", probe.digest.to_string().into_bytes()),
                ],
            )
            .await?;
        Ok(())
    }
}
