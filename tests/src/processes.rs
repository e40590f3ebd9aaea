//! Real `fleet-worker` and `fleet` processes for end-to-end and fault tests: built
//! once per test run, started with a config file and environment, killed with
//! SIGKILL or stopped with SIGTERM like an operator (or a crash) would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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

    /// Wait for the process to exit and check it exited 0; if not, say how it ended
    /// (exit code or signal) and show the end of its log.
    pub fn assert_clean_exit(&mut self) {
        let status = self.child.wait().expect("wait for the worker");
        if status.code() != Some(0) {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "worker {} ended {status} (signal {:?}); the end of its log:\n{}",
                self.pid(),
                std::os::unix::process::ExitStatusExt::signal(&status),
                tail.join("\n")
            );
        }
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

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
pub fn process_ended(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .is_none_or(|s| s.split_whitespace().nth(2) == Some("Z"))
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

/// A `fleet serve` child process on a port of its own choosing (`--listen
/// 127.0.0.1:0`; it prints the address it bound), its stdout and stderr in files.
/// Killed (SIGKILL) on drop if still running.
pub struct ServeProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl ServeProcess {
    /// Start `fleet [ARGS] serve --listen 127.0.0.1:0` and wait until it printed its
    /// address (not until it answers: see the tests' own readiness check).
    pub fn start(args: &[&str], env: &[(&str, String)], log_dir: &Path) -> ServeProcess {
        let stdout = log_dir.join("serve.stdout");
        let stderr = log_dir.join("serve.stderr");
        let mut cmd = Command::new(binary("fleet"));
        cmd.args(args)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .current_dir(workspace_root())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("serve stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("serve stderr file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut server = ServeProcess {
            child: cmd.spawn().expect("spawn fleet serve"),
            base: String::new(),
            stdout,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = std::fs::read_to_string(&server.stdout).unwrap_or_default();
            if let Some(line) = out.lines().find(|l| l.starts_with("listening on ")) {
                server.base = line["listening on ".len()..].trim().to_string();
                return server;
            }
            assert!(
                server.is_running(),
                "fleet serve exited before listening: {:?}\n{}",
                server.child.try_wait(),
                server.logs()
            );
            assert!(
                Instant::now() < deadline,
                "fleet serve printed no address within 30s\n{}",
                server.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn sigterm(&self) {
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait at most `timeout` for the process to exit: its exit code, or `None` if it
    /// is still running (or was killed by a signal).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything it wrote: stdout, then stderr (the log).
    pub fn logs(&self) -> String {
        format!(
            "--- fleet serve stdout ---\n{}--- fleet serve stderr ---\n{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
