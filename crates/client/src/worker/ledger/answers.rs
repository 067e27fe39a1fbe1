//! How the [`Ledger`] takes the server's answers (`task_ack` and `error` frames).

use std::sync::atomic::Ordering;
use std::time::Duration;

use agentwire_protocol::{ErrorCode, ErrorFrame};
use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Answer, Flight, Ledger, Phase, Request};
use crate::worker::frames::{Settle, is_transient};

/// How long a settle op refused for a passing reason waits before it is sent again, when the
/// server gives no `retry_after_ms`.
const SETTLE_RETRY: Duration = Duration::from_secs(1);

impl Ledger {
    fn mark_stale(&mut self, lease: &str) {
        if let Some(flight) = self.flights.get_mut(lease)
            && !flight.stale
        {
            flight.stale = true;
            self.stats.stale.fetch_add(1, Ordering::Relaxed);
            info!(task = %flight.task_id, "the task's lease is gone (expired, released or settled); dropping it");
        }
    }

    /// A `task_ack` (or the `registered` answer to the worker's registration).
    pub(crate) fn on_ack(&mut self, id: Option<&str>, fields: &Value) -> Answer {
        match id.and_then(|id| self.requests.remove(id)) {
            Some(Request::Consume) => return Answer::ConsumeAccepted,
            Some(Request::Heartbeat(lease)) => {
                if let Some(flight) = self.flights.get_mut(&lease) {
                    flight.heartbeat_sent = false;
                }
            }
            Some(Request::Settle(lease)) => {
                if let Some(Flight {
                    phase: Phase::Settling { how, .. },
                    ..
                }) = self.flights.remove(&lease)
                {
                    let counter = match how {
                        Settle::Complete(_) => &self.stats.completed,
                        Settle::Fail { .. } => &self.stats.failed,
                        Settle::Release => &self.stats.released,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Request::StopConsuming | Request::Stray) => {}
            Some(Request::Register) => debug!(answer = %fields, "the worker is registered"),
            None => debug!(answer = %fields, "an answer to no request of this connection"),
        }
        Answer::Nothing
    }

    /// An `error` frame.
    pub(crate) fn on_error(&mut self, frame: ErrorFrame, now: Instant) -> Answer {
        let request = frame.id.as_deref().and_then(|id| self.requests.remove(id));
        let gone = matches!(
            frame.code,
            ErrorCode::StaleLease | ErrorCode::NotFound | ErrorCode::WrongState
        );
        match request {
            Some(Request::Consume | Request::Register) => return Answer::ConsumeRefused(frame),
            Some(Request::Heartbeat(lease)) if gone => {
                self.mark_stale(&lease);
                let queued = matches!(
                    self.flights.get(&lease),
                    Some(Flight {
                        phase: Phase::Queued(_),
                        ..
                    })
                );
                if queued {
                    // Not ours any more, but its credit comes back only with a settle op.
                    self.queue.retain(|l| l != &lease);
                    self.settle(&lease, Settle::Release);
                }
            }
            Some(Request::Heartbeat(lease)) => {
                warn!(code = %frame.code, message = %frame.message, "a heartbeat was refused; trying again");
                if let Some(flight) = self.flights.get_mut(&lease) {
                    flight.heartbeat_sent = false;
                }
            }
            Some(Request::Settle(lease)) if gone => {
                self.mark_stale(&lease);
                self.flights.remove(&lease);
            }
            Some(Request::Settle(lease)) => self.settle_refused(&lease, &frame, now),
            Some(Request::StopConsuming | Request::Stray) => {
                debug!(code = %frame.code, message = %frame.message, "refused");
            }
            None => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                warn!(code = %frame.code, message = %frame.message, "the server reported an error");
            }
        }
        Answer::Nothing
    }

    /// A settle op refused for another reason than a lost lease: a passing refusal is
    /// retried; a refused result fails the task instead, a refused failure releases it.
    fn settle_refused(&mut self, lease: &str, frame: &ErrorFrame, now: Instant) {
        let Some(Flight {
            phase:
                Phase::Settling {
                    how,
                    sent,
                    retry_at,
                },
            task_id,
            ..
        }) = self.flights.get_mut(lease)
        else {
            return;
        };
        if is_transient(frame.code) {
            let wait = frame
                .retry_after_ms
                .map_or(SETTLE_RETRY, Duration::from_millis);
            (*sent, *retry_at) = (false, Some(now + wait));
            return;
        }
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        warn!(task = %task_id, code = %frame.code, message = %frame.message, "settling the task was refused");
        let next = match how {
            Settle::Complete(_) => Settle::Fail {
                error: format!("the server refused the result: {}", frame.message),
                retryable: true,
            },
            Settle::Fail { .. } => Settle::Release,
            Settle::Release => {
                self.flights.remove(lease);
                return;
            }
        };
        self.settle(lease, next);
    }
}
