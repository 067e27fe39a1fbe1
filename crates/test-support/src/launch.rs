//! Starting a server process and waiting until it answers its protocol, or explaining why it
//! never did: the exit status or the last probe error, with the server's own output.

use std::fs;
use std::io;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::process::{ChildProcess, LOG_TAIL_LINES, tail};

/// How long a server may take to answer its first probe.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// Why a server did not come up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("could not be started: {0}")]
    Spawn(#[source] io::Error),
    #[error("exited during start-up with {0}")]
    Exited(ExitStatus),
    #[error("did not answer within {timeout:?} (last error: {last})")]
    NotReady { timeout: Duration, last: String },
}

/// A failed start, with what the server wrote while trying.
#[derive(Debug, thiserror::Error)]
#[error("{name} {error}; its output:\n{output}")]
pub(crate) struct StartFailure {
    name: String,
    error: StartError,
    output: String,
}

impl StartFailure {
    /// Whether the server lost a race for its port, so a new port may succeed.
    pub(crate) fn port_taken(&self) -> bool {
        matches!(self.error, StartError::Exited(_))
            && [
                "already in use",
                "os error 98",
                "AddrInUse",
                "Failed to bind to address",
            ]
            .iter()
            .any(|sign| self.output.contains(sign))
    }
}

/// Spawns `command` (output appended to `log`) and polls `probe` until it succeeds.
pub(crate) async fn launch<F, Fut>(
    name: &str,
    command: Command,
    log: &Path,
    probe: F,
) -> Result<ChildProcess, StartFailure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<()>>,
{
    launch_within(name, command, log, START_TIMEOUT, probe).await
}

/// [`launch`] for a server that may take longer than [`START_TIMEOUT`] to answer.
pub(crate) async fn launch_within<F, Fut>(
    name: &str,
    command: Command,
    log: &Path,
    timeout: Duration,
    mut probe: F,
) -> Result<ChildProcess, StartFailure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<()>>,
{
    let offset = fs::metadata(log).map(|meta| meta.len()).unwrap_or(0);
    let failure = |error| StartFailure {
        name: name.to_owned(),
        error,
        output: output_since(log, offset),
    };
    let mut process = ChildProcess::spawn_logged(name, command, log)
        .map_err(|e| failure(StartError::Spawn(e)))?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let outcome = probe().await;
        if outcome.is_ok() {
            return Ok(process);
        }
        if let Some(status) = process.try_wait() {
            return Err(failure(StartError::Exited(status)));
        }
        if tokio::time::Instant::now() >= deadline {
            process.kill();
            let last = outcome.err().map(|e| e.to_string()).unwrap_or_default();
            return Err(failure(StartError::NotReady { timeout, last }));
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// The last lines `log` received after its first `offset` bytes.
fn output_since(log: &Path, offset: u64) -> String {
    let bytes = fs::read(log).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    tail(&String::from_utf8_lossy(&bytes[start..]), LOG_TAIL_LINES)
}
