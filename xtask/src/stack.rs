//! The local stack on loopback: Valkey, the nisshi broker (SQLite storage under `.stack/`),
//! the event topic, the relay, the gateway and the enricher, then the demo; Prometheus scrapes
//! them all (`prometheus.rs`, data under `.stack/prometheus/`). Phoenix, the trace store
//! (`trace_backend.rs`, data under `.stack/phoenix/`), receives every service's spans when it
//! can run.
//!
//! The core comes first: what delivers events (Valkey, the broker, the relay, the gateway) is
//! built and started, and the demo runs, before the enricher, whose build (burn, wgpu,
//! tokenizers) is most of a cold build. The enricher builds meanwhile and joins the running
//! stack (`enricher_stage.rs`); the demo runs again then, showing its `enriched` frames.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::deps::{self, CoreServers};
use crate::procs::Service;
use crate::prometheus;
use crate::trace_backend::{self, TraceBackend};

pub const VALKEY_PORT: u16 = 6379;
pub const KAFKA_PORT: u16 = 9092;
pub const GATEWAY_PORT: u16 = 8080;
pub const RELAY_ADMIN_PORT: u16 = 9464;
pub const ENRICHER_ADMIN_PORT: u16 = 9465;
/// Partitions of `agent.events` in the local stack.
pub const PARTITIONS: u32 = 8;
pub const TOPIC: &str = "agent.events";
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The workspace root (xtask lives one level below it).
///
/// `cargo run` (the `xtask` alias) sets `CARGO_MANIFEST_DIR` for the process it starts; the
/// compile-time value is only the fallback, since one build may serve several checkouts that
/// share a target directory (and the checkout it was built in may be gone).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Starts `valkey-server` on `port` without persistence.
pub fn start_valkey(servers: &CoreServers, port: u16, dir: &Path) -> anyhow::Result<Service> {
    let mut command = Command::new(&servers.valkey);
    command
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .current_dir(dir);
    let mut valkey = Service::start("valkey", command, &dir.join("valkey.log"))?;
    valkey.wait_for_port(loopback(port), START_TIMEOUT)?;
    Ok(valkey)
}

/// Starts nisshi on `port`, storing in SQLite under `dir` (it reads `dir/.env` too, so the
/// directory is its own).
pub fn start_broker(servers: &CoreServers, port: u16, dir: &Path) -> anyhow::Result<Service> {
    let listener = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new(&servers.broker);
    command
        .arg("broker")
        .args([
            "--listener-url",
            &listener,
            "--advertised-listener-url",
            &listener,
        ])
        .args(["--storage-engine", "sqlite://nisshi.db"])
        // The relay's group forms at once instead of waiting 3 s for more members.
        .args(["--group-initial-rebalance-delay", "0s"])
        .current_dir(dir);
    let mut broker = Service::start("nisshi", command, &dir.join("nisshi.log"))?;
    broker.wait_for_port(loopback(port), START_TIMEOUT)?;
    Ok(broker)
}

/// Creates `topic` unless it exists (`nisshi topic create`).
pub fn create_topic(
    servers: &CoreServers,
    port: u16,
    topic: &str,
    partitions: u32,
) -> anyhow::Result<()> {
    let output = Command::new(&servers.broker)
        .args([
            "topic",
            "create",
            topic,
            "--partitions",
            &partitions.to_string(),
        ])
        .args(["--broker", &format!("tcp://127.0.0.1:{port}")])
        .output()
        .context("run nisshi topic create")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success()
        || text.contains("TopicAlreadyExists")
        || text.contains("already exists")
    {
        return Ok(());
    }
    bail!("nisshi topic create {topic} failed: {text}")
}

/// Builds the whole workspace with every target, as the test command builds it (cargo unifies
/// features per build, so building only the binaries would compile burn a second time), and
/// returns the folder holding the binaries.
pub fn build_workspace() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    deps::run(
        Command::new("cargo")
            .args(["build", "--workspace", "--all-targets"])
            .current_dir(&root),
    )?;
    Ok(target_dir(&root).join("debug"))
}

/// Builds the `agentwire` binary (gateway, relay, demo) alone: the core of the stack, without
/// the enricher's burn, wgpu and tokenizers. Returns the folder of the binaries.
pub fn build_core(release: bool) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let mut command = Command::new("cargo");
    command.args(["build", "-p", "agentwire"]);
    if release {
        // `perf`: release with thin LTO and one codegen unit (see the workspace Cargo.toml).
        command.args(["--profile", "perf"]);
    }
    deps::run(command.current_dir(&root))?;
    Ok(target_dir(&root).join(if release { "perf" } else { "debug" }))
}

pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// `cargo xtask up`.
pub fn up(demo: bool, with_enricher: bool, release: bool, traced: bool) -> anyhow::Result<()> {
    let began = Instant::now();
    let root = workspace_root();
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let stopping = stopping.clone();
        ctrlc::set_handler(move || stopping.store(true, Ordering::SeqCst))
            .context("install the Ctrl-C handler")?;
    }
    for port in [
        VALKEY_PORT,
        KAFKA_PORT,
        GATEWAY_PORT,
        RELAY_ADMIN_PORT,
        ENRICHER_ADMIN_PORT,
        prometheus::PROMETHEUS_PORT,
    ] {
        if std::net::TcpStream::connect_timeout(&loopback(port), Duration::from_millis(200)).is_ok()
        {
            bail!("port {port} is already in use (a previous stack still running?); stop it first");
        }
    }
    let mut timings = Timings::default();
    println!(
        "xtask: [1/4] Valkey, the broker and Prometheus: cached after the first run; the first \
         time, the broker builds from source (about 15 minutes on 2 cores)"
    );
    let servers = deps::ensure_core()?;
    let metrics_server = deps::ensure_prometheus()?;
    timings.stage("Valkey, the broker and Prometheus");
    // The trace store starts slowest (10-25 s), so it starts now and is waited for before the
    // services that export to it.
    let mut traces = if traced {
        TraceBackend::start(&root.join(".stack/phoenix"))
    } else {
        println!("xtask: --no-traces: no trace store, the services export no spans");
        None
    };
    println!(
        "xtask: [2/4] building agentwire (gateway, relay, demo){}: a few minutes the first time, \
         seconds after",
        if release {
            " in the perf profile (release, thin LTO, one codegen unit)"
        } else {
            ""
        }
    );
    let agentwire = build_core(release)?.join("agentwire");
    timings.stage("agentwire build");

    let stack_dir = root.join(".stack");
    let broker_dir = stack_dir.join("nisshi");
    std::fs::create_dir_all(&broker_dir)?;
    println!("xtask: [3/4] starting Valkey, the broker, the relay, the gateway and Prometheus");
    let mut services = vec![
        start_valkey(&servers, VALKEY_PORT, &stack_dir)?,
        start_broker(&servers, KAFKA_PORT, &broker_dir)?,
    ];
    create_topic(&servers, KAFKA_PORT, TOPIC, PARTITIONS)?;
    let traced = match traces.as_mut().map(TraceBackend::wait_ready) {
        Some(Ok(())) => true,
        Some(Err(err)) => {
            eprintln!(
                "xtask: !!! the trace store did not start ({err:#}); the stack runs untraced"
            );
            false
        }
        None => false,
    };
    let otel_env = if traced {
        trace_backend::otel_env()
    } else {
        Vec::new()
    };
    let mut relay = Command::new(&agentwire);
    relay
        .arg("relay")
        .env(
            "AGENTWIRE_ADMIN_LISTEN",
            loopback(RELAY_ADMIN_PORT).to_string(),
        )
        .envs(otel_env.iter().cloned());
    let mut relay = Service::start("relay", relay, &stack_dir.join("relay.log"))?;
    relay.wait_for_port(loopback(RELAY_ADMIN_PORT), START_TIMEOUT)?;
    services.push(relay);
    let mut gateway = Command::new(&agentwire);
    // The local stack runs without authentication (the gateway logs so, loudly): the demo and
    // the load tool talk to it without tokens.
    gateway
        .arg("gateway")
        .env("AGENTWIRE_LISTEN", loopback(GATEWAY_PORT).to_string())
        .env("AGENTWIRE_AUTH", "off")
        .envs(otel_env.iter().cloned());
    let mut gateway = Service::start("gateway", gateway, &stack_dir.join("gateway.log"))?;
    gateway.wait_for_port(loopback(GATEWAY_PORT), START_TIMEOUT)?;
    services.push(gateway);
    services.push(prometheus::start(&metrics_server, &root, &stack_dir)?);
    timings.stage("start");

    // Load runs leave the enricher out: it would embed every load event on the same two cores.
    let joining = if with_enricher {
        println!(
            "xtask: the enricher (burn, wgpu, tokenizers and its model) builds meanwhile and joins \
             when ready: the first time 10-20 minutes on 2 cores; output in {}",
            stack_dir.join("enricher-build.log").display()
        );
        Some(crate::enricher_stage::spawn(
            root.clone(),
            release,
            stack_dir.clone(),
            stopping.clone(),
            otel_env.clone(),
        ))
    } else {
        println!("xtask: the enricher is not started (--no-enricher)");
        None
    };

    println!("xtask: the core is up");
    println!(
        "  gateway   http://127.0.0.1:{GATEWAY_PORT}  (WebSocket ws://127.0.0.1:{GATEWAY_PORT}/v1/ws, /metrics, /readyz)"
    );
    println!("  relay     http://127.0.0.1:{RELAY_ADMIN_PORT}/metrics");
    if with_enricher {
        println!(
            "  enricher  http://127.0.0.1:{ENRICHER_ADMIN_PORT}/metrics  once it joined (agent.enriched; `enriched` frames)"
        );
    }
    println!("  kafka     127.0.0.1:{KAFKA_PORT} (nisshi, topic {TOPIC}, {PARTITIONS} partitions)");
    println!("  valkey    redis://127.0.0.1:{VALKEY_PORT}");
    println!(
        "  metrics   {}  (Prometheus: every service above, rules and alerts of infra/prometheus/rules.yml)",
        prometheus::url()
    );
    if traced {
        println!(
            "  traces    {}  (Phoenix; OTLP gRPC 127.0.0.1:{}, HTTP http://127.0.0.1:{}/v1/traces)",
            trace_backend::ui_url(),
            trace_backend::OTLP_GRPC_PORT,
            trace_backend::UI_PORT
        );
    }
    println!("  logs      {}", stack_dir.display());
    let demo = demo.then(|| {
        println!(
            "xtask: [4/4] running the demo: simulated agents publish, a client prints what it receives"
        );
        DemoRuns::start(agentwire.clone())
    });
    let mut demo = demo.transpose()?;
    timings.print(began);
    println!("xtask: the stack stays up; press Ctrl-C to stop it");
    crate::watch::watch(
        &mut services,
        joining.as_ref(),
        demo.as_mut(),
        loopback(GATEWAY_PORT),
        &stopping,
    )?;
    println!("xtask: stopping");
    Ok(())
}

