//! A connection's durable publishes, off its I/O loop: one task per connection claims each
//! publish's producer sequence and hands it to Kafka, in arrival order, while the connection
//! keeps reading, writing and answering pings. A claim can wait (another gateway appending
//! the same sequence, a rebuild of the producer states) without stalling the connection.
//!
//! The task outlives a connection that goes away: what it accepted is still claimed,
//! appended and settled (`publish::enqueue` settles in a task of its own), so a client that
//! leaves never strands its sequence as pending. It ends once its queue is drained and the
//! connection dropped its sender.

use std::future::Future;
use std::pin::Pin;

use agentwire_protocol::{Ack, ErrorCode, Event};
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;
use crate::publish::{self, Transport};
use crate::state::AppState;

/// Publishes accepted from one connection and not yet handed to Kafka.
const QUEUE: usize = 256;

/// The acknowledgement of one handed-over publish.
pub type Acked = Pin<Box<dyn Future<Output = Result<Ack, ApiError>> + Send>>;

type Job = (Event, oneshot::Sender<Result<Acked, ApiError>>);

/// The connection's handle on its publish task, started at the connection's first publish
/// (a connection that only subscribes costs no task and no queue).
#[derive(Debug)]
pub struct Publisher {
    state: AppState,
    jobs: Option<mpsc::Sender<Job>>,
}

impl Publisher {
    pub fn new(state: AppState) -> Self {
        Self { state, jobs: None }
    }

    /// The task's queue, starting the task on first use.
    fn jobs(&mut self) -> &mpsc::Sender<Job> {
        let state = &self.state;
        self.jobs.get_or_insert_with(|| {
            let (jobs, mut queue) = mpsc::channel::<Job>(QUEUE);
            let state = state.clone();
            tokio::spawn(async move {
                while let Some((event, reply)) = queue.recv().await {
                    let enqueued = publish::enqueue(&state, event, Transport::Ws)
                        .await
                        .map(|ack| Box::pin(ack) as Acked);
                    // The connection may be gone: the publish is settled all the same.
                    let _ = reply.send(enqueued);
                }
            });
            jobs
        })
    }

    /// Queues `event` behind the connection's earlier publishes; the future answers once Kafka
    /// did (or the publish was refused). Never waits: a full queue is a `rate_limited` answer.
    pub fn submit(&mut self, event: Event) -> Acked {
        let (reply, answer) = oneshot::channel();
        let queued = self.jobs().try_send((event, reply));
        Box::pin(async move {
            match queued {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(ApiError::rate_limited(
                        format!(
                            "more than {QUEUE} publishes of this connection are waiting for their producer sequence"
                        ),
                        std::time::Duration::from_millis(100),
                    ));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(ApiError::new(
                        ErrorCode::Internal,
                        "the connection's publish task stopped",
                    ));
                }
            }
            match answer.await {
                Ok(enqueued) => enqueued?.await,
                Err(_) => Err(ApiError::new(
                    ErrorCode::Internal,
                    "the connection's publish task stopped",
                )),
            }
        })
    }
}
