//! The baseline: apalis-redis 1.0 with the settings advised for production use (see
//! BENCHMARKS.md, "How each scenario was measured"): an explicit queue name,
//! `poll_with_interval`, a larger `batch_size`, a 5 s response timeout instead of
//! redis-rs' 500 ms (a timeout is fatal to an apalis worker), unique worker names,
//! `.concurrency(n)`, and `.parallelize(tokio::spawn)` in the drain only (see
//! `scenarios.rs`: with it an idle worker stopped polling).
//!
//! Feeding it: every apalis-redis push lands in the `scheduled` ZSET, and its
//! `fetch_next.lua` promotes *all* due entries with one `unpack`, which fails above
//! ~8,000 (Lua's LUAI_MAXCSTACK). So a backlog bigger than that must never be left due
//! in `scheduled` when a worker fetches. The benchmarks push with `push_bulk` in chunks
//! of 1,000: either a few at a time while the workers run (the fed drain; apalis' own
//! promotion copes), or all of them while no worker runs, and then, where a backlog is
//! the point (the all-up-front drain, RSS), the entries are moved to the `active` list
//! by hand in chunks of 5,000 (`promote_all`) — the workaround the reference names
//! (ZRANGE … LIMIT) — before any worker starts: the state apalis' fetch would leave
//! them in, had it not failed.

use std::future::Future;
use std::pin::Pin;
use std::task::{self, Poll};
use std::time::Duration;

use anyhow::{Context, Result};
use apalis::prelude::{BoxDynError, TaskSink, WorkerBuilder, WorkerBuilderExt};
use apalis_core::backend::ext::BackendExt;
use apalis_core::backend::ext::poll_strategy::{IntervalStrategy, PollSnapshot, PollStrategy};
use apalis_core::worker::ext::parallelize::ParallelizeExt;
use apalis_redis::{Config, RedisStorage};
use fleet_shared::job::JobSpec;
use redis::aio::ConnectionManager;

use crate::child::{WorkerSpec, ready_then_wait_for_go};
use crate::work;

/// The apalis-redis queue name (keys `apalis-bench:*`).
pub const QUEUE: &str = "apalis-bench";
/// Tasks per `push_bulk` call (one `batch_push.lua` EVAL each).
pub const PUSH_CHUNK: usize = 1000;
/// Tasks moved from `scheduled` to `active` per hand-promotion call (< 8,000).
const PROMOTE_CHUNK: usize = 5000;

pub type Storage = RedisStorage<JobSpec>;

/// A connection like `apalis_redis::connect`, but with a 5 s response timeout.
pub async fn connect(url: &str) -> Result<ConnectionManager> {
    let client = apalis_redis::Client::open(url)?;
    Ok(client
        .get_connection_manager_with_config(
            redis::aio::ConnectionManagerConfig::new()
                .set_response_timeout(Some(Duration::from_secs(5)))
                .set_connection_timeout(Some(Duration::from_secs(5))),
        )
        .await?)
}

pub fn config(batch: usize, heartbeat: Duration, missed: usize) -> Config {
    Config::default()
        .queue(QUEUE)
        .batch_size(batch)
        .heartbeat_interval(heartbeat)
        .missed_heartbeats(missed)
}

/// A producer-side storage (the defaults for everything that matters to a push).
pub async fn producer(url: &str) -> Result<Storage> {
    Ok(
        RedisStorage::new(connect(url).await?).with_config(config(
            100,
            Duration::from_secs(30),
            10,
        )),
    )
}

/// Push `specs` with `push_bulk`, `PUSH_CHUNK` at a time.
pub async fn push_bulk(storage: &mut Storage, specs: Vec<JobSpec>) -> Result<()> {
    let mut specs = specs.into_iter().peekable();
    while specs.peek().is_some() {
        let chunk: Vec<JobSpec> = specs.by_ref().take(PUSH_CHUNK).collect();
        storage
            .push_bulk(chunk)
            .await
            .map_err(|e| anyhow::anyhow!("push_bulk: {e:?}"))?;
    }
    Ok(())
}

