//! Who follows what, with no I/O: channels (session channels and label feeds) to the
//! connections of this process that follow them, and the delivery of one publication to
//! every follower's mailbox.
//!
//! Each connection has one mailbox (see [`Outbox`]): a bounded queue for durable events and
//! annotations, a smaller one for ephemeral events, and a catch-up signal. Delivery never
//! waits and never grows a queue: a durable event that does not fit marks the follower
//! lagged and signals it (once) to catch up from history, where the event is; an ephemeral
//! event or an annotation that does not fit is shed and counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use agentwire_protocol::{Label, SessionKey, Tenant};
use agentwire_valkey::keys;
use tokio::sync::{mpsc, watch};

use super::publication::{Kind, Publication};

/// A channel connections follow.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// A session's channel: durable events (checked, with a cursor), annotations, ephemerals.
    Session(SessionKey),
    /// A tenant's label feed: annotations only, realtime (no cursor, no history).
    Label(Tenant, Label),
}

impl Channel {
    /// The Valkey channel it travels on.
    pub fn name(&self) -> String {
        match self {
            Channel::Session(session) => keys::channel(session),
            Channel::Label(tenant, label) => keys::label_channel(tenant, label.as_str()),
        }
    }
}

/// The sending side of one connection's mailbox, shared by all its follows.
#[derive(Debug)]
pub struct Outbox {
    id: u64,
    durable: mpsc::Sender<Arc<Publication>>,
    ephemeral: mpsc::Sender<Arc<Publication>>,
    catch_up: mpsc::UnboundedSender<SessionKey>,
}

/// The receiving side: what the connection's driver reads.
#[derive(Debug)]
pub struct Inbox {
    pub durable: mpsc::Receiver<Arc<Publication>>,
    pub ephemeral: mpsc::Receiver<Arc<Publication>>,
    /// Sessions whose live events did not fit (or may have been missed): read history.
    pub catch_up: mpsc::UnboundedReceiver<SessionKey>,
}

/// A new mailbox: `durable` and `ephemeral` publications fit before more are lagged or shed.
pub fn mailbox(id: u64, durable: usize, ephemeral: usize) -> (Arc<Outbox>, Inbox) {
    let (durable_tx, durable_rx) = mpsc::channel(durable.max(1));
    let (ephemeral_tx, ephemeral_rx) = mpsc::channel(ephemeral.max(1));
    let (catch_up_tx, catch_up_rx) = mpsc::unbounded_channel();
    let outbox = Outbox {
        id,
        durable: durable_tx,
        ephemeral: ephemeral_tx,
        catch_up: catch_up_tx,
    };
    let inbox = Inbox {
        durable: durable_rx,
        ephemeral: ephemeral_rx,
        catch_up: catch_up_rx,
    };
    (Arc::new(outbox), inbox)
}

/// One connection's follow of one channel.
#[derive(Clone, Debug)]
pub struct Follower {
    outbox: Arc<Outbox>,
    /// Set when a durable event did not fit; cleared by the connection when it starts the
    /// catch-up. A signal is sent only when it flips, so the signal queue stays as small as
    /// the number of follows.
    lagged: Arc<AtomicBool>,
}

