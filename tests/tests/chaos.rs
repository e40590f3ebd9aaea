//! Chaos: three worker processes run 500 jobs while workers are killed (`kill -9`),
//! frozen and thawed (`SIGSTOP`/`SIGCONT` past the lease TTL), and Redis itself is
//! frozen for longer than the lease TTL. The promises checked at the end:
//! - no job is dead-lettered (weather is not a reason to give up on a job);
//! - every job ends `succeeded` with exactly one result and a history that adds up;
//! - once the workers have stopped and the result TTL has passed, no key of any job
//!   is left in Redis (every key a job creates has a bounded life).
//!
//! The whole test runs in well under three minutes on a two-core machine.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use fleet_shared::job::{JobId, JobPayload, JobSpec};
use fleet_shared::results::{JobRecord, JobStatus};
use fleet_shared::time::now_ms;
use fleet_tests::fixture::Fleet;

const JOBS: usize = 500;
const LEASE_TTL: Duration = Duration::from_secs(3);
const RESULT_TTL: Duration = Duration::from_secs(20);

/// Lease TTL 3 s, results kept 20 s; retries come fast. A kill -9 costs a job an
/// attempt (its lease is lost), so a job that is unlucky several times still has
/// attempts left: 10 in all.
const CONFIG: &str = r#"
[queue]
lease_ttl_secs = 3
reclaim_interval_ms = 200
result_ttl_secs = 20
idempotency_ttl_secs = 20
[queue.research]
max_attempts = 10
backoff_base_ms = 50
backoff_cap_ms = 200
[worker]
concurrency = 4
drain_timeout_secs = 5
"#;

