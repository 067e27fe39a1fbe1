//! The local stack on loopback: Valkey, the nisshi broker (SQLite storage under `.stack/`),
//! the event topic, the relay, the gateway and the enricher, then the demo.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::deps::{self, Servers};
use crate::procs::Service;

pub const VALKEY_PORT: u16 = 6379;
pub const KAFKA_PORT: u16 = 9092;
pub const GATEWAY_PORT: u16 = 8080;
pub const RELAY_ADMIN_PORT: u16 = 9464;
pub const ENRICHER_ADMIN_PORT: u16 = 9465;
/// Partitions of `agent.events` in the local stack.
pub const PARTITIONS: u32 = 8;
pub const TOPIC: &str = "agent.events";
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn loopback(port: u16) -> SocketAddr {
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
pub fn start_valkey(servers: &Servers, port: u16, dir: &Path) -> anyhow::Result<Service> {
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
pub fn start_broker(servers: &Servers, port: u16, dir: &Path) -> anyhow::Result<Service> {
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
    servers: &Servers,
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

/// Builds the stack's binaries with the release profile (for load runs), and only them: the
/// tests and the load tool are not built here.
pub fn build_release(with_enricher: bool) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let mut command = Command::new("cargo");
    command.args(["build", "--release", "-p", "agentwire"]);
    if with_enricher {
        command.args(["-p", "agentwire-enricher"]);
    }
    deps::run(command.current_dir(&root))?;
    Ok(target_dir(&root).join("release"))
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// `cargo xtask up`.
pub fn up(demo: bool, with_enricher: bool, release: bool) -> anyhow::Result<()> {
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
    ] {
        if std::net::TcpStream::connect_timeout(&loopback(port), Duration::from_millis(200)).is_ok()
        {
            bail!("port {port} is already in use (a previous stack still running?); stop it first");
        }
    }
    println!("xtask: [1/4] installing Valkey and the broker (cached after the first run)");
    let servers = deps::ensure_all()?;
    let binaries = if release {
        println!("xtask: [2/4] building agentwire and the enricher (release profile)");
        build_release(with_enricher)?
    } else {
        println!("xtask: [2/4] building agentwire and the enricher");
        build_workspace()?
    };
    let agentwire = binaries.join("agentwire");
    let enricher_bin = binaries.join("agentwire-enricher");

    let stack_dir = root.join(".stack");
    let broker_dir = stack_dir.join("nisshi");
    std::fs::create_dir_all(&broker_dir)?;
    println!("xtask: [3/4] starting Valkey, the broker, the relay, the gateway and the enricher");
    let mut valkey = start_valkey(&servers, VALKEY_PORT, &stack_dir)?;
    let mut broker = start_broker(&servers, KAFKA_PORT, &broker_dir)?;
    create_topic(&servers, KAFKA_PORT, TOPIC, PARTITIONS)?;
    let mut relay = Command::new(&agentwire);
    relay.arg("relay").env(
        "AGENTWIRE_ADMIN_LISTEN",
        loopback(RELAY_ADMIN_PORT).to_string(),
    );
    let mut relay = Service::start("relay", relay, &stack_dir.join("relay.log"))?;
    relay.wait_for_port(loopback(RELAY_ADMIN_PORT), START_TIMEOUT)?;
    let mut gateway = Command::new(&agentwire);
    // The local stack runs without authentication (the gateway logs so, loudly): the demo and
    // the load tool talk to it without tokens.
    gateway
        .arg("gateway")
        .env("AGENTWIRE_LISTEN", loopback(GATEWAY_PORT).to_string())
        .env("AGENTWIRE_AUTH", "off");
    let mut gateway = Service::start("gateway", gateway, &stack_dir.join("gateway.log"))?;
    gateway.wait_for_port(loopback(GATEWAY_PORT), START_TIMEOUT)?;
    let mut enricher_command = Command::new(&enricher_bin);
    enricher_command
        .arg("run")
        .env(
            "AGENTWIRE_ADMIN_LISTEN",
            loopback(ENRICHER_ADMIN_PORT).to_string(),
        )
        .env("AGENTWIRE_MODEL_DIR", &servers.model)
        .env("AGENTWIRE_ENRICHER_LABELS", root.join("infra/labels.toml"));
    // Load runs leave it out: it would embed every load event on the same two cores.
    let mut enricher = if with_enricher {
        let mut enricher = Service::start(
            "enricher",
            enricher_command,
            &stack_dir.join("enricher.log"),
        )?;
        enricher.wait_for_port(loopback(ENRICHER_ADMIN_PORT), START_TIMEOUT)?;
        Some(enricher)
    } else {
        println!("xtask: the enricher is not started (--no-enricher)");
        None
    };

    println!("xtask: the stack is up");
    println!(
        "  gateway   http://127.0.0.1:{GATEWAY_PORT}  (WebSocket ws://127.0.0.1:{GATEWAY_PORT}/v1/ws, /metrics, /readyz)"
    );
    println!("  relay     http://127.0.0.1:{RELAY_ADMIN_PORT}/metrics");
    if enricher.is_some() {
        println!(
            "  enricher  http://127.0.0.1:{ENRICHER_ADMIN_PORT}/metrics  (agent.enriched; `enriched` frames)"
        );
    }
    println!("  kafka     127.0.0.1:{KAFKA_PORT} (nisshi, topic {TOPIC}, {PARTITIONS} partitions)");
    println!("  valkey    redis://127.0.0.1:{VALKEY_PORT}");
    println!("  logs      {}", stack_dir.display());
    if demo {
        println!(
            "xtask: [4/4] running the demo: simulated agents publish, a client prints what it receives"
        );
        let status = Command::new(&agentwire)
            .args([
                "demo",
                "--gateway",
                &format!("http://127.0.0.1:{GATEWAY_PORT}"),
            ])
            .status()
            .context("run the demo")?;
        if !status.success() && !stopping.load(Ordering::SeqCst) {
            bail!("the demo failed with {status}");
        }
    }
    println!("xtask: the stack stays up; press Ctrl-C to stop it");
    let mut services: Vec<&mut Service> = vec![&mut valkey, &mut broker, &mut relay, &mut gateway];
    services.extend(enricher.as_mut());
    crate::watch::watch(&mut services, loopback(GATEWAY_PORT), &stopping)?;
    println!("xtask: stopping");
    Ok(())
}
