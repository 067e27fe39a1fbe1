//! CPU time and peak memory of the stack's processes, from /proc: the gateway, the relay,
//! the enricher, the broker and Valkey, found by their command lines.

use std::collections::BTreeMap;

use serde::Serialize;

/// What a process used during a run.
#[derive(Clone, Debug, Serialize)]
pub struct Usage {
    pub name: String,
    pub pid: u32,
    /// CPU seconds (user + system) spent during the run.
    pub cpu_seconds: f64,
    /// Peak resident memory over the process's life (VmHWM), in MiB.
    pub peak_rss_mib: f64,
}

const WATCHED: [(&str, &str); 6] = [
    ("gateway", "agentwire gateway"),
    ("relay", "agentwire relay"),
    ("enricher", "agentwire-enricher"),
    ("broker", "tansu"),
    ("broker", "nisshi"),
    ("valkey", "valkey-server"),
];

fn clock_ticks() -> f64 {
    // Linux reports /proc CPU times in USER_HZ, 100 on every mainstream architecture.
    100.0
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_kib(pid, "VmHWM:").map(|kib| kib / 1024.0)
}

/// The watched processes running now, with their CPU time so far.
#[derive(Debug)]
pub struct Snapshot {
    start: BTreeMap<(String, u32), f64>,
}

/// The watched processes running now: (name, pid).
pub fn watched() -> Vec<(String, u32)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("agentwire-loadtests") {
            continue;
        }
        if let Some((name, _)) = WATCHED.iter().find(|(_, needle)| cmdline.contains(needle)) {
            found.push(((*name).to_owned(), pid));
        }
    }
    found.sort();
    found
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    cpu_seconds(pid)
}

/// Resident memory now (VmRSS), in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    status_kib(pid, "VmRSS:").map(|kib| kib / 1024.0)
}

fn status_kib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

impl Snapshot {
    /// The watched processes and this load tool itself (its CPU shares the same cores).
    pub fn take() -> Self {
        let me = ("load tool (this process)".to_owned(), std::process::id());
        let start = watched()
            .into_iter()
            .chain(std::iter::once(me))
            .filter_map(|(name, pid)| Some(((name, pid), cpu_seconds(pid)?)))
            .collect();
        Self { start }
    }

    /// What each process found at `take` used since.
    pub fn usage(&self) -> Vec<Usage> {
        self.start
            .iter()
            .filter_map(|((name, pid), before)| {
                Some(Usage {
                    name: name.clone(),
                    pid: *pid,
                    cpu_seconds: cpu_seconds(*pid)? - before,
                    peak_rss_mib: peak_rss_mib(*pid)?,
                })
            })
            .collect()
    }
}
