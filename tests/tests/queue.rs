//! The queue backend against a real redis-server: each test states one promise.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apalis::prelude::{Data, WorkerBuilder};
use fleet_shared::error::JobError;
use fleet_shared::job::{Job, JobPayload, JobSpec, QueueKind};
use fleet_shared::queue::apalis_backend::{JobOutput, RedisBackend};
use fleet_shared::queue::attempt::AttemptContext;
use fleet_shared::queue::lease_keeper::{KeeperTimings, LeaseKeeper};
use fleet_shared::queue::{AttemptRecord, Fenced, QueueConfig, Settlement};
use fleet_shared::results::JobStatus;
use fleet_tests::RedisServer;
use fleet_tests::harness::{eventually, queue, settings};
use redis::Commands;
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn spec(q: &str) -> JobSpec {
    JobSpec::research(q, "demo")
}

/// A job record written by hand (not by `enqueue`), made ready: for records a producer
/// of ours would never write, or that an earlier version wrote.
fn put_raw_job(
    redis: &RedisServer,
    q: &fleet_shared::queue::RedisQueue,
    id: &str,
    fields: &[(&str, &str)],
) {
    let mut conn = redis.conn();
    let _: () = conn.hset_multiple(q.keys().job(id), fields).unwrap();
    let _: () = conn.lpush(&q.keys().wait, id).unwrap();
}

