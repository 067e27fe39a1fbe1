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
static ANNOTATE: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("lua/annotate.lua")));
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

/// What precedes the first entry of a window read, as the relay recorded it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Link {
    /// The read returned no entry.
    #[default]
    NoEntries,
    /// The window started at the first entry (a new session, or a window lost to eviction,
    /// expiry or a Valkey restart): what came before it is not known here.
    Start,
    /// The offset of the session's event before the first entry.
    After(Offset),
}

/// The answer to a window read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// The newest offset ever appended to this window, if the window exists.
    pub latest: Option<Offset>,
    /// The newest offset trimmed out of the window, if any.
    pub trimmed_through: Option<Offset>,
    /// Events after the cursor, in offset order.
    pub entries: Vec<(Offset, String)>,
    /// What precedes `entries[0]`.
    pub before_first: Link,
    /// The read stopped at its count or byte bound: entries after the last one may follow.
    pub more: bool,
}

/// A range of the session's events that the window cannot serve: offsets strictly after
/// `after`, and strictly before `until` (to the end of the log when `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    pub after: Offset,
    pub until: Option<Offset>,
}

impl Window {
    /// The part of the session's history after `after` that this read does not prove
    /// complete, if any. `None` when every event after `after` is in `entries` or will be
    /// announced live (the window's chain reaches back to the cursor).
    pub fn gap(&self, after: Offset) -> Option<Gap> {
        match (self.before_first, self.entries.first()) {
            // No window at all: it expired or was lost, and events after the cursor may exist.
            (_, None) if self.latest.is_none() => Some(Gap { after, until: None }),
            // The window exists and holds nothing after the cursor.
            (_, None) => None,
            (Link::After(previous), Some(_)) if previous <= after => None,
            (_, Some((first, _))) => Some(Gap {
                after,
                until: Some(*first),
            }),
        }
    }
}

