//! The README's first command, tested as a newcomer runs it: `cargo xtask up` in this checkout
//! (in CI, a clean clone; builds come from the shared cache). It must deliver the demo's events,
//! bring the enricher in with its `enriched` frames, and leave nothing running after Ctrl-C
//! (SIGINT to the whole process group, as a terminal sends it).

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The stack's fixed ports (`xtask/src/stack.rs`, Prometheus's in `xtask/src/prometheus.rs`).
const PORTS: [u16; 6] = [6379, 9092, 8080, 9464, 9465, 9190];
/// Phoenix's ports (`xtask/src/trace_backend.rs`): the stack starts it when both are free.
const TRACE_PORTS: [u16; 2] = [6006, 4317];
/// A cold build of the core plus the enricher's join, on 2 busy cores.
const LIMIT: Duration = Duration::from_secs(480);

fn workspace_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Processes of the process group `pgid` still alive.
fn group_members(pgid: i32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // After the command name: state, ppid, pgrp.
            let group: i32 = fields.get(2)?.parse().ok()?;
            (group == pgid && fields.first() != Some(&"Z")).then(|| head.to_owned() + ")")
        })
        .collect()
}

/// Sends Ctrl-C (SIGINT) to the process group when dropped.
struct StopOnDrop(i32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill only sends a signal to the test's own child process group.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-self.0, libc::SIGINT);
        }
    }
}

/// Waits for a line containing `needle`; returns the lines read meanwhile.
fn wait_for(lines: &mpsc::Receiver<String>, needle: &str, until: Instant, seen: &mut Vec<String>) {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return;
                }
            }
            Err(_) => panic!(
                "no line with {needle:?} within {LIMIT:?}; the output was:\n{}",
                seen.join("\n")
            ),
        }
    }
}

#[test]
fn the_first_command_delivers_events_then_enrichments_and_ctrl_c_leaves_nothing_running() {
    for port in PORTS {
        assert!(
            !listening(port),
            "port {port} is taken: another stack is running"
        );
    }
    let trace_ports: Vec<u16> = TRACE_PORTS.into_iter().filter(|p| !listening(*p)).collect();
    let started = Instant::now();
    let mut command = Command::new("cargo");
    command
        .args(["xtask", "up"])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0);
    // If this test is killed (a hung run), xtask gets the Ctrl-C it would get from a terminal
    // and stops the stack it started.
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe, and allocates nothing.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
            Ok(())
        });
    }
    let mut up = command.spawn().expect("run cargo xtask up");
    let pgid = i32::try_from(up.id()).expect("pid");
    // A failing assertion stops the stack too.
    let _stop = StopOnDrop(pgid);
    let stdout = up.stdout.take().expect("stdout");
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let until = started + LIMIT;
    let mut seen = Vec::new();
    wait_for(&lines, "agent.requested", until, &mut seen);
    let first_event = started.elapsed();
    wait_for(&lines, " enriched ", until, &mut seen);
    let first_enrichment = started.elapsed();
    assert!(
        listening(9190) && seen.iter().any(|l| l.contains("http://127.0.0.1:9190")),
        "Prometheus is not up, or its URL was not printed"
    );
    if trace_ports.len() == TRACE_PORTS.len() {
        assert!(
            seen.iter().any(|l| l.contains("http://127.0.0.1:6006/")),
            "Phoenix (the trace store) is not up, or its URL was not printed"
        );
    }
    println!(
        "first demo event after {:.1} s, first enriched frame after {:.1} s",
        first_event.as_secs_f64(),
        first_enrichment.as_secs_f64()
    );

    // Ctrl-C: SIGINT to the whole group, as a terminal does.
    // SAFETY: kill only sends a signal to the test's own child process group.
    #[allow(unsafe_code)]
    let sent = unsafe { libc::kill(-pgid, libc::SIGINT) };
    assert_eq!(sent, 0, "SIGINT sent");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = up.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "cargo xtask up did not stop within 60 s of Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "xtask up ended with {status}");
    let left_behind = loop {
        let members = group_members(pgid);
        if members.is_empty() || Instant::now() >= deadline {
            break members;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        left_behind.is_empty(),
        "still running after Ctrl-C: {left_behind:?}"
    );
    for port in PORTS.into_iter().chain(trace_ports) {
        assert!(!listening(port), "port {port} still answers after Ctrl-C");
    }
}
