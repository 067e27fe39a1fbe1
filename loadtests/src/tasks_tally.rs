//! The `tasks` scenario's bookkeeping per task, filled by the enqueuers (acknowledged ids and
//! their send times) and by the readers of the worker processes' lines (starts, completions,
//! errors, in the parent's monotonic clock), in whichever order they come: a worker may
//! complete a task before its enqueue's answer has been read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use uuid::Uuid;

use crate::stats;

#[derive(Debug, Default)]
struct Entry {
    /// When its enqueue request was sent (a batch's send time), once acknowledged.
    enqueued: Option<Instant>,
    starts: u32,
    completes: u32,
    first_complete: Option<Instant>,
    /// Completed according to the server (`GET /v1/tasks/…`), no `C` line seen (a worker
    /// killed between its `complete` and the answer).
    completed_unseen: bool,
}

/// One worker's line, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Ready,
    Started(Uuid),
    Completed(Uuid),
    Error(Uuid, String),
}

impl Line {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split_ascii_whitespace();
        let kind = parts.next()?;
        if kind == "R" {
            return Some(Self::Ready);
        }
        let id = Uuid::parse_str(parts.next()?).ok()?;
        Some(match kind {
            "S" => Self::Started(id),
            "C" => Self::Completed(id),
            "E" => Self::Error(id, parts.next().unwrap_or("none").to_owned()),
            _ => return None,
        })
    }
}

/// Everything one agentwire row saw.
#[derive(Debug, Default)]
pub struct Tally {
    tasks: HashMap<Uuid, Entry>,
    /// Tasks in each worker's hands (started, no completion seen), by worker index.
    in_flight: BTreeMap<usize, HashSet<Uuid>>,
    pub ready_workers: usize,
    pub acked: u64,
    /// Acknowledged tasks with a completion (seen, or found completed on the server).
    pub acked_done: u64,
    /// Tasks with at least one `C` line, acknowledged or not.
    pub completed_unique: u64,
    pub refused: u64,
    pub refusals: BTreeMap<String, u64>,
    /// `E` lines by code (a retried `complete` counts at each answer).
    pub errors: BTreeMap<String, u64>,
    pub last_complete: Option<Instant>,
    pub last_ack: Option<Instant>,
}

/// The counts of a finished row.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub acked: u64,
    /// Acknowledged and seen completing (a `C` line).
    pub completed: u64,
    /// Acknowledged, completed according to the server, no `C` line seen.
    pub completed_unseen: u64,
    /// Acknowledged, never completed.
    pub lost: u64,
    pub started_twice: u64,
    pub completed_twice: u64,
    /// Completions of tasks whose enqueue was not acknowledged (a batch refused part way).
    pub completed_unacked: u64,
}

impl Tally {
    pub fn with_capacity(tasks: usize) -> Self {
        Self {
            tasks: HashMap::with_capacity(tasks),
            ..Self::default()
        }
    }

    pub fn acked(&mut self, id: Uuid, sent: Instant, now: Instant) {
        let entry = self.tasks.entry(id).or_default();
        if entry.enqueued.is_some() {
            return;
        }
        entry.enqueued = Some(sent);
        self.acked += 1;
        if entry.completes > 0 {
            self.acked_done += 1;
        }
        self.last_ack = Some(self.last_ack.map_or(now, |t| t.max(now)));
    }

    pub fn refused(&mut self, count: u64, why: String) {
        self.refused += count;
        *self.refusals.entry(why).or_default() += count;
    }

    pub fn line(&mut self, worker: usize, line: Line, at: Instant) {
        match line {
            Line::Ready => self.ready_workers += 1,
            Line::Started(id) => {
                self.tasks.entry(id).or_default().starts += 1;
                self.in_flight.entry(worker).or_default().insert(id);
            }
            Line::Completed(id) => {
                if let Some(mine) = self.in_flight.get_mut(&worker) {
                    mine.remove(&id);
                }
                let entry = self.tasks.entry(id).or_default();
                entry.completes += 1;
                if entry.completes == 1 {
                    entry.first_complete = Some(at);
                    self.completed_unique += 1;
                    if entry.enqueued.is_some() && !entry.completed_unseen {
                        self.acked_done += 1;
                    }
                }
                self.last_complete = Some(self.last_complete.map_or(at, |t| t.max(at)));
            }
            Line::Error(_, code) => *self.errors.entry(code).or_default() += 1,
        }
    }

