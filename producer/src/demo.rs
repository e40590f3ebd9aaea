//! `fleet demo`: the quickstart. Uses the configured Redis if it answers PING, else
//! starts `redis-server` (data under `.fleet/redis/`, AOF on); starts `fleet-worker`
//! (the executable next to this one, else on PATH) with its log under `.fleet/demo/`;
//! submits the demo questions as one batch to the `demo` agent; shows progress and
//! each answer; stops the worker with SIGTERM, then the Redis it started.
//!
//! Every child is in a process group of its own, so a terminal's Ctrl-C reaches only
//! `fleet`, which then stops them in order (worker first, Redis last). A child is
//! killed if `fleet` drops it, and (Linux) sent SIGTERM if `fleet` dies.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use fleet_shared::job::batch::parse_batch;
use fleet_shared::queue::redacted_url;
use tokio::process::{Child, Command};

use crate::cli::DemoArgs;
use crate::commands::batch::{report_batch, submit_batch, wait_batch};
use crate::context::Ctx;
use crate::exit::{Fail, INTERRUPTED};

/// The agent profile the demo asks.
const DEMO_AGENT: &str = "demo";
const REDIS_DIR: &str = ".fleet/redis";
const LOG_DIR: &str = ".fleet/demo";

pub async fn demo(ctx: &mut Ctx, args: DemoArgs, config: Option<PathBuf>) -> anyhow::Result<u8> {
    // Check the input before starting anything.
    let bytes = read_queries(&args.queries)?;
    let specs = parse_batch(&bytes, DEMO_AGENT, &ctx.settings.limits()).map_err(|e| {
        Fail::usage(format!(
            "invalid queries file {}: {e}",
            args.queries.display()
        ))
    })?;
    let worker_exe = find_sibling("fleet-worker").ok_or_else(|| {
        Fail::unavailable(
            "cannot find fleet-worker next to this executable or on PATH (build it: cargo build -p fleet-worker)",
        )
    })?;

    // From here on, SIGINT/SIGTERM/SIGHUP stop the demo in order instead of killing it.
    let mut interrupt = Interrupt::new().context("listening for Ctrl-C")?;

    // (1) Redis.
    let mut redis = None;
    let url = ctx.settings.redis.url.clone();
    if redis_answers(&ctx.settings.redis).await {
        eprintln!("using Redis at {}", redacted_url(&url));
    } else {
        let server = RedisServer::start(Path::new(REDIS_DIR), &ctx.settings.redis).await?;
        eprintln!(
            "no Redis answers at {}; started redis-server on {} (data in {REDIS_DIR}/, AOF on; stopped at the end)",
            redacted_url(&url),
            server.url
        );
        ctx.settings.redis.url = server.url.clone();
        redis = Some(server);
    }

    // (2) Workers, (3)–(4) the batch; then (5) stop everything, whatever happened.
    let outcome = run(
        ctx,
        &args,
        specs,
        &worker_exe,
        config.as_deref(),
        &mut interrupt,
    )
    .await;
    if let Some(server) = redis {
        server.stop(&mut interrupt).await;
    }
    outcome
}

async fn run(
    ctx: &Ctx,
    args: &DemoArgs,
    specs: Vec<fleet_shared::job::JobSpec>,
    worker_exe: &Path,
    config: Option<&Path>,
    interrupt: &mut Interrupt,
) -> anyhow::Result<u8> {
    std::fs::create_dir_all(LOG_DIR).with_context(|| format!("creating {LOG_DIR}"))?;
    let mut workers = Vec::new();
    for i in 1..=args.workers {
        let worker = Worker::start(worker_exe, i, &ctx.settings.redis.url, config)?;
        workers.push(worker);
    }
    eprintln!(
        "started {} fleet-worker process{} ({}; log in {LOG_DIR}/)",
        workers.len(),
        if workers.len() == 1 { "" } else { "es" },
        worker_exe.display()
    );

    let asked = async {
        let queue = &ctx.queues().await?.research;
        let batch = submit_batch(queue, &ctx.settings.redis, specs).await?;
        eprintln!(
            "asked the {DEMO_AGENT} agent {} questions (batch {})",
            batch.ids.len(),
            batch.batch_id
        );
        wait_batch(queue, &batch, !args.no_progress, || {
            check_workers(&mut workers)
        })
        .await?;
        report_batch(ctx, queue, &batch).await
    };
    let outcome = tokio::select! {
        r = asked => r,
        _ = interrupt.recv() => {
            eprintln!("interrupted; stopping the demo");
            Err(Fail::new(INTERRUPTED, "interrupted").into())
        }
    };

    // (5) All workers drain at once: SIGTERM to each, then wait for each.
    let grace = Duration::from_secs(ctx.settings.worker.drain_timeout_secs.saturating_add(10));
    let deadline = tokio::time::Instant::now() + grace;
    for w in &mut workers {
        if w.exited.is_none() && !ask_to_stop(&mut w.child) {
            w.exited = w.child.try_wait().ok().flatten();
            if let Some(status) = w.exited {
                eprintln!("{} had exited ({status})", w.name);
            }
        }
    }
    for w in &mut workers {
        w.wait_stopped(deadline, interrupt).await;
    }
    outcome
}

