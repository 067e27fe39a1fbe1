//! The enricher joins a running stack: `cargo xtask up` starts what delivers events first and
//! prepares the enricher meanwhile on a thread of its own (the model, the Vulkan driver, the
//! build with burn, wgpu and tokenizers, which is most of a cold build), then hands the watch a
//! [`Ready`] enricher to start. It is started by the main thread: a child's parent-death signal
//! fires when the *thread* that spawned it ends. Build output goes to `.stack/enricher-build.log`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::deps;
use crate::procs::{Service, die_with_parent};
use crate::stack::{ENRICHER_ADMIN_PORT, loopback, target_dir};

const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A built enricher, ready to start.
pub struct Ready {
    command: Command,
    log: PathBuf,
    /// Since preparing began.
    since: Instant,
}

impl Ready {
    /// Starts the enricher and waits until it listens.
    pub fn start(self) -> anyhow::Result<Service> {
        let mut enricher = Service::start("enricher", self.command, &self.log)?;
        enricher.wait_for_port(loopback(ENRICHER_ADMIN_PORT), START_TIMEOUT)?;
        println!(
            "xtask: the enricher joined after {:.0} s; `enriched` frames (labels) from now on",
            self.since.elapsed().as_secs_f64()
        );
        Ok(enricher)
    }
}

/// Prepares the enricher on a thread; the receiver gets it once it is built. It runs with
/// `otel_env` (the trace store's `OTEL_*` variables, or none).
pub fn spawn(
    root: PathBuf,
    release: bool,
    stack_dir: PathBuf,
    stopping: Arc<AtomicBool>,
    otel_env: Vec<(&'static str, String)>,
) -> mpsc::Receiver<Ready> {
    let (joined, receiver) = mpsc::channel();
    std::thread::spawn(
        move || match prepare(&root, release, &stack_dir, &otel_env) {
            Ok(ready) => {
                let _ = joined.send(ready);
            }
            Err(err) if !stopping.load(Ordering::SeqCst) => eprintln!(
                "xtask: !!! the enricher could not start: {err:#}\n\
                 xtask: the stack goes on without it; see {}",
                stack_dir.join("enricher-build.log").display()
            ),
            Err(_) => {}
        },
    );
    receiver
}

fn prepare(
    root: &Path,
    release: bool,
    stack_dir: &Path,
    otel_env: &[(&'static str, String)],
) -> anyhow::Result<Ready> {
    let since = Instant::now();
    let model = deps::ensure_enricher()?;
    let log_path = stack_dir.join("enricher-build.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    let mut cargo = Command::new("cargo");
    if release {
        cargo.args(["build", "--release", "-p", "agentwire-enricher"]);
    } else {
        // The whole workspace, as the test command builds it: cargo unifies features per
        // build, so this is what `cargo xtask test` reuses afterwards.
        cargo.args(["build", "--workspace", "--all-targets"]);
    }
    cargo
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    die_with_parent(&mut cargo);
    let built = Instant::now();
    let status = cargo.status().context("run cargo build")?;
    if !status.success() {
        bail!("building the enricher failed with {status}");
    }
    println!(
        "xtask: the enricher is built ({:.0} s)",
        built.elapsed().as_secs_f64()
    );
    let binary = target_dir(root)
        .join(if release { "release" } else { "debug" })
        .join("agentwire-enricher");
    let mut command = Command::new(binary);
    command
        .arg("run")
        .env(
            "AGENTWIRE_ADMIN_LISTEN",
            loopback(ENRICHER_ADMIN_PORT).to_string(),
        )
        .env("AGENTWIRE_MODEL_DIR", &model)
        .env("AGENTWIRE_ENRICHER_LABELS", root.join("infra/labels.toml"))
        .envs(otel_env.iter().cloned());
    Ok(Ready {
        command,
        log: stack_dir.join("enricher.log"),
        since,
    })
}
