//! The worker's bookkeeping, with no I/O: the tasks it holds (by lease), which of them run,
//! wait for a free handler or are being settled, the requests awaiting an answer, and the
//! frames to send next (the outbox, flushed by the connection loop).
//!
//! Every task pushed to a connection takes one of the gateway's prefetch credits until that
//! connection settles it (complete, fail or release, even one answered `stale_lease`), so
//! every task accepted here ends with exactly one settle op answered, or with the
//! connection's loss (the gateway then releases what the connection held).

mod answers;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use agentwire_protocol::ErrorFrame;
use tokio::time::Instant;
use tracing::debug;

use super::frames::{self, Settle, heartbeat_interval};
use super::{Settings, WorkerStats};
use crate::task_types::Task;

enum Phase {
    /// Pushed while every handler was busy.
    Queued(Box<Task>),
    Running,
    /// The settle op; `sent` once it went out on the current connection.
    Settling {
        how: Settle,
        sent: bool,
        retry_at: Option<Instant>,
    },
}

struct Flight {
    task_id: String,
    phase: Phase,
    next_heartbeat: Instant,
    heartbeat_sent: bool,
    /// The lease turned out to be gone (counted once in the stats).
    stale: bool,
}

enum Request {
    Consume,
    /// The registration sent before `consume` (answered like it: a refusal stops the worker
    /// or, if passing, reconnects).
    Register,
    StopConsuming,
    Heartbeat(String),
    Settle(String),
    /// A release of a task frame that did not parse.
    Stray,
}

/// What an answer meant for the connection.
#[derive(Debug, PartialEq)]
pub(crate) enum Answer {
    Nothing,
    ConsumeAccepted,
    ConsumeRefused(ErrorFrame),
}

pub(crate) struct Ledger {
    settings: Arc<Settings>,
    stats: Arc<WorkerStats>,
    flights: HashMap<String, Flight>,
    /// Leases of queued tasks, oldest first.
    queue: VecDeque<String>,
    requests: HashMap<String, Request>,
    next_request: u64,
    running: usize,
    online: bool,
    draining: bool,
    /// Frames to send, in order.
    pub(crate) outbox: Vec<String>,
}

impl Ledger {
    pub(crate) fn new(settings: Arc<Settings>, stats: Arc<WorkerStats>) -> Self {
        Self {
            settings,
            stats,
            flights: HashMap::new(),
            queue: VecDeque::new(),
            requests: HashMap::new(),
            next_request: 0,
            running: 0,
            online: false,
            draining: false,
            outbox: Vec::new(),
        }
    }

    /// No task held (running, queued or being settled).
    pub(crate) fn is_empty(&self) -> bool {
        self.flights.is_empty()
    }

    fn request(&mut self, request: Request) -> String {
        self.next_request += 1;
        let id = format!("w{}", self.next_request);
        self.requests.insert(id.clone(), request);
        id
    }

    /// A new connection: consume (unless draining) and send the settle ops not answered yet.
    pub(crate) fn connected(&mut self) {
        self.online = true;
        if !self.draining {
            if let Some(agent_id) = self.settings.agent_id.clone() {
                let id = self.request(Request::Register);
                let s = &self.settings;
                let op = frames::register(&id, &s.tenant, &agent_id, &s.capabilities, s.prefetch);
                self.outbox.push(op);
            }
            let id = self.request(Request::Consume);
            let s = &self.settings;
            let lease_ms = u64::try_from(s.lease.as_millis()).unwrap_or(u64::MAX);
            let op = frames::consume(
                &id,
                &s.tenant,
                &s.capabilities,
                s.prefetch,
                lease_ms,
                s.name.as_deref(),
            );
            self.outbox.push(op);
        }
        self.send_settles(None, Instant::now());
    }

    /// The connection is gone: the gateway released the tasks it held, so queued ones are
    /// dropped; running handlers go on and their outcome is sent on the next connection
    /// (answered `stale_lease` unless the release failed). Unanswered settle ops go again.
    pub(crate) fn connection_lost(&mut self) {
        self.online = false;
        self.requests.clear();
        self.outbox.clear();
        for lease in self.queue.drain(..) {
            self.flights.remove(&lease);
        }
        for flight in self.flights.values_mut() {
            flight.heartbeat_sent = false;
            if let Phase::Settling { sent, retry_at, .. } = &mut flight.phase {
                *sent = false;
                *retry_at = None;
            }
        }
    }

    /// Stops taking tasks: `stop_consuming`, and queued tasks are released.
    pub(crate) fn drain(&mut self) {
        self.draining = true;
        if self.online {
            let id = self.request(Request::StopConsuming);
            self.outbox.push(frames::stop_consuming(&id));
        }
        let queued: Vec<String> = self.queue.drain(..).collect();
        for lease in queued {
            self.settle(&lease, Settle::Release);
        }
    }

