//! This project's side of each benchmark, through the library only (`fleet-shared`):
//! `RedisQueue` for producing and watching the queue, and in worker processes the
//! apalis `RedisBackend` with its `LeaseKeeper`, exactly as a worker binary would use
//! them (settings from `config/default.toml`, lease TTL from the command line).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use apalis::prelude::WorkerBuilder;
use fleet_shared::error::JobError;
use fleet_shared::job::{Job, QueueKind};
use fleet_shared::queue::apalis_backend::{JobOutput, RedisBackend};
use fleet_shared::queue::lease_keeper::{KeeperTimings, LeaseKeeper};
use fleet_shared::queue::{QueueConfig, RedisQueue};
use fleet_shared::settings::{RedisSettings, Settings};
use tokio_util::sync::CancellationToken;

use crate::child::{WorkerSpec, ready_then_wait_for_go};
use crate::work;

/// Key prefix of the benchmark queue (`bench:{research}:…`).
pub const KEY_PREFIX: &str = "bench";

/// The defaults, and `FLEET_QUEUE__LISTING_INDEXES` from the environment when set (the
/// worker processes inherit it): `FLEET_QUEUE__LISTING_INDEXES=false` measures the queue
/// without its listing indexes (BENCHMARKS.md).
fn settings() -> Settings {
    let key = "FLEET_QUEUE__LISTING_INDEXES";
    let layers: Vec<(String, String)> = std::env::var(key)
        .map(|v| vec![(key.to_string(), v)])
        .unwrap_or_default();
    Settings::from_layers(None, &layers).expect("the default settings load")
}

pub fn redis_settings(url: &str) -> RedisSettings {
    let mut r = settings().redis;
    r.url = url.to_string();
    r.key_prefix = KEY_PREFIX.into();
    r
}

/// The research queue's config from the defaults, with this lease TTL.
pub fn queue_config(lease_ttl: Duration) -> QueueConfig {
    let mut c = QueueConfig::from_settings(&settings(), QueueKind::Research);
    c.lease_ttl = lease_ttl;
    c
}

/// The keeper timings a worker uses: renew every third of the TTL, reclaim as configured.
pub fn keeper_timings(lease_ttl: Duration) -> KeeperTimings {
    KeeperTimings {
        renew_every: lease_ttl / 3,
        reclaim_every: Duration::from_millis(settings().queue.reclaim_interval_ms),
    }
}

pub async fn open(url: &str) -> Result<RedisQueue> {
    Ok(RedisQueue::open(&redis_settings(url), queue_config(Duration::from_secs(30))).await?)
}

async fn handle(job: Job) -> Result<JobOutput, JobError> {
    work::run(&job.spec)
        .await
        .map_err(|e| JobError::permanent(e.to_string()))?;
    Ok(JobOutput::Null)
}

/// The queue over `shards` shards (`queue.shards`), lease TTL 30 s.
pub async fn open_sharded(url: &str, shards: u16) -> Result<RedisQueue> {
    let mut config = queue_config(Duration::from_secs(30));
    config.shards = shards;
    Ok(RedisQueue::open(&redis_settings(url), config).await?)
}

/// Worker-process main for this project: fetches from every shard of the queue, with
/// a lease keeper per shard, as `fleet-worker` does.
pub async fn worker_main(spec: WorkerSpec) -> Result<()> {
    let ttl = Duration::from_secs(spec.lease_ttl_secs);
    let redis = redis_settings(&spec.redis_url);
    let mut config = queue_config(ttl);
    config.shards = spec.shards.max(1);
    let queue = RedisQueue::open(&redis, config.clone())
        .await
        .context("open queue")?;
    let shards = queue
        .shards()
        .into_iter()
        .map(|shard| {
            let mut config = config.clone();
            config.shard = shard.shard_index();
            let keeper = Arc::new(LeaseKeeper::start(
                redis.clone(),
                config,
                keeper_timings(ttl),
            ));
            (shard, keeper)
        })
        .collect();
    work::init(&spec.redis_url, &spec.name).await?;
    ready_then_wait_for_go().await?;
    let backend = RedisBackend::start_sharded(
        shards,
        &spec.name,
        spec.concurrency,
        CancellationToken::new(),
    );
    WorkerBuilder::new(spec.name.as_str())
        .backend(backend)
        .build(handle)
        .run()
        .await
        .context("worker ended")?;
    Ok(())
}