fn signal(pid: i32, signal: i32) {
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Checks each job's record as soon as it has ended (records expire `RESULT_TTL`
/// after that, so they are read while the batch still runs).
struct Verifier {
    pending: Vec<JobId>,
    ended: HashMap<String, JobRecord>,
}

impl Verifier {
    async fn poll(&mut self, fleet: &Fleet) {
        let Ok(statuses) = fleet.queue.job_statuses(&self.pending).await else {
            return; // Redis frozen or restarting: look again later.
        };
        let mut still = Vec::new();
        for (id, status) in self.pending.iter().zip(statuses) {
            match status {
                Some(s) if s.is_final() => match fleet.queue.job_record(&id.to_string()).await {
                    Ok(Some(r)) => {
                        self.ended.insert(id.to_string(), r);
                    }
                    _ => still.push(*id),
                },
                Some(_) => still.push(*id),
                None => panic!("job {id} has no record before it ended: lost"),
            }
        }
        self.pending = still;
    }

    fn done(&self) -> usize {
        self.ended.len()
    }
}

/// Wait until `n` more jobs have ended (polling the records as they end).
async fn progress(fleet: &Fleet, verifier: &mut Verifier, n: usize) {
    let target = (verifier.done() + n).min(JOBS);
    let deadline = Instant::now() + Duration::from_secs(90);
    while verifier.done() < target {
        assert!(
            Instant::now() < deadline,
            "no progress: {} of {JOBS} ended\n{}",
            verifier.done(),
            fleet.logs()
        );
        verifier.poll(fleet).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kills_freezes_and_a_frozen_redis_lose_nothing_and_leave_nothing() {
    let started = Instant::now();
    let mut fleet = Fleet::start(
        r#"q=$(cat); echo "$q" >> {dir}/runs.log; sleep 0.3; printf '%s' "$q""#,
        CONFIG,
    )
    .await;
    let mut next_worker = 0;
    for _ in 0..3 {
        fleet.start_worker(&format!("w{next_worker}"));
        next_worker += 1;
    }
    let specs: Vec<JobSpec> = (0..JOBS)
        .map(|i| JobSpec::research(format!("chaos query {i}"), "test"))
        .collect();
    let ids = fleet
        .queue
        .enqueue_many(specs, Some("chaos"))
        .await
        .unwrap();
    let mut verifier = Verifier {
        pending: ids.clone(),
        ended: HashMap::new(),
    };

    // Workers that were killed or frozen, and when: the only attempts that may be lost
    // are those that had started on one of them before its fault.
    let mut victims: HashMap<String, u64> = HashMap::new();

    // 1. kill -9 a worker mid-batch; a new one takes its place.
    progress(&fleet, &mut verifier, 40).await;
    victims.insert(fleet.workers[0].name.clone(), now_ms());
    fleet.workers[0].kill9();
    fleet.workers.remove(0);
    fleet.start_worker(&format!("w{next_worker}"));
    next_worker += 1;

    // 2. Freeze a worker (its lease keeper too) past its lease TTL, then thaw it: its
    //    jobs run elsewhere and whatever it writes late is refused.
    progress(&fleet, &mut verifier, 40).await;
    victims.insert(fleet.workers[0].name.clone(), now_ms());
    let frozen = fleet.workers[0].pid();
    signal(frozen, libc::SIGSTOP);
    tokio::time::sleep(LEASE_TTL + Duration::from_secs(2)).await;
    signal(frozen, libc::SIGCONT);

    // 3. Freeze Redis for more than twice the lease TTL, every worker alive: no job
    //    may be charged an attempt for it, or dead-lettered.
    progress(&fleet, &mut verifier, 40).await;
    fleet.redis.freeze();
    tokio::time::sleep(LEASE_TTL * 2 + Duration::from_secs(2)).await;
    fleet.redis.thaw();

    // 4. Another kill -9 and a replacement.
    progress(&fleet, &mut verifier, 40).await;
    victims.insert(fleet.workers[1].name.clone(), now_ms());
    fleet.workers[1].kill9();
    fleet.workers.remove(1);
    fleet.start_worker(&format!("w{next_worker}"));

    // 5. And another freeze/thaw of a worker.
    progress(&fleet, &mut verifier, 40).await;
    victims.insert(fleet.workers[1].name.clone(), now_ms());
    let frozen = fleet.workers[1].pid();
    signal(frozen, libc::SIGSTOP);
    tokio::time::sleep(LEASE_TTL + Duration::from_secs(2)).await;
    signal(frozen, libc::SIGCONT);

    progress(&fleet, &mut verifier, JOBS).await;
    assert_eq!(verifier.done(), JOBS);

    // Every job succeeded once: one result, a history that adds up.
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for (id, r) in &verifier.ended {
        assert_eq!(
            r.status,
            JobStatus::Succeeded,
            "job {id} did not succeed: {r:?}"
        );
        assert_eq!(
            r.attempts as usize,
            r.history.len(),
            "one history entry per attempt: {r:?}"
        );
        let successes = r
            .history
            .iter()
            .filter(|h| h.outcome == "succeeded")
            .count();
        assert_eq!(successes, 1, "exactly one result: {r:?}");
        assert_eq!(r.history.last().unwrap().outcome, "succeeded", "{r:?}");
        let answer = r.result.as_ref().and_then(|v| v.pointer("/output/answer"));
        let query = match r.spec.as_ref().map(|s| &s.payload) {
            Some(JobPayload::Research(research)) => research.query.clone(),
            other => panic!("job {id} is not the research job submitted: {other:?}"),
        };
        assert_eq!(
            answer.and_then(|a| a.as_str()),
            Some(query.as_str()),
            "the answer is the job's own: {r:?}"
        );
        for h in &r.history {
            *outcomes.entry(h.outcome.clone()).or_default() += 1;
            // The frozen Redis must not cost any job an attempt: only the workers
            // that were killed or frozen themselves may have lost one.
            let victim_attempt = victims
                .get(&h.worker)
                .is_some_and(|&fault_at| h.started_at <= fault_at);
            assert!(
                h.outcome == "succeeded" || victim_attempt,
                "job {id} was charged an attempt on {} that no kill or freeze of that \
                 worker explains: {r:?}",
                h.worker
            );
        }
    }
    let dead = fleet.queue.dead_count().await.unwrap();
    assert_eq!(dead, 0, "dead letters: {dead}\n{}", fleet.logs());
    eprintln!(
        "chaos: {JOBS} jobs in {:.1}s, attempt outcomes {outcomes:?}",
        started.elapsed().as_secs_f64()
    );

    // Stop the workers in order; their own keys (announcements) expire with them.
    for w in fleet.workers.iter_mut() {
        w.sigterm();
    }
    for w in fleet.workers.iter_mut() {
        w.assert_clean_exit();
    }

    // After the result TTL, nothing of any job is left. The listing indexes are emptied
    // by the index trim, which each worker runs on its reclaim tick: the workers are
    // gone, so it runs here.
    let mut conn = fleet.redis.conn();
    let deadline = Instant::now() + RESULT_TTL + Duration::from_secs(30);
    loop {
        fleet.queue.trim_indexes(1000).await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
        let left: Vec<&String> = keys.iter().filter(|k| !is_queue_level_key(k)).collect();
        if left.is_empty() {
            assert!(keys.len() <= 12, "only queue-level keys stay: {keys:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} keys outlived the result TTL, e.g. {:?}",
            left.len(),
            &left[..left.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Keys that belong to a queue, not to a job, and live as long as the queue does: the
/// fencing-token counter, the wake-up marker, reclaim's clock, and the set of worker
/// names (pruned by live workers as others die; see docs/ARCHITECTURE.md).
fn is_queue_level_key(key: &str) -> bool {
    // (the per-minute history is bounded: 8 days of minutes)
    [
        ":token",
        ":marker",
        ":reclaim_clock",
        ":workers",
        ":hist:cur",
        ":hist:log",
    ]
    .iter()
    .any(|suffix| key.ends_with(suffix))
}
