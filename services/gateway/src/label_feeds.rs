//! Label feeds (semantic routing): one more Valkey pub/sub connection per gateway process, one
//! subscription per followed `(tenant, label)` channel, fanned out to every connection of this
//! process that follows it through a bounded broadcast channel.
//!
//! Annotations are realtime extras derived from `agent.enriched` (the relay publishes them):
//! a feed has no cursor and no history, so a lost connection is simply re-established and
//! resubscribed, and a reader that lags skips what it missed (counted).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentwire_protocol::{Label, Tenant};
use agentwire_valkey::{LiveAnnotation, connect_live, keys, parse_label_message};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::hub::HubError;

type Feed = (Tenant, Label);

/// How long a follow may wait for Valkey to confirm the subscription, queueing included.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

enum Command {
    Subscribe(String, oneshot::Sender<bool>),
    Unsubscribe(String),
}

struct Entry {
    sender: broadcast::Sender<Arc<LiveAnnotation>>,
    followers: usize,
}

struct Shared {
    feeds: Mutex<HashMap<String, Entry>>,
    commands: mpsc::Sender<Command>,
    capacity: usize,
}

/// Shares label feeds between the connections of one gateway process.
#[derive(Clone)]
pub struct LabelFeeds {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LabelFeeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelFeeds").finish_non_exhaustive()
    }
}

/// A connection's hold on one label feed; dropping it unfollows.
#[derive(Debug)]
pub struct LabelFollow {
    channel: String,
    feeds: LabelFeeds,
}

impl Drop for LabelFollow {
    fn drop(&mut self) {
        self.feeds.unfollow(&self.channel);
    }
}

impl LabelFeeds {
    /// Starts the feed task; the connection is made (and remade) by the task.
    pub fn start(
        url: &str,
        capacity: usize,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (commands, queue) = mpsc::channel(1024);
        let feeds = LabelFeeds {
            shared: Arc::new(Shared {
                feeds: Mutex::new(HashMap::new()),
                commands,
                capacity: capacity.max(1),
            }),
        };
        let task = tokio::spawn(run(feeds.clone(), url.to_owned(), queue, shutdown));
        (feeds, task)
    }

    fn feeds(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.shared
            .feeds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Follows `(tenant, label)`, returning once Valkey confirmed the subscription.
    pub async fn follow(
        &self,
        (tenant, label): &Feed,
    ) -> Result<(LabelFollow, broadcast::Receiver<Arc<LiveAnnotation>>), HubError> {
        let channel = keys::label_channel(tenant, label.as_str());
        let (receiver, subscribe) = {
            let mut feeds = self.feeds();
            match feeds.get_mut(&channel) {
                Some(entry) => {
                    entry.followers += 1;
                    (entry.sender.subscribe(), false)
                }
                None => {
                    let (sender, receiver) = broadcast::channel(self.shared.capacity);
                    feeds.insert(
                        channel.clone(),
                        Entry {
                            sender,
                            followers: 1,
                        },
                    );
                    (receiver, true)
                }
            }
        };
        let follow = LabelFollow {
            channel: channel.clone(),
            feeds: self.clone(),
        };
        if subscribe {
            // One deadline for queueing and confirmation: a Valkey that stopped answering
            // (the queue stays full) must not hold the connection forever.
            let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
            let (done, confirmed) = oneshot::channel();
            let queued = self.shared.commands.send(Command::Subscribe(channel, done));
            match tokio::time::timeout_at(deadline, queued).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(HubError::new("the gateway is shutting down")),
                Err(_) => return Err(HubError::new("the label feed's queue stayed full")),
            }
            match tokio::time::timeout_at(deadline, confirmed).await {
                Ok(Ok(true)) => {}
                _ => return Err(HubError::new("valkey did not confirm the label feed")),
            }
        }
        Ok((follow, receiver))
    }

    fn unfollow(&self, channel: &str) {
        let mut feeds = self.feeds();
        let Some(entry) = feeds.get_mut(channel) else {
            return;
        };
        entry.followers -= 1;
        if entry.followers == 0 {
            feeds.remove(channel);
            let _ = self
                .shared
                .commands
                .try_send(Command::Unsubscribe(channel.to_owned()));
        }
    }

    fn dispatch(&self, channel: &str, payload: &[u8]) {
        let Some(annotation) = parse_label_message(payload) else {
            tracing::warn!(channel, "ignoring a malformed label message");
            return;
        };
        if let Some(entry) = self.feeds().get(channel) {
            let _ = entry.sender.send(Arc::new(annotation));
        }
    }

    fn followed(&self) -> Vec<String> {
        self.feeds().keys().cloned().collect()
    }
}

/// Applies commands in order and dispatches messages; reconnects and resubscribes every
/// followed channel whenever the connection is lost.
async fn run(
    feeds: LabelFeeds,
    url: String,
    mut queue: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let (mut sink, mut stream) = match connect_live(&url).await {
            Ok(connection) => connection,
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?delay, "label feed connection failed");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        delay = Duration::from_millis(100);
        let mut healthy = true;
        for channel in feeds.followed() {
            healthy &= sink.subscribe_channel(&channel).await.is_ok();
        }
        while healthy {
            tokio::select! {
                command = queue.recv() => match command {
                    Some(Command::Subscribe(channel, done)) => {
                        healthy = sink.subscribe_channel(&channel).await.is_ok();
                        let _ = done.send(healthy);
                    }
                    Some(Command::Unsubscribe(channel)) => {
                        if !feeds.feeds().contains_key(&channel) {
                            healthy = sink.unsubscribe_channel(&channel).await.is_ok();
                        }
                    }
                    None => return,
                },
                message = stream.next_raw() => match message {
                    Some((channel, payload)) => feeds.dispatch(&channel, &payload),
                    None => healthy = false,
                },
                () = shutdown.cancelled() => return,
            }
        }
        tracing::warn!("label feed connection lost; reconnecting");
    }
}