/// The queries file; a missing one says where it was looked for.
fn read_queries(path: &Path) -> anyhow::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Fail::usage(format!(
            "no such file: {} (run `fleet demo` from the repository root, or pass --queries FILE)",
            path.display()
        ))
        .into()),
        Err(e) => Err(Fail::usage(format!("cannot read {}: {e}", path.display())).into()),
    }
}

/// An executable next to this one, else on PATH.
pub fn find_sibling(name: &str) -> Option<PathBuf> {
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(&file)))
        .filter(|p| p.is_file());
    beside.or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(&file))
                .find(|p| p.is_file())
        })
    })
}

/// PATH with `dir` first, so the worker's agents find sibling executables such as
/// `fleet-demo-agent`.
fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut dirs = vec![dir.to_path_buf()];
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(dirs).unwrap_or_else(|_| std::env::var_os("PATH").unwrap_or_default())
}

/// Whether the Redis of the settings answers PING within two seconds.
pub async fn redis_answers(redis: &fleet_shared::settings::RedisSettings) -> bool {
    let ping = async {
        let mut conn = fleet_shared::connection::connect(redis).await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ping).await,
        Ok(Some(_))
    )
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The last `n` lines of a log file, for an error message.
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(n)..].join("\n");
    if tail.is_empty() {
        format!("({} is empty)", path.display())
    } else {
        format!("last lines of {}:\n{tail}", path.display())
    }
}

/// Put a child in a process group of its own and (Linux) have it sent SIGTERM if
/// `fleet` dies without stopping it.
fn own_group(cmd: &mut Command) {
    #[cfg(unix)]
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    #[cfg(not(unix))]
    let _ = cmd;
}

#[cfg(unix)]
fn signal(child: &Child, sig: libc::c_int) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with the PID of a child we spawned and have not reaped.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

/// SIGINT, SIGTERM or SIGHUP to `fleet` itself (Ctrl-C elsewhere than Unix). A signal
/// that arrives before anyone waits is kept, not lost.
struct Interrupt {
    #[cfg(unix)]
    signals: Vec<tokio::signal::unix::Signal>,
}

