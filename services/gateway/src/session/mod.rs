//! One WebSocket connection: `state` is the pure delivery logic (cursors, subscription rules),
//! `limits` its token buckets, `driver` does the I/O (socket, hub, history, publishes).

pub mod driver;
pub mod limits;
pub mod publisher;
pub mod state;
