//! A session's history window: a capped Valkey stream of its recent events, written by the
//! relay (append + publish in one script) and read by the gateway for catch-up.

use std::time::Duration;

use agentwire_protocol::{Offset, SessionKey};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, Script};

use crate::error::ValkeyError;
use crate::keys;

static APPEND: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("lua/append.lua")));
static READ: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("lua/read.lua")));

/// How big and how long-lived each session's window is.
#[derive(Clone, Copy, Debug)]
pub struct HistorySettings {
    /// Approximate number of events kept per session (`XADD MAXLEN ~`).
    pub maxlen: u64,
    /// A session's window is dropped after this long without a new event.
    pub idle_ttl: Duration,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            maxlen: 10_000,
            idle_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// One event to append: the Kafka offset is its id in the window.
#[derive(Clone, Copy, Debug)]
pub struct Append<'a> {
    pub session: &'a SessionKey,
    pub offset: Offset,
    pub event_json: &'a str,
}

/// The answer to a window read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// The newest offset ever appended to this window, if any.
    pub latest: Option<Offset>,
    /// The newest offset trimmed out of the window, if any: a cursor below it cannot be
    /// served from this window.
    pub trimmed_through: Option<Offset>,
    /// Events after the cursor, in offset order.
    pub entries: Vec<(Offset, String)>,
}

impl Window {
    /// Whether every event after `after` that the window ever held is still in it.
    pub fn covers(&self, after: Option<Offset>) -> bool {
        match (self.trimmed_through, after) {
            (None, _) => true,
            (Some(_), None) => true,
            (Some(trimmed), Some(after)) => trimmed <= after,
        }
    }
}

/// Reads and writes session windows.
#[derive(Clone)]
pub struct HistoryStore {
    conn: ConnectionManager,
    settings: HistorySettings,
}

impl std::fmt::Debug for HistoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryStore")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl HistoryStore {
    /// Connects (and reconnects on its own after failures) to the Valkey at `url`.
    pub async fn connect(url: &str, settings: HistorySettings) -> Result<Self, ValkeyError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self { conn, settings })
    }

    /// Appends a batch in one pipeline. Each append is atomic (stream entry + publish) and
    /// idempotent (an offset already written is a no-op). Returns how many were new.
    pub async fn append_batch(&self, batch: &[Append<'_>]) -> Result<usize, ValkeyError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let ttl = self.settings.idle_ttl.as_secs().max(1);
        let invocations: Vec<_> = batch
            .iter()
            .map(|a| {
                let mut inv = APPEND.key(keys::history(a.session));
                inv.arg(a.offset.0)
                    .arg(a.event_json)
                    .arg(self.settings.maxlen)
                    .arg(keys::channel(a.session))
                    .arg(ttl);
                inv
            })
            .collect();
        let mut pipe = redis::pipe();
        // Loading first makes the batch survive a Valkey restart that lost its script cache.
        pipe.load_script(&APPEND).ignore();
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        let written: Vec<i64> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(written.iter().filter(|w| **w == 1).count())
    }

    /// Reads up to `limit` events after `after` (all of the window when `None`).
    pub async fn read_after(
        &self,
        session: &SessionKey,
        after: Option<Offset>,
        limit: usize,
    ) -> Result<Window, ValkeyError> {
        let start = match after {
            Some(after) => format!("({}", keys::entry_id(after)),
            None => "-".to_owned(),
        };
        let (last, deleted, raw): (String, String, Vec<(String, Vec<String>)>) = READ
            .key(keys::history(session))
            .arg(start)
            .arg(limit.max(1))
            .invoke_async(&mut self.conn.clone())
            .await?;
        let mut entries = Vec::with_capacity(raw.len());
        for (id, fields) in raw {
            let offset = keys::offset_of_entry_id(&id)
                .ok_or_else(|| ValkeyError::Reply(format!("unexpected entry id {id}")))?;
            let json = fields
                .into_iter()
                .nth(1)
                .ok_or_else(|| ValkeyError::Reply(format!("entry {id} has no event")))?;
            entries.push((offset, json));
        }
        Ok(Window {
            latest: keys::offset_of_entry_id(&last),
            trimmed_through: keys::offset_of_entry_id(&deleted),
            entries,
        })
    }

    /// The newest offset of a session's window, if it has one.
    pub async fn latest(&self, session: &SessionKey) -> Result<Option<Offset>, ValkeyError> {
        let window = self
            .read_after(session, Some(Offset(u64::MAX - 1)), 1)
            .await?;
        Ok(window.latest)
    }

    /// Checks that Valkey answers.
    pub async fn ping(&self) -> Result<(), ValkeyError> {
        let pong: String = self.conn.clone().ping().await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(ValkeyError::Reply(pong))
        }
    }
}