/// What [`HistoryStore::annotate`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Annotated {
    Published,
    /// This offset (or a later one) was annotated before: nothing published.
    Replay,
    /// The annotated event is not in the session's window yet: try again shortly.
    EventNotYetAnnounced,
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

    /// Announces an enrichment of the event at `offset` to the session's subscribers and to
    /// `label_channels`, once per offset (see `lua/annotate.lua`). With `force` false it
    /// waits for the event itself to be in the window, so subscribers see the event first.
    pub async fn annotate(
        &self,
        session: &SessionKey,
        offset: Offset,
        annotation_json: &str,
        label_channels: &[String],
        force: bool,
    ) -> Result<Annotated, ValkeyError> {
        let ttl = self.settings.idle_ttl.as_secs().max(1);
        let mut invocation = ANNOTATE.key(keys::annotated(session));
        invocation
            .key(keys::history(session))
            .arg(offset.0)
            .arg(annotation_json)
            .arg(keys::channel(session))
            .arg(ttl)
            .arg(if force { "1" } else { "0" });
        for channel in label_channels {
            invocation.arg(channel);
        }
        let outcome: i64 = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(match outcome {
            1 => Annotated::Published,
            0 => Annotated::Replay,
            _ => Annotated::EventNotYetAnnounced,
        })
    }

    /// Reads up to `limit` events after `after` (all of the window when `None`).
    pub async fn read_after(
        &self,
        session: &SessionKey,
        after: Option<Offset>,
        limit: usize,
    ) -> Result<Window, ValkeyError> {
        self.read_page(session, after, limit, usize::MAX).await
    }

    /// Like [`HistoryStore::read_after`], and stops before the events' JSON would exceed
    /// `max_bytes` in all (one event at least, however large, so a reader always progresses).
    pub async fn read_page(
        &self,
        session: &SessionKey,
        after: Option<Offset>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Window, ValkeyError> {
        let start = match after {
            Some(after) => format!("({}", keys::entry_id(after)),
            None => "-".to_owned(),
        };
        type Reply = (String, String, Vec<(String, Vec<String>)>, i64);
        let (last, deleted, raw, more): Reply = READ
            .key(keys::history(session))
            .arg(start)
            .arg(limit.max(1))
            // Lua numbers are doubles: any budget above 2^53 bytes is unbounded anyway.
            .arg(u64::try_from(max_bytes).unwrap_or(u64::MAX).min(1 << 53))
            .invoke_async(&mut self.conn.clone())
            .await?;
        let mut entries = Vec::with_capacity(raw.len());
        let mut before_first = Link::NoEntries;
        for (index, (id, fields)) in raw.into_iter().enumerate() {
            let offset = keys::offset_of_entry_id(&id)
                .ok_or_else(|| ValkeyError::Reply(format!("unexpected entry id {id}")))?;
            let mut fields = fields.into_iter();
            let json = fields
                .nth(1)
                .ok_or_else(|| ValkeyError::Reply(format!("entry {id} has no event")))?;
            if index == 0 {
                // Fields are `e <json> p <previous offset or ''>`; entries without `p` predate
                // the chain and count as a start.
                before_first = match fields.nth(1).and_then(|p| p.parse().ok()) {
                    Some(previous) => Link::After(Offset(previous)),
                    None => Link::Start,
                };
            }
            entries.push((offset, json));
        }
        Ok(Window {
            latest: keys::offset_of_entry_id(&last),
            trimmed_through: keys::offset_of_entry_id(&deleted),
            entries,
            before_first,
            more: more == 1,
        })
    }

    /// The newest offset of a session's window, if it has one.
    pub async fn latest(&self, session: &SessionKey) -> Result<Option<Offset>, ValkeyError> {
        let window = self
            .read_after(session, Some(Offset(u64::MAX - 1)), 1)
            .await?;
        Ok(window.latest)
    }

    /// Publishes an ephemeral event on the session's channel: fanned out to whoever follows
    /// the session now, never stored. Returns how many gateway feeds received it.
    pub async fn publish_ephemeral(
        &self,
        session: &SessionKey,
        event_json: &str,
    ) -> Result<u64, ValkeyError> {
        let receivers: u64 = redis::cmd("PUBLISH")
            .arg(keys::channel(session))
            .arg(crate::live::ephemeral_message(event_json))
            .query_async(&mut self.connection())
            .await?;
        Ok(receivers)
    }

    /// The connection, shared with other Valkey-backed parts of the same process.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn window(latest: Option<u64>, before_first: Link, entries: &[u64]) -> Window {
        Window {
            latest: latest.map(Offset),
            trimmed_through: None,
            entries: entries
                .iter()
                .map(|o| (Offset(*o), String::new()))
                .collect(),
            before_first,
            more: false,
        }
    }

    #[test]
    fn a_chain_that_reaches_the_cursor_has_no_gap() {
        assert_eq!(
            window(Some(9), Link::After(Offset(5)), &[7, 9]).gap(Offset(5)),
            None
        );
        assert_eq!(
            window(Some(9), Link::After(Offset(3)), &[7, 9]).gap(Offset(5)),
            None
        );
        assert_eq!(window(Some(9), Link::NoEntries, &[]).gap(Offset(9)), None);
    }

    #[test]
    fn a_broken_or_trimmed_chain_leaves_a_gap_up_to_the_first_entry() {
        let trimmed = window(Some(9), Link::After(Offset(6)), &[7, 9]).gap(Offset(2));
        assert_eq!(
            trimmed,
            Some(Gap {
                after: Offset(2),
                until: Some(Offset(7))
            })
        );
        let restarted = window(Some(9), Link::Start, &[7, 9]).gap(Offset(2));
        assert_eq!(
            restarted,
            Some(Gap {
                after: Offset(2),
                until: Some(Offset(7))
            })
        );
        let lost = window(None, Link::NoEntries, &[]).gap(Offset(2));
        assert_eq!(
            lost,
            Some(Gap {
                after: Offset(2),
                until: None
            })
        );
    }
}
