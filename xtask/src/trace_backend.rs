//! The local stack's trace store: Arize Phoenix (installed by `deps::ensure_phoenix`), which
//! receives OTLP from every service and shows the traces in its UI. It is optional: when it
//! cannot be installed or its ports are taken, the stack runs untraced and says so.
//!
//! Phoenix groups spans by the resource attribute `openinference.project.name` (not by
//! `service.name`), and one trace lives in one project, so every service exports into
//! [`PROJECT`]. Its gRPC server binds every interface whatever `PHOENIX_HOST` says.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use crate::deps;
use crate::procs::Service;
use crate::stack::loopback;

/// Phoenix's UI, REST and GraphQL API, and OTLP over HTTP (`/v1/traces`): its default port.
pub const UI_PORT: u16 = 6006;
/// OTLP over gRPC: the standard port.
pub const OTLP_GRPC_PORT: u16 = 4317;
/// The Phoenix project the stack's spans land in.
pub const PROJECT: &str = "agentwire";
/// Its start (migrations, then the servers) takes 10-25 s on 2 cores; longer while cargo builds.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// A Phoenix started for the stack, stopped when dropped.
#[derive(Debug)]
pub struct TraceBackend {
    service: Service,
}

impl TraceBackend {
    /// Installs Phoenix if needed and starts it with its data under `dir`, without waiting for
    /// it to answer (see [`TraceBackend::wait_ready`]). `None`, after saying why, when it
    /// cannot run.
    pub fn start(dir: &Path) -> Option<TraceBackend> {
        let taken: Vec<u16> = [UI_PORT, OTLP_GRPC_PORT]
            .into_iter()
            .filter(|port| {
                std::net::TcpStream::connect_timeout(&loopback(*port), Duration::from_millis(200))
                    .is_ok()
            })
            .collect();
        if !taken.is_empty() {
            eprintln!(
                "xtask: !!! port(s) {taken:?} in use: no trace store, the stack runs untraced"
            );
            return None;
        }
        match deps::ensure_phoenix().and_then(|phoenix| spawn(&phoenix, dir)) {
            Ok(service) => Some(TraceBackend { service }),
            Err(err) => {
                eprintln!("xtask: !!! no trace store ({err:#}); the stack runs untraced");
                None
            }
        }
    }

    /// Waits until Phoenix answers on both ports (HTTP listens once start-up is complete).
    pub fn wait_ready(&mut self) -> anyhow::Result<()> {
        self.service
            .wait_for_port(loopback(OTLP_GRPC_PORT), START_TIMEOUT)?;
        self.service.wait_for_port(loopback(UI_PORT), START_TIMEOUT)
    }
}

/// The standard OpenTelemetry variables that point a service at the stack's Phoenix. Each
/// service names itself (`service.name`); Phoenix keeps only the project.
pub fn otel_env() -> Vec<(&'static str, String)> {
    vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{OTLP_GRPC_PORT}"),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            format!("openinference.project.name={PROJECT}"),
        ),
    ]
}

/// The UI, on the stack's project.
pub fn ui_url() -> String {
    format!("http://127.0.0.1:{UI_PORT}/redirects/projects/{PROJECT}")
}

fn spawn(phoenix: &Path, dir: &Path) -> anyhow::Result<Service> {
    let working_dir = dir.join("data");
    std::fs::create_dir_all(&working_dir)
        .with_context(|| format!("create {}", working_dir.display()))?;
    let mut command = Command::new(phoenix);
    command.arg("serve").current_dir(dir);
    // Nothing from the caller's PHOENIX_* settings (a Postgres URL, auth) leaks in.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PHOENIX_") {
            command.env_remove(name);
        }
    }
    command
        .env("PHOENIX_WORKING_DIR", &working_dir)
        .env("PHOENIX_HOST", "127.0.0.1")
        .env("PHOENIX_PORT", UI_PORT.to_string())
        .env("PHOENIX_GRPC_PORT", OTLP_GRPC_PORT.to_string())
        .envs(quiet_and_local());
    Service::start("phoenix", command, &dir.join("phoenix.log"))
}

/// Phoenix's settings as agentwire runs it (no telemetry, nothing fetched from the internet,
/// no assistant or MCP server), shared with the other place that starts it:
/// `infra/phoenix/quiet.env`.
fn quiet_and_local() -> impl Iterator<Item = (&'static str, &'static str)> {
    include_str!("../../infra/phoenix/quiet.env")
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
}
