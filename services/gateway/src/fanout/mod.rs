//! The fanout wing: one Valkey pub/sub connection per gateway process for every channel kind
//! (session channels and label feeds), one registry of who follows what, and each publication
//! prepared once per wire format and shared by every connection that receives it.
//!
//! Invariants:
//! - [`Fanout::follow`] returns only after Valkey confirmed the subscription, so a history
//!   read made afterwards plus the live publications received afterwards cover every event
//!   (the seam).
//! - SUBSCRIBE and UNSUBSCRIBE are issued by one task, in the order follows and unfollows
//!   happened; an unsubscribe of a channel followed again meanwhile is skipped.
//! - When the feed connection is lost it reconnects (with backoff), subscribes every followed
//!   channel again and signals every follower of a session channel to catch up from history
//!   (label feeds are realtime extras: they only resubscribe).
//! - A live event is never trusted on its own word (see [`feed`]): it must name its channel's
//!   session and be found, identical, in the session's window before delivery.
//! - Delivery never blocks the feed: each connection has a bounded mailbox; a durable event
//!   that does not fit turns into a catch-up from history, an extra that does not fit is shed
//!   and counted ([`registry`]).

mod feed;
pub mod publication;
pub mod registry;
mod trace;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentwire_valkey::{HistoryStore, connect_live};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use publication::{Kind, Publication};
pub use registry::{Channel, Inbox, Outbox};
use registry::{Follower, Registry};

use crate::metrics as m;

/// How long a follow may wait for Valkey to confirm the subscription, queueing included.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// Queued SUBSCRIBE/UNSUBSCRIBE requests; a full queue makes `follow` wait (backpressure), up
/// to [`CONFIRM_TIMEOUT`]: a Valkey that stopped answering must not hold a connection forever.
const COMMAND_QUEUE: usize = 1024;

/// The feed is down or did not confirm a subscription in time.
#[derive(Debug, thiserror::Error)]
#[error("the live feed could not subscribe: {0}")]
pub struct FanoutError(String);

enum Command {
    Subscribe(String, Channel),
    Unsubscribe(String, Channel),
}

struct Shared {
    registry: Mutex<Registry>,
    commands: mpsc::Sender<Command>,
    /// Where live events are checked before delivery.
    windows: HistoryStore,
    next_id: AtomicU64,
    counters: Counters,
}

/// Metric handles, looked up once.
struct Counters {
    lagged: metrics::Counter,
    ephemeral_shed: metrics::Counter,
    annotations_shed: metrics::Counter,
    labels_shed: metrics::Counter,
    sessions: metrics::Gauge,
}

/// Shares live channels between the connections of one gateway process. Cheap to clone.
#[derive(Clone)]
pub struct Fanout {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout").finish_non_exhaustive()
    }
}

/// A connection's hold on one channel; dropping it unfollows.
#[derive(Debug)]
pub struct Follow {
    name: String,
    id: u64,
    lagged: Arc<AtomicBool>,
    fanout: Fanout,
}

impl Follow {
    /// The connection is starting the catch-up it was signalled for: a later overflow signals
    /// again.
    pub fn lag_seen(&self) {
        self.lagged.store(false, Ordering::Release);
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.fanout.unfollow(&self.name, self.id);
    }
}

impl Fanout {
    /// Starts the feed task for the Valkey at `url`. The first connection is made before this
    /// returns, so a wrong URL fails start-up; later losses are retried forever. Live events
    /// are checked against the session windows of `windows` before delivery.
    pub async fn start(
        url: &str,
        windows: HistoryStore,
        shutdown: CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), agentwire_valkey::ValkeyError> {
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        let fanout = Fanout {
            shared: Arc::new(Shared {
                registry: Mutex::new(Registry::default()),
                commands,
                windows,
                next_id: AtomicU64::new(1),
                counters: Counters {
                    lagged: metrics::counter!(m::CATCH_UPS, "reason" => "lagged"),
                    ephemeral_shed: metrics::counter!(m::EPHEMERAL_SHED, "reason" => "lagged"),
                    annotations_shed: metrics::counter!(m::ANNOTATIONS_SHED),
                    labels_shed: metrics::counter!(m::LABEL_FEED_SKIPPED),
                    sessions: metrics::gauge!(m::LIVE_SESSIONS),
                },
            }),
        };
        let first = connect_live(url).await?;
        let task = tokio::spawn(feed::run(
            fanout.clone(),
            url.to_owned(),
            first,
            queue,
            shutdown,
        ));
        Ok((fanout, task))
    }

