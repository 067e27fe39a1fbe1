//! The hub: one Valkey pub/sub connection per gateway process, one Valkey subscription per
//! followed session, fanned out to every WebSocket connection of this process that follows it.
//!
//! Each followed session has a bounded `broadcast` channel. A connection that falls more than
//! `capacity` messages behind gets `Lagged` from it and catches up from history: the channel
//! never grows and a slow reader never slows the feed or the other readers. The channel (two
//! rings: durable and ephemeral) is created at the session's first message, not when it is
//! followed: a followed session that stays quiet holds no ring (see [`crate::live_feed`]).
//!
//! Invariants:
//! - [`Hub::follow`] returns only after Valkey confirmed the subscription, so a history read
//!   made afterwards plus the live messages received afterwards cover every event (the seam).
//! - SUBSCRIBE and UNSUBSCRIBE are issued by one task, in the order follows and unfollows
//!   happened, so a session followed again right after its last follower left stays subscribed.
//! - When the feed connection is lost, the hub reconnects, subscribes every followed session
//!   again and sends [`Live::Resync`] to every follower: messages published meanwhile were
//!   missed by pub/sub and must be read from history.
//! - A live event is never trusted on its own word: anyone who can `PUBLISH` on a session
//!   channel could announce `<huge offset>\n<json>` and push every follower's cursor past all
//!   real events (cursor poisoning). Before delivery each announced event must name the
//!   channel's session and be found, identical, at its offset in the session's window (one
//!   script call per event per process, pipelined: checks run concurrently, deliveries keep
//!   the order of arrival). One that contradicts the window is dropped, counted
//!   (`agentwire_gateway_live_forged_total`) and logged as an error; one the window cannot
//!   confirm (expired, trimmed, Valkey unreachable) is dropped too, and its followers re-read
//!   history after their cursors ([`Live::Resync`]), which only the relay writes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentwire_protocol::frames::event_frame_json;
use agentwire_protocol::{Offset, SessionKey};
use agentwire_valkey::{
    Announcement, HistoryStore, LiveAnnotation, LiveCheck, LiveEphemeral, LiveMessage, LiveStream,
    LiveSubscriptions, connect_live,
};
use axum::extract::ws::Utf8Bytes;
use backon::{ExponentialBuilder, Retryable as _};
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::live_feed::{Handoff, LiveFeed};
use crate::metrics as m;

/// How long a follow may wait for Valkey to confirm the subscription, queueing included.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// The first pause before the live feed tries to reconnect (it doubles up to 2 s).
const RETRY_FIRST_DELAY: Duration = Duration::from_millis(50);
/// Queued SUBSCRIBE/UNSUBSCRIBE requests; a full queue makes `follow` wait (backpressure), up
/// to [`CONFIRM_TIMEOUT`]: a Valkey that stopped answering must not hold a connection forever.
const COMMAND_QUEUE: usize = 1024;
/// Announcements being checked against their windows at once; when full, the feed stops
/// reading from Valkey until the oldest check is done (backpressure, never a drop).
const CHECKS_IN_FLIGHT: usize = 256;

/// A live message and its JSON frame, built once for every follower of this process.
#[derive(Debug)]
pub struct Framed<T> {
    pub message: T,
    /// The JSON text frame clients receive (cheap to clone: shared bytes).
    pub frame: Utf8Bytes,
}

/// What a follower receives for its session.
#[derive(Clone, Debug)]
pub enum Live {
    /// A new event of the session, as the relay announced it.
    Event(Arc<Framed<LiveMessage>>),
    /// The enricher's annotation of an event of the session (realtime only; the durable
    /// copy is in `agent.enriched`).
    Annotation(Arc<LiveAnnotation>),
    /// The feed was interrupted: events may have been missed; read history after the cursor.
    Resync,
}

/// The feed is down or did not confirm a subscription in time.
#[derive(Debug, thiserror::Error)]
#[error("the live feed could not subscribe: {0}")]
pub struct HubError(String);

impl HubError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

enum Command {
    Subscribe(SessionKey),
    Unsubscribe(SessionKey),
}

type EphemeralItem = Arc<Framed<LiveEphemeral>>;

