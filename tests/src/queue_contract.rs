//! The queue's core promises as one routine over any Redis the settings name, so the
//! same body runs against one node, a Cluster, Sentinel and TLS (`tests/topologies.rs`).
//! It reads and writes through the queue's API only: no key is touched by hand, so it
//! cannot depend on where a key lives. With `queue.shards` above 1 it runs over every
//! shard: jobs are fetched from all of them and each lease settled on its own shard, as
//! a worker does (queue/shards.rs).

use std::time::Duration;

use fleet_shared::job::{JobSpec, QueueKind};
use fleet_shared::queue::{AttemptRecord, CancelOutcome, Fenced, Lease, RedisQueue, Settlement};
use fleet_shared::results::JobStatus;
use fleet_shared::settings::Settings;
use serde_json::json;

use crate::harness::queue;

fn record(attempt: u32, outcome: &str) -> AttemptRecord {
    AttemptRecord {
        attempt,
        outcome: outcome.into(),
        ..Default::default()
    }
}

/// A lease and the shard it came from (where it is settled).
pub struct Held {
    pub shard: RedisQueue,
    pub lease: Lease,
}

/// Fetch up to `max` jobs from every shard of `q`, shard 0 first.
pub async fn fetch_all(q: &RedisQueue, worker: &str, max: usize) -> Vec<Held> {
    let mut held = Vec::new();
    for shard in q.shards() {
        let room = max - held.len();
        if room == 0 {
            break;
        }
        for lease in shard.fetch(worker, room).await.unwrap().leases {
            held.push(Held {
                shard: shard.clone(),
                lease,
            });
        }
    }
    held
}

/// The one job ready on any shard.
async fn fetch_one(q: &RedisQueue, worker: &str) -> Held {
    let mut held = fetch_all(q, worker, 10).await;
    assert_eq!(held.len(), 1, "one job ready");
    held.remove(0)
}

