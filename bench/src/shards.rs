//! Sharded queues (issue 14, `queue.shards`): bulk enqueue and drain of this project's
//! queue on one redis-server and on a local 3-primary Redis Cluster with 1, 2 and 3
//! shards, side by side (`--only shards`; this project only, apalis-redis has no
//! sharding). Every target runs with AOF off and no snapshots, as the other scenarios;
//! the cluster has no replicas, so it does no more work per write than the one node.
//! The targets take turns within each repeat, so load from elsewhere falls on all alike.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use fleet_shared::queue::RedisQueue;
use fleet_tests::topology::RedisCluster;

use crate::Cli;
use crate::System;
use crate::child::{self, WorkerSpec};
use crate::fleet;
use crate::report::{Better, Row, Value};
use crate::work;

/// One place the queue lives: a name for the report, a URL and a shard count.
struct Target {
    name: String,
    url: String,
    shards: u16,
    /// Plain connections to each node (to flush them all).
    nodes: Vec<String>,
}

impl Target {
    fn flush(&self) -> Result<()> {
        for node in &self.nodes {
            let mut conn = redis::Client::open(node.as_str())?.get_connection()?;
            let _: () = redis::cmd("FLUSHALL").arg("SYNC").query(&mut conn)?;
        }
        Ok(())
    }

    async fn open(&self) -> Result<RedisQueue> {
        fleet::open_sharded(&self.url, self.shards).await
    }
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn row(what: &str, target: &Target, rate: f64) -> Row {
    let mut r = Row::new(
        format!("Sharding: {what}, {}", target.name),
        "jobs/s",
        Better::Higher,
    );
    r.fleet = Value::Num(rate);
    r.apalis = Value::Skipped("no sharding".into());
    r
}

/// The rows and notes of the sharding scenario.
pub async fn sharding(cli: &Cli, single_url: &str) -> Result<(Vec<Row>, Vec<String>)> {
    progress("shards: starting a 3-primary cluster (no replicas, AOF off)");
    let cluster = RedisCluster::start_with(0, false);
    let mut targets = vec![Target {
        name: "one node".into(),
        url: single_url.to_string(),
        shards: 1,
        nodes: vec![single_url.to_string()],
    }];
    for shards in 1..=3u16 {
        targets.push(Target {
            name: format!(
                "3-primary cluster, {shards} shard{}",
                if shards == 1 { "" } else { "s" }
            ),
            url: cluster.cluster_url(),
            shards,
            nodes: cluster.urls(),
        });
    }
    let n = cli.jobs;
    let drain_n = cli.drain_jobs;
    let repeat = cli.drain_repeat.max(1);
    let mut enqueue_rates = vec![Vec::new(); targets.len()];
    let mut drain_rates = vec![[Vec::new(), Vec::new()]; targets.len()];
    let mut spreads = vec![String::new(); targets.len()];
    for r in 0..repeat {
        for (i, target) in targets.iter().enumerate() {
            let (rate, spread) = bulk_enqueue(target, n).await?;
            progress(format!(
                "shards run {}: {}: bulk enqueue {rate:.0}/s (per shard {spread})",
                r + 1,
                target.name
            ));
            enqueue_rates[i].push(rate);
            spreads[i] = spread;
            for (w, workers) in [1usize, 2].into_iter().enumerate() {
                let rate = drain(cli, target, drain_n, workers).await?;
                progress(format!(
                    "shards run {}: {}: drain, {workers} process(es): {rate:.0}/s",
                    r + 1,
                    target.name
                ));
                drain_rates[i][w].push(rate);
            }
        }
    }
    let mut rows = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        rows.push(row(
            &format!("bulk enqueue {n} jobs"),
            target,
            median(enqueue_rates[i].clone()),
        ));
    }
    for (w, workers) in [1usize, 2].into_iter().enumerate() {
        for (i, target) in targets.iter().enumerate() {
            rows.push(row(
                &format!(
                    "drain {drain_n} no-op jobs queued up front, {workers} worker process{} × concurrency {}",
                    if workers == 1 { "" } else { "es" },
                    cli.concurrency
                ),
                target,
                median(drain_rates[i][w].clone()),
            ));
        }
    }
    let spread_note: Vec<String> = targets
        .iter()
        .zip(&spreads)
        .map(|(t, s)| format!("{}: {s}", t.name))
        .collect();
    let notes = vec![format!(
        "**Sharding** (`--only shards`): the queue on the benchmark's redis-server and on a \
         local Redis Cluster of 3 primaries (no replicas, AOF off, no snapshots; started by \
         the benchmark with `redis-cli --cluster create`, slots split evenly) with \
         `queue.shards` = 1, 2, 3. Bulk enqueue: one `enqueue_many` of {n} jobs (the shards' \
         parts are sent at the same time). Drain: {drain_n} no-op jobs enqueued up front (not \
         timed), then worker processes (`RedisBackend::start_sharded`: a fetcher per shard, \
         {} slots shared) drain them; the parent polls the summed depths every 5 ms. Medians \
         of {repeat} runs, the targets taking turns. Jobs per shard after the bulk enqueue \
         (the spread): {}.",
        cli.concurrency,
        spread_note.join("; ")
    )];
    drop(cluster);
    Ok((rows, notes))
}