struct Entry {
    /// Created at the session's first message.
    rings: Option<Rings>,
    /// Followers that joined before the rings existed, waiting for their receivers.
    waiting: Vec<(Handoff<Live>, Handoff<EphemeralItem>)>,
    followers: usize,
    /// `true` once Valkey confirmed the subscription on the current feed connection.
    confirmed: watch::Sender<bool>,
}

struct Rings {
    sender: broadcast::Sender<Live>,
    /// Ephemeral messages have their own, smaller channel: a slow reader sheds them first,
    /// and they never push durable events out of the durable channel.
    ephemeral: broadcast::Sender<EphemeralItem>,
}

impl Entry {
    /// The session's rings, created (and handed to every waiting follower, before anything is
    /// sent on them) on first use.
    fn rings(&mut self, capacity: usize, ephemeral_capacity: usize) -> &Rings {
        let waiting = &mut self.waiting;
        self.rings.get_or_insert_with(|| {
            let (sender, _) = broadcast::channel(capacity);
            let (ephemeral, _) = broadcast::channel(ephemeral_capacity);
            for (live, shed) in waiting.drain(..) {
                // A follower that left meanwhile dropped its end: nothing to hand over.
                let _ = live.send(sender.subscribe());
                let _ = shed.send(ephemeral.subscribe());
            }
            metrics::gauge!(m::LIVE_RINGS).increment(1.0);
            Rings { sender, ephemeral }
        })
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if self.rings.is_some() {
            metrics::gauge!(m::LIVE_RINGS).decrement(1.0);
        }
    }
}

struct Shared {
    sessions: Mutex<HashMap<SessionKey, Entry>>,
    commands: mpsc::Sender<Command>,
    /// Where live events are checked before delivery.
    windows: HistoryStore,
    capacity: usize,
    ephemeral_capacity: usize,
}

