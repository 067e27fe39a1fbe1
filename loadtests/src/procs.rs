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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// The watched processes running now, with their CPU time so far.
#[derive(Debug)]
pub struct Snapshot {
    start: BTreeMap<(String, u32), f64>,
}

impl Snapshot {
    pub fn take() -> Self {
        let mut start = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Self { start };
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
            for (name, needle) in WATCHED {
                if cmdline.contains(needle) && !cmdline.contains("agentwire-loadtests") {
                    if let Some(cpu) = cpu_seconds(pid) {
                        start.insert((name.to_owned(), pid), cpu);
                    }
                    break;
                }
            }
        }
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
