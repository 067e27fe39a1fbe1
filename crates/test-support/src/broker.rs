//! A dedicated Kafka-API broker (nisshi, storing in SQLite) for one test, for faults the shared
//! one cannot suffer: a crash (SIGKILL) and a restart on the same port with the same data, as
//! a real broker restarted after a crash would come back.
//!
//! nisshi does not create topics on first use: create them with [`create_topic`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::binaries::Binary;
use crate::launch::{StartFailure, launch};
use crate::probe::{free_port, kafka_api_versions};
use crate::process::ChildProcess;

/// Ports tried before giving up when other processes keep taking the free one first.
const PORT_ATTEMPTS: usize = 5;
/// How long `nisshi topic create` may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A nisshi broker on a free loopback port, killed when dropped.
#[derive(Debug)]
pub struct Broker {
    /// Declared first so that it is dropped (killed) before its directory is removed.
    process: Option<ChildProcess>,
    port: u16,
    binary: PathBuf,
    /// The broker's working directory: its SQLite database and log.
    dir: TempDir,
}

impl Broker {
    /// Starts a broker and returns once it answers a Kafka `ApiVersions` request.
    ///
    /// # Panics
    /// When `nisshi` cannot be found or does not come up; the message quotes its output.
    pub async fn start() -> Broker {
        let binary = Binary::Broker.locate();
        let dir = tempfile::Builder::new()
            .prefix("agentwire-broker-")
            .tempdir()
            .unwrap_or_else(|e| panic!("create a directory for nisshi: {e}"));
        let mut attempt = 1;
        loop {
            let port = free_port();
            match run(&binary, dir.path(), port).await {
                Ok(process) => {
                    return Broker {
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

    /// `127.0.0.1:PORT`, ready for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The loopback port it listens on, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ChildProcess::is_running)
    }

    /// SIGKILLs the broker; what it committed to SQLite survives.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Freezes the broker (SIGSTOP): connections stay open, requests are read by nobody.
    pub fn pause(&mut self) {
        if let Some(process) = self.process.as_mut() {
            process.pause();
        }
    }

    /// Lets a paused broker run again; it then handles the requests it had received.
    pub fn resume(&mut self) {
        if let Some(process) = self.process.as_mut() {
            process.resume();
        }
    }

    /// Kills the broker if it still runs, then starts it again on the same port with the same
    /// database and returns once it answers.
    ///
    /// # Panics
    /// When it does not come up, for instance because another process took the port.
    pub async fn restart(&mut self) {
        self.kill();
        match run(&self.binary, self.dir.path(), self.port).await {
            Ok(process) => self.process = Some(process),
            Err(failure) => panic!("restart: {failure}"),
        }
    }

    /// Creates `topic` with `partitions` partitions on this broker.
    ///
    /// # Panics
    /// When the broker refuses, for instance because the topic exists.
    pub async fn create_topic(&self, topic: &str, partitions: u32) {
        create_topic(&self.brokers(), topic, partitions).await;
    }

    /// The file that receives the broker's output, across restarts.
    pub fn log_path(&self) -> PathBuf {
        log_path(self.dir.path())
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("nisshi.log")
}

async fn run(binary: &Path, dir: &Path, port: u16) -> Result<ChildProcess, StartFailure> {
    let listener = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new(binary);
    command
        .arg("broker")
        .args(["--listener-url", &listener])
        // Advertise the address clients reach; nisshi's default, localhost, may resolve to ::1.
        .args(["--advertised-listener-url", &listener])
        // nisshi resolves the SQLite path against its working directory.
        .args(["--storage-engine", "sqlite://nisshi.db"])
        // Tests start consumer groups all the time: no 3 s wait for more members.
        .args(["--group-initial-rebalance-delay", "0s"])
        // nisshi also reads a `.env` file from its working directory; this one is ours alone.
        .current_dir(dir);
    let name = format!("nisshi broker on 127.0.0.1:{port}");
    launch(&name, command, &log_path(dir), || kafka_api_versions(port)).await
}

/// Creates `topic` with `partitions` partitions on the broker at `brokers` (the first
/// address of a bootstrap list), with the `nisshi topic create` admin command.
///
/// # Panics
/// When nisshi cannot be found or the broker refuses, for instance because the topic exists.
pub async fn create_topic(brokers: &str, topic: &str, partitions: u32) {
    let broker = brokers.split(',').next().unwrap_or(brokers).trim();
    let mut command = tokio::process::Command::new(Binary::Broker.locate());
    command
        .args(["topic", "create", topic])
        .args(["--partitions", &partitions.to_string()])
        .args(["--broker", &format!("tcp://{broker}")])
        .kill_on_drop(true);
    let output = match tokio::time::timeout(ADMIN_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("run `nisshi topic create {topic}`: {e}"),
        Err(_) => {
            panic!("`nisshi topic create {topic}` against {broker} hung for {ADMIN_TIMEOUT:?}")
        }
    };
    assert!(
        output.status.success(),
        "`nisshi topic create {topic}` against {broker} failed with {}: {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
