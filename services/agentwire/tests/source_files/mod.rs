//! The repository's Rust sources, for tests that check configuration files against the code.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::PathBuf;

/// The repository's root.
pub fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../..")
}

/// Every `.rs` file under `services/` and `crates/` with its text; with `only_src`, only
/// those inside a `src/` folder (what the services and libraries ship, not their tests).
pub fn rust_sources(only_src: bool) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut dirs = vec![root().join("services"), root().join("crates")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs")
                && (!only_src || path.components().any(|c| c.as_os_str() == "src"))
            {
                let text = std::fs::read_to_string(&path).expect("read source");
                found.push((path, text));
            }
        }
    }
    found
}

/// Every string literal `"<prefix>…"` in `text` whose rest is made of `allowed` characters.
pub fn names_with_prefix(text: &str, prefix: &str, allowed: impl Fn(char) -> bool) -> Vec<String> {
    let opening = format!("\"{prefix}");
    text.split(opening.as_str())
        .skip(1)
        .filter_map(|piece| {
            let name: String = piece.chars().take_while(|c| allowed(*c)).collect();
            piece[name.len()..]
                .starts_with('"')
                .then(|| format!("{prefix}{name}"))
        })
        .collect()
}
