//! The queue's core promises as one routine over any Redis the settings name, so the
//! same body runs against one node, a Cluster, Sentinel and TLS (`tests/topologies.rs`).
//! It reads and writes through the queue's API only: no key is touched by hand, so it
//! cannot depend on where a key lives.

use std::time::Duration;

use fleet_shared::job::{JobSpec, QueueKind};
use fleet_shared::queue::{AttemptRecord, CancelOutcome, Fenced, Settlement};
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

/// Enqueue, fetch, complete (with a waiter told through pub/sub), fail and retry,
/// dead-letter, retry and purge dead letters, cancel, batches, idempotency keys.
pub async fn core_queue_operations(settings: &Settings) {
    let q = queue(settings, QueueKind::Research).await;
    // Leftovers of an earlier routine on the same Redis would change the counts.
    assert!(q.fetch("w", 100).await.unwrap().leases.is_empty());

    // Enqueue → fetch → complete; a waiter hears the end.
    let (id, existing) = q.enqueue(JobSpec::research("q1", "demo")).await.unwrap();
    assert!(!existing);
    let waiter = {
        let q = q.clone();
        let id = id.to_string();
        tokio::spawn(async move { q.wait_for_final(&id, Some(Duration::from_secs(30))).await })
    };
    let lease = q.fetch("w1", 10).await.unwrap().leases.remove(0);
    assert_eq!(lease.id, id.to_string());
    assert_eq!(
        q.complete(&lease, &json!({"output": {"answer": "42"}}).to_string())
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
    let first = q.fetch("w1", 10).await.unwrap().leases.remove(0);
    let error = json!({"class": "transient", "message": "flaky"});
    let retry = Settlement::Retry {
        delay: Duration::ZERO,
    };
    assert_eq!(
        q.fail(&first, retry, &error, &record(1, "transient"))
            .await
            .unwrap(),
        Fenced::Accepted
    );
    let second = q.fetch("w1", 10).await.unwrap().leases.remove(0);
    assert_eq!(second.attempt, 2);
    assert_eq!(
        q.fail(&first, Settlement::Dead, &error, &record(1, "transient"))
            .await
            .unwrap(),
        Fenced::Stale,
        "the first attempt's token is spent"
    );
    q.fail(&second, Settlement::Dead, &error, &record(2, "transient"))
        .await
        .unwrap();
    let dead = q.dead_list(0, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, id.to_string());
    assert_eq!(q.retry_dead(&[id.to_string()], 10).await.unwrap(), 1);
    let again = q.fetch("w1", 10).await.unwrap().leases.remove(0);
    assert_eq!(again.attempt, 1);
    q.complete(&again, "{}").await.unwrap();
    assert_eq!(
        q.job_record(&id.to_string()).await.unwrap().unwrap().status,
        JobStatus::Succeeded
    );

    // A dead letter purged ends failed.
    let (id, _) = q.enqueue(JobSpec::research("q3", "demo")).await.unwrap();
    let l = q.fetch("w1", 10).await.unwrap().leases.remove(0);
    q.fail(&l, Settlement::Dead, &error, &record(1, "permanent"))
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
    assert!(q.fetch("w1", 10).await.unwrap().leases.is_empty());
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
    for l in q.fetch("w1", 10).await.unwrap().leases {
        q.complete(&l, "{}").await.unwrap();
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
    let l = q.fetch("w1", 10).await.unwrap().leases;
    assert_eq!(l.len(), 1, "one job for one key");
    q.complete(&l[0], "{}").await.unwrap();

    // An expired lease is reclaimed and runs again.
    let mut short = fleet_shared::queue::QueueConfig::from_settings(settings, QueueKind::Research);
    short.lease_ttl = Duration::from_millis(200);
    let q2 =
        fleet_shared::queue::RedisQueue::with_connection(q.connection(), &settings.redis, short);
    let (id, _) = q2.enqueue(JobSpec::research("q6", "demo")).await.unwrap();
    let stalled = q2.fetch("w1", 10).await.unwrap().leases.remove(0);
    crate::harness::eventually("the lease to expire", Duration::from_secs(10), || async {
        (q2.reclaim_expired(10).await.unwrap() > 0).then_some(())
    })
    .await;
    let rerun = q2.fetch("w2", 10).await.unwrap().leases.remove(0);
    assert_eq!(rerun.id, id.to_string());
    assert_ne!(rerun.token, stalled.token);
    q2.complete(&rerun, "{}").await.unwrap();

    let counts = q.counts().await.unwrap();
    assert_eq!(counts.ready, 0, "{counts:?}");
}
