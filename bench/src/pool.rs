//! Agent-pool scenarios (this project only; apalis-redis has no agent pool):
//!
//! - warm lease latency: `AgentPool::lease` of an idle, already set-up agent;
//! - makespan: 1,000 queued jobs whose agent command takes 200 ms (`sleep 0.2` run by
//!   the `command` runtime in a local sandbox), on one worker process with 10 warm
//!   agents and concurrency 10, against the ideal 1,000 × 0.2 s / 10 = 20 s.
//!
//! Both use the library's own pieces as the worker binary wires them (`worker/src/
//! wiring.rs`, `execute.rs`): `LocalProvider`, `CommandRuntime`, `AgentPool`, the
//! queue's `RedisBackend`; only the agent profile is the benchmark's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use apalis::layers::WorkerBuilderExt;
use apalis::prelude::{Data, WorkerBuilder};
use fleet_shared::error::{ErrorClass, JobError};
use fleet_shared::job::Job;
use fleet_shared::pool::{AgentPool, JobRef, PoolProfile, Registry};
use fleet_shared::queue::RedisQueue;
use fleet_shared::queue::apalis_backend::{JobOutput, RedisBackend};
use fleet_shared::queue::attempt::AttemptContext;
use fleet_shared::queue::lease_keeper::LeaseKeeper;
use fleet_shared::runtime::RunOptions;
use fleet_shared::runtime::command::CommandRuntime;
use fleet_shared::sandbox::SandboxProvider;
use fleet_shared::sandbox::local::{LocalConfig, LocalProvider};
use fleet_shared::settings::{AgentProfile, QueryVia, RuntimeKind, Settings};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::child::{WorkerSpec, ready_then_wait_for_go};
use crate::fleet;

/// The benchmark's agent profile.
pub const PROFILE: &str = "bench";
/// Worker processes and handlers per process of the makespan scenario; they share
/// `AGENTS` agents through the registry.
pub const WORKERS: usize = 3;
pub const CONCURRENCY: usize = 4;
pub const AGENTS: usize = 10;
/// Seconds one makespan job's agent command runs.
pub const JOB_SECS: f64 = 0.2;
/// Sum of the time handlers waited for an agent / ran the agent (µs), for the report.
pub const LEASE_US_KEY: &str = "bench:pool:lease_us";
pub const RUN_US_KEY: &str = "bench:pool:run_us";

/// A pool of `agents` local-sandbox agents whose command is `command`, in `root`.
pub fn build(
    root: &Path,
    agents: usize,
    command: &[&str],
    worker: &str,
    registry: Registry,
) -> AgentPool {
    let settings = Settings::from_layers(None, &[]).expect("the default settings load");
    let mut local = LocalConfig::from_settings(&settings.sandbox.local);
    local.root = root.to_path_buf();
    let provider: Arc<dyn SandboxProvider> = Arc::new(LocalProvider::new(local));
    let profile = AgentProfile {
        runtime: RuntimeKind::Command,
        repo: String::new(),
        command: command.iter().map(|s| s.to_string()).collect(),
        query_via: QueryVia::Stdin,
        setup: Vec::new(),
        env: BTreeMap::new(),
        secret_env: Vec::new(),
        template: String::new(),
        ..Default::default()
    };
    let runtime = Arc::new(CommandRuntime::new(
        profile,
        BTreeMap::new(),
        PathBuf::from(root),
    ));
    let mut profiles = BTreeMap::new();
    profiles.insert(
        PROFILE.to_string(),
        PoolProfile {
            runtime,
            template: settings.sandbox.e2b.template.clone(),
            env: BTreeMap::new(),
            max_agents: agents,
            min_idle: 0,
            repo: String::new(),
            network: None,
            model_access: Default::default(),
        },
    );
    AgentPool::new(
        provider,
        registry,
        profiles,
        settings.pool.clone(),
        worker,
        settings.lease_ttl(),
    )
}

/// Grow the fleet's pool to `n` agents now, so the measurement starts warm (several
/// processes may do it at once: the registry caps the profile at `n`).
pub async fn warm_up(pool: &AgentPool, n: usize) -> Result<()> {
    pool.scale(PROFILE, n)
        .await
        .map_err(|e| anyhow::anyhow!("warm up the pool: {e}"))?;
    Ok(())
}

