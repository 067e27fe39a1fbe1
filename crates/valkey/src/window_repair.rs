//! A replay drill's view of session windows: reading entries with their chain links to
//! compare them with the log, and rebuilding a window from the log while the relay keeps
//! appending (staged under its own key, then swapped in by `lua/swap_window.lua`).

use agentwire_protocol::{Offset, SessionKey};
use redis::Script;

use crate::connection::Connection;
use crate::error::ValkeyError;
use crate::history::HistoryStore;
use crate::keys;

static SWAP: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("lua/swap_window.lua")));

/// How long a staged window may outlive a drill that stopped before swapping it in.
const STAGED_TTL_SECS: u64 = 3600;

/// One window entry as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEntry {
    pub offset: Offset,
    pub json: String,
    /// The `p` field: the offset of the session's entry before this one (`None` when the
    /// window's chain starts here).
    pub previous: Option<Offset>,
}

/// A slice of a session's window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowSlice {
    /// The oldest offset the window holds now, `None` when it does not exist.
    pub first: Option<Offset>,
    /// The newest offset it holds now.
    pub top: Option<Offset>,
    /// Entries with offsets in the asked range, in order.
    pub entries: Vec<StoredEntry>,
}

type RawEntry = (String, Vec<String>);

fn entry(raw: RawEntry) -> Result<StoredEntry, ValkeyError> {
    let (id, fields) = raw;
    let offset = keys::offset_of_entry_id(&id)
        .ok_or_else(|| ValkeyError::Reply(format!("unexpected entry id {id}")))?;
    let mut json = None;
    let mut previous = None;
    for pair in fields.chunks(2) {
        match (pair.first().map(String::as_str), pair.get(1)) {
            (Some("e"), Some(value)) => json = Some(value.clone()),
            (Some("p"), Some(value)) => previous = value.parse().ok().map(Offset),
            _ => {}
        }
    }
    Ok(StoredEntry {
        offset,
        json: json.ok_or_else(|| ValkeyError::Reply(format!("entry {id} has no event")))?,
        previous,
    })
}

fn first_id(raw: &[RawEntry]) -> Option<Offset> {
    raw.first().and_then(|(id, _)| keys::offset_of_entry_id(id))
}

impl HistoryStore {
    fn conn(&self) -> Connection {
        self.connection()
    }

    /// The window's bounds and its entries with offsets in `[from, through]`.
    pub async fn window_slice(
        &self,
        session: &SessionKey,
        from: Offset,
        through: Offset,
    ) -> Result<WindowSlice, ValkeyError> {
        let key = keys::history(session);
        // One transaction: an append (and its trimming) between the reads would make a
        // trimmed entry look missing.
        let (first, last, range): (Vec<RawEntry>, Vec<RawEntry>, Vec<RawEntry>) = redis::pipe()
            .atomic()
            .cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .cmd("XREVRANGE")
            .arg(&key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .cmd("XRANGE")
            .arg(&key)
            .arg(keys::entry_id(from))
            .arg(keys::entry_id(through))
            .query_async(&mut self.conn())
            .await?;
        Ok(WindowSlice {
            first: first_id(&first),
            top: first_id(&last),
            entries: range.into_iter().map(entry).collect::<Result<_, _>>()?,
        })
    }

    /// Appends rebuilt entries to the session's staged window (see [`HistoryStore::swap_window`]),
    /// in order, trimmed to the window's bound as it grows. `fresh` drops what an earlier,
    /// unfinished rebuild staged.
    pub async fn stage_entries(
        &self,
        session: &SessionKey,
        entries: &[StoredEntry],
        fresh: bool,
    ) -> Result<(), ValkeyError> {
        let key = keys::history_rebuild(session);
        let mut pipe = redis::pipe();
        if fresh {
            pipe.cmd("DEL").arg(&key).ignore();
        }
        for e in entries {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.settings().maxlen)
                .arg(keys::entry_id(e.offset))
                .arg("e")
                .arg(&e.json)
                .arg("p")
                .arg(e.previous.map(|p| p.0.to_string()).unwrap_or_default())
                .ignore();
        }
        pipe.cmd("EXPIRE").arg(&key).arg(STAGED_TTL_SECS).ignore();
        let () = pipe.query_async(&mut self.conn()).await?;
        Ok(())
    }

    /// Swaps the staged window in for the live one, keeping live entries after `read_through`
    /// (relayed while the drill read the log). `before_first`: the session's record before the
    /// staged window's first entry. Returns how many live entries were kept, `None` when the
    /// window was deleted (nothing staged, nothing live after `read_through`).
    pub async fn swap_window(
        &self,
        session: &SessionKey,
        read_through: Offset,
        before_first: Option<Offset>,
    ) -> Result<Option<u64>, ValkeyError> {
        let ttl = self.settings().idle_ttl.as_secs().max(1);
        let moved: i64 = SWAP
            .key(keys::history(session))
            .key(keys::history_rebuild(session))
            .arg(read_through.0)
            .arg(ttl)
            .arg(self.settings().maxlen)
            .arg(before_first.map(|o| o.0.to_string()).unwrap_or_default())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(u64::try_from(moved).ok())
    }
}