    /// The worker with the most tasks in its hands, and how many.
    pub fn busiest(&self, workers: impl Iterator<Item = usize>) -> Option<(usize, usize)> {
        workers
            .map(|w| (w, self.in_flight.get(&w).map_or(0, HashSet::len)))
            .max_by_key(|(_, n)| *n)
    }

    /// Acknowledged tasks without a completion (at most `max`).
    pub fn missing(&self, max: usize) -> Vec<Uuid> {
        self.tasks
            .iter()
            .filter(|(_, e)| e.enqueued.is_some() && e.completes == 0 && !e.completed_unseen)
            .map(|(id, _)| *id)
            .take(max)
            .collect()
    }

    pub fn mark_completed_unseen(&mut self, id: Uuid) {
        if let Some(entry) = self.tasks.get_mut(&id)
            && entry.enqueued.is_some()
            && entry.completes == 0
            && !entry.completed_unseen
        {
            entry.completed_unseen = true;
            self.acked_done += 1;
        }
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for entry in self.tasks.values() {
            let acked = entry.enqueued.is_some();
            c.acked += u64::from(acked);
            c.started_twice += u64::from(entry.starts > 1);
            c.completed_twice += u64::from(entry.completes > 1);
            match (acked, entry.completes > 0, entry.completed_unseen) {
                (true, true, _) => c.completed += 1,
                (true, false, true) => c.completed_unseen += 1,
                (true, false, false) => c.lost += 1,
                (false, true, _) => c.completed_unacked += 1,
                (false, false, _) => {}
            }
        }
        c
    }

    /// Enqueue send → completion read, of every acknowledged task seen completing.
    pub fn latencies(&self) -> anyhow::Result<Histogram<u64>> {
        let mut h = stats::histogram()?;
        for entry in self.tasks.values() {
            if let (Some(sent), Some(done)) = (entry.enqueued, entry.first_complete) {
                stats::record(&mut h, done.saturating_duration_since(sent));
            }
        }
        Ok(h)
    }
}

/// `tasks / seconds`, or zero for no time.
pub fn rate(tasks: u64, seconds: Duration) -> f64 {
    let s = seconds.as_secs_f64();
    if s > 0.0 { tasks as f64 / s } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse() {
        let id = Uuid::now_v7();
        assert_eq!(Line::parse("R"), Some(Line::Ready));
        assert_eq!(Line::parse(&format!("S {id}")), Some(Line::Started(id)));
        assert_eq!(Line::parse(&format!("C {id}")), Some(Line::Completed(id)));
        assert_eq!(
            Line::parse(&format!("E {id} not_found")),
            Some(Line::Error(id, "not_found".into()))
        );
        assert_eq!(Line::parse("C not-a-uuid"), None);
        assert_eq!(Line::parse(""), None);
    }

    #[test]
    fn completions_before_acks_count_and_losses_are_found() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(5);
        let (a, b, c, d) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let mut tally = Tally::default();
        tally.line(0, Line::Started(a), later);
        tally.line(0, Line::Completed(a), later);
        tally.acked(a, t0, later);
        tally.acked(b, t0, later);
        tally.line(1, Line::Started(b), later);
        tally.line(1, Line::Started(b), later);
        tally.line(1, Line::Completed(b), later);
        tally.line(1, Line::Completed(b), later);
        tally.acked(c, t0, later);
        tally.acked(d, t0, later);
        tally.line(0, Line::Started(d), later);
        assert_eq!(tally.busiest([0, 1].into_iter()), Some((0, 1)));
        tally.mark_completed_unseen(d);
        assert_eq!((tally.acked, tally.acked_done), (4, 3));
        assert_eq!(tally.missing(10), vec![c]);
        let counts = tally.counts();
        assert_eq!(
            counts,
            Counts {
                acked: 4,
                completed: 2,
                completed_unseen: 1,
                lost: 1,
                started_twice: 1,
                completed_twice: 1,
                completed_unacked: 0,
            }
        );
        let h = tally.latencies().expect("histogram");
        assert_eq!(h.len(), 2);
        assert_eq!(h.value_at_quantile(0.5) / 1000, 5);
    }
}
