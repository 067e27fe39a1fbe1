//! The pure part of a WebSocket connection: which sessions it follows and, for each, the
//! cursor that makes delivery exactly-once per connection. No I/O here; `driver.rs` feeds it.
//!
//! Rules (see `docs/protocol.md`):
//! - A session's cursor starts at the subscription's `after` (or at the session's latest
//!   offset for "only new events"); an event is delivered only if its offset is strictly
//!   greater than the cursor, which then moves to it. History and live messages may overlap
//!   at the seam, after a lag or after a feed resync: the cursor drops the overlap.
//! - A connection follows at most `max_subscriptions` sessions and label feeds together
//!   (each costs a Valkey subscription and a broadcast receiver), each once.

use std::collections::{HashMap, HashSet};

use agentwire_protocol::{ErrorCode, Label, Offset, ProtocolError, SessionKey, Tenant};

/// Whether an event reaches the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    /// At or below the cursor: already delivered (or before the resume point).
    Duplicate,
    /// The connection does not follow the session (an unsubscribe raced the event).
    NotFollowed,
}

/// One followed session's delivery cursor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The last offset delivered (or resumed after); `None` before the first event.
    last: Option<Offset>,
}

impl Cursor {
    pub fn new(after: Option<Offset>) -> Self {
        Self { last: after }
    }

    /// Delivers `offset` if it is after the cursor, moving the cursor to it.
    pub fn admit(&mut self, offset: Offset) -> Verdict {
        if self.last.is_some_and(|last| offset <= last) {
            return Verdict::Duplicate;
        }
        self.last = Some(offset);
        Verdict::Deliver
    }

    pub fn last(&self) -> Option<Offset> {
        self.last
    }
}

/// A tenant's label feed.
pub type Feed = (Tenant, Label);

/// The sessions and label feeds one connection follows.
#[derive(Debug)]
pub struct Subscriptions {
    cursors: HashMap<SessionKey, Cursor>,
    feeds: HashSet<Feed>,
    max: usize,
}

impl Subscriptions {
    pub fn new(max_subscriptions: usize) -> Self {
        Self {
            cursors: HashMap::new(),
            feeds: HashSet::new(),
            max: max_subscriptions,
        }
    }

    /// Checks that `session` may be subscribed now (before any I/O is done for it).
    pub fn check_subscribe(&self, session: &SessionKey) -> Result<(), ProtocolError> {
        if self.cursors.contains_key(session) {
            return Err(ProtocolError::new(
                ErrorCode::AlreadySubscribed,
                format!("this connection already follows {session}"),
            ));
        }
        self.check_room()
    }

    /// Checks that one more session or feed fits the connection's limit.
    fn check_room(&self) -> Result<(), ProtocolError> {
        if self.len() >= self.max {
            return Err(ProtocolError::new(
                ErrorCode::TooManySubscriptions,
                format!(
                    "a connection may follow at most {} sessions and label feeds together",
                    self.max
                ),
            ));
        }
        Ok(())
    }

    /// Whether the connection follows `feed`.
    pub fn follows_feed(&self, feed: &Feed) -> bool {
        self.feeds.contains(feed)
    }

    /// Checks that `feed`, not followed yet, may be followed now (before any I/O for it).
    pub fn check_follow_feed(&self) -> Result<(), ProtocolError> {
        self.check_room()
    }

    /// Starts following `feed`.
    pub fn insert_feed(&mut self, feed: Feed) {
        self.feeds.insert(feed);
    }

    /// Stops following `feed` (a no-op if not followed).
    pub fn remove_feed(&mut self, feed: &Feed) {
        self.feeds.remove(feed);
    }

    /// Starts following `session` with its cursor at `after`.
    pub fn insert(&mut self, session: SessionKey, after: Option<Offset>) {
        self.cursors.insert(session, Cursor::new(after));
    }

    /// `Ok` when `session` is followed, else the `not_subscribed` error.
    pub fn check_followed(&self, session: &SessionKey) -> Result<(), ProtocolError> {
        if self.cursors.contains_key(session) {
            Ok(())
        } else {
            Err(ProtocolError::new(
                ErrorCode::NotSubscribed,
                format!("this connection does not follow {session}"),
            ))
        }
    }

    /// Stops following `session`.
    pub fn remove(&mut self, session: &SessionKey) -> Result<(), ProtocolError> {
        match self.cursors.remove(session) {
            Some(_) => Ok(()),
            None => Err(ProtocolError::new(
                ErrorCode::NotSubscribed,
                format!("this connection does not follow {session}"),
            )),
        }
    }

