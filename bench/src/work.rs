//! The benchmark jobs: what a handler does, chosen by the job itself, and the payload
//! both systems carry. Both queues carry the very same bytes: a `JobSpec` (a research
//! query naming the mode, with the enqueue timestamp in its metadata), so neither side
//! has a smaller payload.
//!
//! Modes:
//! - `noop`: return at once (drain throughput).
//! - `lat`:  push `handler start - enqueue timestamp` (µs) to `bench:lat` (pickup latency).
//! - `long`: push `"<worker> <start µs>"` to `bench:started`, then run for an hour (crash recovery).
//! - `park`: count itself in `bench:running`, then run for an hour (worker RSS with jobs in flight).

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;
use fleet_shared::job::JobSpec;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use crate::util::now_us;

pub const LAT_KEY: &str = "bench:lat";
pub const STARTED_KEY: &str = "bench:started";
pub const RUNNING_KEY: &str = "bench:running";

/// The job payload for `mode`, stamped with the time now.
pub fn spec(mode: &str) -> JobSpec {
    let mut spec = JobSpec::research(mode, "demo");
    spec.options
        .metadata
        .insert("t_us".into(), now_us().to_string());
    spec
}

pub fn specs(mode: &str, n: usize) -> Vec<JobSpec> {
    (0..n).map(|_| spec(mode)).collect()
}

struct Ctx {
    conn: ConnectionManager,
    worker: String,
}

static CTX: OnceLock<Ctx> = OnceLock::new();

/// In a worker process, before any job runs.
pub async fn init(redis_url: &str, worker: &str) -> Result<()> {
    // On a cluster (`redis+cluster://a,b,c`), the first node: the jobs that write
    // (`lat`, `long`, `park`) run on one node only; `noop` writes nothing.
    let redis_url = match redis_url.strip_prefix("redis+cluster://") {
        Some(hosts) => format!("redis://{}", hosts.split(',').next().unwrap_or_default()),
        None => redis_url.to_string(),
    };
    let conn = redis::Client::open(redis_url.as_str())?
        .get_connection_manager()
        .await?;
    let _ = CTX.set(Ctx {
        conn,
        worker: worker.to_string(),
    });
    Ok(())
}

/// Run one benchmark job (the body of both systems' handlers).
pub async fn run(spec: &JobSpec) -> Result<()> {
    let started = now_us();
    let fleet_shared::job::JobPayload::Research(job) = &spec.payload else {
        return Ok(());
    };
    let ctx = CTX.get().expect("work::init ran");
    let mut conn = ctx.conn.clone();
    match job.query.as_str() {
        "noop" => {}
        "lat" => {
            let t: u64 = spec
                .options
                .metadata
                .get("t_us")
                .and_then(|v| v.parse().ok())
                .unwrap_or(started);
            let _: () = conn.rpush(LAT_KEY, started.saturating_sub(t)).await?;
        }
        "long" => {
            let _: () = conn
                .rpush(STARTED_KEY, format!("{} {started}", ctx.worker))
                .await?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        "park" => {
            let _: () = conn.incr(RUNNING_KEY, 1).await?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        other => anyhow::bail!("unknown benchmark mode {other:?}"),
    }
    Ok(())
}