impl Shared {
    /// Sends `live` to the followers of `session` (creating its rings at its first message).
    fn send(&self, session: &SessionKey, live: Live) {
        if let Some(entry) = self.sessions().get_mut(session) {
            // No receivers is fine: the last follower is leaving.
            let _ = entry
                .rings(self.capacity, self.ephemeral_capacity)
                .sender
                .send(live);
        }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<SessionKey, Entry>> {
        // A panic while holding the lock leaves the map itself consistent.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Shares live session feeds between the connections of one gateway process.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

/// A connection's hold on one session's feed; dropping it unfollows.
#[derive(Debug)]
pub struct Follow {
    session: SessionKey,
    receiver: Option<LiveFeed<Live>>,
    ephemeral: Option<LiveFeed<EphemeralItem>>,
    hub: Hub,
}

impl Follow {
    /// Takes the live feed (once); the hold stays until this value is dropped.
    pub fn take_receiver(&mut self) -> Option<LiveFeed<Live>> {
        self.receiver.take()
    }

    /// Takes the ephemeral messages' feed (once).
    pub fn take_ephemeral(&mut self) -> Option<LiveFeed<EphemeralItem>> {
        self.ephemeral.take()
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.hub.unfollow(&self.session);
    }
}

impl Hub {
    /// Starts the feed task for the Valkey at `url`. The first connection is made before this
    /// returns, so a wrong URL fails start-up; later losses are retried forever.
    /// Live events are checked against the session windows of `windows` before delivery.
    pub async fn start(
        url: &str,
        windows: HistoryStore,
        capacity: usize,
        ephemeral_capacity: usize,
        shutdown: CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), agentwire_valkey::ValkeyError> {
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        let hub = Hub {
            shared: Arc::new(Shared {
                sessions: Mutex::new(HashMap::new()),
                commands,
                windows,
                capacity: capacity.max(1),
                ephemeral_capacity: ephemeral_capacity.max(1),
            }),
        };
        let first = connect_live(url).await?;
        let task = tokio::spawn(feed(hub.clone(), url.to_owned(), first, queue, shutdown));
        Ok((hub, task))
    }

    /// Follows `session`, returning once Valkey confirmed the subscription.
    pub async fn follow(&self, session: &SessionKey) -> Result<Follow, HubError> {
        let (receiver, ephemeral, mut confirmed, subscribe) = {
            let mut sessions = self.shared.sessions();
            let created = !sessions.contains_key(session);
            let entry = sessions.entry(session.clone()).or_insert_with(|| Entry {
                rings: None,
                waiting: Vec::new(),
                followers: 0,
                confirmed: watch::channel(false).0,
            });
            entry.followers += 1;
            let (receiver, ephemeral) = match &entry.rings {
                Some(rings) => (
                    LiveFeed::active(rings.sender.subscribe()),
                    LiveFeed::active(rings.ephemeral.subscribe()),
                ),
                None => {
                    // Followers that left before the first message leave closed handoffs.
                    entry.waiting.retain(|(live, _)| !live.is_closed());
                    let (receiver, live) = LiveFeed::waiting();
                    let (ephemeral, shed) = LiveFeed::waiting();
                    entry.waiting.push((live, shed));
                    (receiver, ephemeral)
                }
            };
            let confirmed = entry.confirmed.subscribe();
            if created {
                metrics::gauge!(m::LIVE_SESSIONS).set(sessions.len() as f64);
            }
            (receiver, ephemeral, confirmed, created)
        };
        // From here on the hold is released by `Follow`'s drop, also on the error paths.
        let follow = Follow {
            session: session.clone(),
            receiver: Some(receiver),
            ephemeral: Some(ephemeral),
            hub: self.clone(),
        };
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        if subscribe {
            let queued = self
                .shared
                .commands
                .send(Command::Subscribe(session.clone()));
            match tokio::time::timeout_at(deadline, queued).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(HubError("the gateway is shutting down".into())),
                Err(_) => {
                    return Err(HubError(format!(
                        "the live feed's queue stayed full for {CONFIRM_TIMEOUT:?}: valkey is not keeping up"
                    )));
                }
            }
        }
        match tokio::time::timeout_at(deadline, confirmed.wait_for(|c| *c)).await {
            Ok(Ok(_)) => Ok(follow),
            Ok(Err(_)) => Err(HubError("the session feed was closed".into())),
            Err(_) => Err(HubError(format!(
                "valkey did not confirm within {CONFIRM_TIMEOUT:?}"
            ))),
        }
    }

    fn unfollow(&self, session: &SessionKey) {
        let mut sessions = self.shared.sessions();
        let Some(entry) = sessions.get_mut(session) else {
            return;
        };
        entry.followers -= 1;
        if entry.followers == 0 {
            sessions.remove(session);
            metrics::gauge!(m::LIVE_SESSIONS).set(sessions.len() as f64);
            // A full queue or a stopped feed only leaves a subscription that delivers to
            // nobody until the next reconnect; it is never a correctness problem.
            let _ = self
                .shared
                .commands
                .try_send(Command::Unsubscribe(session.clone()));
        }
    }

    /// Sessions followed by at least one connection of this process.
    pub fn followed(&self) -> usize {
        self.shared.sessions().len()
    }

    fn dispatch(&self, announcement: Announcement) {
        let (session, live) = match announcement {
            Announcement::Event(m) => {
                let frame = event_frame_json(&m.session, m.offset, &m.event_json).into();
                let session = m.session.clone();
                (session, Live::Event(Arc::new(Framed { message: m, frame })))
            }
            Announcement::Annotation(a) => (a.session.clone(), Live::Annotation(Arc::new(a))),
            Announcement::Ephemeral(e) => {
                let frame = format!(
                    r#"{{"op":"ephemeral","session":"{}","event":{}}}"#,
                    e.session, e.event_json
                )
                .into();
                let shared = &self.shared;
                if let Some(entry) = shared.sessions().get_mut(&e.session) {
                    let rings = entry.rings(shared.capacity, shared.ephemeral_capacity);
                    let _ = rings.ephemeral.send(Arc::new(Framed { message: e, frame }));
                }
                return;
            }
        };
        self.shared.send(&session, live);
    }

    /// Starts the check of one announcement; what it resolves to is delivered in order by
    /// [`Hub::deliver`]. Events of sessions nobody here follows are not checked (nor sent).
    fn check(&self, announcement: Announcement) -> BoxFuture<'static, Checked> {
        let Announcement::Event(message) = announcement else {
            return Box::pin(std::future::ready(Checked::Deliver(announcement)));
        };
        if !self.is_followed(&message.session) {
            return Box::pin(std::future::ready(Checked::Unfollowed));
        }
        if !names_session(&message.event_json, &message.session) {
            return Box::pin(std::future::ready(Checked::Forged {
                session: message.session,
                offset: message.offset,
                reason: "wrong_session",
            }));
        }
        let windows = self.shared.windows.clone();
        Box::pin(async move {
            let (session, offset) = (message.session.clone(), message.offset);
            match windows
                .check_live(&session, offset, &message.event_json)
                .await
            {
                Ok(LiveCheck::Genuine) => Checked::Deliver(Announcement::Event(message)),
                Ok(LiveCheck::Forged(reason)) => Checked::Forged {
                    session,
                    offset,
                    reason,
                },
                Ok(LiveCheck::Unverifiable) => Checked::Unverified {
                    session,
                    offset,
                    why: "the window does not hold that offset (expired or trimmed)".into(),
                },
                Err(err) => Checked::Unverified {
                    session,
                    offset,
                    why: format!("the window could not be read: {err}"),
                },
            }
        })
    }

    /// Delivers a checked announcement, or drops a rejected one and resyncs its followers.
    fn deliver(&self, checked: Checked) {
        match checked {
            Checked::Deliver(announcement) => self.dispatch(announcement),
            Checked::Unfollowed => {}
            Checked::Forged {
                session,
                offset,
                reason,
            } => {
                metrics::counter!(m::LIVE_FORGED, "reason" => reason).increment(1);
                tracing::error!(
                    %session,
                    %offset,
                    reason,
                    "DROPPED A FORGED LIVE PUBLICATION: it contradicts the session's window; someone other than the relay can PUBLISH on session channels (check Valkey's password and ACLs)"
                );
                self.resync(&session);
            }
            Checked::Unverified {
                session,
                offset,
                why,
            } => {
                metrics::counter!(m::LIVE_FORGED, "reason" => "unverifiable").increment(1);
                tracing::warn!(%session, %offset, why = %why, "live event not confirmed by the window; its followers re-read history");
                self.resync(&session);
            }
        }
    }

    /// Tells the followers of `session` to read history after their cursors.
    fn resync(&self, session: &SessionKey) {
        self.shared.send(session, Live::Resync);
    }

    fn is_followed(&self, session: &SessionKey) -> bool {
        self.shared.sessions().contains_key(session)
    }

    fn followed_sessions(&self) -> Vec<SessionKey> {
        self.shared.sessions().keys().cloned().collect()
    }

    fn confirm(&self, session: &SessionKey) {
        if let Some(entry) = self.shared.sessions().get(session) {
            entry.confirmed.send_replace(true);
        }
    }

    /// Marks every subscription unconfirmed (the feed connection is gone).
    fn unconfirm_all(&self) {
        for entry in self.shared.sessions().values() {
            entry.confirmed.send_replace(false);
        }
    }

    /// Every follower re-reads history (a quiet session's waiting followers too: they may
    /// have missed messages while the feed was down).
    fn resync_all(&self) {
        let shared = &self.shared;
        for entry in shared.sessions().values_mut() {
            let rings = entry.rings(shared.capacity, shared.ephemeral_capacity);
            let _ = rings.sender.send(Live::Resync);
        }
    }
}

/// An announcement after its check.
enum Checked {
    Deliver(Announcement),
    /// An event of a session nobody here follows: nothing to do.
    Unfollowed,
    /// The window contradicts it.
    Forged {
        session: SessionKey,
        offset: Offset,
        reason: &'static str,
    },
    /// The window could not confirm it.
    Unverified {
        session: SessionKey,
        offset: Offset,
        why: String,
    },
}

/// Whether `event_json` is a JSON object naming `session` (`tenant`, `agenttype`,
/// `sessionid`), as every event the relay announces on that session's channel does.
fn names_session(event_json: &str, session: &SessionKey) -> bool {
    #[derive(serde::Deserialize)]
    struct Names<'a> {
        #[serde(borrow)]
        tenant: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        agenttype: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        sessionid: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<Names<'_>>(event_json).is_ok_and(|n| {
        n.tenant == session.tenant.as_str()
            && n.agenttype == session.agent_type.as_str()
            && n.sessionid == session.session_id.as_str()
    })
}

