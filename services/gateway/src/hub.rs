//! The hub: one Valkey pub/sub connection per gateway process, one Valkey subscription per
//! followed session, fanned out to every WebSocket connection of this process that follows it.
//!
//! Each followed session has a bounded `broadcast` channel. A connection that falls more than
//! `capacity` messages behind gets `Lagged` from it and catches up from history: the channel
//! never grows and a slow reader never slows the feed or the other readers.
//!
//! Invariants:
//! - [`Hub::follow`] returns only after Valkey confirmed the subscription, so a history read
//!   made afterwards plus the live messages received afterwards cover every event (the seam).
//! - SUBSCRIBE and UNSUBSCRIBE are issued by one task, in the order follows and unfollows
//!   happened, so a session followed again right after its last follower left stays subscribed.
//! - When the feed connection is lost, the hub reconnects, subscribes every followed session
//!   again and sends [`Live::Resync`] to every follower: messages published meanwhile were
//!   missed by pub/sub and must be read from history.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentwire_protocol::SessionKey;
use agentwire_protocol::frames::event_frame_json;
use agentwire_valkey::{
    Announcement, LiveAnnotation, LiveEphemeral, LiveMessage, LiveStream, LiveSubscriptions,
    connect_live,
};
use axum::extract::ws::Utf8Bytes;
use backon::{ExponentialBuilder, Retryable as _};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

/// How long a follow may wait for Valkey to confirm the subscription, queueing included.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// Queued SUBSCRIBE/UNSUBSCRIBE requests; a full queue makes `follow` wait (backpressure), up
/// to [`CONFIRM_TIMEOUT`]: a Valkey that stopped answering must not hold a connection forever.
const COMMAND_QUEUE: usize = 1024;

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

struct Entry {
    sender: broadcast::Sender<Live>,
    /// Ephemeral messages have their own, smaller channel: a slow reader sheds them first,
    /// and they never push durable events out of the durable channel.
    ephemeral: broadcast::Sender<Arc<Framed<LiveEphemeral>>>,
    followers: usize,
    /// `true` once Valkey confirmed the subscription on the current feed connection.
    confirmed: watch::Sender<bool>,
}

struct Shared {
    sessions: Mutex<HashMap<SessionKey, Entry>>,
    commands: mpsc::Sender<Command>,
    capacity: usize,
    ephemeral_capacity: usize,
}

impl Shared {
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
    receiver: Option<broadcast::Receiver<Live>>,
    ephemeral: Option<broadcast::Receiver<Arc<Framed<LiveEphemeral>>>>,
    hub: Hub,
}

impl Follow {
    /// Takes the receiver (once); the hold stays until this value is dropped.
    pub fn take_receiver(&mut self) -> Option<broadcast::Receiver<Live>> {
        self.receiver.take()
    }

    /// Takes the ephemeral messages' receiver (once).
    pub fn take_ephemeral(&mut self) -> Option<broadcast::Receiver<Arc<Framed<LiveEphemeral>>>> {
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
    pub async fn start(
        url: &str,
        capacity: usize,
        ephemeral_capacity: usize,
        shutdown: CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), agentwire_valkey::ValkeyError> {
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        let hub = Hub {
            shared: Arc::new(Shared {
                sessions: Mutex::new(HashMap::new()),
                commands,
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
            match sessions.get_mut(session) {
                Some(entry) => {
                    entry.followers += 1;
                    (
                        entry.sender.subscribe(),
                        entry.ephemeral.subscribe(),
                        entry.confirmed.subscribe(),
                        false,
                    )
                }
                None => {
                    let (sender, receiver) = broadcast::channel(self.shared.capacity);
                    let (ephemeral_sender, ephemeral) =
                        broadcast::channel(self.shared.ephemeral_capacity);
                    let (confirmed, watch) = watch::channel(false);
                    sessions.insert(
                        session.clone(),
                        Entry {
                            sender,
                            ephemeral: ephemeral_sender,
                            followers: 1,
                            confirmed,
                        },
                    );
                    metrics::gauge!(m::LIVE_SESSIONS).set(sessions.len() as f64);
                    (receiver, ephemeral, watch, true)
                }
            }
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
                if let Some(entry) = self.shared.sessions().get(&e.session) {
                    let _ = entry.ephemeral.send(Arc::new(Framed { message: e, frame }));
                }
                return;
            }
        };
        let sessions = self.shared.sessions();
        if let Some(entry) = sessions.get(&session) {
            // No receivers is fine: the last follower is leaving.
            let _ = entry.sender.send(live);
        }
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

    fn resync_all(&self) {
        for entry in self.shared.sessions().values() {
            let _ = entry.sender.send(Live::Resync);
        }
    }
}

/// The feed task: applies subscription commands in order and dispatches messages, and
/// reconnects (resubscribing and resyncing every session) whenever the connection is lost.
async fn feed(
    hub: Hub,
    url: String,
    first: (LiveSubscriptions, LiveStream),
    mut queue: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) {
    let mut connection = Some(first);
    loop {
        let (mut subs, mut stream) = match connection.take() {
            Some(c) => c,
            None => {
                hub.unconfirm_all();
                let attempt = || connect_live(&url);
                let retry = attempt
                    .retry(ExponentialBuilder::default().with_max_delay(Duration::from_secs(2)).without_max_times().with_jitter())
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
                message = stream.next() => match message {
                    Some(message) => hub.dispatch(message),
                    None => {
                        tracing::warn!("live feed connection lost");
                        break;
                    }
                },
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
