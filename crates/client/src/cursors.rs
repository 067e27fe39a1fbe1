//! Resume bookkeeping for [`crate::Subscriber`], pure and socket-free: per session, the
//! offset a subscription started after and the last offset handed to the caller.
//!
//! Offsets are Kafka offsets, one sequence per session, and `after` is exclusive: resuming
//! with `after = last delivered` asks the server for exactly the events not yet seen. A
//! session with no offset yet that must not skip anything (followed from the start of the
//! log, or subscribed while its partition was empty) resumes `from: earliest`. The admit
//! check is the defence in depth on top of that: an event at or below the cursor is a
//! duplicate (a replay overlapping the live stream, or a server bug) and is dropped.

use std::collections::BTreeMap;

use agentwire_protocol::{Offset, SessionKey, Start};

/// What to do with an incoming event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// New for its session: hand it to the caller (the cursor has moved to it).
    Deliver,
    /// At or below the cursor: already delivered, or before the subscription's start.
    Duplicate,
    /// For a session that is not followed.
    Unfollowed,
}

#[derive(Clone, Debug, Default)]
struct Cursor {
    /// The `after` the caller subscribed with (exclusive); `None` means "only new events",
    /// or every event when `from_start`.
    start: Option<Offset>,
    /// With no offset to resume after, resume from the log's first retained event: the
    /// caller asked for it, or the session's partition was empty when it was subscribed (so
    /// every event of the session is new to the subscription).
    from_start: bool,
    /// The last offset delivered to the caller.
    last: Option<Offset>,
    /// The epoch the server gave these offsets; sent back on resume so a reset log is told
    /// apart from "caught up" (`epoch_changed`).
    epoch: Option<String>,
}

impl Cursor {
    /// The exclusive lower bound of what may still be delivered (`None` sorts lowest).
    fn floor(&self) -> Option<Offset> {
        self.last.max(self.start)
    }

    /// Where a (re-)subscription starts.
    fn resume(&self) -> Start {
        match self.floor() {
            Some(after) => Start::After(after),
            None if self.from_start => Start::Earliest,
            None => Start::New,
        }
    }
}

/// The cursors of every followed session, plus a count of dropped events.
#[derive(Clone, Debug, Default)]
pub struct Cursors {
    sessions: BTreeMap<SessionKey, Cursor>,
    dropped: u64,
}

impl Cursors {
    pub fn new() -> Self {
        Self::default()
    }

    /// Follows `session` from `after` (exclusive). Following a session again keeps what was
    /// already delivered: the cursor never moves backwards, so nothing is delivered twice;
    /// a later `after` than the last delivery skips ahead.
    pub fn follow(&mut self, session: SessionKey, after: Option<Offset>) {
        let cursor = self.sessions.entry(session).or_default();
        cursor.start = after;
    }

    /// Like [`Cursors::follow`] from `start`: [`Start::Earliest`] asks for every event the log
    /// still holds, and keeps asking for it until something is delivered.
    pub fn follow_from(&mut self, session: SessionKey, start: Start) {
        let earliest = start == Start::Earliest;
        self.follow(session.clone(), start.after());
        if earliest && let Some(cursor) = self.sessions.get_mut(&session) {
            cursor.from_start = true;
        }
    }

    /// Records the server's answer to a subscription for only new events: the session's
    /// latest offset becomes its resume point; with none (its partition was empty) every
    /// later event of the session is new, so it resumes from the start of the log.
    pub fn subscribed_new(&mut self, session: &SessionKey, latest: Option<Offset>) {
        let Some(cursor) = self.sessions.get_mut(session) else {
            return;
        };
        match latest {
            Some(latest) => cursor.start = Some(latest),
            None => cursor.from_start = true,
        }
    }

    /// Stops following `session`; later events for it are [`Admit::Unfollowed`].
    pub fn unfollow(&mut self, session: &SessionKey) {
        self.sessions.remove(session);
    }

    pub fn is_following(&self, session: &SessionKey) -> bool {
        self.sessions.contains_key(session)
    }

    /// Decides on an event at `offset` for `session`, moving the cursor when it is delivered
    /// and counting it when it is dropped.
    pub fn admit(&mut self, session: &SessionKey, offset: Offset) -> Admit {
        let verdict = match self.sessions.get_mut(session) {
            None => Admit::Unfollowed,
            Some(cursor) if cursor.floor().is_some_and(|floor| offset <= floor) => Admit::Duplicate,
            Some(cursor) => {
                cursor.last = Some(offset);
                Admit::Deliver
            }
        };
        if verdict != Admit::Deliver {
            self.dropped += 1;
        }
        verdict
    }

    /// The `after` to re-subscribe `session` with: the later of the last delivered offset
    /// and the `after` it was followed from. `None` when nothing was delivered and the
    /// subscription asked for new events only.
    pub fn resume_after(&self, session: &SessionKey) -> Option<Offset> {
        self.sessions.get(session).and_then(Cursor::floor)
    }

    /// Records the epoch of `session`'s offsets, from the server's `subscribed`.
    pub fn set_epoch(&mut self, session: &SessionKey, epoch: Option<String>) {
        if let Some(cursor) = self.sessions.get_mut(session) {
            cursor.epoch = epoch;
        }
    }