/// Bulk-enqueue `n` jobs; the rate and each shard's share.
async fn bulk_enqueue(target: &Target, n: usize) -> Result<(f64, String)> {
    target.flush()?;
    let q = target.open().await?;
    let specs = work::specs("noop", n);
    let t = Instant::now();
    q.enqueue_many(specs, None).await?;
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let per_shard = q.shard_counts().await?;
    let total: u64 = per_shard.iter().map(|c| c.ready).sum();
    if total != n as u64 {
        bail!("{}: {total} jobs ready after enqueueing {n}", target.name);
    }
    let spread: Vec<String> = per_shard.iter().map(|c| c.ready.to_string()).collect();
    target.flush()?;
    Ok((rate, spread.join("/")))
}

/// Drain `n` jobs queued up front with `workers` processes; jobs per second.
async fn drain(cli: &Cli, target: &Target, n: usize, workers: usize) -> Result<f64> {
    target.flush()?;
    let q = target.open().await?;
    q.enqueue_many(work::specs("noop", n), None).await?;
    let specs: Vec<WorkerSpec> = (0..workers)
        .map(|i| WorkerSpec {
            system: System::Fleet,
            redis_url: target.url.clone(),
            name: format!("shard-w{i}"),
            concurrency: cli.concurrency,
            lease_ttl_secs: 30,
            apalis_poll_ms: cli.apalis_poll_ms,
            apalis_batch: cli.apalis_batch,
            apalis_heartbeat_secs: 30,
            apalis_missed: 10,
            apalis_parallelize: false,
            apalis_rearming_poll: false,
            pool_root: None,
            shards: target.shards,
        })
        .collect();
    let mut procs = child::spawn_all(&specs).await?;
    child::go_all(&mut procs).await?;
    let t = Instant::now();
    let deadline = t + Duration::from_secs((n as u64 / 500).max(60));
    let result: Result<f64> = async {
        loop {
            let c = q.counts().await?;
            if c.dead > 0 {
                bail!("{} jobs were dead-lettered during the drain", c.dead);
            }
            if c.ready == 0 && c.running == 0 && c.delayed == 0 {
                return Ok(n as f64 / t.elapsed().as_secs_f64());
            }
            if procs.iter_mut().any(|p| p.exited().is_some()) {
                bail!("a worker process exited during the drain");
            }
            if Instant::now() > deadline {
                bail!("{}: not drained in time: {c:?}", target.name);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    .await;
    child::kill_all(&mut procs).await;
    target.flush()?;
    result
}
