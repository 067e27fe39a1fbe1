//! The Rust client for agentwire, used by integration tests, the demo, load tests and users.
//!
//! - [`HttpClient`]: durable publish (one event or a batch) and session history over HTTP.
//! - [`WsConnection`]: one WebSocket to `/v1/ws` with request helpers (subscribe, publish).
//! - [`Subscriber`]: follows sessions over a WebSocket and, on a lost connection, reconnects
//!   with jittered backoff and resumes each session after its last delivered offset, so the
//!   caller sees every event once, in offset order per session. With a [`TokenProvider`] it
//!   authenticates every connection and refreshes the token before it expires.
//! - Work queue: [`HttpClient::enqueue`], [`HttpClient::claim`], [`HttpClient::complete`] and
//!   the other task calls over HTTP (with [`NewTask`], [`Task`]); [`Worker`] consumes tasks
//!   over a WebSocket, runs a handler per task with heartbeats, settles it and reconnects
//!   (at-least-once: handlers must be idempotent).
//!
//! - Registry: [`HttpClient::register`], [`HttpClient::heartbeat_agent`],
//!   [`HttpClient::deregister`], [`HttpClient::discover`]; a [`Worker`] built with
//!   [`WorkerBuilder::register_as`] registers itself over its WebSocket.
//!
//! - Request–reply: [`Requester::request`] asks an agent of a capability and waits for its
//!   [`Reply`] (a task with `reply_to`; the responder is a [`Worker`]).
//!
//! Every byte goes through `agentwire_protocol` (CloudEvents JSON, frames); this crate only
//! adds I/O, timeouts and resume bookkeeping ([`Cursors`], pure and unit-tested). The
//! work-queue ops, which the protocol crate only decodes, are written here and unit-tested
//! against its decoder.

mod cursors;
mod error;
mod http;
mod registry;
mod request;
mod subscriber;
mod task_types;
mod tasks;
mod token;
mod worker;
mod ws;

pub use cursors::{Admit, Cursors};
pub use error::ClientError;
pub use http::{DEFAULT_HTTP_TIMEOUT, HistoryPage, HttpClient, PublishAck};
pub use registry::Registered;
pub use request::{Reply, Requester};
pub use subscriber::{Delivery, Subscriber, SubscriberConfig};
pub use task_types::{EnqueueAck, NewTask, QueueStats, Task, Transition};
pub use tasks::is_stale_lease;
pub use token::{TokenProvider, expiry};
pub use worker::{TaskFailure, Worker, WorkerBuilder, WorkerStats};
pub use ws::{DEFAULT_REQUEST_TIMEOUT, WsConnection};

/// The client's result type.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