    /// Every followed session with where to (re-)subscribe it from and the epoch of its
    /// offsets, in key order.
    pub fn resume_points(&self) -> Vec<(SessionKey, Start, Option<String>)> {
        self.sessions
            .iter()
            .map(|(s, c)| (s.clone(), c.resume(), c.epoch.clone()))
            .collect()
    }

    /// The last delivered offset of each session that had a delivery.
    pub fn last_offsets(&self) -> BTreeMap<SessionKey, Offset> {
        self.sessions
            .iter()
            .filter_map(|(s, c)| c.last.map(|last| (s.clone(), last)))
            .collect()
    }

    /// How many events were dropped as duplicates or for unfollowed sessions.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> SessionKey {
        s.parse().expect("valid session key")
    }

    #[test]
    fn delivers_increasing_offsets_and_drops_repeats() {
        let mut cursors = Cursors::new();
        let s = key("t:a:s");
        cursors.follow(s.clone(), None);
        assert_eq!(cursors.admit(&s, Offset(5)), Admit::Deliver);
        assert_eq!(cursors.admit(&s, Offset(9)), Admit::Deliver);
        assert_eq!(cursors.admit(&s, Offset(9)), Admit::Duplicate);
        assert_eq!(cursors.admit(&s, Offset(7)), Admit::Duplicate);
        assert_eq!(cursors.admit(&s, Offset(10)), Admit::Deliver);
        assert_eq!(cursors.dropped(), 2);
        assert_eq!(cursors.last_offsets().get(&s), Some(&Offset(10)));
    }

    #[test]
    fn resumes_after_the_last_delivery_or_the_original_after() {
        let mut cursors = Cursors::new();
        let (fresh, replayed, live) = (key("t:a:fresh"), key("t:a:replayed"), key("t:a:live"));
        cursors.follow(fresh.clone(), Some(Offset(41)));
        cursors.follow(replayed.clone(), Some(Offset(41)));
        cursors.follow(live.clone(), None);
        assert_eq!(cursors.admit(&replayed, Offset(50)), Admit::Deliver);
        cursors.set_epoch(&replayed, Some("e1".into()));
        assert_eq!(
            cursors.resume_points(),
            vec![
                (fresh, Start::After(Offset(41)), None),
                (live, Start::New, None),
                (replayed, Start::After(Offset(50)), Some("e1".into()))
            ]
        );
    }

    #[test]
    fn a_session_with_no_offset_yet_resumes_from_the_start_when_it_must_not_skip() {
        let mut cursors = Cursors::new();
        let (empty, busy, replay) = (key("t:a:empty"), key("t:a:busy"), key("t:a:replay"));
        cursors.follow(empty.clone(), None);
        cursors.follow(busy.clone(), None);
        cursors.follow_from(replay.clone(), Start::Earliest);
        // The server found `empty`'s partition empty, and `busy`'s at offset 9.
        cursors.subscribed_new(&empty, None);
        cursors.subscribed_new(&busy, Some(Offset(9)));
        let starts = |cursors: &Cursors| -> Vec<Start> {
            cursors.resume_points().into_iter().map(|p| p.1).collect()
        };
        assert_eq!(
            starts(&cursors),
            vec![Start::After(Offset(9)), Start::Earliest, Start::Earliest]
        );
        // The first delivery gives each its cursor.
        assert_eq!(cursors.admit(&empty, Offset(0)), Admit::Deliver);
        assert_eq!(cursors.admit(&replay, Offset(3)), Admit::Deliver);
        assert_eq!(
            starts(&cursors),
            vec![
                Start::After(Offset(9)),
                Start::After(Offset(0)),
                Start::After(Offset(3))
            ]
        );
    }

    #[test]
    fn events_at_or_before_the_start_are_duplicates() {
        let mut cursors = Cursors::new();
        let s = key("t:a:s");
        cursors.follow(s.clone(), Some(Offset(41)));
        assert_eq!(cursors.admit(&s, Offset(41)), Admit::Duplicate);
        assert_eq!(cursors.admit(&s, Offset(42)), Admit::Deliver);
    }

    #[test]
    fn following_again_never_moves_the_cursor_back_but_may_skip_ahead() {
        let mut cursors = Cursors::new();
        let s = key("t:a:s");
        cursors.follow(s.clone(), None);
        assert_eq!(cursors.admit(&s, Offset(8)), Admit::Deliver);
        cursors.follow(s.clone(), Some(Offset(2)));
        assert_eq!(cursors.resume_after(&s), Some(Offset(8)));
        assert_eq!(cursors.admit(&s, Offset(3)), Admit::Duplicate);
        cursors.follow(s.clone(), Some(Offset(20)));
        assert_eq!(cursors.resume_after(&s), Some(Offset(20)));
        assert_eq!(cursors.admit(&s, Offset(15)), Admit::Duplicate);
    }

    #[test]
    fn unfollowed_sessions_are_dropped_and_counted() {
        let mut cursors = Cursors::new();
        let s = key("t:a:s");
        assert_eq!(cursors.admit(&s, Offset(1)), Admit::Unfollowed);
        cursors.follow(s.clone(), None);
        cursors.unfollow(&s);
        assert!(!cursors.is_following(&s));
        assert_eq!(cursors.admit(&s, Offset(2)), Admit::Unfollowed);
        assert_eq!((cursors.dropped(), cursors.resume_after(&s)), (2, None));
    }
}
