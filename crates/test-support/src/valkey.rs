//! A dedicated Valkey server for one test, for faults the shared one cannot suffer: a crash
//! (SIGKILL) and a restart that comes back empty on the same port, as a real Valkey without
//! persistence would.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::binaries::Binary;
use crate::launch::{StartFailure, launch};
use crate::probe::{free_port, valkey_ping};
use crate::process::ChildProcess;

/// Ports tried before giving up when other processes keep taking the free one first.
const PORT_ATTEMPTS: usize = 5;

/// A `valkey-server` on a free loopback port, with no persistence, killed when dropped.
#[derive(Debug)]
pub struct ValkeyServer {
    /// Declared first so that it is dropped (killed) before its directory is removed.
    process: Option<ChildProcess>,
    port: u16,
    binary: PathBuf,
    dir: TempDir,
}

impl ValkeyServer {
    /// Starts a server and returns once it answers `PING`.
    ///
    /// # Panics
    /// When `valkey-server` cannot be found or does not come up; the message quotes its output.
    pub async fn start() -> ValkeyServer {
        let binary = Binary::ValkeyServer.locate();
        let dir = tempfile::Builder::new()
            .prefix("agentwire-valkey-")
            .tempdir()
            .unwrap_or_else(|e| panic!("create a directory for valkey-server: {e}"));
        let mut attempt = 1;
        loop {
            let port = free_port();
            match run(&binary, dir.path(), port).await {
                Ok(process) => {
                    return ValkeyServer {
                        process: Some(process),
                        port,
                        binary,
                        dir,
                    };
                }
                Err(failure) if failure.port_taken() && attempt < PORT_ATTEMPTS => attempt += 1,
                Err(failure) => panic!("{failure}"),
            }
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The loopback port it listens on, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ChildProcess::is_running)
    }

    /// SIGKILLs the server: open connections break and every key is lost.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Stops the server with SIGSTOP: it keeps its connections open and answers nothing, as
    /// a hung (not crashed) server would, until [`ValkeyServer::resume`].
    pub fn pause(&mut self) {
        self.signal("STOP");
    }

    /// Continues a server stopped by [`ValkeyServer::pause`] (SIGCONT).
    pub fn resume(&mut self) {
        self.signal("CONT");
    }

    fn signal(&mut self, signal: &str) {
        let Some(process) = &self.process else {
            panic!("signal {signal}: valkey-server is not running");
        };
        let status = Command::new("kill")
            .args([format!("-{signal}"), process.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("run kill -{signal}: {e}"));
        assert!(status.success(), "kill -{signal} failed: {status}");
    }

    /// Kills the server if it still runs, then starts an empty one on the same port and
    /// returns once it answers `PING`.
    ///
    /// # Panics
    /// When the new server does not come up, for instance because another process took the
    /// port in between.
    pub async fn restart(&mut self) {
        self.kill();
        match run(&self.binary, self.dir.path(), self.port).await {
            Ok(process) => self.process = Some(process),
            Err(failure) => panic!("restart: {failure}"),
        }
    }

    /// The file that receives the server's output, across restarts.
    pub fn log_path(&self) -> PathBuf {
        log_path(self.dir.path())
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("valkey.log")
}

async fn run(binary: &Path, dir: &Path, port: u16) -> Result<ChildProcess, StartFailure> {
    let mut command = Command::new(binary);
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .current_dir(dir);
    let name = format!("valkey-server on 127.0.0.1:{port}");
    launch(&name, command, &log_path(dir), || valkey_ping(port)).await
}
