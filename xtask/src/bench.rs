//! `cargo xtask bench-enricher`: the enricher's inference throughput next to
//! sentence-transformers (PyTorch) on the same CPU, the same sentences and the same threads.
//! sentence-transformers goes into a throwaway venv under `~/.cache/agentwire/st-venv`
//! (PyTorch from PyPI: a large download, the first time only).

use std::process::Command;

use anyhow::Context as _;

use crate::deps;
use crate::stack::{build_workspace, workspace_root};

const ST_VERSION: &str = "sentence-transformers==6.2.0";

pub fn run(devices: &[String], extra: &[String]) -> anyhow::Result<()> {
    let servers = deps::ensure_all()?;
    let root = workspace_root();
    let enricher = build_workspace()?.join("agentwire-enricher");
    let fixture = root.join("services/enricher/tests/fixtures/minilm_golden.json");
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    for device in devices {
        println!("xtask: burn on {device}");
        deps::run(
            Command::new(&enricher)
                .args(["bench", "--device", device, "--fixture"])
                .arg(&fixture)
                .args(extra)
                .env("AGENTWIRE_MODEL_DIR", &servers.model),
        )?;
    }
    let venv = deps::cache_dir()?.join("st-venv");
    let python = venv.join("bin/python3");
    if !python.is_file() {
        println!(
            "xtask: installing {ST_VERSION} into {} (once)",
            venv.display()
        );
        deps::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("create the venv")?;
    }
    let has_st = Command::new(&python)
        .args(["-c", "import sentence_transformers"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_st {
        deps::run(Command::new(&python).args(["-m", "pip", "install", "--quiet", ST_VERSION]))
            .context("pip install sentence-transformers")?;
    }
    println!("xtask: sentence-transformers on the CPU, {threads} threads");
    deps::run(
        Command::new(&python)
            .arg(root.join("loadtests/enricher/st_bench.py"))
            .arg("--model-dir")
            .arg(&servers.model)
            .arg("--fixture")
            .arg(&fixture)
            .args(["--device", "cpu", "--threads", &threads.to_string()])
            .args(extra),
    )
}