/// Move every `scheduled` entry to the `active` list, in bounded chunks, oldest first.
pub async fn promote_all(conn: &mut ConnectionManager) -> Result<u64> {
    let cfg = config(100, Duration::from_secs(30), 10);
    let script = redis::Script::new(
        r"
        local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
        if #ids == 0 then return 0 end
        redis.call('RPUSH', KEYS[2], unpack(ids))
        redis.call('ZREM', KEYS[1], unpack(ids))
        return #ids
        ",
    );
    let mut moved = 0;
    loop {
        let n: u64 = script
            .key(cfg.scheduled_jobs_set())
            .key(cfg.active_jobs_list())
            .arg(PROMOTE_CHUNK)
            .invoke_async(conn)
            .await?;
        if n == 0 {
            return Ok(moved);
        }
        moved += n;
    }
}

async fn handle(spec: JobSpec) -> Result<serde_json::Value, BoxDynError> {
    work::run(&spec).await.map_err(|e| e.to_string())?;
    Ok(serde_json::Value::Null)
}

/// Worker-process main for apalis-redis.
pub async fn worker_main(spec: WorkerSpec) -> Result<()> {
    let cfg = config(
        spec.apalis_batch,
        Duration::from_secs(spec.apalis_heartbeat_secs),
        spec.apalis_missed,
    );
    let storage: Storage = RedisStorage::new(connect(&spec.redis_url).await?).with_config(cfg);
    work::init(&spec.redis_url, &spec.name).await?;
    // Unique per process and start, as the reference insists.
    let name = format!("{}-{}", spec.name, std::process::id());
    let every = Duration::from_millis(spec.apalis_poll_ms);
    let backend = storage.poll_with_strategy(if spec.apalis_rearming_poll {
        PollTimer::Rearming(RearmingInterval { every, sleep: None })
    } else {
        // Exactly what `poll_with_interval(every)` builds.
        PollTimer::Stock(IntervalStrategy::new(every))
    });
    ready_then_wait_for_go().await?;
    let result = if spec.apalis_parallelize {
        WorkerBuilder::new(name.as_str())
            .backend(backend)
            .concurrency(spec.concurrency)
            .parallelize(tokio::spawn)
            .build(handle)
            .run()
            .await
    } else {
        WorkerBuilder::new(name.as_str())
            .backend(backend)
            .concurrency(spec.concurrency)
            .build(handle)
            .run()
            .await
    };
    result.context("apalis worker ended")?;
    Ok(())
}

/// The poll timer of an apalis worker: apalis-core's own `IntervalStrategy` (what
/// `poll_with_interval` uses; the benchmark's default), or [`RearmingInterval`].
pub enum PollTimer {
    Stock(IntervalStrategy),
    Rearming(RearmingInterval),
}

impl PollStrategy for PollTimer {
    fn poll_drive(
        &mut self,
        cx: &mut task::Context<'_>,
        snapshot: &PollSnapshot,
    ) -> Poll<Option<()>> {
        match self {
            PollTimer::Stock(s) => s.poll_drive(cx, snapshot),
            PollTimer::Rearming(r) => r.poll_drive(cx, snapshot),
        }
    }
}

/// Not part of apalis: an interval strategy that arms its next tick before returning.
/// apalis-core 1.0.0's `IntervalStrategy::poll_drive` replaces a fired `Delay` with a
/// new one without polling it, so no waker is registered for the next tick; when the
/// fetch driven by that same poll comes back empty, the worker parks with no timer
/// armed and sleeps until its next heartbeat (30 s by default). This variant exists
/// only to confirm that diagnosis (`--apalis-rearming-poll`); the reported baseline
/// uses the stock strategy.
pub struct RearmingInterval {
    every: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl PollStrategy for RearmingInterval {
    fn poll_drive(&mut self, cx: &mut task::Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let mut fired = false;
        loop {
            let every = self.every;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    fired = true;
                    self.sleep = None;
                }
                Poll::Pending if fired => return Poll::Ready(Some(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