impl Interrupt {
    fn new() -> std::io::Result<Interrupt> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signals = [
                SignalKind::interrupt(),
                SignalKind::terminate(),
                SignalKind::hangup(),
            ]
            .into_iter()
            .map(signal)
            .collect::<std::io::Result<Vec<_>>>()?;
            Ok(Interrupt { signals })
        }
        #[cfg(not(unix))]
        Ok(Interrupt {})
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let waits = self.signals.iter_mut().map(|s| Box::pin(s.recv()));
            futures::future::select_all(waits).await;
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Ask a child to stop: SIGTERM (once: a second one tells fleet-worker to release its
/// jobs at once). False if it had exited already.
fn ask_to_stop(child: &mut Child) -> bool {
    if let Ok(Some(_)) = child.try_wait() {
        return false;
    }
    #[cfg(unix)]
    signal(child, libc::SIGTERM);
    #[cfg(not(unix))]
    let _ = child.start_kill();
    true
}

/// Wait for a child asked to stop until `deadline` (an interrupt meanwhile sends
/// SIGTERM again: stop at once), then SIGKILL it.
async fn wait_stopped(
    child: &mut Child,
    name: &str,
    deadline: tokio::time::Instant,
    interrupt: &mut Interrupt,
) -> Option<ExitStatus> {
    loop {
        tokio::select! {
            status = child.wait() => return status.ok(),
            _ = tokio::time::sleep_until(deadline) => break,
            _ = interrupt.recv() => {
                eprintln!("stopping {name} at once");
                #[cfg(unix)]
                signal(child, libc::SIGTERM);
            }
        }
    }
    eprintln!("{name} did not stop in time; killing it");
    let _ = child.kill().await;
    child.wait().await.ok()
}

/// A `redis-server` this demo started.
struct RedisServer {
    child: Child,
    url: String,
}

impl RedisServer {
    /// `base`: the settings whose timeouts the readiness check uses.
    async fn start(
        dir: &Path,
        base: &fleet_shared::settings::RedisSettings,
    ) -> anyhow::Result<RedisServer> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let port = free_port().context("finding a free port")?;
        let log = dir.join("redis.log");
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--daemonize", "no", "--save", ""])
            .args(["--appendonly", "yes"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        own_group(&mut cmd);
        let child = cmd.spawn().map_err(|e| {
            Fail::unavailable(format!(
                "no Redis answers at the configured URL, and redis-server cannot be started: {e} (install Redis, or pass --redis-url)"
            ))
        })?;
        let mut server = RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut local = base.clone();
        local.url = server.url.clone();
        local.cluster_urls.clear();
        local.sentinel_urls.clear();
        while !redis_answers(&local).await {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(Fail::unavailable(format!(
                    "redis-server exited ({status}) before it answered; {}",
                    log_tail(&log, 10)
                ))
                .into());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Fail::unavailable(format!(
                    "redis-server did not answer on port {port} within 10s; {}",
                    log_tail(&log, 10)
                ))
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(server)
    }

    async fn stop(mut self, interrupt: &mut Interrupt) {
        if ask_to_stop(&mut self.child) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            wait_stopped(&mut self.child, "redis-server", deadline, interrupt).await;
        }
        eprintln!("stopped redis-server");
    }
}

/// A `fleet-worker` this demo started.
struct Worker {
    child: Child,
    name: String,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Worker {
    fn start(
        exe: &Path,
        index: u16,
        redis_url: &str,
        config: Option<&Path>,
    ) -> anyhow::Result<Worker> {
        let log = Path::new(LOG_DIR).join(format!("worker-{index}.log"));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(exe);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.env("FLEET_REDIS__URL", redis_url)
            .env("FLEET_WORKER__HTTP_ADDR", "")
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("opening the worker log")?)
            .stderr(file)
            .kill_on_drop(true);
        if let Some(dir) = exe.parent() {
            cmd.env("PATH", path_with(dir));
        }
        own_group(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| Fail::unavailable(format!("cannot start {}: {e}", exe.display())))?;
        Ok(Worker {
            child,
            name: format!("fleet-worker {index}"),
            log,
            exited: None,
        })
    }

    /// Wait for a worker told to stop (`ask_to_stop`), and say how it ended.
    async fn wait_stopped(&mut self, deadline: tokio::time::Instant, interrupt: &mut Interrupt) {
        if self.exited.is_some() {
            return;
        }
        match wait_stopped(&mut self.child, &self.name, deadline, interrupt).await {
            Some(s) if s.success() => eprintln!("stopped {}", self.name),
            Some(s) => eprintln!(
                "{} exited with {s} on shutdown; {}",
                self.name,
                log_tail(&self.log, 10)
            ),
            None => eprintln!("{}: could not learn how it exited", self.name),
        }
    }
}

/// Fail once every worker has exited: nothing would run the remaining jobs.
fn check_workers(workers: &mut [Worker]) -> anyhow::Result<()> {
    for w in workers.iter_mut() {
        if w.exited.is_none()
            && let Ok(Some(status)) = w.child.try_wait()
        {
            eprintln!("{} exited ({status})", w.name);
            w.exited = Some(status);
        }
    }
    match workers.iter().find(|w| w.exited.is_none()) {
        Some(_) => Ok(()),
        None => {
            let w = &workers[0];
            Err(Fail::unavailable(format!(
                "fleet-worker exited ({}) before the jobs were done; {}",
                w.exited.map(|s| s.to_string()).unwrap_or_default(),
                log_tail(&w.log, 20)
            ))
            .into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_queries_file_says_what_to_do() {
        let err = read_queries(Path::new("/nonexistent/queries.txt")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("no such file: /nonexistent/queries.txt"),
            "{text}"
        );
        assert!(text.contains("--queries FILE"), "{text}");
    }

    #[test]
    fn path_puts_the_directory_first() {
        let p = path_with(Path::new("/opt/fleet/bin"));
        let first = std::env::split_paths(&p).next().unwrap();
        assert_eq!(first, PathBuf::from("/opt/fleet/bin"));
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = std::env::temp_dir().join(format!("fleet-log-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("w.log");
        std::fs::write(&f, "a\nb\nc\n").unwrap();
        assert!(log_tail(&f, 2).ends_with(":\nb\nc"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
