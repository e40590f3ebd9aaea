//! Redis Cluster faults under load (issue 14, README "Scaling out"): two worker
//! processes drain 1,000 jobs from a 3+3 Cluster while a producer keeps enqueueing
//! one job at a time, and mid-batch
//! - the primary serving the queue's slot is killed with SIGKILL and its replica
//!   promoted by the Cluster's own failover, or
//! - `redis-cli --cluster reshard` moves the slot range holding the queue's slot to
//!   another primary (keys migrated while scripts run: ASK, MOVED, TRYAGAIN).
//!
//! The workers go on without a restart; every acknowledged job ends with exactly one
//! result. With `durability = "none"` a failover may lose what the replica had not
//! received yet; the test counts it and checks it is only what was acknowledged in
//! the moment before the kill.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_shared::job::{JobId, JobSpec, QueueKind};
use fleet_shared::queue::{QueueConfig, QueueError, RedisQueue};
use fleet_shared::results::JobStatus;
use fleet_tests::fixture::Fleet;
use fleet_tests::harness::{eventually, settings};
use fleet_tests::topology::RedisCluster;

/// Jobs queued before the fault (one batch) and enqueued one at a time across it.
const UP_FRONT: usize = 500;
const PRODUCED: usize = 500;
/// The producer stops to let the fault happen after this many acknowledged jobs.
const PRODUCED_BEFORE_FAULT: usize = 200;

enum Fault {
    KillPrimary,
    Reshard,
}

struct Outcome {
    /// Acknowledged jobs whose record is gone after the fault.
    lost: Vec<JobId>,
    /// How long before the fault each lost job was acknowledged.
    lost_ack_ages: Vec<Duration>,
    /// Runs of the agent beyond one per job (a settle lost with the primary, or a lease
    /// that could not be renewed during the failover, runs the job again).
    reruns: usize,
    acknowledged: usize,
}

/// Overrides shared by the workers (as `FLEET_…` env) and the test's own queue.
fn overrides(durability: &str) -> Vec<(&'static str, String)> {
    vec![
        ("QUEUE__DURABILITY", durability.to_string()),
        ("QUEUE__LEASE_TTL_SECS", "5".into()),
        ("QUEUE__RECLAIM_INTERVAL_MS", "200".into()),
        ("REDIS__RESPONSE_TIMEOUT_MS", "1000".into()),
        ("REDIS__CONNECT_TIMEOUT_MS", "500".into()),
    ]
}

