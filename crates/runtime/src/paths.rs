//! Where a package's own files are at run time.

use std::path::PathBuf;

/// The directory of the workspace package at `package` (its path from the workspace root, e.g.
/// `"loadtests"`), for code that reads files shipped beside it. At run time
/// `CARGO_MANIFEST_DIR` names the package being run or tested, which may be another one of the
/// workspace, so the directory is taken from the workspace root found above it; `compiled` (the
/// caller's `env!("CARGO_MANIFEST_DIR")`) is the fallback, for a binary run on its own.
pub fn package_dir(package: &str, compiled: &str) -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .and_then(|dir| {
            dir.ancestors()
                .find(|d| d.join("Cargo.lock").exists())
                .map(|root| root.join(package))
        })
        .filter(|dir| dir.join("Cargo.toml").exists())
        .unwrap_or_else(|| PathBuf::from(compiled))
}