/// How long each stage of `up` took, printed once the stack is up.
#[derive(Default)]
struct Timings {
    stages: Vec<(&'static str, Duration)>,
    last: Option<Instant>,
}

impl Timings {
    fn stage(&mut self, name: &'static str) {
        let now = Instant::now();
        let since = self.last.map_or(Duration::ZERO, |last| now - last);
        self.stages.push((name, since));
        self.last = Some(now);
    }

    fn print(&self, began: Instant) {
        let parts: Vec<String> = self
            .stages
            .iter()
            .map(|(name, took)| format!("{name} {:.1} s", took.as_secs_f64()))
            .collect();
        println!(
            "xtask: up in {:.1} s ({})",
            began.elapsed().as_secs_f64(),
            parts.join(", ")
        );
    }
}

/// The demo, run once when the core is up and again when the enricher joins.
pub struct DemoRuns {
    agentwire: PathBuf,
    child: std::process::Child,
    /// Run again once the current run has ended.
    rerun: bool,
    /// The last run's end was reported.
    done: bool,
}

impl DemoRuns {
    fn start(agentwire: PathBuf) -> anyhow::Result<Self> {
        let child = Self::spawn(&agentwire)?;
        Ok(Self {
            agentwire,
            child,
            rerun: false,
            done: false,
        })
    }

    fn spawn(agentwire: &Path) -> anyhow::Result<std::process::Child> {
        Command::new(agentwire)
            .args([
                "demo",
                "--gateway",
                &format!("http://127.0.0.1:{GATEWAY_PORT}"),
            ])
            .spawn()
            .context("run the demo")
    }

    /// Runs the demo again once the current run has ended (at the next poll if it has).
    pub fn again(&mut self) {
        self.rerun = true;
        self.done = false;
    }

    /// Starts the run asked for by [`Self::again`] when the current one has ended, and
    /// reports the end of the last run (`Some(success)`) once.
    pub fn poll(&mut self) -> anyhow::Result<Option<bool>> {
        if self.done {
            return Ok(None);
        }
        let Some(status) = self.child.try_wait()? else {
            return Ok(None);
        };
        if self.rerun {
            self.rerun = false;
            println!("xtask: running the demo again, now with the enricher");
            self.child = Self::spawn(&self.agentwire)?;
            return Ok(None);
        }
        self.done = true;
        Ok(Some(status.success()))
    }
}

impl Drop for DemoRuns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
