//! Child processes owned by a test: servers started by the fixtures, or binaries under test
//! such as `agentwire relay`, which fault tests SIGKILL on purpose.
//!
//! Invariants: a child never outlives its [`ChildProcess`] (drop kills and reaps it), nor the
//! test binary (the kernel sends it SIGKILL when the binary dies, see [`sys::die_with_parent`]).
//! Its stdout and stderr go to a log file whose last lines are printed when a test panics
//! while the child is alive.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use tempfile::TempDir;

use crate::wait::wait_until;

/// Lines of a child's log quoted in panic messages.
pub(crate) const LOG_TAIL_LINES: usize = 30;

/// A running child process, killed when dropped.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    log: PathBuf,
    /// Holds the log when the caller gave no place for it.
    _log_dir: Option<TempDir>,
}

impl ChildProcess {
    /// Starts `command` with stdin closed and stdout and stderr sent to a fresh log file.
    /// `name` labels the process in panic messages.
    ///
    /// ```no_run
    /// use std::process::Command;
    /// use agentwire_test_support::ChildProcess;
    /// let mut command = Command::new("agentwire"); // env!("CARGO_BIN_EXE_agentwire") in a test
    /// command.arg("relay").env("AGENTWIRE_TOPIC", "events-1234");
    /// let mut relay = ChildProcess::spawn("relay", command);
    /// relay.kill();
    /// ```
    ///
    /// # Panics
    /// When the process cannot be started.
    pub fn spawn(name: &str, command: Command) -> ChildProcess {
        let dir = tempfile::Builder::new()
            .prefix("agentwire-child-")
            .tempdir()
            .unwrap_or_else(|e| panic!("create a log directory for {name}: {e}"));
        let log = dir.path().join(format!("{name}.log"));
        let mut process = ChildProcess::spawn_logged(name, command, &log)
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        process._log_dir = Some(dir);
        process
    }

    /// Starts `command` with its output appended to `log`.
    pub(crate) fn spawn_logged(
        name: &str,
        mut command: Command,
        log: &Path,
    ) -> io::Result<ChildProcess> {
        let out = OpenOptions::new().create(true).append(true).open(log)?;
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        sys::die_with_parent(&mut command);
        let child = spawn_from_long_lived_thread(command)?;
        Ok(ChildProcess {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            _log_dir: None,
        })
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operating-system process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited, without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("check whether {} exited: {e}", self.name))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits for the process to exit on its own.
    ///
    /// # Panics
    /// When it is still running after `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let what = format!("{} to exit", self.name);
        wait_until(timeout, &what, || std::future::ready(self.try_wait())).await
    }

    /// Sends SIGKILL and reaps the process: a crash, as far as anyone else can tell.
    pub fn kill(&mut self) {
        if let Err(e) = self.child.kill() {
            panic!("kill {}: {e}", self.name);
        }
        if let Err(e) = self.child.wait() {
            panic!("reap {}: {e}", self.name);
        }
    }

    /// Sends SIGSTOP: the process stays alive, its sockets open, and answers nothing (a hung
    /// server) until [`ChildProcess::resume`].
    pub fn pause(&mut self) {
        if let Err(e) = sys::send_signal(self.id(), libc::SIGSTOP) {
            panic!("send SIGSTOP to {}: {e}", self.name);
        }
    }

    /// Sends SIGCONT after [`ChildProcess::pause`].
    pub fn resume(&mut self) {
        if let Err(e) = sys::send_signal(self.id(), libc::SIGCONT) {
            panic!("send SIGCONT to {}: {e}", self.name);
        }
    }

    /// Sends SIGTERM and waits for the process to exit: a graceful shutdown.
    ///
    /// # Panics
    /// When it is still running after `timeout` (it is then killed).
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        // Not reaped yet, so the pid still names our child.
        if let Err(e) = sys::send_signal(self.id(), libc::SIGTERM) {
            panic!("send SIGTERM to {}: {e}", self.name);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                self.kill();
                panic!(
                    "{} did not exit within {timeout:?} of SIGTERM; last lines of {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of [`log`](Self::log).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// The file that receives stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if std::thread::panicking() {
            eprintln!(
                "--- {} (pid {}) was still running; last lines of {} ---\n{}",
                self.name,
                self.id(),
                self.log.display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        // Nothing useful to do with an error while dropping; the pdeathsig backs this up.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `command` from a thread that lives as long as the test binary.
///
/// The kernel sends the parent-death signal when the *thread* that forked the child ends, not
/// the process. Test harness threads and tokio's blocking threads come and go, so a child
/// forked from one of them could be killed in the middle of a test.
fn spawn_from_long_lived_thread(command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("agentwire-test-spawner".to_owned())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    // The requester may have given up; then the child is dropped and reaped later.
                    let _ = reply.send(command.spawn());
                }
            })
            .unwrap_or_else(|e| panic!("start the process-spawning thread: {e}"));
        requests
    });
    let gone = || io::Error::other("the process-spawning thread is gone");
    let (reply, response) = mpsc::channel();
    spawner.send((command, reply)).map_err(|_| gone())?;
    response.recv().map_err(|_| gone())?
}

/// The two system calls std does not wrap; the only unsafe code in the crate.
mod sys {
    use std::io;
    use std::process::Command;

    /// Makes the kernel SIGKILL the child when its parent dies, so that a test binary killed
    /// by a timeout or Ctrl-C leaves no server behind.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    pub(super) fn die_with_parent(command: &mut Command) {
        use std::os::unix::process::CommandExt;

        let Ok(parent) = libc::pid_t::try_from(std::process::id()) else {
            return;
        };
        // SAFETY: the closure runs in the forked child before exec; it calls only prctl and
        // getppid, which are async-signal-safe, and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn die_with_parent(_command: &mut Command) {}

    /// Sends `signal` to `pid`. The caller must own `pid` as an unreaped child, so the pid
    /// cannot have been reused by an unrelated process.
    #[allow(unsafe_code)]
    pub(super) fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
        let pid =
            libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(pid, signal) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }

    #[tokio::test]
    async fn output_lands_in_the_log_and_the_exit_status_is_kept() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo out; echo err >&2; exit 3"]);
        let mut child = ChildProcess::spawn("sh", command);
        let status = child.wait(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(3));
        assert_eq!(child.log(), "out\nerr\n");
    }

    #[tokio::test]
    async fn kill_stops_a_process_that_would_run_forever() {
        let mut command = Command::new("sh");
        command.args(["-c", "exec tail -f /dev/null"]);
        let mut child = ChildProcess::spawn("forever", command);
        assert!(child.is_running());
        child.kill();
        assert!(!child.is_running());
    }

    #[tokio::test]
    async fn terminate_sends_sigterm() {
        let mut command = Command::new("sh");
        // A busy loop, because the shell runs traps only between commands.
        command.args(["-c", "trap 'exit 7' TERM; echo ready; while :; do :; done"]);
        let mut child = ChildProcess::spawn("trapper", command);
        wait_until(Duration::from_secs(10), "the trap to be set", || {
            std::future::ready(child.log().contains("ready"))
        })
        .await;
        let status = child.terminate(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(7));
    }
}