impl Outbox {
    /// The connection's id, unique in this process.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Follower {
    pub fn new(outbox: Arc<Outbox>) -> Self {
        Self {
            outbox,
            lagged: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The flag the connection clears when it catches up.
    pub fn lag_flag(&self) -> Arc<AtomicBool> {
        self.lagged.clone()
    }

    /// Asks the connection to read `session`'s history after its cursor (once until it
    /// starts that read); `true` if this asked (it had not been asked yet).
    pub fn signal_catch_up(&self, session: &SessionKey) -> bool {
        if self.lagged.swap(true, Ordering::AcqRel) {
            return false;
        }
        // A closed mailbox: the connection is gone.
        let _ = self.outbox.catch_up.send(session.clone());
        true
    }

    /// Whether the follower was asked to catch up and has not started yet.
    fn is_lagged(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }
}

/// What one delivery did, for the caller's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub queued: u64,
    /// Followers this durable event did not fit and that were asked to catch up.
    pub lagged: u64,
    /// Ephemeral events or annotations that did not fit, dropped.
    pub shed: u64,
}

/// Puts `publication` in every follower's mailbox, never waiting.
///
/// Order is what makes this lossless: once a durable event of a session did not fit a
/// follower's mailbox, no later event of any session it is lagging on is queued for it
/// until the connection starts its catch-up read (which then reads them all from history).
/// Otherwise a later event could be delivered first and move the cursor past the gap.
pub fn deliver<'a>(
    followers: impl IntoIterator<Item = &'a Follower>,
    publication: &Arc<Publication>,
) -> Tally {
    let mut tally = Tally::default();
    for follower in followers {
        if matches!(publication.kind, Kind::Event(_)) && follower.is_lagged() {
            continue; // history has it: the catch-up asked for reads it
        }
        let queue = match publication.kind {
            Kind::Ephemeral => &follower.outbox.ephemeral,
            _ => &follower.outbox.durable,
        };
        match queue.try_send(publication.clone()) {
            Ok(()) => tally.queued += 1,
            Err(mpsc::error::TrySendError::Full(_)) => match publication.kind {
                Kind::Event(_) => {
                    tally.lagged += u64::from(follower.signal_catch_up(&publication.session));
                }
                Kind::Annotation(_) | Kind::Labelled(_) | Kind::Ephemeral => tally.shed += 1,
            },
            // The connection is gone; its follow is being dropped.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
    tally
}

#[derive(Debug)]
struct Entry {
    channel: Channel,
    /// Copied on write: a delivery takes a snapshot and sends without the registry's lock.
    followers: Arc<Vec<(u64, Follower)>>,
    /// `true` once Valkey confirmed the subscription on the current feed connection.
    confirmed: watch::Sender<bool>,
}

/// Channels and their followers.
#[derive(Debug, Default)]
pub struct Registry {
    channels: HashMap<String, Entry>,
    /// How many of `channels` are session channels (kept, not counted on every follow).
    sessions: usize,
}

/// The result of a follow.
#[derive(Debug)]
pub struct Followed {
    pub confirmed: watch::Receiver<bool>,
    /// The channel had no follower: the feed must SUBSCRIBE.
    pub first: bool,
}

impl Registry {
    /// Adds `follower` (the connection `id`) to `channel`.
    pub fn follow(
        &mut self,
        channel: &Channel,
        name: String,
        id: u64,
        follower: Follower,
    ) -> Followed {
        let first = !self.channels.contains_key(&name);
        let entry = self.channels.entry(name).or_insert_with(|| {
            if let Channel::Session(_) = channel {
                self.sessions += 1;
            }
            Entry {
                channel: channel.clone(),
                followers: Arc::new(Vec::new()),
                confirmed: watch::channel(false).0,
            }
        });
        Arc::make_mut(&mut entry.followers).push((id, follower));
        Followed {
            confirmed: entry.confirmed.subscribe(),
            first,
        }
    }

    /// Removes the connection `id` from `name`; the channel if that was its last follower
    /// (the feed may UNSUBSCRIBE).
    pub fn unfollow(&mut self, name: &str, id: u64) -> Option<Channel> {
        let entry = self.channels.get_mut(name)?;
        let followers = Arc::make_mut(&mut entry.followers);
        if let Some(at) = followers.iter().position(|(f, _)| *f == id) {
            followers.swap_remove(at);
        }
        if followers.is_empty() {
            let channel = self.channels.remove(name).map(|e| e.channel);
            if let Some(Channel::Session(_)) = channel {
                self.sessions -= 1;
            }
            return channel;
        }
        None
    }

    /// A snapshot of the followers of `name`.
    pub fn followers(&self, name: &str) -> Option<Arc<Vec<(u64, Follower)>>> {
        self.channels.get(name).map(|e| e.followers.clone())
    }

    pub fn is_followed(&self, name: &str) -> bool {
        self.channels.contains_key(name)
    }

    /// Every followed channel, by name.
    pub fn channels(&self) -> Vec<(String, Channel)> {
        self.channels
            .iter()
            .map(|(name, e)| (name.clone(), e.channel.clone()))
            .collect()
    }

    /// Session channels followed.
    pub fn sessions(&self) -> usize {
        self.sessions
    }

    pub fn confirm(&self, name: &str) {
        if let Some(entry) = self.channels.get(name) {
            entry.confirmed.send_replace(true);
        }
    }

    /// The feed connection is gone: nothing is confirmed until it resubscribes.
    pub fn unconfirm_all(&self) {
        for entry in self.channels.values() {
            entry.confirmed.send_replace(false);
        }
    }

    /// Tells every follower of `session` to read history after its cursor (and holds its
    /// later live events back until it does); how many were asked.
    pub fn resync(&self, session: &SessionKey) -> u64 {
        let name = keys::channel(session);
        let Some(entry) = self.channels.get(&name) else {
            return 0;
        };
        entry
            .followers
            .iter()
            .map(|(_, follower)| u64::from(follower.signal_catch_up(session)))
            .sum()
    }

    /// Tells every follower of every session channel to read history after its cursor
    /// (publications may have been missed while the feed was down). Label feeds have no
    /// history: they only resubscribe.
    pub fn resync_all(&self) -> u64 {
        let mut asked = 0;
        for entry in self.channels.values() {
            if let Channel::Session(session) = &entry.channel {
                for (_, follower) in entry.followers.iter() {
                    asked += u64::from(follower.signal_catch_up(session));
                }
            }
        }
        asked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentwire_protocol::Offset;
    use agentwire_valkey::{LiveEphemeral, LiveMessage};

    fn session() -> SessionKey {
        "t:a:s".parse().expect("key")
    }

    fn event(offset: u64) -> Arc<Publication> {
        Arc::new(Publication::event(LiveMessage {
            session: session(),
            offset: Offset(offset),
            event_json: "{}".into(),
            meta: Default::default(),
        }))
    }

    fn ephemeral() -> Arc<Publication> {
        Arc::new(Publication::ephemeral(LiveEphemeral {
            session: session(),
            event_json: "{}".into(),
        }))
    }

    #[test]
    fn the_first_follow_subscribes_and_the_last_unfollow_unsubscribes() {
        let mut registry = Registry::default();
        let channel = Channel::Session(session());
        let (a, _ia) = mailbox(1, 4, 4);
        let (b, _ib) = mailbox(2, 4, 4);
        assert!(
            registry
                .follow(&channel, channel.name(), 1, Follower::new(a))
                .first
        );
        assert!(
            !registry
                .follow(&channel, channel.name(), 2, Follower::new(b))
                .first
        );
        assert_eq!(registry.sessions(), 1);
        assert_eq!(registry.unfollow(&channel.name(), 1), None);
        assert_eq!(registry.unfollow(&channel.name(), 2), Some(channel.clone()));
        assert_eq!(registry.sessions(), 0);
        assert!(!registry.is_followed(&channel.name()));
    }

    #[test]
    fn a_full_mailbox_lags_durable_events_once_and_sheds_ephemerals() {
        let (outbox, mut inbox) = mailbox(1, 2, 1);
        let follower = Follower::new(outbox);
        let followers = vec![follower.clone()];
        let tallies: Vec<Tally> = (1..=4).map(|o| deliver(&followers, &event(o))).collect();
        assert_eq!(tallies.iter().map(|t| t.queued).sum::<u64>(), 2);
        assert_eq!(
            tallies.iter().map(|t| t.lagged).sum::<u64>(),
            1,
            "asked once"
        );
        assert_eq!(inbox.catch_up.try_recv().ok(), Some(session()));
        assert!(inbox.catch_up.try_recv().is_err());
        // Room again, but nothing after the gap is queued before the catch-up starts.
        assert!(inbox.durable.try_recv().is_ok());
        assert_eq!(deliver(&followers, &event(5)).queued, 0);
        follower.lag_flag().store(false, Ordering::Release);
        assert_eq!(deliver(&followers, &event(6)).queued, 1);
        assert_eq!(
            inbox.durable.try_recv().map(|p| p.kind).ok(),
            Some(Kind::Event(Offset(2)))
        );
        assert_eq!(
            inbox.durable.try_recv().map(|p| p.kind).ok(),
            Some(Kind::Event(Offset(6)))
        );

        assert_eq!(deliver(&followers, &ephemeral()).queued, 1);
        assert_eq!(deliver(&followers, &ephemeral()).shed, 1);
        assert_eq!(
            inbox.ephemeral.try_recv().map(|p| p.kind).ok(),
            Some(Kind::Ephemeral)
        );
    }

    #[test]
    fn a_resync_signals_session_followers_not_label_followers() {
        let mut registry = Registry::default();
        let sessions = Channel::Session(session());
        let labels = Channel::Label(
            Tenant::new("t").expect("tenant"),
            Label::new("billing").expect("label"),
        );
        let (a, mut ia) = mailbox(1, 4, 4);
        let (b, mut ib) = mailbox(2, 4, 4);
        registry.follow(&sessions, sessions.name(), 1, Follower::new(a));
        registry.follow(&labels, labels.name(), 2, Follower::new(b));
        assert_eq!(registry.sessions(), 1, "a label feed is not a session");
        assert_eq!(registry.resync_all(), 1);
        assert_eq!(ia.catch_up.try_recv().ok(), Some(session()));
        assert!(ib.catch_up.try_recv().is_err());
    }
}
