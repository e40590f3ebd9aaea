//! Sharded queues (issue 14, `queue.shards`; shared/src/queue/shards.rs): the queue's
//! core contract over three shards on one node and on a 3-primary cluster (each shard
//! on its own primary), batches spread over shards with exact counts, lookups by ID
//! that never scan, fair turns between shards, an idle worker that does not poll, and
//! a real `fleet-worker` with `fleet status` over three shards.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apalis::prelude::{Data, WorkerBuilder};
use fleet_shared::error::JobError;
use fleet_shared::job::{Job, JobId, JobPayload, JobSpec, QueueKind};
use fleet_shared::queue::apalis_backend::{JobOutput, RedisBackend};
use fleet_shared::queue::attempt::AttemptContext;
use fleet_shared::queue::lease_keeper::{KeeperTimings, LeaseKeeper};
use fleet_shared::queue::listing::{JobFilter, Order};
use fleet_shared::queue::{CancelOutcome, QueueConfig, RedisQueue, Settlement};
use fleet_shared::results::JobStatus;
use fleet_shared::settings::Settings;
use fleet_tests::RedisServer;
use fleet_tests::fixture::Fleet;
use fleet_tests::harness::{eventually, queue, settings};
use fleet_tests::processes::fleet as fleet_cli;
use fleet_tests::queue_contract::{core_queue_operations, fetch_all};
use fleet_tests::topology::RedisCluster;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const SHARDS: &[(&str, &str)] = &[("QUEUE__SHARDS", "3")];

fn specs(prefix: &str, n: usize) -> Vec<JobSpec> {
    (0..n)
        .map(|i| JobSpec::research(format!("{prefix} {i}"), "demo"))
        .collect()
}

