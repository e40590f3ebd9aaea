//! What `queue.durability` costs per job: a primary (AOF, `appendfsync always`) with
//! one replica on this machine; for each mode, jobs are enqueued one at a time, then
//! fetched and completed one at a time, and the median latency of an enqueue and of
//! a complete is printed, with the throughput of 32 concurrent enqueuers.
//!
//! `cargo run -p fleet-bench --bin durability -- [jobs]` (default 2000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_shared::job::{JobSpec, QueueKind};
use fleet_shared::queue::{QueueConfig, RedisQueue};
use fleet_shared::settings::{Durability, Settings};
use fleet_tests::RedisServer;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let jobs: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(2000);
    let primary = RedisServer::start();
    let replica = RedisServer::start_with(false);
    replica.replicaof(Some(&primary));
    replica.wait_replica_synced();
    let settings = Settings::from_layers(None, &[("FLEET_REDIS__URL".to_string(), primary.url())])?;
    let mut version = String::new();
    println!("| durability | enqueue p50 | complete p50 | enqueues/s (32 concurrent) |");
    println!("|---|---|---|---|");
    for (i, mode) in [Durability::None, Durability::Replica, Durability::Aof]
        .into_iter()
        .enumerate()
    {
        let mut config = QueueConfig::from_settings(&settings, QueueKind::Research);
        config.durability = mode;
        let mut redis = settings.redis.clone();
        redis.key_prefix = format!("bench{i}");
        let q = RedisQueue::open(&redis, config).await?;
        if version.is_empty() {
            version = fleet_shared::connection::durability::server_version(
                &mut q.connection(),
                &q.keys().wait,
            )
            .await?;
        }
        if let Err(e) = fleet_shared::connection::check_server(
            &mut q.connection(),
            mode,
            Duration::from_secs(1),
            &q.keys().wait,
            false,
        )
        .await
        {
            println!("| {mode:?} | n/a: {e} | | |");
            continue;
        }
        let mut enqueues = Vec::with_capacity(jobs);
        for n in 0..jobs {
            let t = Instant::now();
            q.enqueue(JobSpec::research(format!("job {n}"), "demo"))
                .await?;
            enqueues.push(t.elapsed());
        }
        let mut completes = Vec::with_capacity(jobs);
        loop {
            let leases = q.fetch("bench", 100).await?.leases;
            if leases.is_empty() {
                break;
            }
            for l in leases {
                let t = Instant::now();
                q.complete(&l, "{}").await?;
                completes.push(t.elapsed());
            }
        }
        let q = Arc::new(q);
        let start = Instant::now();
        let tasks: Vec<_> = (0..32)
            .map(|t| {
                let q = q.clone();
                tokio::spawn(async move {
                    for n in 0..jobs / 32 {
                        q.enqueue(JobSpec::research(format!("c {t} {n}"), "demo"))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await?;
        }
        let rate = (jobs / 32 * 32) as f64 / start.elapsed().as_secs_f64();
        println!(
            "| {mode:?} | {:.0} µs | {:.0} µs | {rate:.0} |",
            median(enqueues).as_secs_f64() * 1e6,
            median(completes).as_secs_f64() * 1e6,
        );
    }
    println!("\nRedis {version}, {jobs} jobs per mode, one replica on the same host.");
    Ok(())
}
