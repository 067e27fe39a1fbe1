//! What a drill found and did: a JSON report and a markdown summary (`--report DIR`), and the
//! exit status (problems found or not).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::error::DrillError;

/// A kind of problem, named in reports and in the runbook (`docs/operations/drills.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A record without a session key (nobody can read it).
    UnkeyedRecord,
    /// A record that is not a valid event of its key's session (readers get a gap event).
    InvalidRecord,
    /// A session's records in more than one partition (the partition count changed).
    SessionSplit,
    /// A session's offsets did not increase.
    OffsetOrder,
    /// Two records carry the same event id.
    DuplicateEventId,
    /// Two records carry the same producer, epoch and sequence.
    DuplicateProducerSeq,
    /// Sequences of a producer's epoch are missing between two that are present.
    ProducerSeqGap,
    /// A record of a session's window range has no entry in the window.
    WindowEntryMissing,
    /// A window entry differs from the record at its offset (event or chain link).
    WindowEntryDiffers,
    /// A window entry at an offset where the log holds no record of the session.
    WindowEntryExtra,
    /// A session active within the window's idle TTL has no window.
    WindowAbsent,
    /// No producer state for a producer that published within the state's TTL.
    ProducerStateMissing,
    /// The producer state's epoch or next sequence is behind the log's.
    ProducerStateBehind,
    /// The producer state records another outcome than the log for a sequence.
    ProducerOutcomeDiffers,
    /// An annotation mark is ahead of the enrichments in the log.
    AnnotationMarkAhead,
}

impl Kind {
    /// Whether this is a problem of the log itself (rather than of Valkey against the log).
    pub fn is_log_finding(self) -> bool {
        matches!(
            self,
            Kind::UnkeyedRecord
                | Kind::InvalidRecord
                | Kind::SessionSplit
                | Kind::OffsetOrder
                | Kind::DuplicateEventId
                | Kind::DuplicateProducerSeq
                | Kind::ProducerSeqGap
        )
    }

    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// One problem, with where it is.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The other record involved (a duplicate's first copy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_offset: Option<u64>,
    pub detail: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FindingSet {
    pub total: u64,
    /// The first findings of this kind (up to `--max-findings`).
    pub first: Vec<Finding>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TenantCounts {
    pub records: u64,
    pub sessions: u64,
    pub types: BTreeMap<String, u64>,
}

/// Everything a drill writes out.
#[derive(Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub scope: serde_json::Value,
    pub started_at: String,
    pub elapsed_s: f64,
    pub records_read: u64,
    pub records_per_s: f64,
    pub peak_rss_bytes: Option<u64>,
    pub tenants: BTreeMap<String, TenantCounts>,
    pub sessions: BTreeMap<String, u64>,
    pub findings: BTreeMap<Kind, FindingSet>,
    /// What the command changed (or, with `--dry-run`, would change).
    pub changes: BTreeMap<String, u64>,
    pub notes: Vec<String>,
    /// The findings were repaired (a rebuild that ran).
    pub repaired: bool,
    #[serde(skip)]
    max_findings: usize,
    #[serde(skip)]
    clock: Option<Instant>,
}

impl Report {
    pub fn new(command: &str, max_findings: usize) -> Self {
        let started_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Self {
            command: command.to_owned(),
            scope: serde_json::Value::Null,
            started_at,
            elapsed_s: 0.0,
            records_read: 0,
            records_per_s: 0.0,
            peak_rss_bytes: None,
            tenants: BTreeMap::new(),
            sessions: BTreeMap::new(),
            findings: BTreeMap::new(),
            changes: BTreeMap::new(),
            notes: Vec::new(),
            repaired: false,
            max_findings,
            clock: Some(Instant::now()),
        }
    }

    pub fn find(&mut self, kind: Kind, finding: Finding) {
        let set = self.findings.entry(kind).or_default();
        set.total += 1;
        if set.first.len() < self.max_findings {
            set.first.push(finding);
        }
    }