/// `INFO commandstats` as command → calls.
fn command_calls(conn: &mut redis::Connection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

#[tokio::test]
async fn the_core_queue_contract_holds_over_three_shards_on_one_node() {
    let redis = RedisServer::start_with(false);
    let s = settings(&redis.url(), SHARDS);
    core_queue_operations(&s).await;
    // Every shard took part: each has records of its own.
    let q = queue(&s, QueueKind::Research).await;
    for shard in q.shards() {
        let pattern = format!("{}job:*", shard.keys().prefix);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query(&mut redis.conn())
            .unwrap();
        assert!(!keys.is_empty(), "no job on {pattern}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_core_queue_contract_holds_over_three_shards_on_a_cluster_each_on_its_own_primary() {
    let cluster = RedisCluster::start();
    let s = settings(&cluster.cluster_url(), SHARDS);
    core_queue_operations(&s).await;
    // Which primary serves each shard: the node that answers for its key rather than
    // redirecting (a plain connection to each node).
    let q = queue(&s, QueueKind::Research).await;
    let mut owners = HashSet::new();
    for shard in q.shards() {
        let serving: Vec<u16> = cluster
            .nodes
            .iter()
            .filter(|n| {
                let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut n.conn()).unwrap();
                let primary = matches!(&role[0], redis::Value::BulkString(b) if b == b"master");
                primary
                    && redis::cmd("EXISTS")
                        .arg(&shard.keys().wait)
                        .query::<i64>(&mut n.conn())
                        .is_ok()
            })
            .map(|n| n.port)
            .collect();
        assert_eq!(
            serving.len(),
            1,
            "one primary serves shard {}",
            shard.shard_index()
        );
        owners.insert(serving[0]);
    }
    assert_eq!(owners.len(), 3, "three shards on three primaries");
}

#[tokio::test]
async fn a_batch_over_three_shards_splits_evenly_is_counted_exactly_and_pages_in_order() {
    let redis = RedisServer::start_with(false);
    let s = settings(&redis.url(), SHARDS);
    let q = queue(&s, QueueKind::Research).await;
    let ids = q.enqueue_many(specs("b", 30), Some("b1")).await.unwrap();
    let spread: Vec<u64> = q
        .shard_counts()
        .await
        .unwrap()
        .iter()
        .map(|c| c.ready)
        .collect();
    assert_eq!(spread, [10, 10, 10], "a batch splits evenly");
    for id in &ids {
        assert!(id.named_shard() < 3);
    }
    // 20 succeed, 10 are dead-lettered (a third of them on each shard or not: the
    // counters must add up exactly whatever the mix).
    let held = fetch_all(&q, "w", 100).await;
    assert_eq!(held.len(), 30);
    let mut dead = 0;
    for (i, h) in held.iter().enumerate() {
        if i % 3 == 0 {
            let error = json!({"class": "permanent", "message": "no"});
            let record = fleet_shared::queue::AttemptRecord {
                attempt: 1,
                outcome: "permanent".into(),
                ..Default::default()
            };
            h.shard
                .fail(&h.lease, Settlement::Dead, &error, &record)
                .await
                .unwrap();
            dead += 1;
        } else {
            h.shard.complete(&h.lease, "{}").await.unwrap();
        }
    }
    let batch = q.batch_record("b1").await.unwrap().unwrap();
    assert_eq!(batch.total, 30);
    assert_eq!(batch.count(JobStatus::Succeeded), 30 - dead);
    assert_eq!(batch.count(JobStatus::Dead), dead);
    assert_eq!(q.dead_count().await.unwrap(), dead);
    assert_eq!(q.dead_list(0, 100).await.unwrap().len() as u64, dead);
    assert_eq!(q.counts().await.unwrap().dead, dead);

    // The batch's jobs, 7 a page, oldest first: each exactly once, in ID order.
    let filter = JobFilter {
        batch: Some("b1".into()),
        ..Default::default()
    };
    let mut seen: Vec<JobId> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = q
            .list_jobs_all(&filter, Order::OldestFirst, cursor.as_deref(), 7, 10_000)
            .await
            .unwrap();
        assert!(!page.truncated);
        assert!(page.jobs.len() <= 7);
        seen.extend(page.jobs.iter().map(|j| j.id.parse::<JobId>().unwrap()));
        cursor = page.next_cursor.clone();
        if !page.more {
            break;
        }
    }
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected);

    // Dead letters retried by ID on whatever shard each is: all of them, exactly.
    let dead_ids: Vec<String> = q
        .dead_list(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(q.retry_dead(&dead_ids, 0).await.unwrap(), dead);
    assert_eq!(q.counts().await.unwrap().ready, dead);
}

#[tokio::test]
async fn status_result_and_cancel_go_straight_to_the_shard_without_a_scan() {
    let redis = RedisServer::start_with(false);
    let s = settings(&redis.url(), SHARDS);
    let q = queue(&s, QueueKind::Research).await;
    let ids = q.enqueue_many(specs("s", 6), None).await.unwrap();
    // Three of the six complete (the producer's first shard is random: which three
    // depends on it).
    let mut completed = Vec::new();
    for h in fetch_all(&q, "w", 3).await {
        h.shard
            .complete(&h.lease, &json!({"output": {"answer": "ok"}}).to_string())
            .await
            .unwrap();
        completed.push(h.lease.id.clone());
    }
    assert_eq!(completed.len(), 3);
    // A job written before sharding: on shard 0, with an ID naming shard 2.
    let old = Job {
        id: JobId(uuid::Uuid::from_bytes({
            let mut b = *uuid::Uuid::now_v7().as_bytes();
            b[15] = 2;
            b
        })),
        ..Job::new(JobSpec::research("old", "demo"))
    };
    q.shard(0)
        .enqueue_jobs(std::slice::from_ref(&old), None)
        .await
        .unwrap();

    let mut conn = redis.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .unwrap();
    for id in &ids {
        let record = q.job_record(&id.to_string()).await.unwrap().unwrap();
        assert_eq!(record.id, id.to_string());
    }
    let done = q
        .wait_for_final(&completed[0], Some(Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.result.unwrap()["output"]["answer"], "ok");
    let statuses = q.job_statuses(&ids).await.unwrap();
    assert_eq!(statuses.iter().filter(|s| s.is_some()).count(), 6);
    let old_record = q.job_record(&old.id.to_string()).await.unwrap().unwrap();
    assert_eq!(old_record.status, JobStatus::Queued);
    assert_eq!(q.cancel(&old.id).await.unwrap(), CancelOutcome::Cancelled);
    let queued = ids
        .iter()
        .zip(&statuses)
        .find(|(_, s)| **s == Some(JobStatus::Queued))
        .unwrap()
        .0;
    assert_eq!(q.cancel(queued).await.unwrap(), CancelOutcome::Cancelled);
    assert_eq!(
        q.cancel(&JobId::for_shard(1)).await.unwrap(),
        CancelOutcome::NotFound
    );
    let calls = command_calls(&mut conn);
    for scan in ["scan", "keys"] {
        assert!(!calls.contains_key(scan), "{scan} was issued: {calls:?}");
    }
    assert!(calls.contains_key("hgetall"), "{calls:?}");
}

/// A worker over `q`'s shards in this process (one keeper per shard), running each
/// job for `work` and recording its query in `ran`.
async fn start_worker(
    s: &Settings,
    q: &RedisQueue,
    concurrency: usize,
    reclaim_every: Duration,
    ran: Arc<Mutex<Vec<String>>>,
    work: Duration,
) -> CancellationToken {
    let cfg = QueueConfig::from_settings(s, QueueKind::Research);
    let shards = q
        .shards()
        .into_iter()
        .map(|shard| {
            let mut cfg = cfg.clone();
            cfg.shard = shard.shard_index();
            let keeper = Arc::new(LeaseKeeper::start(
                s.redis.clone(),
                cfg,
                KeeperTimings {
                    renew_every: Duration::from_secs(1),
                    reclaim_every,
                },
            ));
            (shard, keeper)
        })
        .collect();
    let stop = CancellationToken::new();
    let backend = RedisBackend::start_sharded(shards, "w", concurrency, stop.clone());
    #[derive(Clone)]
    struct Ctx {
        ran: Arc<Mutex<Vec<String>>>,
        work: Duration,
    }
    async fn handle(
        job: Job,
        _a: Data<AttemptContext>,
        ctx: Data<Ctx>,
    ) -> Result<JobOutput, JobError> {
        let JobPayload::Research(r) = job.spec.payload else {
            unreachable!()
        };
        ctx.ran.lock().unwrap().push(r.query.clone());
        // The job's own work (a stand-in for an agent run).
        tokio::time::sleep(ctx.work).await;
        Ok(JobOutput::Null)
    }
    let worker = WorkerBuilder::new("w")
        .backend(backend)
        .data(Ctx { ran, work })
        .build(handle);
    tokio::spawn(worker.run_until({
        let stop = stop.clone();
        async move {
            stop.cancelled().await;
            Ok::<(), std::io::Error>(())
        }
    }));
    stop
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_on_one_shard_does_not_starve_another() {
    let redis = RedisServer::start_with(false);
    let s = settings(&redis.url(), SHARDS);
    let q = queue(&s, QueueKind::Research).await;
    // 60 jobs on shard 0 alone.
    let backlog: Vec<Job> = specs("backlog", 60)
        .into_iter()
        .map(|spec| Job {
            id: JobId::for_shard(0),
            ..Job::new(spec)
        })
        .collect();
    q.enqueue_jobs(&backlog, None).await.unwrap();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let stop = start_worker(
        &s,
        &q,
        1,
        Duration::from_millis(500),
        ran.clone(),
        Duration::from_millis(20),
    )
    .await;
    eventually(
        "the backlog to be under way",
        Duration::from_secs(10),
        || async { (ran.lock().unwrap().len() >= 5).then_some(()) },
    )
    .await;
    // One job on shard 2: it runs within a turn or two, not after the backlog.
    let late = Job {
        id: JobId::for_shard(2),
        ..Job::new(JobSpec::research("late", "demo"))
    };
    let before = ran.lock().unwrap().len();
    q.enqueue_jobs(&[late], None).await.unwrap();
    let position = eventually("the late job to run", Duration::from_secs(10), || async {
        ran.lock().unwrap().iter().position(|query| query == "late")
    })
    .await;
    stop.cancel();
    assert!(
        position <= before + 2,
        "the late job ran {} jobs after it was enqueued",
        position - before
    );
    let remaining = q.counts().await.unwrap().ready;
    assert!(
        remaining > 30,
        "the backlog was still there ({remaining} left)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_worker_does_not_poll_and_wakes_on_an_enqueue_to_any_shard() {
    let redis = RedisServer::start_with(false);
    let s = settings(&redis.url(), SHARDS);
    let q = queue(&s, QueueKind::Research).await;
    let ran = Arc::new(Mutex::new(Vec::new()));
    // Reclaim (a keeper's chore, not a fetch) far apart, so that the window below sees
    // only what fetching does.
    let stop = start_worker(
        &s,
        &q,
        4,
        Duration::from_secs(3600),
        ran.clone(),
        Duration::ZERO,
    )
    .await;
    let mut conn = redis.conn();
    eventually(
        "a fetcher per shard blocked in BZPOPMIN",
        Duration::from_secs(10),
        || {
            let info: String = redis::cmd("INFO").arg("clients").query(&mut conn).unwrap();
            async move { info.contains("blocked_clients:3").then_some(()) }
        },
    )
    .await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .unwrap();
    // The idle window: shorter than a fetcher's block (5 s), so no block times out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let calls = command_calls(&mut conn);
    let issued: u64 = calls
        .iter()
        .filter(|(name, _)| !name.starts_with("info") && !name.starts_with("config"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(issued, 0, "an idle worker issued commands: {calls:?}");

    // An enqueue to each shard wakes it at once (well inside the 5 s block).
    for k in [2u16, 0, 1] {
        let query = format!("wake {k}");
        let job = Job {
            id: JobId::for_shard(k),
            ..Job::new(JobSpec::research(query.clone(), "demo"))
        };
        let started = Instant::now();
        q.enqueue_jobs(&[job], None).await.unwrap();
        eventually(
            &format!("{query} to run"),
            Duration::from_secs(10),
            || async { ran.lock().unwrap().contains(&query).then_some(()) },
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "shard {k} woke after {:?}",
            started.elapsed()
        );
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_worker_runs_a_batch_spread_over_three_shards_and_fleet_finds_each_job() {
    let mut fleet = Fleet::start(
        r#"q=$(cat); printf 'answer: %s' "$q""#,
        "[queue]\nshards = 3\n",
    )
    .await;
    fleet.start_worker("w0");
    let specs: Vec<JobSpec> = (0..12)
        .map(|i| JobSpec::research(format!("query {i}"), "test"))
        .collect();
    let ids = fleet.queue.enqueue_many(specs, Some("e2e")).await.unwrap();
    let shards: HashSet<u16> = ids.iter().map(JobId::named_shard).collect();
    assert_eq!(shards.len(), 3, "{ids:?}");
    fleet
        .wait_batch_final("e2e", 12, Duration::from_secs(60))
        .await;
    let batch = fleet.queue.batch_record("e2e").await.unwrap().unwrap();
    assert_eq!(batch.count(JobStatus::Succeeded), 12);
    // The CLI, with the same config, submits (each call a process of its own, spread
    // all the same) and reads each job by ID from its shard.
    let config = fleet.config.display().to_string();
    let mut ids = ids;
    for i in 0..12 {
        let query = format!("cli query {i}");
        let out = fleet_cli(
            &["--config", &config, "--json", "submit", &query],
            &[],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let submitted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        ids.push(submitted["id"].as_str().unwrap().parse().unwrap());
    }
    let from_cli: HashSet<u16> = ids[12..].iter().map(JobId::named_shard).collect();
    assert!(
        from_cli.len() > 1,
        "twelve CLI submits all went to one shard"
    );
    let env: [(&str, String); 0] = [];
    for id in ids.iter().skip(9).take(6) {
        let out = fleet_cli(
            &[
                "--config",
                &fleet.config.display().to_string(),
                "result",
                &id.to_string(),
                "--wait",
                "--timeout",
                "60",
            ],
            &env,
            None,
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("answer: "), "{text}");
    }
    let counts = fleet.queue.shard_counts().await.unwrap();
    assert!(
        counts.iter().all(|c| c.ready == 0 && c.running == 0),
        "{counts:?}"
    );
}

#[test]
fn queue_shards_out_of_range_is_refused_naming_the_key() {
    for bad in ["0", "65"] {
        let env = vec![
            (
                "FLEET_REDIS__URL".to_string(),
                "redis://127.0.0.1:1".to_string(),
            ),
            ("FLEET_QUEUE__SHARDS".to_string(), bad.to_string()),
        ];
        let err = Settings::from_layers(None, &env).unwrap_err().to_string();
        assert!(err.contains("queue.shards"), "{err}");
    }
}