async fn run_under_fault(durability: &str, fault: Fault) -> Outcome {
    let mut cluster = RedisCluster::start();
    let mut fleet = Fleet::start(
        r#"q=$(cat); printf '%s\n' "$q" >> {dir}/runs; printf '%s' "$q""#,
        "",
    )
    .await;
    let mut env: Vec<(&str, String)> = vec![
        ("FLEET_REDIS__URL", cluster.cluster_url()),
        ("FLEET_WORKER__CONCURRENCY", "8".into()),
    ];
    let over = overrides(durability);
    let prefixed: Vec<(String, String)> = over
        .iter()
        .map(|(k, v)| (format!("FLEET_{k}"), v.clone()))
        .collect();
    env.extend(prefixed.iter().map(|(k, v)| (k.as_str(), v.clone())));
    fleet.start_worker_with_env("w1", &env);
    fleet.start_worker_with_env("w2", &env);

    let over_ref: Vec<(&str, &str)> = over.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = settings(&cluster.cluster_url(), &over_ref);
    let mut config = QueueConfig::from_settings(&s, QueueKind::Research);
    config.give_up_after = Some(Duration::from_secs(90));
    let q = RedisQueue::open(&s.redis, config).await.unwrap();
    let slot = cluster.keyslot(&q.keys().wait);
    let owner = cluster.slot_owner(slot).expect("the slot has one primary");
    let mut reshard_to = None;
    if let Fault::Reshard = fault {
        // redis-cli takes a source's lowest slots first. So that the mid-batch
        // reshard moves a short range starting at the queue's slot, the owner's
        // slots below it go elsewhere first, before any job exists.
        let (first, _) = cluster.slot_range(slot);
        let to = (0..cluster.nodes.len())
            .find(|&i| i != owner && cluster.slot_owner(0) == Some(i))
            .expect("another primary");
        if first < slot {
            cluster.reshard(owner, to, slot - first);
        }
        assert_eq!(cluster.slot_owner(slot), Some(owner));
        reshard_to = Some(to);
    }

    let specs: Vec<JobSpec> = (0..UP_FRONT)
        .map(|i| JobSpec::research(format!("up front {i}"), "test"))
        .collect();
    let acked: Arc<Mutex<Vec<(JobId, Instant)>>> = Arc::new(Mutex::new(
        q.enqueue_many(specs, Some("load"))
            .await
            .unwrap()
            .into_iter()
            .map(|id| (id, Instant::now()))
            .collect(),
    ));

    // The producer: one job at a time, each with an idempotency key so that a retry
    // of a call whose reply was lost makes no second job. It pauses once, for the
    // test to start the fault, and goes on at once while the fault happens.
    let (paused_tx, paused_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let producer = {
        let q = q.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut pause = Some((paused_tx, go_rx));
            for i in 0..PRODUCED {
                if i == PRODUCED_BEFORE_FAULT
                    && let Some((paused, go)) = pause.take()
                {
                    paused.send(()).unwrap();
                    go.await.unwrap();
                }
                let mut spec = JobSpec::research(format!("produced {i}"), "test");
                spec.options.idempotency_key = Some(format!("produced-{i}"));
                let id = loop {
                    match q.enqueue(spec.clone()).await {
                        Ok((id, _)) => break id,
                        Err(QueueError::NotDurable(_)) | Err(QueueError::Unreachable { .. }) => {}
                        Err(e) => panic!("enqueue {i}: not a failover error: {e}"),
                    }
                };
                acked.lock().unwrap().push((id, Instant::now()));
            }
        })
    };

    paused_rx.await.unwrap();
    let finished =
        |q: RedisQueue| async move { fleet_tests::harness::batch_finished(&q, "load").await };
    eventually(
        "a fifth of the jobs queued up front done",
        Duration::from_secs(120),
        || {
            let q = q.clone();
            async move { (finished(q).await >= (UP_FRONT / 5) as u64).then_some(()) }
        },
    )
    .await;
    go_tx.send(()).unwrap();
    let fault_at = Instant::now();
    match fault {
        Fault::KillPrimary => {
            cluster.nodes[owner].kill9();
            let new = cluster.wait_slot_moved_from(slot, owner, Duration::from_secs(60));
            eprintln!(
                "slot {slot}: primary on port {} killed, replica on port {} promoted after {:?}",
                cluster.nodes[owner].port,
                cluster.nodes[new].port,
                fault_at.elapsed()
            );
            // The old primary's host comes back: it rejoins as the new primary's replica.
            cluster.nodes[owner].restart();
            cluster.wait_ok();
        }
        Fault::Reshard => {
            let to = reshard_to.expect("chosen above");
            // The queue's slot and the two after it.
            let count = 3;
            let child = cluster.start_reshard(owner, to, count, 5);
            let out = tokio::task::spawn_blocking(move || child.wait_with_output())
                .await
                .unwrap()
                .unwrap();
            assert!(
                out.status.success(),
                "reshard failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(cluster.slot_owner(slot), Some(to), "the queue's slot moved");
            eprintln!(
                "slots {slot}.. ({count}) moved from port {} to port {} in {:?}",
                cluster.nodes[owner].port,
                cluster.nodes[to].port,
                fault_at.elapsed()
            );
        }
    }
    let done_at_fault_end = finished(q.clone()).await;
    assert!(
        done_at_fault_end < UP_FRONT as u64,
        "the fault ended mid-batch ({done_at_fault_end} of {UP_FRONT} done)"
    );
    producer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), UP_FRONT + PRODUCED);
    let ids: Vec<JobId> = acked.iter().map(|(id, _)| *id).collect();

    // Every acknowledged job ends, or is gone for good (lost with the primary): the
    // queue holds nothing ready, running or delayed, and no job is anything but
    // succeeded or absent.
    let statuses = eventually(
        "every acknowledged job to end",
        Duration::from_secs(180),
        || {
            let q = q.clone();
            let ids = ids.clone();
            async move {
                let counts = q.counts().await.ok()?;
                if counts.ready + counts.running + counts.delayed > 0 {
                    return None;
                }
                let statuses = q.job_statuses(&ids).await.ok()?;
                statuses
                    .iter()
                    .all(|s| matches!(s, None | Some(JobStatus::Succeeded)))
                    .then_some(statuses)
            }
        },
    )
    .await;

    for w in fleet.workers.iter_mut() {
        assert!(
            w.is_running(),
            "worker {} stopped:\n{}",
            w.name,
            w.log_text()
        );
    }
    let mut lost = Vec::new();
    let mut lost_ack_ages = Vec::new();
    for ((id, acked_at), status) in acked.iter().zip(&statuses) {
        match status {
            None => {
                lost.push(*id);
                lost_ack_ages.push(fault_at.saturating_duration_since(*acked_at));
            }
            Some(_) => {
                let r = q.job_record(&id.to_string()).await.unwrap().unwrap();
                let successes = r
                    .history
                    .iter()
                    .filter(|h| h.outcome == "succeeded")
                    .count();
                assert_eq!(successes, 1, "job {id}: {:?}", r.history);
                assert!(r.result.is_some(), "job {id} has its result");
            }
        }
    }
    // The batch record's counters agree with the jobs: every script that moved a
    // job of the batch also counted it, even when a slot moved or a primary died.
    let lost_up_front = statuses[..UP_FRONT].iter().filter(|s| s.is_none()).count();
    let batch = q
        .batch_record("load")
        .await
        .unwrap()
        .expect("the batch record");
    assert_eq!(batch.total, UP_FRONT as u64);
    assert_eq!(
        batch.count(JobStatus::Succeeded),
        (UP_FRONT - lost_up_front) as u64,
        "batch counters: {:?}",
        batch.counts
    );
    for status in [JobStatus::Queued, JobStatus::Running, JobStatus::Retrying] {
        assert_eq!(batch.count(status), 0, "batch counters: {:?}", batch.counts);
    }

    // What the workers met, for the test's output: the refusals they waited out.
    for w in &fleet.workers {
        let log = w.log_text();
        let retried: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("retrying") || l.contains("ERROR"))
            .collect();
        eprintln!(
            "worker {}: {} retried Redis calls or errors; first: {}",
            w.name,
            retried.len(),
            retried
                .first()
                .map(|l| without_colours(l))
                .unwrap_or_default()
        );
    }
    let runs = fleet.lines("runs").len();
    Outcome {
        reruns: runs.saturating_sub(acked.len() - lost.len()),
        lost,
        lost_ack_ages,
        acknowledged: acked.len(),
    }
}

