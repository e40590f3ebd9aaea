//! Real agent CLIs from the npm registry for the tests: the pinned Claude Code CLI and
//! Bun, installed once into a cache under the target directory (reused across tests and
//! runs). A test that needs one and cannot have it (no npm, no registry) skips with a
//! message saying why — the only case where these tests skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The Claude Code version the runtime pins (`claude_code::DEFAULT_CLI_VERSION`).
pub const CLAUDE_CODE: (&str, &str) = (
    "@anthropic-ai/claude-code",
    fleet_shared::runtime::claude_code::DEFAULT_CLI_VERSION,
);
/// Bun, which runs Dexter (the npm package carries its binary).
pub const BUN: (&str, &str) = ("bun", "1.4.5");

fn cache_root() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::harness::workspace_root().join("target"));
    target.join("agent-clis")
}

/// The `node_modules/.bin` directory holding `package@version`'s binaries, installing it
/// first if needed; `Err` says why it could not be had.
pub fn npm_bin_dir((package, version): (&str, &str)) -> Result<PathBuf, String> {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    let _guard = LOCK.get_or_init(Mutex::default).lock().unwrap();
    let name = package.trim_start_matches('@').replace('/', "-");
    let prefix = cache_root().join(format!("{name}-{version}"));
    let bin = prefix.join("node_modules/.bin");
    let marker = prefix.join(".installed");
    if marker.is_file() {
        return Ok(bin);
    }
    // Install into a fresh directory and rename it into place, so a test binary running
    // at the same time never sees half an install.
    std::fs::create_dir_all(cache_root()).map_err(|e| e.to_string())?;
    let staging = cache_root().join(format!("{name}-{version}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| e.to_string())?;
    let output = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&staging)
        .arg(format!("{package}@{version}"))
        .output()
        .map_err(|e| format!("npm is not available: {e}"))?;
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(format!(
            "npm install {package}@{version} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    std::fs::write(staging.join(".installed"), "").map_err(|e| e.to_string())?;
    if std::fs::rename(&staging, &prefix).is_err() {
        // Another process installed it first.
        let _ = std::fs::remove_dir_all(&staging);
    }
    if marker.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{package}@{version} did not install into {}",
            prefix.display()
        ))
    }
}

/// `PATH` with `dir` first.
pub fn path_with(dir: &Path) -> String {
    let mut path = dir.display().to_string();
    if let Ok(rest) = std::env::var("PATH") {
        path.push(':');
        path.push_str(&rest);
    }
    path
}