/// `samples` sequential lease + give-back cycles on a warm pool of 10; returns the
/// lease times (ms).
pub async fn warm_lease_latency(root: &Path, samples: usize, redis_url: &str) -> Result<Vec<f64>> {
    let registry = Registry::open(&fleet::redis_settings(redis_url)).await?;
    let pool = build(root, 10, &["true"], "bench-lease", registry);
    warm_up(&pool, 10).await?;
    let cancel = CancellationToken::new();
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples + 1 {
        let t = Instant::now();
        let job = JobRef {
            id: format!("bench-{i}"),
            order: i as u64,
        };
        let lease = pool
            .lease(
                PROFILE,
                None,
                false,
                Duration::from_secs(600),
                &cancel,
                &job,
            )
            .await
            .map_err(|e| anyhow::anyhow!("lease: {e}"))?;
        let el = t.elapsed();
        pool.give_back(lease, true).await;
        if i > 0 {
            out.push(el.as_secs_f64() * 1000.0);
        }
    }
    pool.shutdown().await;
    Ok(out)
}

/// What the makespan worker's handler needs.
struct PoolCtx {
    pool: Arc<AgentPool>,
    stats: ConnectionManager,
}

/// The research handler of `worker/src/execute.rs`, trimmed to the benchmark: lease an
/// agent, run the query with the agent's runtime, give the agent back.
async fn handle(
    job: Job,
    attempt: Data<AttemptContext>,
    ctx: Data<Arc<PoolCtx>>,
) -> Result<JobOutput, JobError> {
    let cancel = attempt.abort.token();
    let pool = &ctx.pool;
    let runtime = pool
        .runtime(PROFILE)
        .ok_or_else(|| JobError::permanent("no bench profile"))?;
    let t0 = Instant::now();
    let lease = pool
        .lease(
            PROFILE,
            None,
            false,
            attempt.attempt_timeout,
            cancel,
            &JobRef {
                id: job.id.to_string(),
                order: job.id.submitted_ms(),
            },
        )
        .await?;
    let t1 = Instant::now();
    let query = match &job.spec.payload {
        fleet_shared::job::JobPayload::Research(r) => r.query.clone(),
        _ => String::new(),
    };
    let output = runtime
        .run(
            pool.provider().as_ref(),
            &lease.sandbox_id,
            &query,
            RunOptions {
                timeout: Some(attempt.attempt_timeout),
                cancel: cancel.clone(),
                output: None,
                ..Default::default()
            },
        )
        .await;
    let t2 = Instant::now();
    let healthy = !matches!(&output, Err(e) if e.class == ErrorClass::SandboxLost);
    pool.give_back(lease, healthy).await;
    // Off the job's path, so the measurement does not lengthen the makespan.
    let mut stats = ctx.stats.clone();
    let (lease_us, run_us) = ((t1 - t0).as_micros() as u64, (t2 - t1).as_micros() as u64);
    tokio::spawn(async move {
        let _: Result<(), _> = redis::pipe()
            .incr(LEASE_US_KEY, lease_us)
            .incr(RUN_US_KEY, run_us)
            .query_async(&mut stats)
            .await;
    });
    let output = output?;
    Ok(serde_json::json!({ "exit_code": output.exit_code }))
}

/// Worker-process main for the makespan scenario: 10 warm agents, concurrency 10.
pub async fn worker_main(spec: WorkerSpec) -> Result<()> {
    let ttl = Duration::from_secs(spec.lease_ttl_secs);
    let redis = fleet::redis_settings(&spec.redis_url);
    let config = fleet::queue_config(ttl);
    let queue = RedisQueue::open(&redis, config.clone())
        .await
        .context("open queue")?;
    let keeper = Arc::new(LeaseKeeper::start(
        redis,
        config,
        fleet::keeper_timings(ttl),
    ));
    let root = spec
        .pool_root
        .clone()
        .context("the pool worker needs --pool-root")?;
    let secs = format!("{JOB_SECS}");
    let registry = Registry::open(&fleet::redis_settings(&spec.redis_url)).await?;
    let pool = Arc::new(build(
        &root,
        AGENTS,
        &["sleep", &secs],
        &spec.name,
        registry,
    ));
    pool.clone().start_background(
        fleet::redis_settings(&spec.redis_url),
        CancellationToken::new(),
    );
    warm_up(&pool, AGENTS).await?;
    let stats = redis::Client::open(spec.redis_url.as_str())?
        .get_connection_manager()
        .await?;
    let ctx = Arc::new(PoolCtx { pool, stats });
    ready_then_wait_for_go().await?;
    let backend = RedisBackend::start(
        queue,
        keeper,
        &spec.name,
        spec.concurrency,
        CancellationToken::new(),
    );
    WorkerBuilder::new(spec.name.as_str())
        .backend(backend)
        .concurrency(spec.concurrency)
        .data(ctx)
        .build(handle)
        .run()
        .await
        .context("worker ended")?;
    Ok(())
}

/// Read and clear the handlers' time sums (µs).
pub async fn take_sums(conn: &mut ConnectionManager) -> Result<(u64, u64)> {
    let lease: Option<u64> = conn.get(LEASE_US_KEY).await?;
    let run: Option<u64> = conn.get(RUN_US_KEY).await?;
    Ok((lease.unwrap_or(0), run.unwrap_or(0)))
}
