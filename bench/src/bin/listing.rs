//! Filtered listing pages over a large queue (issue 15): loads N jobs (default
//! 1,000,000) into a redis-server it starts itself (AOF off), spread over statuses,
//! batches, agents and time, then times pages of 50 through `RedisQueue::list_jobs`
//! (the code `GET /v1/jobs` runs per queue) by status, by batch, by agent, by time
//! range, and combined, each from a random depth (a cursor at a random job), and
//! prints p50/p95/p99 per filter plus Redis' memory per job.
//!
//! `cargo run --release -p fleet-bench --bin listing -- [jobs] [samples]`
//! (defaults 1000000 and 300).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_shared::job::{JobId, JobSpec, QueueKind};
use fleet_shared::queue::listing::{JobFilter, Order};
use fleet_shared::queue::{AttemptRecord, Completion, QueueConfig, RedisQueue, Settlement};
use fleet_shared::results::JobStatus;
use fleet_shared::settings::Settings;
use fleet_tests::RedisServer;

const AGENTS: usize = 10;
const BATCH_SIZE: usize = 10_000;
const PAGE: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// A small deterministic generator (no dependency): xorshift.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

async fn used_memory(q: &RedisQueue) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut q.connection())
        .await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args
        .next()
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let samples: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(300);
    let redis = RedisServer::start_with(false);
    let settings = Settings::from_layers(None, &[("FLEET_REDIS__URL".to_string(), redis.url())])?;
    let q = Arc::new(
        RedisQueue::open(
            &settings.redis,
            QueueConfig::from_settings(&settings, QueueKind::Research),
        )
        .await?,
    );
    let base_memory = used_memory(&q).await?;

    // Load: batches of 10,000 (one enqueue_many each, four at a time), agents in turn.
    let start = Instant::now();
    let batches: Vec<String> = (0..jobs.div_ceil(BATCH_SIZE))
        .map(|_| JobId::new().to_string())
        .collect();
    let mut ids: Vec<String> = Vec::with_capacity(jobs);
    for group in batches.chunks(4) {
        let tasks: Vec<_> = group
            .iter()
            .enumerate()
            .map(|(g, batch)| {
                let (q, batch) = (q.clone(), batch.clone());
                let first = ids.len() + g * BATCH_SIZE;
                let n = BATCH_SIZE.min(jobs.saturating_sub(first));
                tokio::spawn(async move {
                    let specs = (first..first + n)
                        .map(|i| {
                            JobSpec::research(
                                format!("question {i}"),
                                format!("agent{}", i % AGENTS),
                            )
                        })
                        .collect();
                    q.enqueue_many(specs, Some(&batch)).await
                })
            })
            .collect();
        for t in tasks {
            ids.extend(t.await??.iter().map(JobId::to_string));
        }
    }
    let enqueue_s = start.elapsed().as_secs_f64();

    // Statuses: 60 % succeeded, 5 % dead, 5 % retrying, 2 % running, the rest queued.
    let start = Instant::now();
    let error = serde_json::json!({"class": "transient", "message": "bench"});
    let record = AttemptRecord {
        attempt: 1,
        worker: "bench".into(),
        outcome: "transient".into(),
        ..Default::default()
    };
    let (succeed, dead, retry, run) = (
        jobs * 60 / 100,
        jobs * 5 / 100,
        jobs * 5 / 100,
        jobs * 2 / 100,
    );
    let mut done = 0;
    while done < succeed + dead + retry + run {
        let want = 1000.min(succeed + dead + retry + run - done);
        let leases = q.fetch("bench", want).await?.leases;
        anyhow::ensure!(!leases.is_empty(), "the queue ran dry");
        let mut completions = Vec::new();
        for l in leases {
            if done < succeed {
                completions.push(Completion {
                    id: l.id.clone(),
                    token: l.token.clone(),
                    result_json: r#"{"answer":"ok","cost_usd":0.01}"#.into(),
                    staged: false,
                    cost_usd: 0.01,
                });
            } else if done < succeed + dead {
                q.fail(&l, Settlement::Dead, &error, &record).await?;
            } else if done < succeed + dead + retry {
                let delay = Duration::from_secs(86_400);
                q.fail(&l, Settlement::Retry { delay }, &error, &record)
                    .await?;
            }
            done += 1;
        }
        for chunk in completions.chunks(500) {
            q.complete_many(chunk).await?;
        }
    }
    let settle_s = start.elapsed().as_secs_f64();
    let memory = used_memory(&q).await?.saturating_sub(base_memory);
    println!(
        "loaded {jobs} jobs in {enqueue_s:.1} s (enqueue) + {settle_s:.1} s (fetch and settle {}); Redis memory {:.0} bytes per job",
        succeed + dead + retry + run,
        memory as f64 / jobs as f64
    );

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let ms = |id: &String| id.parse::<JobId>().map(|j| j.submitted_ms()).unwrap_or(0);
    let (first_ms, last_ms) = (ms(&ids[0]), ms(&ids[ids.len() - 1]));
    type Make = Box<dyn Fn(&mut Rng) -> JobFilter>;
    let status = |s: JobStatus| -> Make {
        Box::new(move |_| JobFilter {
            statuses: vec![s],
            ..Default::default()
        })
    };
    let batch_list = batches.clone();
    let batch_list2 = batches.clone();
    let filters: Vec<(&str, Make)> = vec![
        ("status=succeeded", status(JobStatus::Succeeded)),
        ("status=queued", status(JobStatus::Queued)),
        ("status=dead", status(JobStatus::Dead)),
        (
            "batch=<one of 100>",
            Box::new(move |r: &mut Rng| JobFilter {
                batch: Some(batch_list[r.below(batch_list.len())].clone()),
                ..Default::default()
            }),
        ),
        (
            "agent=<one of 10>",
            Box::new(|r: &mut Rng| JobFilter {
                agent: Some(format!("agent{}", r.below(AGENTS))),
                ..Default::default()
            }),
        ),
        (
            "time range (a random tenth)",
            Box::new(move |r: &mut Rng| {
                let span = (last_ms - first_ms).max(10);
                let since = first_ms + r.next() % (span - span / 10);
                JobFilter {
                    since_ms: Some(since),
                    until_ms: Some(since + span / 10),
                    ..Default::default()
                }
            }),
        ),
        ("no filter", Box::new(|_| JobFilter::default())),
        (
            "batch + status=succeeded (checked on records)",
            Box::new(move |r: &mut Rng| JobFilter {
                batch: Some(batch_list2[r.below(batch_list2.len())].clone()),
                statuses: vec![JobStatus::Succeeded],
                ..Default::default()
            }),
        ),
    ];
    let scan_max = settings.api.list_scan_max;
    println!();
    println!(
        "| filter ({jobs} jobs, pages of {PAGE} from a random depth) | p50 ms | p95 ms | p99 ms | jobs per page (mean) | truncated pages |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, make) in &filters {
        let mut times = Vec::with_capacity(samples);
        let (mut got, mut truncated) = (0usize, 0usize);
        for s in 0..samples {
            let filter = make(&mut rng);
            // half the pages from the start, half from a random job on
            let cursor = (s % 2 == 1).then(|| ids[rng.below(ids.len())].clone());
            let order = if s % 4 < 2 {
                Order::NewestFirst
            } else {
                Order::OldestFirst
            };
            let t = Instant::now();
            let page = q
                .list_jobs(&filter, order, cursor.as_deref(), PAGE, scan_max)
                .await?;
            times.push(t.elapsed());
            got += page.jobs.len();
            truncated += page.truncated as usize;
        }
        times.sort();
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.1} | {truncated} of {samples} |",
            percentile(&times, 0.50),
            percentile(&times, 0.95),
            percentile(&times, 0.99),
            got as f64 / samples as f64,
        );
    }
    Ok(())
}
