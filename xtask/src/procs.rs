//! The processes xtask starts: each logs to a file, dies with xtask (parent-death signal),
//! and is stopped (SIGTERM, then SIGKILL after a grace period) when its `Service` is dropped.

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running child process.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Service {
    /// Starts `command` with output appended to `log`.
    pub fn start(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Service> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        die_with_parent(&mut command);
        let child = command.spawn().with_context(|| format!("start {name}"))?;
        Ok(Service {
            name: name.to_owned(),
            log: log.to_owned(),
            child,
        })
    }

    /// Waits until `addr` accepts TCP connections, failing early if the process exits.
    pub fn wait_for_port(&mut self, addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(10);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited with {status}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not listen on {addr} within {timeout:?}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL if it has not exited within the grace period.
    pub fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            signal(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

#[allow(unsafe_code)]
fn signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; pid is our own unreaped child.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Makes the kernel SIGKILL the child when xtask dies, so nothing is left behind.
#[allow(unsafe_code)]
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
