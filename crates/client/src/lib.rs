//! The Rust client for agentwire, used by integration tests, the demo, load tests and users.
//!
//! - [`HttpClient`]: durable publish (one event or a batch) and session history over HTTP.
//! - [`WsConnection`]: one WebSocket to `/v1/ws` with request helpers (subscribe, publish).
//! - [`Subscriber`]: follows sessions over a WebSocket and, on a lost connection, reconnects
//!   with jittered backoff and resumes each session after its last delivered offset, so the
//!   caller sees every event once, in offset order per session. With a [`TokenProvider`] it
//!   authenticates every connection and refreshes the token before it expires.
//!
//! Every byte goes through `agentwire_protocol` (CloudEvents JSON, frames); this crate only
//! adds I/O, timeouts and resume bookkeeping ([`Cursors`], pure and unit-tested).

mod cursors;
mod error;
mod http;
mod subscriber;
mod token;
mod ws;

pub use cursors::{Admit, Cursors};
pub use error::ClientError;
pub use http::{DEFAULT_HTTP_TIMEOUT, HistoryPage, HttpClient, PublishAck};
pub use subscriber::{Delivery, Subscriber, SubscriberConfig};
pub use token::{TokenProvider, expiry};
pub use ws::{DEFAULT_REQUEST_TIMEOUT, WsConnection};

/// The client's result type.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
