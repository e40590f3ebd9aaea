//! Real `fleet-worker` and `fleet` processes for end-to-end and fault tests: built
//! once per test run, started with a config file and environment, killed with
//! SIGKILL or stopped with SIGTERM like an operator (or a crash) would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

use crate::harness::workspace_root;

/// Path of a workspace binary, building the workspace's binaries once per test run.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "fleet-worker",
                "-p",
                "fleet-producer",
                "--bins",
            ])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        target.join("debug")
    });
    dir.join(name)
}

/// A `fleet-worker` child process. Killed (SIGKILL) on drop if still running.
pub struct WorkerProcess {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl WorkerProcess {
    /// Start a worker with `config` (a TOML file) and extra environment.
    pub fn start(
        config: &Path,
        name: &str,
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> WorkerProcess {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("worker log file");
        let mut cmd = Command::new(binary("fleet-worker"));
        cmd.arg("--config")
            .arg(config)
            .arg("--name")
            .arg(name)
            .current_dir(workspace_root())
            .env("RUST_LOG", "info")
            .env("FLEET_WORKER__HTTP_ADDR", "")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        WorkerProcess {
            child: cmd.spawn().expect("spawn fleet-worker"),
            name: name.to_string(),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `kill -9`: no chance to clean up, like a crash.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as an orchestrator stopping the worker.
    pub fn sigterm(&self) {
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait for the process to exit; returns its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        self.child.wait().ok().and_then(|s| s.code())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill9();
        }
    }
}

/// Run the `fleet` CLI to completion.
pub fn fleet(args: &[&str], env: &[(&str, String)], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(binary("fleet"));
    cmd.args(args)
        .current_dir(workspace_root())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn fleet");
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    child.wait_with_output().expect("fleet output")
}
