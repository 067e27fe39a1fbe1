//! `cargo xtask fuzz [--seconds N]`: runs the wire-parser fuzz target (`fuzz/`) with
//! libFuzzer for a bounded time and prints its executions and crashes. Needs a nightly
//! toolchain (`rustup toolchain install nightly`); installs cargo-fuzz into the cache once.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::deps;
use crate::stack::workspace_root;

const CARGO_FUZZ: &str = "cargo-fuzz@0.13.1";

pub fn run(seconds: u64) -> anyhow::Result<()> {
    let nightly = Command::new("cargo")
        .args(["+nightly", "--version"])
        .output();
    if !nightly.is_ok_and(|o| o.status.success()) {
        bail!("cargo fuzz needs a nightly toolchain: rustup toolchain install nightly");
    }
    let root = deps::cache_dir()?.join("cargo-fuzz");
    let bin = root.join("bin/cargo-fuzz");
    if !bin.is_file() {
        println!(
            "xtask: installing {CARGO_FUZZ} into {} (once)",
            root.display()
        );
        deps::run(
            Command::new("cargo")
                .args(["install", "--locked", "--root"])
                .arg(&root)
                .arg(CARGO_FUZZ),
        )
        .context("install cargo-fuzz")?;
    }
    let fuzz_dir = workspace_root().join("fuzz");
    let corpus = fuzz_dir.join("corpus/frames");
    std::fs::create_dir_all(&corpus).context("create the corpus folder")?;
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    path = std::env::join_paths(
        std::iter::once(root.join("bin")).chain(std::env::split_paths(&path)),
    )?;
    println!("xtask: fuzzing the frame parsers for {seconds} s");
    deps::run(
        Command::new("cargo")
            .current_dir(workspace_root())
            .env("PATH", path)
            .args(["+nightly", "fuzz", "run", "--fuzz-dir"])
            .arg(&fuzz_dir)
            .arg("frames")
            .arg(&corpus)
            .arg(fuzz_dir.join("seeds"))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            // Past the 64 KiB attribute limits and up to a whole frame: the limits themselves
            // must be reached (libFuzzer's default stops at 4 KiB).
            .arg("-max_len=2097152")
            // ... from the start, not after libFuzzer's slow growth of its length limit.
            .arg("-len_control=0")
            .arg("-print_final_stats=1"),
    )
    .context("the fuzz run failed (a crash is reported above, its input under fuzz/artifacts)")
}