    /// Decides whether an event of `session` at `offset` is delivered.
    pub fn admit(&mut self, session: &SessionKey, offset: Offset) -> Verdict {
        match self.cursors.get_mut(session) {
            Some(cursor) => cursor.admit(offset),
            None => Verdict::NotFollowed,
        }
    }

    /// Whether the connection's cursor for `session` has reached `offset` (that event, or a
    /// later one, was delivered or lies before the cursor it resumed from).
    pub fn delivered(&self, session: &SessionKey, offset: Offset) -> bool {
        self.cursors
            .get(session)
            .and_then(Cursor::last)
            .is_some_and(|last| last >= offset)
    }

    /// Moves the cursor of `session` forward to `offset` (never back): events up to it are
    /// gone from the log and can no longer be delivered.
    pub fn skip_to(&mut self, session: &SessionKey, offset: Offset) {
        if let Some(cursor) = self.cursors.get_mut(session) {
            let _ = cursor.admit(offset);
        }
    }

    /// Where a catch-up read of `session` starts (exclusive); `None` if not followed.
    pub fn cursor(&self, session: &SessionKey) -> Option<Cursor> {
        self.cursors.get(session).copied()
    }

    /// Sessions and feeds followed.
    pub fn len(&self) -> usize {
        self.cursors.len() + self.feeds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(s: &str) -> SessionKey {
        format!("t:a:{s}").parse().expect("key")
    }

    #[test]
    fn the_cursor_drops_the_overlap_between_history_and_live() {
        let mut subs = Subscriptions::new(10);
        subs.insert(key("s"), Some(Offset(41)));
        let history = [42, 45, 47];
        let live = [45, 47, 50];
        let delivered: Vec<u64> = history
            .iter()
            .chain(live.iter())
            .filter(|o| subs.admit(&key("s"), Offset(**o)) == Verdict::Deliver)
            .copied()
            .collect();
        assert_eq!(delivered, vec![42, 45, 47, 50]);
        assert_eq!(subs.admit(&key("s"), Offset(41)), Verdict::Duplicate);
        assert_eq!(subs.admit(&key("other"), Offset(99)), Verdict::NotFollowed);
    }

    #[test]
    fn subscribe_rules_have_codes() {
        let mut subs = Subscriptions::new(1);
        subs.check_subscribe(&key("a")).expect("first");
        subs.insert(key("a"), None);
        assert_eq!(
            subs.check_subscribe(&key("a")).expect_err("dup").code(),
            ErrorCode::AlreadySubscribed
        );
        assert_eq!(
            subs.check_subscribe(&key("b")).expect_err("max").code(),
            ErrorCode::TooManySubscriptions
        );
        assert_eq!(
            subs.remove(&key("b")).expect_err("not").code(),
            ErrorCode::NotSubscribed
        );
        subs.remove(&key("a")).expect("remove");
        assert!(subs.is_empty());
    }

    #[test]
    fn sessions_and_feeds_share_one_limit() {
        let feed = |l: &str| {
            (
                Tenant::new("t").expect("tenant"),
                Label::new(l).expect("label"),
            )
        };
        let mut subs = Subscriptions::new(2);
        subs.check_follow_feed().expect("room");
        subs.insert_feed(feed("billing"));
        subs.check_subscribe(&key("a")).expect("room");
        subs.insert(key("a"), None);
        assert_eq!(
            subs.check_subscribe(&key("b")).expect_err("full").code(),
            ErrorCode::TooManySubscriptions
        );
        assert_eq!(
            subs.check_follow_feed().expect_err("full").code(),
            ErrorCode::TooManySubscriptions
        );
        assert!(subs.follows_feed(&feed("billing")));
        subs.remove_feed(&feed("billing"));
        subs.check_subscribe(&key("b")).expect("room again");
        assert_eq!(subs.len(), 1);
    }

    proptest! {
        /// Whatever order and repetition history and live messages arrive in, what is
        /// delivered is strictly increasing and above the resume point.
        #[test]
        fn deliveries_strictly_increase(after in proptest::option::of(0u64..50), offsets in proptest::collection::vec(0u64..100, 0..200)) {
            let mut cursor = Cursor::new(after.map(Offset));
            let mut last = after;
            for o in offsets {
                if cursor.admit(Offset(o)) == Verdict::Deliver {
                    prop_assert!(last.is_none_or(|l| o > l));
                    last = Some(o);
                }
            }
            prop_assert_eq!(cursor.last(), last.map(Offset));
        }
    }
}
