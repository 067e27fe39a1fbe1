//! A connection's ephemeral publishes, off its I/O loop and pipelined: one task per connection
//! takes them in arrival order and keeps up to [`IN_FLIGHT`] `PUBLISH`es outstanding on the
//! process's shared Valkey connection. Each is started in order, so a session's ephemerals
//! keep their order. A failure comes back to the driver (an error frame for the client). A
//! full queue makes the connection wait before it reads more from the client: backpressure on
//! the publisher's socket, never a drop.

use agentwire_protocol::{ErrorCode, Event};
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ApiError;
use crate::session::steps;
use crate::state::AppState;

/// Ephemeral publishes accepted from one connection and not yet sent to Valkey.
const QUEUE: usize = 256;
/// Publishes of one connection awaiting Valkey's answer at once.
const IN_FLIGHT: usize = 64;

/// A publish that failed: the event's id (if any) and why.
pub type Failure = (Option<String>, ApiError);

/// The connection's handle on its ephemeral publish task, started at the connection's first
/// ephemeral publish (a connection that only subscribes costs no task and no queue).
#[derive(Debug)]
pub struct Ephemerals {
    app: AppState,
    task: Option<Task>,
}

#[derive(Debug)]
struct Task {
    jobs: mpsc::Sender<(Event, Option<String>)>,
    failures: mpsc::UnboundedReceiver<Failure>,
}

impl Ephemerals {
    pub fn new(app: AppState) -> Self {
        Self { app, task: None }
    }

    /// Starts the task; it ends when the connection drops this handle and what was accepted
    /// is sent.
    fn spawn(app: AppState) -> Task {
        let (jobs, queue) = mpsc::channel::<(Event, Option<String>)>(QUEUE);
        let (report, failures) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            ReceiverStream::new(queue)
                .map(|(event, id)| {
                    let app = app.clone();
                    async move { (id, steps::publish_ephemeral(&app, event).await) }
                })
                .buffered(IN_FLIGHT)
                .for_each(|(id, published)| {
                    if let Err(err) = published {
                        // The connection may be gone: nobody to tell.
                        let _ = report.send((id, err));
                    }
                    std::future::ready(())
                })
                .await;
        });
        Task { jobs, failures }
    }

    /// Queues `event` behind the connection's earlier ephemerals, waiting while
    /// [`QUEUE`] are pending.
    pub async fn submit(&mut self, event: Event, id: Option<String>) -> Result<(), ApiError> {
        let app = &self.app;
        let task = self.task.get_or_insert_with(|| Self::spawn(app.clone()));
        task.jobs.send((event, id)).await.map_err(|_| {
            ApiError::new(
                ErrorCode::Internal,
                "the connection's ephemeral publish task stopped",
            )
        })
    }

    /// The next publish that failed (never, before the first publish).
    pub async fn failed(&mut self) -> Option<Failure> {
        match &mut self.task {
            Some(task) => task.failures.recv().await,
            None => std::future::pending().await,
        }
    }
}