    /// A mailbox for a new connection: `durable` events and annotations, `ephemeral` events
    /// buffered before it lags or sheds.
    pub fn mailbox(&self, durable: usize, ephemeral: usize) -> (Arc<Outbox>, Inbox) {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        registry::mailbox(id, durable, ephemeral)
    }

    /// Follows `channel` into `outbox`, returning once Valkey confirmed the subscription.
    pub async fn follow(
        &self,
        channel: Channel,
        outbox: &Arc<Outbox>,
    ) -> Result<Follow, FanoutError> {
        let name = channel.name();
        let id = outbox.id();
        let follower = Follower::new(outbox.clone());
        let lagged = follower.lag_flag();
        let followed = {
            let mut registry = self.registry();
            let followed = registry.follow(&channel, name.clone(), id, follower);
            self.shared
                .counters
                .sessions
                .set(registry.sessions() as f64);
            followed
        };
        // From here on the hold is released by `Follow`'s drop, also on the error paths.
        let follow = Follow {
            name: name.clone(),
            id,
            lagged,
            fanout: self.clone(),
        };
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        if followed.first {
            let queued = self.shared.commands.send(Command::Subscribe(name, channel));
            match tokio::time::timeout_at(deadline, queued).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(FanoutError("the gateway is shutting down".into())),
                Err(_) => {
                    return Err(FanoutError(format!(
                        "the live feed's queue stayed full for {CONFIRM_TIMEOUT:?}: valkey is not keeping up"
                    )));
                }
            }
        }
        let mut confirmed = followed.confirmed;
        match tokio::time::timeout_at(deadline, confirmed.wait_for(|c| *c)).await {
            Ok(Ok(_)) => Ok(follow),
            Ok(Err(_)) => Err(FanoutError("the channel's feed was closed".into())),
            Err(_) => Err(FanoutError(format!(
                "valkey did not confirm within {CONFIRM_TIMEOUT:?}"
            ))),
        }
    }

    fn unfollow(&self, name: &str, id: u64) {
        let mut registry = self.registry();
        let Some(channel) = registry.unfollow(name, id) else {
            return;
        };
        self.shared
            .counters
            .sessions
            .set(registry.sessions() as f64);
        // A full queue or a stopped feed only leaves a subscription that delivers to nobody
        // until the next reconnect; it is never a correctness problem.
        let _ = self
            .shared
            .commands
            .try_send(Command::Unsubscribe(name.to_owned(), channel));
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves the map itself consistent.
        self.shared
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Delivers a publication that arrived on the channel `name` to its followers.
    fn publish(&self, name: &str, publication: Publication) {
        let Some(followers) = self.registry().followers(name) else {
            return;
        };
        let publication = Arc::new(publication);
        let span = trace::deliver_span(&publication);
        let tally = registry::deliver(followers.iter().map(|(_, f)| f), &publication);
        trace::record_latency(&publication);
        if let Some(span) = span {
            use agentwire_runtime::trace::int;
            span.record("agentwire.connections", int(tally.queued));
            span.record("agentwire.lagged", int(tally.lagged));
            span.record("agentwire.shed", int(tally.shed));
        }
        let counters = &self.shared.counters;
        if tally.lagged > 0 {
            counters.lagged.increment(tally.lagged);
        }
        if tally.shed > 0 {
            match publication.kind {
                Kind::Ephemeral => counters.ephemeral_shed.increment(tally.shed),
                Kind::Annotation(_) => counters.annotations_shed.increment(tally.shed),
                Kind::Labelled(_) => counters.labels_shed.increment(tally.shed),
                Kind::Event(_) => {}
            }
        }
    }
}
