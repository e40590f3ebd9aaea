//! Worker processes for the benchmarks: this same binary started again in `--worker`
//! mode, so "two workers" really are two processes and `kill -9` really kills one.
//!
//! Protocol: the child sets up (connections, lease keeper / storage), prints `ready`,
//! and starts fetching only when the parent writes `go` on its stdin. The parent
//! therefore times from the moment every worker is ready, not from process start.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::System;

/// How one worker process is configured (passed on its command line).
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub system: System,
    pub redis_url: String,
    pub name: String,
    pub concurrency: usize,
    /// This project: lease TTL.
    pub lease_ttl_secs: u64,
    /// apalis-redis: `poll_with_interval`.
    pub apalis_poll_ms: u64,
    /// apalis-redis: `Config::batch_size`.
    pub apalis_batch: usize,
    /// apalis-redis: `Config::heartbeat_interval`.
    pub apalis_heartbeat_secs: u64,
    /// apalis-redis: `Config::missed_heartbeats`.
    pub apalis_missed: usize,
    /// apalis-redis: `.parallelize(tokio::spawn)`.
    pub apalis_parallelize: bool,
    /// apalis-redis: a re-arming poll timer instead of apalis' own (diagnosis only).
    pub apalis_rearming_poll: bool,
    /// The agent-pool worker: where its local sandboxes live.
    pub pool_root: Option<PathBuf>,
    /// This project: the queue's shards (`queue.shards`), all fetched from.
    pub shards: u16,
}

impl WorkerSpec {
    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--worker".to_string(),
            "--system".into(),
            self.system.as_str().into(),
            "--redis-url".into(),
            self.redis_url.clone(),
            "--name".into(),
            self.name.clone(),
            "--concurrency".into(),
            self.concurrency.to_string(),
            "--lease-ttl-secs".into(),
            self.lease_ttl_secs.to_string(),
            "--apalis-poll-ms".into(),
            self.apalis_poll_ms.to_string(),
            "--apalis-batch".into(),
            self.apalis_batch.to_string(),
            "--apalis-heartbeat-secs".into(),
            self.apalis_heartbeat_secs.to_string(),
            "--apalis-missed".into(),
            self.apalis_missed.to_string(),
            "--shards".into(),
            self.shards.to_string(),
        ];
        if !self.apalis_parallelize {
            a.push("--apalis-no-parallelize".into());
        }
        if self.apalis_rearming_poll {
            a.push("--apalis-rearming-poll".into());
        }
        if let Some(root) = &self.pool_root {
            a.push("--pool-root".into());
            a.push(root.display().to_string());
        }
        a
    }
}

/// A running worker process.
pub struct WorkerProc {
    pub pid: u32,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl WorkerProc {
    /// Start a worker process and wait until it says `ready`.
    pub async fn spawn(spec: &WorkerSpec) -> Result<WorkerProc> {
        let exe = std::env::current_exe().context("path of this binary")?;
        let mut child = Command::new(exe)
            .args(spec.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawn worker process")?;
        let pid = child.id().context("worker pid")?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
        let mut proc = WorkerProc {
            pid,
            child,
            stdin,
            stdout,
        };
        let line = tokio::time::timeout(Duration::from_secs(30), proc.stdout.next_line())
            .await
            .context("worker did not get ready within 30 s")??;
        if line.as_deref() != Some("ready") {
            bail!("worker {} said {line:?} instead of ready", spec.name);
        }
        Ok(proc)
    }

    /// Let it start fetching.
    pub async fn go(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Has it exited (a worker dying is a failed run)?
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// `kill -9`, and reap it.
    pub async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Spawn several workers, then release them all at once; returns them once all run.
pub async fn spawn_all(specs: &[WorkerSpec]) -> Result<Vec<WorkerProc>> {
    let mut procs = Vec::new();
    for s in specs {
        procs.push(WorkerProc::spawn(s).await?);
    }
    Ok(procs)
}

pub async fn go_all(procs: &mut [WorkerProc]) -> Result<()> {
    for p in procs.iter_mut() {
        p.go().await?;
    }
    Ok(())
}

pub async fn kill_all(procs: &mut [WorkerProc]) {
    for p in procs.iter_mut() {
        p.kill9().await;
    }
}

/// In the child: say `ready`, then wait for `go` (or EOF: the parent is gone, exit).
pub async fn ready_then_wait_for_go() -> Result<()> {
    use std::io::Write;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
    }
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await??;
    if line.trim() != "go" {
        std::process::exit(0);
    }
    // After `go`, a closed stdin means the parent died: exit rather than linger.
    tokio::task::spawn_blocking(|| {
        let mut rest = String::new();
        let _ = std::io::stdin().read_line(&mut rest);
        std::process::exit(0);
    });
    Ok(())
}
