//! The local stack's Prometheus: Debian's server with `infra/prometheus/prometheus.yml`, which
//! scrapes every service of `cargo xtask up` on its fixed loopback port and loads the recording
//! and alert rules of `infra/prometheus/rules.yml`. Its data lives under `.stack/prometheus/`.
//!
//! It listens on 9190, not Prometheus's usual 9090: installing Debian's package on a host with
//! systemd starts a system Prometheus there.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use crate::deps;
use crate::procs::Service;
use crate::stack::loopback;

pub const PROMETHEUS_PORT: u16 = 9190;
/// The stack's scrape configuration, relative to the workspace root.
pub const CONFIG: &str = "infra/prometheus/prometheus.yml";
/// Replaying a large write-ahead log after a restart takes a while.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts Prometheus on [`PROMETHEUS_PORT`] and waits until it listens.
pub fn start(
    prometheus: &deps::Prometheus,
    root: &Path,
    stack_dir: &Path,
) -> anyhow::Result<Service> {
    let data = stack_dir.join("prometheus");
    std::fs::create_dir_all(&data).with_context(|| format!("create {}", data.display()))?;
    let mut command = Command::new(&prometheus.server);
    command
        .arg(format!("--config.file={}", root.join(CONFIG).display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!(
            "--web.listen-address={}",
            loopback(PROMETHEUS_PORT)
        ))
        .arg("--storage.tsdb.retention.time=7d")
        .current_dir(stack_dir);
    let mut service = Service::start("prometheus", command, &stack_dir.join("prometheus.log"))?;
    service.wait_for_port(loopback(PROMETHEUS_PORT), START_TIMEOUT)?;
    Ok(service)
}

/// Where Prometheus answers (its UI, `/alerts`, `/api/v1/query`).
pub fn url() -> String {
    format!("http://{}", loopback(PROMETHEUS_PORT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::{ENRICHER_ADMIN_PORT, GATEWAY_PORT, RELAY_ADMIN_PORT, workspace_root};

    /// The config scrapes every service `up` starts, on the ports `up` gives them, under the
    /// job names the rules and the dashboard use, and loads the rules.
    #[test]
    fn the_config_scrapes_every_service_of_the_stack() {
        let config =
            std::fs::read_to_string(workspace_root().join(CONFIG)).expect("read the config");
        for (job, port) in [
            ("agentwire-gateway", GATEWAY_PORT),
            ("agentwire-relay", RELAY_ADMIN_PORT),
            ("agentwire-enricher", ENRICHER_ADMIN_PORT),
        ] {
            let at = config
                .find(&format!("job_name: {job}\n"))
                .unwrap_or_else(|| panic!("no job {job} in {CONFIG}"));
            let target = format!("\"127.0.0.1:{port}\"");
            let next_job = config[at + 1..]
                .find("job_name:")
                .map_or(config.len(), |i| at + 1 + i);
            assert!(
                config[at..next_job].contains(&target),
                "job {job} does not scrape {target}"
            );
        }
        assert!(config.contains("rule_files:\n  - rules.yml\n"), "{config}");
        assert!(
            workspace_root()
                .join("infra/prometheus/rules.yml")
                .is_file()
        );
    }
}