/// The feed task: applies subscription commands in order, checks and dispatches messages
/// in order, and reconnects (resubscribing and resyncing every session) whenever the
/// connection is lost.
async fn feed(
    hub: Hub,
    url: String,
    first: (LiveSubscriptions, LiveStream),
    mut queue: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) {
    let mut checks: FuturesOrdered<BoxFuture<'static, Checked>> = FuturesOrdered::new();
    let mut connection = Some(first);
    loop {
        let (mut subs, mut stream) = match connection.take() {
            Some(c) => c,
            None => {
                hub.unconfirm_all();
                let attempt = || connect_live(&url);
                let retry = attempt
                    .retry(ExponentialBuilder::default().with_min_delay(RETRY_FIRST_DELAY).with_max_delay(Duration::from_secs(2)).without_max_times().with_jitter())
                    .notify(|err, after| tracing::warn!(error = %err, retry_in = ?after, "live feed reconnect failed"))
                    .when(|_| !shutdown.is_cancelled());
                let connected = tokio::select! {
                    c = retry => c,
                    () = shutdown.cancelled() => return,
                };
                match connected {
                    Ok(c) => {
                        metrics::counter!(m::FEED_RECONNECTS).increment(1);
                        tracing::info!("live feed reconnected; resubscribing followed sessions");
                        c
                    }
                    Err(_) => return,
                }
            }
        };
        if !resubscribe(&hub, &mut subs).await {
            continue;
        }
        hub.resync_all();
        loop {
            tokio::select! {
                command = queue.recv() => {
                    let Some(command) = command else { return };
                    if !apply(&hub, &mut subs, command).await {
                        break;
                    }
                }
                message = stream.next(), if checks.len() < CHECKS_IN_FLIGHT => match message {
                    Some(message) => checks.push_back(hub.check(message)),
                    None => {
                        tracing::warn!("live feed connection lost");
                        break;
                    }
                },
                Some(checked) = checks.next() => hub.deliver(checked),
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// Subscribes every followed session on a fresh connection. `false` if the connection failed.
async fn resubscribe(hub: &Hub, subs: &mut LiveSubscriptions) -> bool {
    for session in hub.followed_sessions() {
        if let Err(err) = subs.subscribe(&session).await {
            tracing::warn!(error = %err, "live feed resubscribe failed");
            return false;
        }
        hub.confirm(&session);
    }
    true
}

/// Applies one command. `false` if the connection failed (the caller reconnects, and the
/// reconnect resubscribes whatever is followed then, so the command is not lost).
async fn apply(hub: &Hub, subs: &mut LiveSubscriptions, command: Command) -> bool {
    let result = match &command {
        Command::Subscribe(session) => subs.subscribe(session).await.map(|()| hub.confirm(session)),
        // Followed again since the unfollow was queued: keep the subscription, or the new
        // follower would miss what is published between this UNSUBSCRIBE and its SUBSCRIBE.
        Command::Unsubscribe(session) if hub.is_followed(session) => Ok(()),
        Command::Unsubscribe(session) => subs.unsubscribe(session).await,
    };
    match result {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(error = %err, "live feed command failed; reconnecting");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_events_must_name_their_channels_session() {
        let session: SessionKey = "acme:planner:s1".parse().expect("key");
        let event = r#"{"type":"agent.message","tenant":"acme","agenttype":"planner","sessionid":"s1","text":"hi"}"#;
        assert!(names_session(event, &session));
        let other =
            r#"{"type":"agent.message","tenant":"acme","agenttype":"planner","sessionid":"s2"}"#;
        assert!(!names_session(other, &session));
        let escaped = r#"{"tenant":"acm\u0065","agenttype":"planner","sessionid":"s1"}"#;
        assert!(names_session(escaped, &session), "escapes are decoded");
        assert!(!names_session("{not json", &session));
        assert!(!names_session(r#"{"tenant":"acme"}"#, &session));
    }
}
