//! Shared helpers for xlac's end-to-end tests.

use std::path::PathBuf;
use xlac_runtime::{Platform, Plugin};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the repo").to_path_buf()
}

/// The CPU plugin, or `None` (with a note) when it is not installed. Under CI
/// (`CI` set) a missing plugin fails the test instead: CI must install it.
pub fn cpu_plugin() -> Option<Plugin> {
    match Plugin::discover(Platform::Cpu, None) {
        Ok(p) => Some(p),
        Err(e) if std::env::var_os("CI").is_some() => panic!("CI is set but the CPU plugin is missing: {e}"),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}