    /// A pushed task: the task to run now, or `None` (queued, released while draining, or
    /// a repeat of a lease already held).
    pub(crate) fn accept(&mut self, task: Task, now: Instant) -> Option<Task> {
        let lease = task.lease_id.clone()?;
        if self.flights.contains_key(&lease) {
            debug!(task = %task.id, "a task pushed twice under one lease was ignored");
            return None;
        }
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let run_now = !self.draining && self.running < self.settings.prefetch;
        let flight = Flight {
            task_id: task.id.clone(),
            phase: Phase::Running,
            next_heartbeat: now + heartbeat_interval(self.settings.lease),
            heartbeat_sent: false,
            stale: false,
        };
        self.flights.insert(lease.clone(), flight);
        if self.draining {
            self.settle(&lease, Settle::Release);
            None
        } else if run_now {
            self.running += 1;
            Some(task)
        } else {
            if let Some(flight) = self.flights.get_mut(&lease) {
                flight.phase = Phase::Queued(Box::new(task));
            }
            self.queue.push_back(lease);
            None
        }
    }

    /// A handler finished (or was aborted): settles its task and returns the queued task to
    /// run next, if any.
    pub(crate) fn finished(&mut self, lease: &str, how: Settle) -> Option<Task> {
        self.running = self.running.saturating_sub(1);
        self.settle(lease, how);
        if self.draining {
            return None;
        }
        while let Some(next) = self.queue.pop_front() {
            let Some(flight) = self.flights.get_mut(&next) else {
                continue;
            };
            if let Phase::Queued(task) = std::mem::replace(&mut flight.phase, Phase::Running) {
                self.running += 1;
                return Some(*task);
            }
        }
        None
    }

    fn settle(&mut self, lease: &str, how: Settle) {
        if let Some(flight) = self.flights.get_mut(lease) {
            flight.phase = Phase::Settling {
                how,
                sent: false,
                retry_at: None,
            };
            self.send_settles(Some(lease), Instant::now());
        }
    }

    /// Sends the settle ops not sent yet (of `only` that lease) whose retry time has come.
    fn send_settles(&mut self, only: Option<&str>, now: Instant) {
        if !self.online {
            return;
        }
        let due: Vec<String> = self
            .flights
            .iter()
            .filter(|(lease, _)| only.is_none_or(|l| l == lease.as_str()))
            .filter(|(_, f)| {
                matches!(f.phase, Phase::Settling { sent: false, retry_at, .. } if retry_at.is_none_or(|at| at <= now))
            })
            .map(|(lease, _)| lease.clone())
            .collect();
        for lease in due {
            let id = self.request(Request::Settle(lease.clone()));
            if let Some(flight) = self.flights.get_mut(&lease)
                && let Phase::Settling { how, sent, .. } = &mut flight.phase
            {
                *sent = true;
                let op = frames::settle(&id, &self.settings.tenant, &flight.task_id, &lease, how);
                self.outbox.push(op);
            }
        }
    }

    /// Sends the heartbeats and settle retries that are due.
    pub(crate) fn due(&mut self, now: Instant) {
        if !self.online {
            return;
        }
        let interval = heartbeat_interval(self.settings.lease);
        let lease_ms = u64::try_from(self.settings.lease.as_millis()).unwrap_or(u64::MAX);
        let beats: Vec<String> = self
            .flights
            .iter()
            .filter(|(_, f)| !f.stale && !f.heartbeat_sent && f.next_heartbeat <= now)
            .map(|(lease, _)| lease.clone())
            .collect();
        for lease in beats {
            let id = self.request(Request::Heartbeat(lease.clone()));
            if let Some(flight) = self.flights.get_mut(&lease) {
                flight.heartbeat_sent = true;
                flight.next_heartbeat = now + interval;
                let op = frames::heartbeat(
                    &id,
                    &self.settings.tenant,
                    &flight.task_id,
                    &lease,
                    lease_ms,
                );
                self.outbox.push(op);
            }
        }
        self.send_settles(None, now);
    }

    /// When [`Ledger::due`] has something to send next.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if !self.online {
            return None;
        }
        self.flights
            .values()
            .flat_map(|f| {
                let retry = match f.phase {
                    Phase::Settling {
                        sent: false,
                        retry_at,
                        ..
                    } => retry_at,
                    _ => None,
                };
                let beat = (!f.stale && !f.heartbeat_sent).then_some(f.next_heartbeat);
                [retry, beat]
            })
            .flatten()
            .min()
    }

    /// Releases a pushed task that did not parse (its credit comes back with the answer).
    pub(crate) fn release_stray(&mut self, task_id: &str, lease: &str) {
        if self.online {
            let id = self.request(Request::Stray);
            let op = frames::settle(&id, &self.settings.tenant, task_id, lease, &Settle::Release);
            self.outbox.push(op);
        }
    }
}

#[cfg(test)]
mod tests;
