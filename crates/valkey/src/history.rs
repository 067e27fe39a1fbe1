//! A session's history window: a capped Valkey stream of its recent events, written by the
//! relay (append + publish in one script) and read by the gateway for catch-up.

use std::time::Duration;

use agentwire_protocol::{Offset, SessionKey};
use redis::{AsyncCommands as _, Script};

use crate::connection::{Connection, slot};
use crate::error::ValkeyError;
use crate::keys;

mod annotations;

pub use annotations::{Annotated, Annotation, UNVERSIONED_MARK};

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
    /// The source topic and partition of the record (the relay's mark is kept per partition,
    /// and on a cluster per partition and slot: [`HistoryStore::mark_scope`]).
    pub topic: &'a str,
    pub partition: i32,
    pub offset: Offset,
    pub event_json: &'a str,
    /// The offset of the same partition (and mark scope) the relay appended last, if it knows
    /// one: a mark below it means Valkey lost appends (see `lua/append.lua`).
    pub expected: Option<Offset>,
    /// What the announcement carries besides the event, not stored: [`LiveMeta::encode`].
    pub meta: &'a str,
}

/// What [`HistoryStore::append_batch`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// Entries new to their windows (the rest were replays).
    pub written: usize,
    /// Partitions of the batch in which Valkey was found to have lost acknowledged appends.
    pub rollbacks: usize,
    /// Records whose offset the session's window already holds for another record: the log
    /// was reset under this Valkey (see `lua/append.lua`). They were not written.
    pub mismatches: usize,
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

/// Whether a live announcement of an event agrees with the session's window.
///
/// The relay writes the window entry and announces it in one script (`lua/append.lua`), so a
/// genuine announcement always finds its entry (or finds it trimmed or expired since); an
/// announcement that finds none, or a different event, was not sent by the relay: anyone who
/// can `PUBLISH` on the channel could have sent it to push followers' cursors forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveCheck {
    /// The window holds this event at this offset.
    Genuine,
    /// The window contradicts the announcement; the reason is a short metric label.
    Forged(&'static str),
    /// The window cannot tell (it expired, or trimmed that offset): read history instead.
    Unverifiable,
}

impl Window {
    /// Checks an announcement of `event_json` at `offset` against this window, read from
    /// just before `offset` (the first entry, if any, is the first at or after `offset`).
    pub fn check_live(&self, offset: Offset, event_json: &str) -> LiveCheck {
        match self.entries.first() {
            Some((first, json)) if *first == offset && json == event_json => LiveCheck::Genuine,
            Some((first, _)) if *first == offset => LiveCheck::Forged("differs_from_window"),
            _ => match self.latest {
                None => LiveCheck::Unverifiable,
                Some(latest) if latest < offset => LiveCheck::Forged("ahead_of_window"),
                _ if self.trimmed_through.is_some_and(|t| t >= offset) => LiveCheck::Unverifiable,
                _ => LiveCheck::Forged("not_in_window"),
            },
        }
    }
}

/// Reads and writes session windows.
#[derive(Clone)]
pub struct HistoryStore {
    conn: Connection,
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
    /// Connects (and reconnects on its own after failures) to the Valkey or the Valkey
    /// Cluster at `url` (see [`crate::ValkeyUrl`]).
    pub async fn connect(url: &str, settings: HistorySettings) -> Result<Self, ValkeyError> {
        let conn = Connection::connect(url).await?;
        Ok(Self { conn, settings })
    }

    /// What the relay's mark of a partition is kept per besides the partition: `None` on a
    /// standalone Valkey (one mark per partition), the session's slot on a cluster, where a
    /// script may only touch keys of one slot (one mark per partition and slot).
    pub fn mark_scope(&self, session: &SessionKey) -> Option<u16> {
        self.conn
            .is_cluster()
            .then(|| slot(&keys::history(session)))
    }

