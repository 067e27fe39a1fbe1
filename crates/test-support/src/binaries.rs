//! Finding the server binaries: the path `cargo xtask` exports, else the cache that
//! `cargo xtask deps` fills, else `PATH`. The cache layout must match `xtask/src/deps.rs`
//! (Prometheus and `promtool` come from Debian's package, so from `PATH`).

use std::path::{Path, PathBuf};

/// A server binary the fixtures can start.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Binary {
    ValkeyServer,
    Broker,
    Prometheus,
    Promtool,
    /// Arize Phoenix's `phoenix` (in its venv), the trace store.
    Phoenix,
}

impl Binary {
    fn env_var(self) -> &'static str {
        match self {
            Binary::ValkeyServer => "AGENTWIRE_VALKEY_SERVER",
            Binary::Broker => "AGENTWIRE_BROKER_BIN",
            Binary::Prometheus => "AGENTWIRE_PROMETHEUS_BIN",
            Binary::Promtool => "AGENTWIRE_PROMTOOL_BIN",
            Binary::Phoenix => "AGENTWIRE_PHOENIX",
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            Binary::ValkeyServer => "valkey-server",
            Binary::Broker => "nisshi",
            Binary::Prometheus => "prometheus",
            Binary::Promtool => "promtool",
            Binary::Phoenix => "phoenix",
        }
    }

    /// Where `cargo xtask deps` installs it under `~/.cache/agentwire`, if it goes there.
    fn cached(self, cache: &Path) -> Option<PathBuf> {
        match self {
            Binary::ValkeyServer => Some(cache.join("valkey-9.1.2/valkey-server")),
            Binary::Broker => Some(cache.join("nisshi-0.8.1/bin/nisshi")),
            Binary::Phoenix => Some(cache.join("phoenix-20.26.1/bin/phoenix")),
            Binary::Prometheus | Binary::Promtool => None,
        }
    }

    /// The binary's path.
    ///
    /// # Panics
    /// When it is nowhere to be found, saying how to install it.
    pub(crate) fn locate(self) -> PathBuf {
        if let Some(path) = std::env::var_os(self.env_var()).filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "{} is set to {}, which is not a file",
                self.env_var(),
                path.display()
            );
            return path;
        }
        let cached = std::env::var_os("HOME")
            .and_then(|home| self.cached(&Path::new(&home).join(".cache/agentwire")))
            .filter(|path| path.is_file());
        cached
            .or_else(|| on_path(self.file_name()))
            .unwrap_or_else(|| {
                panic!(
                    "{} not found: run the tests with `cargo xtask test` (or install it with \
                 `cargo xtask deps`, or set {})",
                    self.file_name(),
                    self.env_var()
                )
            })
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
