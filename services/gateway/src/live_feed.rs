//! A follower's stream of one session's live channel, which may not exist yet: the hub creates
//! a session's broadcast rings at its first message, not when it is followed, so following
//! sessions that stay quiet costs no ring. A follower that joined before then waits on a
//! oneshot through which the hub hands it a receiver subscribed *before* that first message
//! is sent, so nothing sent on the channel is missed.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::{FutureExt as _, Stream, StreamExt as _};
use tokio::sync::{broadcast, oneshot};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

/// Where a waiting follower's receiver arrives from.
pub type Handoff<T> = oneshot::Sender<broadcast::Receiver<T>>;

/// A session's live channel as one follower reads it.
pub enum LiveFeed<T> {
    /// The channel does not exist yet; the hub sends a receiver when it creates it.
    Waiting(oneshot::Receiver<broadcast::Receiver<T>>),
    Active(BroadcastStream<T>),
    /// The hub dropped the handoff (the session's entry went away): nothing will come.
    Ended,
}

impl<T: Clone + Send + 'static> LiveFeed<T> {
    /// A feed of a channel that exists.
    pub fn active(receiver: broadcast::Receiver<T>) -> Self {
        Self::Active(BroadcastStream::new(receiver))
    }

    /// A feed waiting for its channel, and the handoff the hub keeps for it.
    pub fn waiting() -> (Self, Handoff<T>) {
        let (handoff, receiver) = oneshot::channel();
        (Self::Waiting(receiver), handoff)
    }
}

impl<T> std::fmt::Debug for LiveFeed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Waiting(_) => "LiveFeed::Waiting",
            Self::Active(_) => "LiveFeed::Active",
            Self::Ended => "LiveFeed::Ended",
        })
    }
}

impl<T: Clone + Send + 'static> Stream for LiveFeed<T> {
    type Item = Result<T, BroadcastStreamRecvError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match &mut *self {
                Self::Waiting(handoff) => match ready!(handoff.poll_unpin(cx)) {
                    Ok(receiver) => *self = Self::active(receiver),
                    Err(_) => *self = Self::Ended,
                },
                Self::Active(stream) => return stream.poll_next_unpin(cx),
                Self::Ended => return Poll::Ready(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;
    use tokio::sync::broadcast;

    use super::LiveFeed;

    #[tokio::test]
    async fn a_waiting_feed_gets_everything_sent_after_the_handoff() {
        let (mut feed, handoff) = LiveFeed::<u32>::waiting();
        let (sender, _) = broadcast::channel(8);
        handoff.send(sender.subscribe()).expect("the feed waits");
        sender.send(1).expect("a receiver");
        sender.send(2).expect("a receiver");
        assert_eq!(feed.next().await.map(Result::ok), Some(Some(1)));
        assert_eq!(feed.next().await.map(Result::ok), Some(Some(2)));
    }

    #[tokio::test]
    async fn a_dropped_handoff_ends_the_feed() {
        let (mut feed, handoff) = LiveFeed::<u32>::waiting();
        drop(handoff);
        assert!(feed.next().await.is_none());
    }
}
