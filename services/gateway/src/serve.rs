//! The HTTP server: hyper's HTTP/1.1 connection with the limits `axum::serve` does not set.
//!
//! - A header-read timeout (`AGENTWIRE_HTTP_HEADER_TIMEOUT_SECS`): a client that has not sent
//!   a whole request head within it is disconnected (slowloris). Hyper starts this timer
//!   whenever a connection waits for a request head, so it also closes keep-alive connections
//!   that stay idle between requests for longer.
//! - A cap on open connections (`AGENTWIRE_MAX_HTTP_CONNECTIONS`), WebSockets included: at the
//!   cap the server stops accepting until a connection closes (new ones wait in the kernel's
//!   backlog). An upgraded WebSocket keeps its connection's [`ConnectionSlot`].
//! - The body-read timeout is the publish handler's (`events_api.rs`): only it reads bodies.
//!
//! On shutdown it stops accepting, lets every connection finish its request in flight and
//! returns once they have; WebSockets are drained by the caller.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::metrics as m;

/// Pause after a failed accept (e.g. out of file descriptors) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The limits of the HTTP server.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Longest time a client may take to send a request head (and to start the next one on
    /// a keep-alive connection).
    pub header_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// A connection's place under the connection cap. Every request carries a clone in its
/// extensions; whoever keeps the connection's socket after the request (a WebSocket) keeps
/// the clone, so the place is freed only when the socket closes.
#[derive(Clone, Debug)]
pub struct ConnectionSlot {
    _permit: Arc<OwnedSemaphorePermit>,
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then waits for the connections
/// to finish their requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    loop {
        if slots.available_permits() == 0 {
            metrics::counter!(m::HTTP_CONNECTIONS_AT_CAP).increment(1);
            tracing::warn!(
                max = limits.max_connections,
                "at the connection cap; not accepting until a connection closes"
            );
        }
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(permit) => ConnectionSlot { _permit: Arc::new(permit) },
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Frames are small and written in batches: send each batch at once.
                    if let Err(err) = stream.set_nodelay(true) {
                        tracing::debug!(error = %err, "TCP_NODELAY not set");
                    }
                    stream
                }
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        metrics::gauge!(m::HTTP_CONNECTIONS).increment(1.0);
        let service = app
            .clone()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(slot.clone());
                request.map(axum::body::Body::new)
            });
        let connection = builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
            .with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = result {
                // Timeouts, resets and malformed requests: the client's problem, not ours.
                tracing::debug!(error = %err, "http connection ended with an error");
            }
            metrics::gauge!(m::HTTP_CONNECTIONS).decrement(1.0);
        });
    }
    connections.close();
    connections.wait().await;
}