/// A log line without its terminal colour codes (`ESC [ … m`).
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The primary serving the queue's slot is SIGKILLed mid-batch; the Cluster promotes
/// its replica; with `durability = "replica"` no acknowledged job is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_primary_killed_mid_batch_loses_no_acknowledged_job_with_replica_durability() {
    let out = run_under_fault("replica", Fault::KillPrimary).await;
    eprintln!(
        "replica durability: {} acknowledged, {} lost, {} extra runs",
        out.acknowledged,
        out.lost.len(),
        out.reruns
    );
    assert!(
        out.lost.is_empty(),
        "acknowledged jobs lost: {:?}",
        out.lost
    );
}

/// The same with `durability = "none"`: what the replica had not received when its
/// primary died is lost (README "Durability"): only jobs acknowledged in the moment
/// before the kill, never one acknowledged earlier or after the failover.
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_primary_killed_mid_batch_loses_at_most_the_last_moment_without_durability() {
    let out = run_under_fault("none", Fault::KillPrimary).await;
    eprintln!(
        "no durability: {} acknowledged, {} lost (acknowledged {:?} before the kill), {} extra runs",
        out.acknowledged,
        out.lost.len(),
        out.lost_ack_ages,
        out.reruns
    );
    for age in &out.lost_ack_ages {
        assert!(
            *age < Duration::from_secs(1),
            "a job acknowledged {age:?} before the kill was lost"
        );
    }
}

/// The slot range holding the queue's slot moves to another primary mid-batch
/// (`redis-cli --cluster reshard`): no job stuck, none lost, every job one result.
#[tokio::test(flavor = "multi_thread")]
async fn resharding_the_queues_slot_mid_batch_loses_and_strands_no_job() {
    let out = run_under_fault("none", Fault::Reshard).await;
    eprintln!(
        "reshard: {} acknowledged, {} lost, {} extra runs",
        out.acknowledged,
        out.lost.len(),
        out.reruns
    );
    assert!(
        out.lost.is_empty(),
        "acknowledged jobs lost: {:?}",
        out.lost
    );
}

