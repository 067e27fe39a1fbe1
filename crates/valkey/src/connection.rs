//! Where Valkey is and the one connection type every store uses: a standalone server or a
//! Valkey Cluster.
//!
//! `AGENTWIRE_VALKEY_URL` names either
//! - one server: `redis://host:port[/db]` (or `rediss://`, `unix://`), or
//! - a cluster: its seed nodes separated by commas (`redis://h1:7000,redis://h2:7001`), or one
//!   seed with the `+cluster` scheme (`redis+cluster://h1:7000`, also `valkey+cluster://`).
//!   The client learns the rest of the topology from the seeds and follows it as it changes.
//!
//! On a cluster every key and script touches one slot (the session's or the tenant's hash
//! tag, see `keys.rs`); pipelines are split by slot by their callers.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::error::ValkeyError;

/// How long a new connection may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request may wait for its answer.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect attempts of one request before it fails.
const RETRIES: u32 = 2;
/// Hash slots of a Valkey Cluster.
pub const SLOTS: u16 = 16_384;

/// A parsed `AGENTWIRE_VALKEY_URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValkeyUrl {
    /// One standalone server.
    Single(String),
    /// The seed nodes of a cluster, as plain `redis://` URLs.
    Cluster(Vec<String>),
}

impl ValkeyUrl {
    /// Parses and checks a URL (see the module documentation for the forms).
    pub fn parse(url: &str) -> Result<Self, ValkeyError> {
        let url = url.trim();
        let invalid = |why: &str| ValkeyError::Config(format!("{why}: {url:?}"));
        let parsed = if url.contains(',') {
            let seeds: Vec<String> = url
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| plain_scheme(s).unwrap_or_else(|| s.to_owned()))
                .collect();
            if seeds.is_empty() {
                return Err(invalid("no seed node in the cluster URL"));
            }
            Self::Cluster(seeds)
        } else if let Some(plain) = plain_scheme(url) {
            Self::Cluster(vec![plain])
        } else {
            Self::Single(url.to_owned())
        };
        for node in parsed.nodes() {
            redis::Client::open(node.as_str())
                .map_err(|e| invalid(&format!("not a valid Valkey URL ({e})")))?;
        }
        Ok(parsed)
    }

    /// The URL of every node named.
    pub fn nodes(&self) -> &[String] {
        match self {
            Self::Single(url) => std::slice::from_ref(url),
            Self::Cluster(seeds) => seeds,
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// A cluster client (RESP3, so that it can carry pub/sub pushes when given a sender).
    pub(crate) fn cluster_builder(seeds: &[String]) -> ClusterClientBuilder {
        ClusterClientBuilder::new(seeds.to_vec())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(RETRIES)
            .use_protocol(redis::ProtocolVersion::RESP3)
    }
}

/// `redis+cluster://…` → `redis://…` (and the `valkey` form); `None` for other schemes.
/// (This build has no TLS: `rediss://` is refused at start-up.)
fn plain_scheme(url: &str) -> Option<String> {
    ["redis", "valkey"].iter().find_map(|scheme| {
        let rest = url.strip_prefix(&format!("{scheme}+cluster://"))?;
        Some(format!("{scheme}://{rest}"))
    })
}

/// A connection to a standalone Valkey or to a cluster, reconnecting on its own; cheap to
/// clone (clones share the underlying connections).
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "Connection::Single",
            Self::Cluster(_) => "Connection::Cluster",
        })
    }
}

impl Connection {
    /// Connects to what `url` names (see [`ValkeyUrl`]).
    pub async fn connect(url: &str) -> Result<Self, ValkeyError> {
        match ValkeyUrl::parse(url)? {
            ValkeyUrl::Single(url) => {
                let client = redis::Client::open(url)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(RETRIES as usize);
                Ok(Self::Single(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            ValkeyUrl::Cluster(seeds) => Ok(Self::Cluster(
                ValkeyUrl::cluster_builder(&seeds)
                    .build()?
                    .get_async_connection()
                    .await?,
            )),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The cluster hash slot of `key`: CRC16 of its hash tag (the part between the first `{` and
/// the next `}`, when not empty), or of the whole key.
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let close = bytes[open + 1..].iter().position(|b| *b == b'}')?;
            Some(&bytes[open + 1..open + 1 + close])
        })
        .filter(|tag| !tag.is_empty());
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(bytes)) % SLOTS
}

/// A short hash tag for every slot (`tags[s]` hashes to slot `s`), so that a key can be put
/// in the slot of another key without sharing its name.
pub fn slot_tag(slot: u16) -> &'static str {
    static TAGS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        let mut tags = vec![String::new(); usize::from(SLOTS)];
        let mut missing = usize::from(SLOTS);
        let mut n = 0u32;
        while missing > 0 {
            let tag = n.to_string();
            let s = usize::from(crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % SLOTS);
            if tags[s].is_empty() {
                tags[s] = tag;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    &TAGS[usize::from(slot % SLOTS)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_cluster_specification() {
        // Reference values from `CLUSTER KEYSLOT`.
        assert_eq!(slot("foo"), 12_182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("123456789"), 12_739);
        // An empty tag hashes the whole key.
        assert_eq!(slot("foo{}{bar}"), slot_whole("foo{}{bar}"));
    }

    fn slot_whole(key: &str) -> u16 {
        crc16::State::<crc16::XMODEM>::calculate(key.as_bytes()) % SLOTS
    }

    #[test]
    fn every_slot_has_a_tag_that_hashes_to_it() {
        for s in 0..SLOTS {
            assert_eq!(slot(&format!("x{{{}}}y", slot_tag(s))), s);
        }
    }

    #[test]
    fn urls_name_a_server_or_a_cluster() {
        assert_eq!(
            ValkeyUrl::parse("redis://127.0.0.1:6379").expect("single"),
            ValkeyUrl::Single("redis://127.0.0.1:6379".into())
        );
        assert_eq!(
            ValkeyUrl::parse("redis://a:1, redis://b:2").expect("seeds"),
            ValkeyUrl::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert_eq!(
            ValkeyUrl::parse("redis+cluster://a:1").expect("one seed"),
            ValkeyUrl::Cluster(vec!["redis://a:1".into()])
        );
        assert_eq!(
            ValkeyUrl::parse("valkey+cluster://a:1").expect("valkey seed"),
            ValkeyUrl::Cluster(vec!["valkey://a:1".into()])
        );
        assert!(ValkeyUrl::parse("http://a:1").is_err());
        assert!(ValkeyUrl::parse(",").is_err());
        assert!(ValkeyUrl::parse("redis://a:1,nonsense").is_err());
    }
}