    pub fn change(&mut self, what: &str, n: u64) {
        *self.changes.entry(what.to_owned()).or_default() += n;
    }

    pub fn problems(&self) -> u64 {
        self.findings.values().map(|f| f.total).sum()
    }

    /// Stops the clock and notes the process's peak memory.
    pub fn finish(&mut self) {
        if let Some(clock) = self.clock.take() {
            self.elapsed_s = clock.elapsed().as_secs_f64();
        }
        self.records_per_s = if self.elapsed_s > 0.0 {
            self.records_read as f64 / self.elapsed_s
        } else {
            0.0
        };
        self.peak_rss_bytes = peak_rss();
    }

    /// Writes `report.json` and `summary.md` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), DrillError> {
        std::fs::create_dir_all(dir)
            .map_err(DrillError::io(format!("create {}", dir.display())))?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| DrillError::Usage(e.to_string()))?;
        let path = dir.join("report.json");
        std::fs::write(&path, json).map_err(DrillError::io(format!("write {}", path.display())))?;
        let path = dir.join("summary.md");
        std::fs::write(&path, self.markdown())
            .map_err(DrillError::io(format!("write {}", path.display())))?;
        Ok(())
    }

    /// The markdown summary (also printed at the end of a run).
    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut md = String::new();
        let verdict = match (self.problems(), self.repaired) {
            (0, _) => "clean".to_owned(),
            (n, true) => format!("{n} problem(s) found and repaired"),
            (n, false) => format!("{n} problem(s)"),
        };
        let _ = writeln!(md, "# agentwire drill {}: {verdict}\n", self.command);
        let _ = writeln!(
            md,
            "Started {}; {} records read in {:.1} s ({:.0} records/s); peak RSS {}.\n",
            self.started_at,
            self.records_read,
            self.elapsed_s,
            self.records_per_s,
            self.peak_rss_bytes
                .map_or("unknown".to_owned(), |b| format!(
                    "{:.1} MiB",
                    b as f64 / 1_048_576.0
                )),
        );
        if !self.tenants.is_empty() {
            let _ = writeln!(
                md,
                "| tenant | records | sessions | types |\n|---|---|---|---|"
            );
            for (tenant, c) in &self.tenants {
                let types: Vec<String> = c.types.iter().map(|(t, n)| format!("{t} {n}")).collect();
                let _ = writeln!(
                    md,
                    "| {tenant} | {} | {} | {} |",
                    c.records,
                    c.sessions,
                    types.join(", ")
                );
            }
            md.push('\n');
        }
        if self.findings.is_empty() {
            md.push_str("No problems found.\n");
        }
        for (kind, set) in &self.findings {
            let _ = writeln!(md, "## {} ({})\n", kind.name(), set.total);
            for f in &set.first {
                let mut place = Vec::new();
                if let Some(s) = &f.session {
                    place.push(format!("session {s}"));
                }
                if let Some(p) = f.partition {
                    place.push(format!("partition {p}"));
                }
                if let Some(o) = f.offset {
                    place.push(format!("offset {o}"));
                }
                if let Some(o) = f.first_offset {
                    place.push(format!("first at {o}"));
                }
                let _ = writeln!(md, "- {}: {}", place.join(", "), f.detail);
            }
            if set.total > set.first.len() as u64 {
                let _ = writeln!(md, "- … and {} more", set.total - set.first.len() as u64);
            }
            md.push('\n');
        }
        if !self.changes.is_empty() {
            let _ = writeln!(md, "## changes\n");
            for (what, n) in &self.changes {
                let _ = writeln!(md, "- {what}: {n}");
            }
            md.push('\n');
        }
        for note in &self.notes {
            let _ = writeln!(md, "Note: {note}");
        }
        md
    }
}

/// The process's peak resident memory (Linux `VmHWM`).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
