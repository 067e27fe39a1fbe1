//! One WebSocket connection: `state` is the pure session machine (what to deliver, when to
//! catch up, what to refuse), `cursor` its delivery rule, `limits` its token buckets,
//! `inbound` and `outbound` the decoding and the one encoding switch, `driver` the I/O loop
//! and `steps` the I/O it performs; `publisher` and `ephemeral` send a connection's
//! publishes off its loop, in order; `worker` serves the work-queue ops and push delivery, `coordinator` the registry ops.

mod coordinator;
mod cursor;
pub mod driver;
mod ephemeral;
mod inbound;
pub mod limits;
mod outbound;
pub mod publisher;
pub mod state;
mod steps;
#[cfg(test)]
mod tests;
mod worker;