    /// The command that announces on a session channel: sharded pub/sub on a cluster, so
    /// that an announcement travels only within the session's shard.
    fn publish_verb(&self) -> &'static str {
        if self.conn.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Appends a batch in one pipeline (on a cluster, one pipeline per slot, sent at once).
    /// Each append is atomic (stream entry + publish) and idempotent (an offset already
    /// written is a no-op); appends of one session keep their order.
    pub async fn append_batch(&self, batch: &[Append<'_>]) -> Result<Appended, ValkeyError> {
        if batch.is_empty() {
            return Ok(Appended::default());
        }
        let ttl = self.settings.idle_ttl.as_secs().max(1);
        let mut pipes: std::collections::BTreeMap<Option<u16>, redis::Pipeline> =
            std::collections::BTreeMap::new();
        for a in batch {
            let scope = self.mark_scope(a.session);
            let mut inv = APPEND.key(keys::history(a.session));
            inv.key(keys::relay_mark(a.topic, a.partition, scope))
                .arg(a.offset.0)
                .arg(a.event_json)
                .arg(self.settings.maxlen)
                .arg(keys::channel(a.session))
                .arg(ttl)
                .arg(a.expected.map(|o| o.0.to_string()).unwrap_or_default())
                .arg(self.publish_verb())
                .arg(a.meta);
            pipes
                .entry(scope)
                .or_insert_with(|| {
                    let mut pipe = redis::pipe();
                    // Loading first makes the batch survive a Valkey restart that lost its
                    // script cache (on a cluster: the node that owns the slot).
                    pipe.load_script(&APPEND).ignore();
                    pipe
                })
                .invoke_script(&inv);
        }
        let replies: Vec<Vec<i64>> =
            futures::future::try_join_all(pipes.values().map(|pipe| async move {
                pipe.query_async::<Vec<i64>>(&mut self.conn.clone()).await
            }))
            .await?;
        let replies: Vec<i64> = replies.into_iter().flatten().collect();
        Ok(Appended {
            written: replies.iter().filter(|r| *r & 1 == 1).count(),
            rollbacks: replies.iter().filter(|r| *r & 2 == 2).count(),
            mismatches: replies.iter().filter(|r| *r & 4 == 4).count(),
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

    /// Checks a live announcement against the session's window (one script call; see
    /// [`LiveCheck`]).
    pub async fn check_live(
        &self,
        session: &SessionKey,
        offset: Offset,
        event_json: &str,
    ) -> Result<LiveCheck, ValkeyError> {
        let before = offset.0.checked_sub(1).map(Offset);
        let window = self.read_after(session, before, 1).await?;
        Ok(window.check_live(offset, event_json))
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
        let receivers: u64 = redis::cmd(self.publish_verb())
            .arg(keys::channel(session))
            .arg(crate::live::ephemeral_message(event_json))
            .query_async(&mut self.connection())
            .await?;
        Ok(receivers)
    }

    /// How big and how long-lived windows are.
    pub fn settings(&self) -> &HistorySettings {
        &self.settings
    }

    /// The connection, shared with other Valkey-backed parts of the same process.
    pub fn connection(&self) -> Connection {
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

    fn holding(latest: Option<u64>, trimmed: Option<u64>, entry: Option<(u64, &str)>) -> Window {
        Window {
            latest: latest.map(Offset),
            trimmed_through: trimmed.map(Offset),
            entries: entry
                .map(|(o, json)| (Offset(o), json.to_owned()))
                .into_iter()
                .collect(),
            before_first: Link::Start,
            more: false,
        }
    }

    #[test]
    fn live_announcements_are_checked_against_the_window() {
        let live = |w: &Window, offset| w.check_live(Offset(offset), "{\"e\":1}");
        let genuine = holding(Some(9), None, Some((7, "{\"e\":1}")));
        assert_eq!(live(&genuine, 7), LiveCheck::Genuine);
        let other = holding(Some(9), None, Some((7, "{\"e\":2}")));
        assert_eq!(live(&other, 7), LiveCheck::Forged("differs_from_window"));
        assert_eq!(
            live(&holding(Some(9), None, None), 1000),
            LiveCheck::Forged("ahead_of_window")
        );
        assert_eq!(
            live(&holding(Some(9), None, Some((9, "x"))), 8),
            LiveCheck::Forged("not_in_window")
        );
        assert_eq!(
            live(&holding(Some(9), Some(8), Some((9, "x"))), 8),
            LiveCheck::Unverifiable,
            "trimmed since"
        );
        assert_eq!(
            live(&holding(None, None, None), 3),
            LiveCheck::Unverifiable,
            "no window"
        );
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
