//! `cargo xtask test`: starts one Valkey and one broker on free loopback ports for the whole
//! run, hands them to the tests through `AGENTWIRE_TEST_*` (see `crates/test-support`), runs
//! the suite (arguments after `--` go to the test runner) and stops them.

use std::net::TcpListener;
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::deps;
use crate::stack::{self, workspace_root};

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn run(cargo_args: &[String]) -> anyhow::Result<()> {
    let servers = deps::ensure_all()?;
    let dir = std::env::temp_dir().join(format!("agentwire-test-stack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let (valkey_port, kafka_port) = (free_port()?, free_port()?);
    let core = servers.core();
    let valkey = stack::start_valkey(&core, valkey_port, &dir)?;
    let broker = stack::start_broker(&core, kafka_port, &dir)?;
    println!(
        "xtask: test stack: valkey 127.0.0.1:{valkey_port}, broker 127.0.0.1:{kafka_port} ({})",
        dir.display()
    );

    let env = [
        (
            "AGENTWIRE_TEST_VALKEY_URL",
            format!("redis://127.0.0.1:{valkey_port}"),
        ),
        (
            "AGENTWIRE_TEST_KAFKA_BROKERS",
            format!("127.0.0.1:{kafka_port}"),
        ),
        (
            "AGENTWIRE_VALKEY_SERVER",
            servers.valkey.display().to_string(),
        ),
        ("AGENTWIRE_BROKER_BIN", servers.broker.display().to_string()),
        ("AGENTWIRE_MODEL_DIR", servers.model.display().to_string()),
        (
            "AGENTWIRE_PROMETHEUS_BIN",
            servers.prometheus.server.display().to_string(),
        ),
        (
            "AGENTWIRE_PROMTOOL_BIN",
            servers.prometheus.promtool.display().to_string(),
        ),
        ("AGENTWIRE_PHOENIX", servers.phoenix.display().to_string()),
        // deps installed lavapipe: the enricher's wgpu parity test must run, not skip.
        ("AGENTWIRE_REQUIRE_WGPU", "1".to_owned()),
    ];
    let outcome = run_tests(cargo_args, &env);
    drop((valkey, broker));
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// Runs the suite with cargo-nextest (each test in its own process, a hung test is killed
/// after 3 minutes: `.config/nextest.toml`) plus the doc tests, or with `cargo test` where
/// nextest is not installed. Every binary runs even when one fails.
fn run_tests(cargo_args: &[String], env: &[(&str, String)]) -> anyhow::Result<()> {
    let has_nextest = Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut runs: Vec<Vec<&str>> = Vec::new();
    if has_nextest {
        runs.push(vec!["nextest", "run", "--no-fail-fast"]);
        if cargo_args.is_empty() {
            runs.push(vec!["test", "--doc"]);
        }
    } else {
        println!("xtask: cargo-nextest not found; running `cargo test` (no per-test timeout)");
        runs.push(vec!["test", "--no-fail-fast"]);
    }
    let mut failed = Vec::new();
    for run in runs {
        let mut command = Command::new("cargo");
        command.args(&run);
        if cargo_args.is_empty() {
            command.arg("--workspace");
        }
        let status = command
            .args(cargo_args)
            .current_dir(workspace_root())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .status()
            .context("run cargo")?;
        if !status.success() {
            failed.push(format!("cargo {} ({status})", run.join(" ")));
        }
    }
    if !failed.is_empty() {
        bail!("tests failed: {}", failed.join(", "));
    }
    Ok(())
}