fn record(attempt: u32, outcome: &str) -> AttemptRecord {
    AttemptRecord {
        attempt,
        outcome: outcome.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn submitted_job_is_leased_completed_and_readable_by_id() {
    let redis = RedisServer::start();
    let s = settings(&redis.url(), &[]);
    let q = queue(&s, QueueKind::Research).await;
    let (id, existing) = q
        .enqueue(spec("What was Acme's revenue in 2023?"))
        .await
        .unwrap();
    assert!(!existing);
    assert_eq!(
        q.job_record(&id.to_string()).await.unwrap().unwrap().status,
        JobStatus::Queued
    );

    let fetched = q.fetch("w1", 10).await.unwrap();
    assert_eq!(fetched.leases.len(), 1);
    let lease = &fetched.leases[0];
    assert_eq!(lease.id, id.to_string());
    assert_eq!(lease.attempt, 1);
    assert_eq!(lease.decode().unwrap().id, id);
    let r = q.job_record(&id.to_string()).await.unwrap().unwrap();
    assert_eq!(r.status, JobStatus::Running);

    let out = q
        .complete(lease, &json!({"output": {"answer": "42"}}).to_string())
        .await
        .unwrap();
    assert_eq!(out, Fenced::Accepted);
    let r = q.job_record(&id.to_string()).await.unwrap().unwrap();
    assert_eq!(r.status, JobStatus::Succeeded);
    assert_eq!(r.result.unwrap()["output"]["answer"], "42");
    assert_eq!(r.history.len(), 1);
    let ttl: i64 = redis.conn().pttl(q.keys().job(&id.to_string())).unwrap();
    assert!(ttl > 0, "a finished job's record expires (result TTL)");
    assert!(q.fetch("w1", 10).await.unwrap().leases.is_empty());
}

#[tokio::test]
async fn stale_attempt_cannot_write_after_its_lease_is_reclaimed() {
    let redis = RedisServer::start();
    let s = settings(&redis.url(), &[("QUEUE__LEASE_TTL_SECS", "3")]);
    let mut cfg = QueueConfig::from_settings(&s, QueueKind::Research);
    cfg.lease_ttl = Duration::from_millis(200);
    let q = fleet_shared::queue::RedisQueue::open(&s.redis, cfg)
        .await
        .unwrap();
    let (id, _) = q.enqueue(spec("q")).await.unwrap();
    let first = q.fetch("w1", 1).await.unwrap().leases.remove(0);

    // w1 stalls past its lease; any worker reclaims it.
    let reclaimed = eventually("lease expiry", Duration::from_secs(5), || async {
        let n = q.reclaim_expired(10).await.unwrap();
        (n > 0).then_some(n)
    })
    .await;
    assert_eq!(reclaimed, 1);
    // Reclaiming took the token away: the stalled attempt cannot settle the job, not
    // even as "already done", before or after another worker leases it.
    let error = json!({"class": "transient", "message": "late"});
    assert_eq!(
        q.fail(&first, Settlement::Dead, &error, &record(1, "transient"))
            .await
            .unwrap(),
        Fenced::Stale
    );
    let second = q.fetch("w2", 1).await.unwrap().leases.remove(0);
    assert_eq!(second.attempt, 2);
    assert_ne!(second.token, first.token);
    assert_eq!(
        q.fail(&first, Settlement::Dead, &error, &record(1, "transient"))
            .await
            .unwrap(),
        Fenced::Stale
    );

    // The stale attempt's writes are refused...
    let stale = q.complete(&first, r#"{"output":"stale"}"#).await.unwrap();
    assert_eq!(stale, Fenced::Stale);
    assert_eq!(
        q.renew(&[(first.id.clone(), first.token.clone())])
            .await
            .unwrap()[0],
        fleet_shared::queue::Renewal::Lost
    );
    // ...and the new attempt's result is the final one.
    assert_eq!(
        q.complete(&second, r#"{"output":"fresh"}"#).await.unwrap(),
        Fenced::Accepted
    );
    assert_eq!(
        q.complete(&first, r#"{"output":"stale"}"#).await.unwrap(),
        Fenced::Stale
    );
    let r = q.job_record(&id.to_string()).await.unwrap().unwrap();
    assert_eq!(r.result.unwrap()["output"], "fresh");
    assert_eq!(r.history[0].outcome, "lease_lost");
    assert_eq!(r.history[1].outcome, "succeeded");
    assert_eq!(r.status, JobStatus::Succeeded);
    assert_eq!(r.attempts, 2);
    assert_eq!(
        r.max_attempts, 3,
        "the queue's default, from the job's meta"
    );
    assert!(
        r.error.is_none(),
        "the lost lease's error is history, not the job's"
    );
    // The job's start is its first attempt's, not the second's (200 ms later).
    let started = r.started_at.unwrap();
    assert!(
        started <= first.leased_at_ms && started < second.leased_at_ms,
        "started_at {started} should be the first attempt's (leased at {}), not the \
         second's (leased at {})",
        first.leased_at_ms,
        second.leased_at_ms
    );
    assert!(r.created_at > 0 && r.created_at <= started);
}

#[tokio::test]
async fn a_settle_retried_after_a_lost_reply_is_recognised() {
    let redis = RedisServer::start();
    let s = settings(&redis.url(), &[]);
    let q = queue(&s, QueueKind::Research).await;
    q.enqueue(spec("q")).await.unwrap();
    let lease = q.fetch("w1", 1).await.unwrap().leases.remove(0);
    assert_eq!(q.complete(&lease, "{}").await.unwrap(), Fenced::Accepted);
    // the same call again (as after a timeout whose write had landed) is not an error
    assert_eq!(q.complete(&lease, "{}").await.unwrap(), Fenced::Accepted);
    let r = q.job_record(&lease.id).await.unwrap().unwrap();
    assert_eq!(r.history.len(), 1, "written once");
}

#[tokio::test]
async fn undecodable_payloads_are_dead_lettered_with_the_reason() {
    let redis = RedisServer::start();
    let s = settings(&redis.url(), &[]);
    let q = queue(&s, QueueKind::Research).await;
    // a job whose payload is garbage, and a bare ID with no record at all
    let bad = uuid::Uuid::now_v7().to_string();
    put_raw_job(
        &redis,
        &q,
        &bad,
        &[
            ("id", bad.as_str()),
            ("spec", "{not json"),
            ("status", "queued"),
            ("attempts", "0"),
            ("max_attempts", "3"),
        ],
    );
    let _: () = redis.conn().lpush(&q.keys().wait, "garbage-id").unwrap();
    let (good, _) = q.enqueue(spec("fine")).await.unwrap();

    let ran = Arc::new(Mutex::new(Vec::new()));
    let stop = run_worker(&s, "w1", 4, ran.clone(), |_| Ok(json!({"answer": "ok"}))).await;
    eventually("good job done", Duration::from_secs(10), || async {
        let r = q.job_record(&good.to_string()).await.unwrap()?;
        (r.status == JobStatus::Succeeded).then_some(())
    })
    .await;
    let dead = eventually("two dead letters", Duration::from_secs(10), || async {
        let d = q.dead_list(0, 10).await.unwrap();
        (d.len() == 2).then_some(d)
    })
    .await;
    let reasons: Vec<String> = {
        let mut v = Vec::new();
        for (id, _) in &dead {
            let r = q.job_record(id).await.unwrap().unwrap();
            assert_eq!(r.status, JobStatus::Dead);
            v.push(r.error.unwrap()["message"].as_str().unwrap().to_string());
        }
        v
    };
    assert!(
        reasons
            .iter()
            .any(|m| m.contains("undecodable job payload")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|m| m.contains("no job record")),
        "{reasons:?}"
    );
    assert_eq!(
        *ran.lock().unwrap(),
        vec!["fine".to_string()],
        "the worker kept going and ran only the good job"
    );
    stop.cancel();
}

#[tokio::test]
async fn a_job_written_before_the_meta_field_keeps_its_options() {
    // Records written by an earlier version (or by hand) keep max_attempts, deadline_at
    // and created_at as separate fields; fetch, reclaim and `fleet status` read them.
    let redis = RedisServer::start();
    let s = settings(&redis.url(), &[]);
    let q = queue(&s, QueueKind::Research).await;
    let id = uuid::Uuid::now_v7().to_string();
    let spec_json = serde_json::to_string(&spec("old layout")).unwrap();
    put_raw_job(
        &redis,
        &q,
        &id,
        &[
            ("spec", spec_json.as_str()),
            ("status", "queued"),
            ("attempts", "0"),
            ("max_attempts", "4"),
            ("deadline_at", "0"),
            ("created_at", "1700000000000"),
        ],
    );
    let lease = q.fetch("w1", 10).await.unwrap().leases.remove(0);
    assert_eq!(lease.id, id);
    assert_eq!((lease.attempt, lease.max_attempts), (1, 4));
    assert_eq!(lease.created_at_ms, 1_700_000_000_000);
    match lease.decode().unwrap().spec.payload {
        JobPayload::Research(r) => assert_eq!(r.query, "old layout"),
        other => panic!("decoded as {other:?}"),
    }
    let r = q.job_record(&id).await.unwrap().unwrap();
    assert_eq!((r.max_attempts, r.created_at), (4, 1_700_000_000_000));
}

#[tokio::test]
async fn ten_thousand_jobs_enqueued_at_once_all_complete() {
    let redis = RedisServer::start_with(false);
    let s = settings(&redis.url(), &[]);
    let q = queue(&s, QueueKind::Research).await;
    let specs: Vec<JobSpec> = (0..10_000).map(|i| spec(&format!("q{i}"))).collect();
    let ids = q.enqueue_many(specs, Some("big")).await.unwrap();
    assert_eq!(ids.len(), 10_000);
    assert_eq!(q.counts().await.unwrap().ready, 10_000);

    let ran = Arc::new(Mutex::new(Vec::new()));
    let stop = run_worker(&s, "w1", 64, ran.clone(), |_| Ok(json!({"answer": "ok"}))).await;
    let batch = eventually("batch finished", Duration::from_secs(120), || async {
        let b = q.batch_record("big").await.unwrap()?;
        (b.count(JobStatus::Succeeded) == 10_000).then_some(b)
    })
    .await;
    assert_eq!(batch.total, 10_000);
    assert_eq!(batch.count(JobStatus::Queued), 0);
    assert_eq!(batch.count(JobStatus::Running), 0);
    let ran = ran.lock().unwrap();
    assert_eq!(ran.len(), 10_000);
    assert_eq!(
        ran.iter().collect::<HashSet<_>>().len(),
        10_000,
        "no job ran twice"
    );
    stop.cancel();
}

#[tokio::test]
async fn jobs_enqueued_together_are_made_ready_in_call_order() {
    // enqueue pushes a call's ready IDs in chunks of 500: the wait list must still hold
    // them in the order of the call, after the jobs of earlier calls, so the oldest is
    // fetched first; an ID that exists already (here: repeated in the call) once.
    let redis = RedisServer::start();
    let s = settings(&redis.url(), &[]);
    let q = queue(&s, QueueKind::Research).await;
    let (first, _) = q.enqueue(spec("first")).await.unwrap();
    let mut jobs: Vec<Job> = (0..1_201)
        .map(|i| Job::new(spec(&format!("q{i}"))))
        .collect();
    jobs.insert(600, jobs[3].clone());
    let ids = q.enqueue_jobs(&jobs, None).await.unwrap();
    assert_eq!(ids.len(), 1_202);
    let mut expected = vec![first.to_string()];
    expected.extend(jobs.iter().map(|j| j.id.to_string()));
    expected.remove(601);
    let mut conn = redis.conn();
    let mut wait: Vec<String> = conn.lrange(&q.keys().wait, 0, -1).unwrap();
    wait.reverse(); // LPUSH at the head, fetch pops the tail
    assert_eq!(wait, expected);
    assert_eq!(q.counts().await.unwrap().ready, 1_202);
}

#[tokio::test]
async fn ten_thousand_due_retries_do_not_break_the_queue() {
    // apalis-redis 1.0.0's fetch dies above ~8,000 due tasks (Lua unpack limit).
    let redis = RedisServer::start_with(false);
    let s = settings(&redis.url(), &[]);
    let q = queue(&s, QueueKind::Research).await;
    q.enqueue_many((0..10_000).map(|i| spec(&format!("q{i}"))).collect(), None)
        .await
        .unwrap();
    let mut leases = Vec::new();
    while leases.len() < 10_000 {
        leases.extend(q.fetch("w", 1000).await.unwrap().leases);
    }
    for l in &leases {
        let f = q
            .fail(
                l,
                Settlement::Retry {
                    delay: Duration::ZERO,
                },
                &json!({"class": "transient"}),
                &record(1, "transient"),
            )
            .await
            .unwrap();
        assert_eq!(f, Fenced::Accepted);
    }
    assert_eq!(q.counts().await.unwrap().delayed, 10_000);
    let mut again = 0;
    while again < 10_000 {
        let got = q.fetch("w", 1000).await.unwrap().leases;
        assert!(!got.is_empty(), "promotion keeps up in bounded chunks");
        assert!(got.iter().all(|l| l.attempt == 2));
        again += got.len();
    }
}

#[tokio::test]
async fn idempotency_key_returns_the_existing_job() {
    let redis = RedisServer::start();
    let s = settings(&redis.url(), &[]);
    let q = queue(&s, QueueKind::Research).await;
    let mut a = spec("q");
    a.options.idempotency_key = Some("order-7".into());
    let (first, existing) = q.enqueue(a.clone()).await.unwrap();
    assert!(!existing);
    let (second, existing) = q.enqueue(a).await.unwrap();
    assert!(existing);
    assert_eq!(first, second);
    assert_eq!(q.counts().await.unwrap().ready, 1);
}

#[tokio::test]
async fn cancelling_a_queued_job_means_it_never_runs() {
    let redis = RedisServer::start();
    let s = settings(&redis.url(), &[]);
    let q = queue(&s, QueueKind::Research).await;
    let (id, _) = q.enqueue(spec("q")).await.unwrap();
    assert_eq!(
        q.cancel(&id).await.unwrap(),
        fleet_shared::queue::CancelOutcome::Cancelled
    );
    assert!(q.fetch("w", 10).await.unwrap().leases.is_empty());
    assert_eq!(
        q.job_record(&id.to_string()).await.unwrap().unwrap().status,
        JobStatus::Cancelled
    );
    assert_eq!(
        q.cancel(&id).await.unwrap(),
        fleet_shared::queue::CancelOutcome::AlreadyEnded("cancelled".into()),
        "a second cancel changes nothing and says so"
    );
    let missing = fleet_shared::job::JobId::new();
    assert_eq!(
        q.cancel(&missing).await.unwrap(),
        fleet_shared::queue::CancelOutcome::NotFound
    );
}

#[tokio::test]
async fn dead_letters_can_be_retried_and_purged() {
    let redis = RedisServer::start();
    let s = settings(&redis.url(), &[]);
    let q = queue(&s, QueueKind::Research).await;
    q.enqueue_many(vec![spec("a"), spec("b")], None)
        .await
        .unwrap();
    for l in q.fetch("w", 10).await.unwrap().leases {
        q.fail(
            &l,
            Settlement::Dead,
            &json!({"class": "permanent", "message": "bad"}),
            &record(1, "permanent"),
        )
        .await
        .unwrap();
    }
    let dead = q.dead_list(0, 10).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(q.retry_dead(&[dead[0].0.clone()], 100).await.unwrap(), 1);
    let l = q.fetch("w", 10).await.unwrap().leases;
    assert_eq!(l.len(), 1);
    assert_eq!(
        l[0].attempt, 1,
        "a retried dead letter gets a fresh set of attempts"
    );
    assert_eq!(q.purge_dead(&[], 100).await.unwrap(), 1);
    assert_eq!(q.dead_count().await.unwrap(), 0);
    let r = q.job_record(&dead[1].0).await.unwrap().unwrap();
    assert_eq!(r.status, JobStatus::Failed);
}

#[tokio::test]
async fn an_idle_worker_picks_up_a_new_job_without_polling() {
    let redis = RedisServer::start();
    let s = settings(&redis.url(), &[]);
    let q = queue(&s, QueueKind::Research).await;
    let ran = Arc::new(Mutex::new(Vec::new()));
    let stop = run_worker(&s, "w1", 2, ran.clone(), |_| Ok(json!({"answer": "ok"}))).await;
    // let the worker go idle: its first fetch finds nothing and it blocks
    eventually(
        "worker blocked on the marker",
        Duration::from_secs(5),
        || async {
            let mut c = redis.conn();
            let info: String = redis::cmd("INFO").arg("clients").query(&mut c).unwrap();
            info.contains("blocked_clients:1").then_some(())
        },
    )
    .await;
    let started = Instant::now();
    let (id, _) = q.enqueue(spec("wake up")).await.unwrap();
    q.wait_for_final(&id.to_string(), Some(Duration::from_secs(10)))
        .await
        .unwrap();
    // far below the 5 s idle block: the enqueue woke it
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    stop.cancel();
}

/// Run an in-process apalis worker on the research queue whose handler records each
/// query and answers with `answer`.
async fn run_worker(
    s: &fleet_shared::settings::Settings,
    name: &str,
    concurrency: usize,
    ran: Arc<Mutex<Vec<String>>>,
    answer: fn(&str) -> Result<JobOutput, JobError>,
) -> CancellationToken {
    let cfg = QueueConfig::from_settings(s, QueueKind::Research);
    let q = queue(s, QueueKind::Research).await;
    let keeper = Arc::new(LeaseKeeper::start(
        s.redis.clone(),
        cfg,
        KeeperTimings {
            renew_every: Duration::from_secs(1),
            reclaim_every: Duration::from_millis(500),
        },
    ));
    let stop = CancellationToken::new();
    let backend = RedisBackend::start(q, keeper, name, concurrency, stop.clone());
    #[derive(Clone)]
    struct Ctx {
        ran: Arc<Mutex<Vec<String>>>,
        answer: fn(&str) -> Result<JobOutput, JobError>,
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
        (ctx.answer)(&r.query)
    }
    let worker = WorkerBuilder::new(name.to_string())
        .backend(backend)
        .data(Ctx { ran, answer })
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

#[tokio::test]
async fn batched_completions_are_fenced_one_by_one() {
    let redis = RedisServer::start();
    let s = settings(&redis.url(), &[]);
    let q = queue(&s, QueueKind::Research).await;
    q.enqueue_many(vec![spec("a"), spec("b")], None)
        .await
        .unwrap();
    let leases = q.fetch("w", 2).await.unwrap().leases;
    let completion =
        |l: &fleet_shared::queue::Lease, token: &str| fleet_shared::queue::Completion {
            id: l.id.clone(),
            token: token.to_string(),
            result_json: r#"{"output":"x"}"#.into(),
            staged: false,
            cost_usd: 0.0,
        };
    let out = q
        .complete_many(&[
            completion(&leases[0], &leases[0].token),
            completion(&leases[1], "999999"),
        ])
        .await
        .unwrap();
    assert_eq!(out, vec![Fenced::Accepted, Fenced::Stale]);
    assert_eq!(
        q.job_record(&leases[0].id).await.unwrap().unwrap().status,
        JobStatus::Succeeded
    );
    assert_eq!(
        q.job_record(&leases[1].id).await.unwrap().unwrap().status,
        JobStatus::Running
    );
}

// ---- issue 9: fetch idempotency, settles that must not be lost, cancel, leaks ----

/// A queue that talks to `redis` through a fault-injecting proxy, with the script cache
/// warmed (so the first call through the proxy runs its script, not a NOSCRIPT round).
async fn queue_through_proxy(
    redis: &RedisServer,
    overrides: &[(&str, &str)],
) -> (
    fleet_tests::tcp_proxy::TcpProxy,
    fleet_shared::settings::Settings,
    fleet_shared::queue::RedisQueue,
) {
    let proxy = fleet_tests::tcp_proxy::TcpProxy::start(redis.port());
    let direct = queue(&settings(&redis.url(), overrides), QueueKind::Research).await;
    assert!(direct.fetch("warm-up", 1).await.unwrap().leases.is_empty());
    let s = settings(&proxy.url(), overrides);
    let q = queue(&s, QueueKind::Research).await;
    (proxy, s, q)
}

/// Wait until a worker blocks in BZPOPMIN for work (its fetcher is idle).
async fn wait_idle(redis: &RedisServer) {
    eventually(
        "the worker to wait for work",
        Duration::from_secs(20),
        || async {
            let clients: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query(&mut redis.conn())
                .unwrap();
            clients.contains("cmd=bzpopmin").then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_fetch_retried_after_a_lost_reply_returns_the_same_leases() {
    let redis = RedisServer::start();
    let (proxy, s, q) = queue_through_proxy(&redis, &[]).await;
    let direct = queue(&settings(&redis.url(), &[]), QueueKind::Research).await;
    let ids = direct
        .enqueue_many(vec![spec("a"), spec("b"), spec("c")], None)
        .await
        .unwrap();
    // The script runs, its reply is lost with the connection; the wrapper retries.
    proxy.inject(
        &direct.keys().token,
        fleet_tests::tcp_proxy::Fault::LoseReply,
        1,
    );
    let fetched = q.fetch("w1", 10).await.unwrap();
    assert_eq!(proxy.injected(), 1, "the fetch's reply was lost once");
    assert_eq!(
        fetched.leases.len(),
        3,
        "the retried fetch hands back the jobs the lost call leased"
    );
    for l in &fetched.leases {
        assert_eq!(l.attempt, 1);
        let r = q.job_record(&l.id).await.unwrap().unwrap();
        assert_eq!((r.status, r.attempts), (JobStatus::Running, 1));
        assert_eq!(q.complete(l, "{}").await.unwrap(), Fenced::Accepted);
    }
    let mut got: Vec<String> = fetched.leases.iter().map(|l| l.id.clone()).collect();
    let mut want: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // A new fetch is a new call: nothing is handed out twice.
    assert!(q.fetch("w1", 10).await.unwrap().leases.is_empty());
    drop(s);
}

/// Retry `fetch_once` under one fetch ID until a try gets through (a cut connection
/// makes the next try or two fail while it reconnects).
async fn fetch_until_ok(
    q: &fleet_shared::queue::RedisQueue,
    worker: &str,
    max: usize,
    fetch_id: &str,
) -> fleet_shared::queue::Fetched {
    for _ in 0..20 {
        if let Ok(f) = q.fetch_once(worker, max, fetch_id).await {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("fetch {fetch_id} kept failing");
}

fn lease_ids(f: &fleet_shared::queue::Fetched) -> Vec<(String, String, u32)> {
    f.leases
        .iter()
        .map(|l| (l.id.clone(), l.token.clone(), l.attempt))
        .collect()
}

/// Enqueue one job per query, in one call; their IDs in order.
async fn enqueue_ids<const N: usize>(
    q: &fleet_shared::queue::RedisQueue,
    queries: [&str; N],
) -> Vec<String> {
    q.enqueue_many(queries.map(spec).to_vec(), None)
        .await
        .unwrap()
        .iter()
        .map(|i| i.to_string())
        .collect()
}

#[tokio::test]
async fn a_fetch_retried_after_its_claim_or_its_lease_returns_the_same_jobs_never_new_ones() {
    let redis = RedisServer::start();
    let (proxy, _s, q) = queue_through_proxy(&redis, &[]).await;
    let direct = queue(&settings(&redis.url(), &[]), QueueKind::Research).await;
    // The lease script loaded first: a lost reply below must be the lease's own.
    direct.enqueue(spec("warm up")).await.unwrap();
    let warm = direct.fetch("w0", 1).await.unwrap();
    direct.complete(&warm.leases[0], "{}").await.unwrap();
    let ids = enqueue_ids(&direct, ["a", "b", "c", "d"]).await;

    // After the claim: the lease (the only step that declares the token counter) is
    // refused, so the fetch has claimed two jobs and leased none.
    proxy.inject(&q.keys().token, fleet_tests::tcp_proxy::Fault::Error, 1);
    assert!(q.fetch_once("w1", 2, "fetch-1").await.is_err());
    assert_eq!(proxy.injected(), 1);
    let more = direct.enqueue(spec("e")).await.unwrap().0.to_string();
    let once = fetch_until_ok(&q, "w1", 2, "fetch-1").await;
    let got: Vec<String> = once.leases.iter().map(|l| l.id.clone()).collect();
    assert_eq!(got, ids[..2], "the two it claimed, oldest first");
    // And again after the lease: the same leases, same tokens, nothing new.
    let twice = fetch_until_ok(&q, "w1", 2, "fetch-1").await;
    assert_eq!(lease_ids(&twice), lease_ids(&once));

    // After the lease, its reply lost with the connection: the retry hands back what
    // the lost call leased.
    proxy.inject(&q.keys().token, fleet_tests::tcp_proxy::Fault::LoseReply, 1);
    let lost = q.fetch_once("w1", 2, "fetch-2").await;
    assert!(lost.is_err(), "the reply was lost");
    assert_eq!(proxy.injected(), 2);
    let again = fetch_until_ok(&q, "w1", 2, "fetch-2").await;
    let got: Vec<String> = again.leases.iter().map(|l| l.id.clone()).collect();
    assert_eq!(got, ids[2..4]);
    assert!(again.leases.iter().all(|l| l.attempt == 1));
    let third = fetch_until_ok(&q, "w1", 2, "fetch-2").await;
    assert_eq!(lease_ids(&third), lease_ids(&again));
    for l in once.leases.iter().chain(&again.leases) {
        let r = q.job_record(&l.id).await.unwrap().unwrap();
        assert_eq!((r.status, r.attempts), (JobStatus::Running, 1));
    }
    // The job enqueued in between went to neither: a new fetch gets it.
    let next = q.fetch("w1", 10).await.unwrap();
    let got: Vec<String> = next.leases.iter().map(|l| l.id.clone()).collect();
    assert_eq!(got, [more]);
}

#[tokio::test]
async fn a_claim_never_leased_is_taken_back_by_reclaim_and_runs_elsewhere() {
    let redis = RedisServer::start();
    let (proxy, _s, q) = queue_through_proxy(&redis, &[]).await;
    let direct = queue(&settings(&redis.url(), &[]), QueueKind::Research).await;
    let ids = enqueue_ids(&direct, ["first", "second"]).await;
    // A worker claims the oldest job and dies before its lease (refused here).
    proxy.inject(&q.keys().token, fleet_tests::tcp_proxy::Fault::Error, 1);
    assert!(q.fetch_once("gone", 1, "fetch-gone").await.is_err());
    let mut conn = redis.conn();
    let waiting: Vec<String> = conn.lrange(&direct.keys().wait, 0, -1).unwrap();
    assert_eq!(waiting, [ids[1].clone()], "the claimed job left `wait`");
    let r = direct.job_record(&ids[0]).await.unwrap().unwrap();
    assert_eq!((r.status, r.attempts), (JobStatus::Queued, 0));
    // Its claim expires (moved into the past): reclaim puts it back at the front.
    let _: () = conn.zadd(&direct.keys().active, &ids[0], 0).unwrap();
    assert_eq!(direct.reclaim_expired(10).await.unwrap(), 1);
    let other = direct.fetch("w2", 1).await.unwrap();
    assert_eq!(other.leases.len(), 1);
    let lease = &other.leases[0];
    assert_eq!(
        (lease.id.as_str(), lease.attempt),
        (ids[0].as_str(), 1),
        "still first in line, no attempt charged"
    );
    // The dead worker's fetch, retried late, takes nothing from the new holder.
    let late = fetch_until_ok(&q, "gone", 1, "fetch-gone").await;
    assert!(late.leases.is_empty());
    let held = [(lease.id.clone(), lease.token.clone())];
    assert_eq!(
        direct.renew(&held).await.unwrap(),
        [fleet_shared::queue::Renewal::Renewed]
    );
    assert_eq!(
        direct.complete(lease, "{}").await.unwrap(),
        Fenced::Accepted
    );
    let r = direct.job_record(&ids[0]).await.unwrap().unwrap();
    assert_eq!((r.status, r.attempts), (JobStatus::Succeeded, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_fetch_reply_does_not_cost_a_single_attempt_job_its_run() {
    let redis = RedisServer::start();
    let overrides = [("QUEUE__LEASE_TTL_SECS", "3")];
    let (proxy, s, _) = queue_through_proxy(&redis, &overrides).await;
    let q = queue(&settings(&redis.url(), &overrides), QueueKind::Research).await;
    let ran = Arc::new(Mutex::new(Vec::new()));
    let stop = run_worker(&s, "w1", 2, ran.clone(), |q| Ok(json!({"answer": q}))).await;
    wait_idle(&redis).await;
    proxy.inject(&q.keys().token, fleet_tests::tcp_proxy::Fault::LoseReply, 1);
    let mut one = spec("only one try");
    one.options.max_attempts = Some(1);
    let (id, _) = q.enqueue(one).await.unwrap();
    let r = eventually("the job to end", Duration::from_secs(30), || async {
        let r = q.job_record(&id.to_string()).await.ok()??;
        r.status.is_final().then_some(r)
    })
    .await;
    assert_eq!(proxy.injected(), 1);
    assert_eq!(
        (r.status, r.attempts),
        (JobStatus::Succeeded, 1),
        "error: {:?}",
        r.error
    );
    assert_eq!(ran.lock().unwrap().len(), 1);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_in_flight_when_the_worker_stops_hands_its_jobs_back() {
    let redis = RedisServer::start();
    let overrides = [("QUEUE__LEASE_TTL_SECS", "3")];
    let (proxy, s, _) = queue_through_proxy(&redis, &overrides).await;
    let q = queue(&settings(&redis.url(), &overrides), QueueKind::Research).await;
    let ran = Arc::new(Mutex::new(Vec::new()));
    let stop = run_worker(&s, "w1", 2, ran.clone(), |q| Ok(json!({"answer": q}))).await;
    // One job first, so the worker has loaded the lease script: the held reply below
    // must be the lease's, not a NOSCRIPT the client would answer by loading it.
    let (warm, _) = q.enqueue(spec("warm up")).await.unwrap();
    eventually("the first job to run", Duration::from_secs(10), || async {
        let r = q.job_record(&warm.to_string()).await.ok()??;
        (r.status == JobStatus::Succeeded).then_some(())
    })
    .await;
    wait_idle(&redis).await;
    // The token counter is declared by the fetch's last step (lease-n.lua) only.
    proxy.inject(&q.keys().token, fleet_tests::tcp_proxy::Fault::HoldReply, 1);
    let mut one = spec("leased as the worker stops");
    one.options.max_attempts = Some(1);
    let (id, _) = q.enqueue(one).await.unwrap();
    // The fetch ran (the job is leased); its reply is held while the worker stops.
    eventually(
        "the fetch to lease the job",
        Duration::from_secs(10),
        || async {
            let r = q.job_record(&id.to_string()).await.ok()??;
            (r.status == JobStatus::Running).then_some(())
        },
    )
    .await;
    stop.cancel();
    // Nothing to await here: a fetch raced against the stop would be dropped now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.release_held();
    let r = eventually(
        "the fetched job to be handed back",
        Duration::from_secs(10),
        || async {
            let r = q.job_record(&id.to_string()).await.ok()??;
            (r.status != JobStatus::Running).then_some(r)
        },
    )
    .await;
    assert_eq!(
        (r.status, r.attempts),
        (JobStatus::Queued, 0),
        "handed back unstarted, no attempt charged ({:?})",
        r.error
    );
    assert_eq!(*ran.lock().unwrap(), ["warm up"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_success_whose_write_is_refused_once_still_ends_succeeded() {
    let redis = RedisServer::start();
    let overrides = [("QUEUE__LEASE_TTL_SECS", "3")];
    let (proxy, s, _) = queue_through_proxy(&redis, &overrides).await;
    let q = queue(&settings(&redis.url(), &overrides), QueueKind::Research).await;
    // The result carries the query: the complete call holding it is refused once (as
    // a READONLY replica or a script error would), the job's only attempt succeeded.
    proxy.inject(
        "result-refused-once",
        fleet_tests::tcp_proxy::Fault::Error,
        1,
    );
    let ran = Arc::new(Mutex::new(Vec::new()));
    let stop = run_worker(&s, "w1", 2, ran.clone(), |q| Ok(json!({"answer": q}))).await;
    let mut one = spec("result-refused-once");
    one.options.max_attempts = Some(1);
    let (id, _) = q.enqueue(one).await.unwrap();
    let r = eventually("the job to end", Duration::from_secs(30), || async {
        let r = q.job_record(&id.to_string()).await.ok()??;
        r.status.is_final().then_some(r)
    })
    .await;
    assert_eq!(proxy.injected(), 1, "the first complete was refused");
    assert_eq!(
        r.status,
        JobStatus::Succeeded,
        "a succeeded attempt must not end {} ({:?})",
        r.status,
        r.error
    );
    assert_eq!(r.result.unwrap()["output"]["answer"], "result-refused-once");
    assert_eq!(ran.lock().unwrap().len(), 1);
    stop.cancel();
}

/// Item 6 of issue 9 with a real worker: a failover turns the worker's Redis into a
/// replica just as a job's only attempt ends, so `complete` is refused with READONLY;
/// once it is a primary again the result lands. The job ends succeeded with its one
/// result, never dead (no lease lost, no attempt charged).
#[tokio::test(flavor = "multi_thread")]
async fn a_success_refused_as_readonly_during_a_failover_still_ends_succeeded() {
    use fleet_tests::fixture::Fleet;
    // The agent waits for the test's go before it answers.
    let mut fleet = Fleet::start(
        r#"q=$(cat); touch {dir}/ready; while [ ! -f {dir}/go ]; do sleep 0.05; done; printf '%s' "$q""#,
        "[queue]\nlease_ttl_secs = 3\nreclaim_interval_ms = 200\n",
    )
    .await;
    fleet.start_worker("w1");
    let mut one = JobSpec::research("answered during a failover", "test");
    one.options.max_attempts = Some(1);
    let id = fleet.submit(one).await.to_string();
    fleet
        .eventually("the agent to run", Duration::from_secs(30), || async {
            fleet.path("ready").exists().then_some(())
        })
        .await;
    // Failover: a replica takes over the data, is promoted, and the worker's Redis
    // becomes its replica (writes refused with READONLY).
    let other = RedisServer::start_with(false);
    other.replicaof(Some(&fleet.redis));
    other.wait_replica_synced();
    other.replicaof(None);
    fleet.redis.replicaof(Some(&other));
    fleet.redis.wait_replica_synced();
    std::fs::write(fleet.path("go"), "").unwrap();
    fleet
        .eventually(
            "the result's write to be refused",
            Duration::from_secs(10),
            || async {
                fleet.workers[0]
                    .log_text()
                    .lines()
                    .any(|l| l.contains("could not record the outcome; retrying"))
                    .then_some(())
            },
        )
        .await;
    fleet.redis.replicaof(None);
    let log = fleet.workers[0].log_text();
    let refused = log
        .lines()
        .find(|l| l.contains("could not record the outcome; retrying"))
        .unwrap();
    assert!(refused.contains("read only replica"), "{refused}");
    let r = fleet
        .eventually("the job to end", Duration::from_secs(20), || async {
            let r = fleet.queue.job_record(&id).await.ok()??;
            r.status.is_final().then_some(r)
        })
        .await;
    assert_eq!(
        r.status,
        JobStatus::Succeeded,
        "a succeeded attempt must not end {} ({:?})\n{}",
        r.status,
        r.error,
        fleet.logs()
    );
    assert_eq!(r.attempts, 1);
    assert_eq!(
        r.history
            .iter()
            .map(|h| h.outcome.as_str())
            .collect::<Vec<_>>(),
        ["succeeded"]
    );
    assert_eq!(
        r.result.unwrap()["output"]["answer"],
        "answered during a failover"
    );
}

#[tokio::test]
async fn a_refused_completion_does_not_take_the_results_batched_with_it_down() {
    use fleet_shared::queue::Completion;
    use fleet_shared::queue::apalis_backend::CompletionBatcher;
    use fleet_tests::tcp_proxy::Fault;
    let redis = RedisServer::start();
    let (proxy, _s, q) = queue_through_proxy(&redis, &[]).await;
    q.enqueue_many(vec![spec("a"), spec("b"), spec("c")], None)
        .await
        .unwrap();
    let leases = q.fetch("w", 3).await.unwrap().leases;
    let batcher = CompletionBatcher::start(q.clone());
    let write = |i: usize, marker: &str| {
        let (b, l) = (batcher.clone(), &leases[i]);
        let c = Completion {
            id: l.id.clone(),
            token: l.token.clone(),
            result_json: json!({ "output": marker }).to_string(),
            staged: false,
            cost_usd: 0.0,
        };
        tokio::spawn(async move { b.complete(c).await.map_err(|e| e.to_string()) })
    };
    // The first write's reply is held, so the next two queue up and go in one call,
    // which is refused because of one of them.
    proxy.inject("hold-this-one", Fault::HoldReply, 1);
    proxy.inject("refuse-this-one", Fault::Error, 1);
    let first = write(0, "hold-this-one");
    eventually(
        "the first write to be sent",
        Duration::from_secs(5),
        || async { (proxy.injected() == 1).then_some(()) },
    )
    .await;
    let beside = write(1, "written-beside-it");
    let refused = write(2, "refuse-this-one");
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    proxy.release_held();
    assert_eq!(first.await.unwrap(), Ok(Fenced::Accepted));
    assert_eq!(
        beside.await.unwrap(),
        Ok(Fenced::Accepted),
        "a result batched with a refused one is still written"
    );
    let _ = refused.await.unwrap();
    assert_eq!(proxy.injected(), 2, "the batch of two was refused once");
    assert_eq!(
        q.job_record(&leases[1].id).await.unwrap().unwrap().status,
        JobStatus::Succeeded
    );
}

/// Item 6 of issue 9: the completion batcher bounds one `complete` call by bytes, not
/// only by count. Four results of 1.5 MiB queue up while a call is in flight; they go
/// in more than one call, none carrying more than the 4 MiB cap, and all are written.
#[tokio::test]
async fn one_complete_call_carries_at_most_four_mib_of_results() {
    use fleet_shared::queue::Completion;
    use fleet_shared::queue::apalis_backend::CompletionBatcher;
    use fleet_tests::tcp_proxy::Fault;
    const CAP: usize = 4 << 20;
    const BIG: usize = 3 << 19; // 1.5 MiB
    let redis = RedisServer::start();
    let (proxy, _s, q) = queue_through_proxy(&redis, &[]).await;
    let specs = (0..5).map(|i| spec(&format!("q{i}"))).collect();
    q.enqueue_many(specs, None).await.unwrap();
    let leases = q.fetch("w", 5).await.unwrap().leases;
    assert_eq!(leases.len(), 5);
    let batcher = CompletionBatcher::start(q.clone());
    let write = |i: usize, output: String| {
        let (b, l) = (batcher.clone(), &leases[i]);
        let c = Completion {
            id: l.id.clone(),
            token: l.token.clone(),
            result_json: json!({ "output": output }).to_string(),
            staged: false,
            cost_usd: 0.0,
        };
        tokio::spawn(async move { b.complete(c).await.map_err(|e| e.to_string()) })
    };
    // The first write's reply is held, so the big ones queue up behind it.
    proxy.inject("hold-this-one", Fault::HoldReply, 1);
    proxy.watch("big-result");
    let first = write(0, "hold-this-one".into());
    eventually(
        "the first write to be sent",
        Duration::from_secs(5),
        || async { (proxy.injected() == 1).then_some(()) },
    )
    .await;
    let big: Vec<_> = (1..5)
        .map(|i| write(i, format!("big-result-{i}:{}", "x".repeat(BIG))))
        .collect();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    proxy.release_held();
    assert_eq!(first.await.unwrap(), Ok(Fenced::Accepted));
    for b in big {
        assert_eq!(b.await.unwrap(), Ok(Fenced::Accepted));
    }
    let calls = proxy.watched("big-result");
    assert!(
        calls.len() >= 2,
        "6 MiB of results went in {} call(s)",
        calls.len()
    );
    assert!(
        calls.iter().all(|&bytes| bytes <= CAP + 64 * 1024),
        "a complete call carried more than the 4 MiB cap: {calls:?}"
    );
    assert!(calls.iter().sum::<usize>() >= 4 * BIG, "{calls:?}");
    for l in &leases {
        let r = q.job_record(&l.id).await.unwrap().unwrap();
        assert_eq!(r.status, JobStatus::Succeeded);
    }
}

#[tokio::test]
async fn a_cancel_flag_wins_over_every_fail_decision() {
    let redis = RedisServer::start();
    let s = settings(&redis.url(), &[]);
    let q = queue(&s, QueueKind::Research).await;
    let error = json!({"class": "transient", "message": "flaky"});
    for decision in [
        Settlement::Retry {
            delay: Duration::ZERO,
        },
        Settlement::Release,
        Settlement::Dead,
    ] {
        let (id, _) = q.enqueue(spec("q")).await.unwrap();
        let lease = q.fetch("w", 1).await.unwrap().leases.remove(0);
        assert_eq!(
            q.cancel(&id).await.unwrap(),
            fleet_shared::queue::CancelOutcome::Cancelling
        );
        // The attempt ended some other way before it saw the cancel.
        q.fail(&lease, decision, &error, &record(1, "transient"))
            .await
            .unwrap();
        let r = q.job_record(&id.to_string()).await.unwrap().unwrap();
        assert_eq!(
            r.status,
            JobStatus::Cancelled,
            "{decision:?} of a job whose cancel was requested"
        );
    }
    assert!(q.fetch("w", 10).await.unwrap().leases.is_empty());
    assert_eq!(q.dead_count().await.unwrap(), 0);
}

#[tokio::test]
async fn fetch_ends_a_cancel_flagged_queued_job_instead_of_running_it() {
    let redis = RedisServer::start();
    let s = settings(&redis.url(), &[]);
    let q = queue(&s, QueueKind::Research).await;
    // As an older version left it: queued again with its cancel flag still set.
    let id = fleet_shared::job::JobId::new().to_string();
    let spec_json = serde_json::to_string(&spec("q")).unwrap();
    put_raw_job(
        &redis,
        &q,
        &id,
        &[
            ("spec", spec_json.as_str()),
            ("status", "queued"),
            ("meta", "3\t0\t0"),
            ("cancel", "1"),
        ],
    );
    assert!(q.fetch("w", 10).await.unwrap().leases.is_empty());
    let r = q.job_record(&id).await.unwrap().unwrap();
    assert_eq!(r.status, JobStatus::Cancelled);
}

#[tokio::test]
async fn a_retried_dead_letter_forgets_an_old_cancel_request() {
    let redis = RedisServer::start();
    let s = settings(&redis.url(), &[]);
    let q = queue(&s, QueueKind::Research).await;
    let id = fleet_shared::job::JobId::new().to_string();
    let spec_json = serde_json::to_string(&spec("q")).unwrap();
    let mut conn = redis.conn();
    let _: () = conn
        .hset_multiple(
            q.keys().job(&id),
            &[
                ("spec", spec_json.as_str()),
                ("status", "dead"),
                ("meta", "3\t0\t0"),
                ("attempts", "3"),
                ("cancel", "1"),
            ],
        )
        .unwrap();
    let _: () = conn.zadd(&q.keys().dead, &id, 1).unwrap();
    assert_eq!(q.retry_dead(&[], 10).await.unwrap(), 1);
    let lease = q.fetch("w", 1).await.unwrap().leases.remove(0);
    assert_eq!(
        q.renew(&[(lease.id.clone(), lease.token.clone())])
            .await
            .unwrap(),
        vec![fleet_shared::queue::Renewal::Renewed],
        "the retried job runs; the cancel before it died is not applied to it"
    );
}

#[tokio::test]
async fn cancelling_queued_jobs_does_not_scan_the_backlog() {
    let redis = RedisServer::start();
    let s = settings(&redis.url(), &[]);
    let q = queue(&s, QueueKind::Research).await;
    let ids = q
        .enqueue_many((0..200).map(|i| spec(&format!("q{i}"))).collect(), None)
        .await
        .unwrap();
    // A backlog of a million ready jobs queued after them.
    let mut conn = redis.conn();
    let filler: Vec<String> = (0..10_000).map(|i| format!("filler-{i}")).collect();
    for _ in 0..100 {
        let _: () = conn.lpush(&q.keys().wait, &filler).unwrap();
    }
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut conn).unwrap();
    let started = Instant::now();
    for id in &ids {
        assert_eq!(
            q.cancel(id).await.unwrap(),
            fleet_shared::queue::CancelOutcome::Cancelled
        );
    }
    let took = started.elapsed();
    // A cancel is a constant-time script; scanning a million entries is ~10 ms a call.
    let slow: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(1000)
        .query(&mut conn)
        .unwrap();
    assert!(
        took < Duration::from_millis(1000) && slow.is_empty(),
        "200 cancels took {took:?}; {} of them were slow calls (SLOWLOG, > 10 ms)",
        slow.len()
    );
    // The cancelled jobs' entries are dropped as they are fetched; none runs.
    let _: () = conn.del(&q.keys().wait).unwrap();
    let _: () = conn.rpush(&q.keys().wait, ids[0].to_string()).unwrap();
    assert!(q.fetch("w", 10).await.unwrap().leases.is_empty());
    assert_eq!(
        q.job_record(&ids[0].to_string())
            .await
            .unwrap()
            .unwrap()
            .status,
        JobStatus::Cancelled
    );
}

#[tokio::test]
async fn an_enqueue_refused_for_a_zero_idempotency_ttl_writes_nothing() {
    let redis = RedisServer::start();
    let s = settings(&redis.url(), &[]);
    let mut refused = fleet_shared::settings::Settings::from_layers(
        None,
        &[
            ("FLEET_REDIS__URL".to_string(), redis.url()),
            ("FLEET_QUEUE__IDEMPOTENCY_TTL_SECS".to_string(), "0".into()),
        ],
    )
    .map(|_| ())
    .expect_err("a zero idempotency TTL is refused when the settings are read")
    .to_string();
    refused.make_ascii_lowercase();
    assert!(refused.contains("idempotency_ttl_secs"), "{refused}");
    // And a queue built around validation anyway refuses the whole call.
    let mut cfg = QueueConfig::from_settings(&s, QueueKind::Research);
    cfg.idempotency_ttl = Duration::ZERO;
    let q = fleet_shared::queue::RedisQueue::open(&s.redis, cfg)
        .await
        .unwrap();
    let mut keyed = spec("b");
    keyed.options.idempotency_key = Some("k-1".into());
    assert!(q.enqueue_many(vec![spec("a"), keyed], None).await.is_err());
    let n: u64 = redis::cmd("DBSIZE").query(&mut redis.conn()).unwrap();
    assert_eq!(n, 0, "nothing of the refused call was written");
}

#[tokio::test]
async fn every_key_a_job_creates_expires_after_the_job_ends() {
    let redis = RedisServer::start();
    let s = settings(&redis.url(), &[]);
    let mut cfg = QueueConfig::from_settings(&s, QueueKind::Research);
    cfg.result_ttl = Duration::from_millis(300);
    cfg.idempotency_ttl = Duration::from_millis(300);
    cfg.lease_ttl = Duration::from_millis(300);
    let q = fleet_shared::queue::RedisQueue::open(&s.redis, cfg)
        .await
        .unwrap();
    let mut conn = redis.conn();
    let error = json!({"class": "permanent", "message": "bad"});
    let fetch_one = || async { q.fetch("w", 1).await.unwrap().leases.remove(0) };

    // A plain success, one with an idempotency key, one retried first.
    q.enqueue(spec("plain")).await.unwrap();
    let l = fetch_one().await;
    q.complete(&l, "{}").await.unwrap();
    let mut keyed = spec("keyed");
    keyed.options.idempotency_key = Some("key-1".into());
    q.enqueue(keyed).await.unwrap();
    let l = fetch_one().await;
    q.complete(&l, "{}").await.unwrap();
    q.enqueue(spec("retried")).await.unwrap();
    let l = fetch_one().await;
    let retry = Settlement::Retry {
        delay: Duration::ZERO,
    };
    q.fail(&l, retry, &error, &record(1, "transient"))
        .await
        .unwrap();
    let l = fetch_one().await;
    q.complete(&l, "{}").await.unwrap();
    // A lost lease, then a success.
    q.enqueue(spec("reclaimed")).await.unwrap();
    fetch_one().await;
    eventually(
        "the lease to be reclaimed",
        Duration::from_secs(5),
        || async { (q.reclaim_expired(10).await.unwrap() > 0).then_some(()) },
    )
    .await;
    let l = fetch_one().await;
    q.complete(&l, "{}").await.unwrap();
    // A cancelled queued job.
    let (cancelled, _) = q.enqueue(spec("cancelled")).await.unwrap();
    q.cancel(&cancelled).await.unwrap();
    assert!(q.fetch("w", 10).await.unwrap().leases.is_empty());

    // A batch: one job succeeds, one dies; once the batch record expired, the dead
    // one is retried and succeeds at its first new attempt; another dies and is purged.
    let batch = q
        .enqueue_many(
            vec![spec("b-ok"), spec("b-dead"), spec("b-purged")],
            Some("b1"),
        )
        .await
        .unwrap();
    let leases = q.fetch("w", 3).await.unwrap().leases;
    for l in &leases {
        if l.id == batch[0].to_string() {
            q.complete(l, "{}").await.unwrap();
        } else {
            q.fail(l, Settlement::Dead, &error, &record(1, "permanent"))
                .await
                .unwrap();
        }
    }
    eventually(
        "the batch record to expire",
        Duration::from_secs(5),
        || async {
            let n: u64 = redis::cmd("EXISTS")
                .arg(q.keys().batch("b1"))
                .query(&mut redis.conn())
                .unwrap();
            (n == 0).then_some(())
        },
    )
    .await;
    assert_eq!(q.retry_dead(&[batch[1].to_string()], 10).await.unwrap(), 1);
    let recreated: Vec<(String, String)> = conn.hgetall(q.keys().batch("b1")).unwrap();
    assert!(
        recreated.is_empty(),
        "an expired batch record is not brought back as counters only: {recreated:?}"
    );
    let l = fetch_one().await;
    assert_eq!(l.attempt, 1);
    q.complete(&l, "{}").await.unwrap();
    assert_eq!(q.purge_dead(&[], 10).await.unwrap(), 1);
    // A dead record without a spec (written by hand or by an older version).
    let odd = fleet_shared::job::JobId::new().to_string();
    let _: () = conn
        .hset_multiple(q.keys().job(&odd), &[("status", "dead"), ("attempts", "1")])
        .unwrap();
    let _: () = conn.zadd(&q.keys().dead, &odd, 1).unwrap();
    q.retry_dead(&[], 10).await.unwrap();
    assert_eq!(q.dead_count().await.unwrap(), 0);

    // Only the queue's own counter, wake-up marker, reclaim clock and per-minute
    // history (bounded: 8 days of minutes) may stay. The listing indexes empty as the
    // index trim (each worker's reclaim tick; here by hand) takes out expired jobs.
    let baseline = [
        q.keys().token.clone(),
        q.keys().marker.clone(),
        q.keys().reclaim_clock.clone(),
        q.keys().history_current().to_string(),
        q.keys().history_log().to_string(),
    ];
    let left = eventually(
        "every job key to expire",
        Duration::from_secs(10),
        || async {
            q.trim_indexes(1000).await.unwrap();
            let mut keys: Vec<String> = redis::cmd("KEYS")
                .arg("*")
                .query(&mut redis.conn())
                .unwrap();
            keys.retain(|k| !baseline.contains(k));
            keys.sort();
            let ttls: Vec<(String, i64)> = keys
                .iter()
                .map(|k| (k.clone(), redis.conn().pttl(k).unwrap()))
                .collect();
            // Done when nothing is left, or when what is left will never expire. Index
            // keys are not expired by Redis but emptied by the trim, which takes a job
            // out once its record is gone: give it its next turn.
            let trimmed_later = ttls.iter().any(|(k, _)| k.contains(":ix:"));
            (keys.is_empty() || (!trimmed_later && ttls.iter().all(|(_, t)| *t == -1)))
                .then_some(ttls)
        },
    )
    .await;
    assert!(left.is_empty(), "keys left without a TTL: {left:?}");
}

/// A cache leader whose last attempt's lease is lost is dead-lettered by reclaim and
/// hands the cache entry to the job waiting on it, which runs next; the batch counts
/// both. (reclaim_expired declares every key it touches: the follower's record is
/// named by the caller from the entry it read.)
#[tokio::test(flavor = "multi_thread")]
async fn a_reclaimed_cache_leader_hands_its_entry_to_the_job_waiting_on_it() {
    use fleet_tests::fixture::Fleet;
    let fleet = Fleet::start("cat", "cache = true\n[queue.research]\nmax_attempts = 1\n").await;
    let q = fleet.queue.clone();
    let same: Vec<Job> = (0..2)
        .map(|_| {
            let mut s = JobSpec::research("same query", "test");
            s.options.cache = Some(true);
            Job::new(s)
        })
        .collect();
    q.enqueue_jobs(&same, Some("b")).await.unwrap();
    let leases = q.fetch("w", 10).await.unwrap().leases;
    assert_eq!(leases.len(), 1, "the follower waits on its leader");
    let leader = leases[0].id.clone();
    let follower = same
        .iter()
        .map(|j| j.id.to_string())
        .find(|id| *id != leader)
        .unwrap();
    let _: () = fleet
        .redis
        .conn()
        .zadd(&q.keys().active, &leader, 0)
        .unwrap();
    assert_eq!(q.reclaim_expired(10).await.unwrap(), 1);
    let r = q.job_record(&leader).await.unwrap().unwrap();
    assert_eq!(r.status, JobStatus::Dead);
    assert_eq!(r.history[0].outcome, "lease_lost");
    let next = q.fetch("w", 10).await.unwrap().leases;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, follower, "the follower took over the entry");
    let batch = q.batch_record("b").await.unwrap().unwrap();
    assert_eq!(batch.count(JobStatus::Dead), 1, "{:?}", batch.counts);
    assert_eq!(batch.count(JobStatus::Running), 1, "{:?}", batch.counts);
}