/// A lease that expires while its slot migrates is reclaimed, not stranded. The old
/// `reclaim_expired` found the expired job's record by reading `active` and touched
/// it undeclared: on the migrating primary, with the record already moved, Redis
/// stopped the script at that access ("Script attempted to access a non local key")
/// after it had taken the job off `active` — the job stayed `running` with no lease,
/// and no reclaim would ever see it again. Now the expired IDs are read first and the
/// reclaim declares every key it touches, so Redis refuses it whole (TRYAGAIN, ASK)
/// until the slot has moved, and the next pass reclaims the job.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_expiring_while_its_slot_migrates_is_reclaimed_not_stranded() {
    use fleet_shared::queue::{AttemptRecord, Settlement};
    use redis::AsyncCommands;
    let cluster = RedisCluster::start();
    let s = settings(
        &cluster.cluster_url(),
        &[("QUEUE__RESEARCH__MAX_ATTEMPTS", "1")],
    );
    let mut config = QueueConfig::from_settings(&s, QueueKind::Research);
    config.give_up_after = Some(Duration::from_secs(1));
    let q = RedisQueue::open(&s.redis, config).await.unwrap();
    let k = q.keys().clone();
    let error = serde_json::json!({"class": "permanent", "message": "x"});

    // Every key the old script declared exists, so Redis would let it run: a dead
    // letter, a queued job, the marker, the reclaim clock, and the lease (expired).
    let (dead, _) = q.enqueue(JobSpec::research("dead", "test")).await.unwrap();
    let lease = q.fetch("w", 1).await.unwrap().leases.remove(0);
    q.fail(&lease, Settlement::Dead, &error, &AttemptRecord::default())
        .await
        .unwrap();
    let (job, _) = q
        .enqueue(JobSpec::research("its lease expires", "test"))
        .await
        .unwrap();
    let leased = q.fetch("w", 1).await.unwrap().leases.remove(0);
    assert_eq!(leased.id, job.to_string());
    q.enqueue(JobSpec::research("queued", "test"))
        .await
        .unwrap();
    assert_eq!(q.reclaim_expired(10).await.unwrap(), 0);
    let mut conn = q.connection();
    let _: () = conn.zadd(&k.active, job.to_string(), 0).await.unwrap();
    for key in [&k.active, &k.wait, &k.marker, &k.dead, &k.reclaim_clock] {
        let exists: bool = conn.exists(key).await.unwrap();
        assert!(exists, "{key} exists");
    }
    assert!(q.job_record(&dead.to_string()).await.unwrap().is_some());

    // The slot starts moving; the job's record is among the keys already moved.
    let slot = cluster.keyslot(&k.wait);
    let from = cluster.slot_owner(slot).unwrap();
    let to = (0..cluster.nodes.len())
        .find(|&i| i != from && cluster.slot_owner(0) == Some(i))
        .unwrap();
    cluster.begin_migration(slot, from, to);
    cluster.migrate_keys(from, to, &[k.job(&job.to_string())]);

    // A reclaim pass now is refused whole (TRYAGAIN until the slot has moved: given
    // up after a few seconds here) or succeeds; it changes nothing by halves.
    match tokio::time::timeout(Duration::from_secs(3), q.reclaim_expired(10)).await {
        Err(_) | Ok(Ok(_)) | Ok(Err(QueueError::Unreachable { .. })) => {}
        Ok(Err(e)) => panic!("a reclaim during the migration failed: {e}"),
    }
    cluster.finish_migration(slot, from, to);

    eventually("the expired job reclaimed", Duration::from_secs(30), || {
        let q = q.clone();
        let id = job.to_string();
        async move {
            let _ = q.reclaim_expired(10).await;
            let r = q.job_record(&id).await.ok()??;
            (r.status == JobStatus::Dead).then_some(r)
        }
    })
    .await;
    let active: Vec<String> = conn.zrange(&k.active, 0, -1).await.unwrap();
    assert!(active.is_empty(), "{active:?}");
}