/// Enqueue, fetch, complete (with a waiter told through pub/sub), fail and retry,
/// dead-letter, retry and purge dead letters, cancel, batches, idempotency keys.
pub async fn core_queue_operations(settings: &Settings) {
    let q = queue(settings, QueueKind::Research).await;
    // Leftovers of an earlier routine on the same Redis would change the counts.
    assert!(fetch_all(&q, "w", 100).await.is_empty());

    // Enqueue → fetch → complete; a waiter hears the end.
    let (id, existing) = q.enqueue(JobSpec::research("q1", "demo")).await.unwrap();
    assert!(!existing);
    let waiter = {
        let q = q.clone();
        let id = id.to_string();
        tokio::spawn(async move { q.wait_for_final(&id, Some(Duration::from_secs(30))).await })
    };
    let Held { shard, lease } = fetch_one(&q, "w1").await;
    assert_eq!(lease.id, id.to_string());
    assert_eq!(
        shard
            .complete(&lease, &json!({"output": {"answer": "42"}}).to_string())
            .await
            .unwrap(),
        Fenced::Accepted
    );
    let done = waiter
        .await
        .unwrap()
        .unwrap()
        .expect("the waiter saw the end");
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.result.unwrap()["output"]["answer"], "42");

    // Fail → retry → fail dead → dead letter → retried → succeeds.
    let (id, _) = q.enqueue(JobSpec::research("q2", "demo")).await.unwrap();
    let Held {
        shard,
        lease: first,
    } = fetch_one(&q, "w1").await;
    let error = json!({"class": "transient", "message": "flaky"});
    let retry = Settlement::Retry {
        delay: Duration::ZERO,
    };
    assert_eq!(
        shard
            .fail(&first, retry, &error, &record(1, "transient"))
            .await
            .unwrap(),
        Fenced::Accepted
    );
    let second = fetch_one(&q, "w1").await.lease;
    assert_eq!(second.attempt, 2);
    assert_eq!(
        shard
            .fail(&first, Settlement::Dead, &error, &record(1, "transient"))
            .await
            .unwrap(),
        Fenced::Stale,
        "the first attempt's token is spent"
    );
    shard
        .fail(&second, Settlement::Dead, &error, &record(2, "transient"))
        .await
        .unwrap();
    let dead = q.dead_list(0, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, id.to_string());
    assert_eq!(q.retry_dead(&[id.to_string()], 10).await.unwrap(), 1);
    let again = fetch_one(&q, "w1").await;
    assert_eq!(again.lease.attempt, 1);
    again.shard.complete(&again.lease, "{}").await.unwrap();
    assert_eq!(
        q.job_record(&id.to_string()).await.unwrap().unwrap().status,
        JobStatus::Succeeded
    );

    // A dead letter purged ends failed.
    let (id, _) = q.enqueue(JobSpec::research("q3", "demo")).await.unwrap();
    let l = fetch_one(&q, "w1").await;
    l.shard
        .fail(&l.lease, Settlement::Dead, &error, &record(1, "permanent"))
        .await
        .unwrap();
    assert_eq!(q.purge_dead(&[], 10).await.unwrap(), 1);
    assert_eq!(
        q.job_record(&id.to_string()).await.unwrap().unwrap().status,
        JobStatus::Failed
    );

    // Cancel a queued job: it never runs.
    let (id, _) = q.enqueue(JobSpec::research("q4", "demo")).await.unwrap();
    assert_eq!(q.cancel(&id).await.unwrap(), CancelOutcome::Cancelled);
    assert!(fetch_all(&q, "w1", 10).await.is_empty());
    assert_eq!(
        q.job_record(&id.to_string()).await.unwrap().unwrap().status,
        JobStatus::Cancelled
    );

    // A batch is counted as its jobs end.
    let ids = q
        .enqueue_many(
            vec![
                JobSpec::research("b1", "demo"),
                JobSpec::research("b2", "demo"),
                JobSpec::research("b3", "demo"),
            ],
            Some("batch-1"),
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
    let held = fetch_all(&q, "w1", 10).await;
    assert_eq!(held.len(), 3);
    for h in held {
        h.shard.complete(&h.lease, "{}").await.unwrap();
    }
    let batch = q.batch_record("batch-1").await.unwrap().unwrap();
    assert_eq!(batch.total, 3);
    assert_eq!(batch.count(JobStatus::Succeeded), 3);

    // An idempotency key returns the job it made.
    let mut keyed = JobSpec::research("q5", "demo");
    keyed.options.idempotency_key = Some("key-1".into());
    let (a, existing_a) = q.enqueue(keyed.clone()).await.unwrap();
    let (b, existing_b) = q.enqueue(keyed).await.unwrap();
    assert!(!existing_a);
    assert!(existing_b);
    assert_eq!(a, b);
    let l = fetch_all(&q, "w1", 10).await;
    assert_eq!(l.len(), 1, "one job for one key");
    l[0].shard.complete(&l[0].lease, "{}").await.unwrap();

    // An expired lease is reclaimed and runs again.
    let mut short = fleet_shared::queue::QueueConfig::from_settings(settings, QueueKind::Research);
    short.lease_ttl = Duration::from_millis(200);
    let q2 =
        fleet_shared::queue::RedisQueue::with_connection(q.connection(), &settings.redis, short);
    let (id, _) = q2.enqueue(JobSpec::research("q6", "demo")).await.unwrap();
    let stalled = fetch_one(&q2, "w1").await;
    crate::harness::eventually("the lease to expire", Duration::from_secs(10), || async {
        (stalled.shard.reclaim_expired(10).await.unwrap() > 0).then_some(())
    })
    .await;
    let rerun = fetch_one(&q2, "w2").await;
    assert_eq!(rerun.lease.id, id.to_string());
    assert_ne!(rerun.lease.token, stalled.lease.token);
    rerun.shard.complete(&rerun.lease, "{}").await.unwrap();

    let counts = q.counts().await.unwrap();
    assert_eq!(counts.ready, 0, "{counts:?}");
}
