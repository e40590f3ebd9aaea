//! The listing indexes and history counters the queue scripts keep (queue/index.rs),
//! against a real redis-server: a job is in exactly the index of its status after every
//! transition, filtered pages are exact however many jobs the bound lets a page look
//! at, expired jobs leave the indexes, and every transition is counted in its minute.

use std::collections::BTreeSet;
use std::time::Duration;

use fleet_shared::job::{JobSpec, QueueKind};
use fleet_shared::queue::keys::INDEXED_STATUSES;
use fleet_shared::queue::listing::{JobFilter, Order};
use fleet_shared::queue::{AttemptRecord, Completion, RedisQueue, Settlement};
use fleet_shared::results::JobStatus;
use fleet_tests::RedisServer;
use fleet_tests::harness::{eventually, queue, settings};
use redis::AsyncCommands;
use serde_json::json;

fn spec(q: &str, agent: &str) -> JobSpec {
    JobSpec::research(q, agent)
}

fn record(attempt: u32) -> AttemptRecord {
    AttemptRecord {
        attempt,
        worker: "w".into(),
        outcome: "transient".into(),
        ..Default::default()
    }
}

/// The status indexes that hold `id`.
async fn indexes_of(q: &RedisQueue, id: &str) -> Vec<&'static str> {
    let mut conn = q.connection();
    let mut out = Vec::new();
    for status in INDEXED_STATUSES {
        let score: Option<f64> = conn
            .zscore(q.keys().status_index(status), id)
            .await
            .unwrap();
        if score.is_some() {
            out.push(status);
        }
    }
    out
}

async fn open(redis: &RedisServer, overrides: &[(&str, &str)]) -> RedisQueue {
    queue(&settings(&redis.url(), overrides), QueueKind::Research).await
}

/// Every job matching `filter`, following cursors page by page; checks that no page
/// holds more than `limit` and that the pages do not overlap.
async fn all_pages(
    q: &RedisQueue,
    filter: &JobFilter,
    order: Order,
    limit: usize,
    scan_max: usize,
) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    let mut any_truncated = false;
    loop {
        let page = q
            .list_jobs(filter, order, cursor.as_deref(), limit, scan_max)
            .await
            .unwrap();
        assert!(page.jobs.len() <= limit);
        any_truncated |= page.truncated;
        out.extend(page.jobs.into_iter().map(|j| j.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return (out, any_truncated),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_is_in_exactly_the_index_of_its_status_after_every_transition() {
    let redis = RedisServer::start();
    let q = open(&redis, &[("QUEUE__RESEARCH__MAX_ATTEMPTS", "3")]).await;
    let error = json!({"class": "transient", "message": "x"});
    let (id, _) = q.enqueue(spec("walk", "demo")).await.unwrap();
    let id = id.to_string();
    assert_eq!(indexes_of(&q, &id).await, ["queued"]);

    let lease = q.fetch("w", 1).await.unwrap().leases.remove(0);
    assert_eq!(indexes_of(&q, &id).await, ["running"]);
    q.fail(
        &lease,
        Settlement::Retry {
            delay: Duration::ZERO,
        },
        &error,
        &record(1),
    )
    .await
    .unwrap();
    assert_eq!(indexes_of(&q, &id).await, ["retrying"]);
    // one fetch promotes it (retrying -> queued) and leases it (-> running)
    let lease = q.fetch("w", 1).await.unwrap().leases.remove(0);
    assert_eq!(indexes_of(&q, &id).await, ["running"]);
    q.fail(&lease, Settlement::Dead, &error, &record(2))
        .await
        .unwrap();
    assert_eq!(indexes_of(&q, &id).await, ["dead"]);
    assert_eq!(
        q.retry_dead(std::slice::from_ref(&id), 10).await.unwrap(),
        1
    );
    assert_eq!(indexes_of(&q, &id).await, ["queued"]);
    let lease = q.fetch("w", 1).await.unwrap().leases.remove(0);
    q.fail(&lease, Settlement::Release, &error, &record(1))
        .await
        .unwrap();
    assert_eq!(indexes_of(&q, &id).await, ["queued"]);
    let lease = q.fetch("w", 1).await.unwrap().leases.remove(0);
    // a lost lease: back to queued by reclaim
    let mut conn = q.connection();
    let _: () = conn.zadd(&q.keys().active, &id, 0).await.unwrap();
    assert_eq!(q.reclaim_expired(10).await.unwrap(), 1);
    assert_eq!(indexes_of(&q, &id).await, ["queued"]);
    let lease2 = q.fetch("w", 1).await.unwrap().leases.remove(0);
    assert_ne!(lease.token, lease2.token);
    q.complete(&lease2, r#"{"answer":"ok"}"#).await.unwrap();
    assert_eq!(indexes_of(&q, &id).await, ["succeeded"]);

    // cancelled while queued, and while retrying
    let (c1, _) = q.enqueue(spec("cancel me", "demo")).await.unwrap();
    q.cancel(&c1).await.unwrap();
    assert_eq!(indexes_of(&q, &c1.to_string()).await, ["cancelled"]);
    let (c2, _) = q.enqueue(spec("retry then cancel", "demo")).await.unwrap();
    let lease = q.fetch("w", 10).await.unwrap().leases.remove(0);
    assert_eq!(
        lease.id,
        c2.to_string(),
        "the cancelled job is dropped, not leased"
    );
    q.fail(
        &lease,
        Settlement::Retry {
            delay: Duration::from_secs(3600),
        },
        &error,
        &record(1),
    )
    .await
    .unwrap();
    q.cancel(&c2).await.unwrap();
    assert_eq!(indexes_of(&q, &c2.to_string()).await, ["cancelled"]);

    // dead, then purged: failed
    let (d, _) = q.enqueue(spec("to purge", "demo")).await.unwrap();
    let lease = q.fetch("w", 1).await.unwrap().leases.remove(0);
    q.fail(&lease, Settlement::Dead, &error, &record(1))
        .await
        .unwrap();
    assert_eq!(q.purge_dead(&[d.to_string()], 10).await.unwrap(), 1);
    assert_eq!(indexes_of(&q, &d.to_string()).await, ["failed"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn filtered_pages_are_exact_past_the_scan_bound() {
    let redis = RedisServer::start();
    let q = open(&redis, &[]).await;
    // 5,000 jobs: two batches of 2,000 (agents alternating), 1,000 alone
    let mut batch_ids = Vec::new();
    let mut ids = Vec::new();
    for b in 0..2 {
        let batch = uuid::Uuid::now_v7().to_string();
        let specs = (0..2000)
            .map(|n| {
                spec(
                    &format!("b{b} q{n}"),
                    if n % 2 == 0 { "red" } else { "blue" },
                )
            })
            .collect();
        ids.extend(q.enqueue_many(specs, Some(&batch)).await.unwrap());
        batch_ids.push(batch);
    }
    let specs = (0..1000).map(|n| spec(&format!("q{n}"), "red")).collect();
    ids.extend(q.enqueue_many(specs, None).await.unwrap());
    let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    // 700 run: 500 succeed, 200 are dead-lettered
    let leases = q.fetch("w", 700).await.unwrap().leases;
    assert_eq!(leases.len(), 700);
    let error = json!({"class": "permanent", "message": "no"});
    let completions: Vec<Completion> = leases[..500]
        .iter()
        .map(|l| Completion {
            id: l.id.clone(),
            token: l.token.clone(),
            result_json: r#"{"answer":"ok"}"#.into(),
            staged: false,
            cost_usd: 0.0,
        })
        .collect();
    q.complete_many(&completions).await.unwrap();
    for l in &leases[500..] {
        q.fail(l, Settlement::Dead, &error, &record(1))
            .await
            .unwrap();
    }
    let succeeded: BTreeSet<String> = leases[..500].iter().map(|l| l.id.clone()).collect();
    let dead: BTreeSet<String> = leases[500..].iter().map(|l| l.id.clone()).collect();
    // 150 more stay running: their index is the lease set (`active`, scored by expiry)
    let running_leases = q.fetch("w", 150).await.unwrap().leases;
    assert_eq!(running_leases.len(), 150);
    let running: BTreeSet<String> = running_leases.iter().map(|l| l.id.clone()).collect();

    let scan_max = 100;
    let exact = |f: JobFilter, order: Order, limit: usize| {
        let q = q.clone();
        async move {
            let (got, truncated) = all_pages(&q, &f, order, limit, scan_max).await;
            assert!(
                !truncated,
                "a filter an index answers alone is never truncated"
            );
            got
        }
    };
    // by status, oldest first: every succeeded job once, in ID order
    let by_status = exact(
        JobFilter {
            statuses: vec![JobStatus::Succeeded],
            ..Default::default()
        },
        Order::OldestFirst,
        70,
    )
    .await;
    assert_eq!(by_status, succeeded.iter().cloned().collect::<Vec<_>>());
    // two statuses, newest first: the union
    let both = exact(
        JobFilter {
            statuses: vec![JobStatus::Dead, JobStatus::Succeeded],
            ..Default::default()
        },
        Order::NewestFirst,
        250,
    )
    .await;
    let mut union: Vec<String> = succeeded.union(&dead).cloned().collect();
    union.reverse();
    assert_eq!(both, union);
    // queued: the 4,150 that did not run
    let queued = exact(
        JobFilter {
            statuses: vec![JobStatus::Queued],
            ..Default::default()
        },
        Order::OldestFirst,
        1000,
    )
    .await;
    assert_eq!(queued.len(), 4150);
    // running, in pages smaller than the set, both ways, alone and beside another status
    for order in [Order::OldestFirst, Order::NewestFirst] {
        let got = exact(
            JobFilter {
                statuses: vec![JobStatus::Running],
                ..Default::default()
            },
            order,
            40,
        )
        .await;
        let mut want: Vec<String> = running.iter().cloned().collect();
        if order == Order::NewestFirst {
            want.reverse();
        }
        assert_eq!(got, want);
    }
    let running_or_dead = exact(
        JobFilter {
            statuses: vec![JobStatus::Running, JobStatus::Dead],
            ..Default::default()
        },
        Order::OldestFirst,
        60,
    )
    .await;
    assert_eq!(
        running_or_dead,
        running.union(&dead).cloned().collect::<Vec<_>>()
    );
    // by batch, by agent
    let batch0 = exact(
        JobFilter {
            batch: Some(batch_ids[0].clone()),
            ..Default::default()
        },
        Order::OldestFirst,
        300,
    )
    .await;
    assert_eq!(batch0, ids[..2000].to_vec());
    let blue = exact(
        JobFilter {
            agent: Some("blue".into()),
            ..Default::default()
        },
        Order::NewestFirst,
        500,
    )
    .await;
    assert_eq!(blue.len(), 2000);
    // by time range: everything from the 1,234th job's millisecond on, before the
    // 4,321st's
    let ms = |i: usize| {
        ids[i]
            .parse::<fleet_shared::job::JobId>()
            .unwrap()
            .submitted_ms()
    };
    let (since, until) = (ms(1234), ms(4321));
    let in_range: Vec<String> = ids
        .iter()
        .filter(|i| {
            (since..until).contains(
                &i.parse::<fleet_shared::job::JobId>()
                    .unwrap()
                    .submitted_ms(),
            )
        })
        .cloned()
        .collect();
    let ranged = exact(
        JobFilter {
            since_ms: Some(since),
            until_ms: Some(until),
            ..Default::default()
        },
        Order::OldestFirst,
        400,
    )
    .await;
    assert_eq!(ranged, in_range);
    // every job, no filter
    let everything = exact(JobFilter::default(), Order::OldestFirst, 1000).await;
    assert_eq!(everything, ids);

    // two conditions: the second is checked on the records, at most `scan_max` entries
    // a page; pages cut short say so and the cursors still reach every match
    // (the dead letters are the 501st to 700th jobs of the first batch: the first
    // pages look at succeeded jobs only)
    let filter = JobFilter {
        batch: Some(batch_ids[0].clone()),
        statuses: vec![JobStatus::Dead],
        ..Default::default()
    };
    let (got, truncated) = all_pages(&q, &filter, Order::OldestFirst, 50, scan_max).await;
    assert!(truncated, "pages with no match yet stop at the bound");
    assert_eq!(got, dead.iter().cloned().collect::<Vec<_>>());
    let filter = JobFilter {
        batch: Some(batch_ids[1].clone()),
        statuses: vec![JobStatus::Queued],
        ..Default::default()
    };
    let (got, _) = all_pages(&q, &filter, Order::NewestFirst, 50, scan_max).await;
    let mut want = ids[2000..4000].to_vec();
    want.reverse();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_whose_records_expired_leave_the_indexes() {
    let redis = RedisServer::start();
    let q = open(&redis, &[]).await;
    let batch = uuid::Uuid::now_v7().to_string();
    let specs = (0..3).map(|n| spec(&format!("q{n}"), "demo")).collect();
    let ids: Vec<String> = q
        .enqueue_many(specs, Some(&batch))
        .await
        .unwrap()
        .iter()
        .map(|i| i.to_string())
        .collect();
    let leases = q.fetch("w", 2).await.unwrap().leases;
    for l in &leases {
        q.complete(l, r#"{"answer":"ok"}"#).await.unwrap();
    }
    // the third is cancelled while queued: its record lives on until fetch drops its ID
    q.cancel(&ids[2].parse().unwrap()).await.unwrap();
    let mut conn = q.connection();
    let ended: Vec<String> = conn.zrange(q.keys().ended_index(), 0, -1).await.unwrap();
    assert_eq!(ended.len(), 3, "{ended:?}");
    assert!(
        ended
            .iter()
            .all(|e| e.contains("agent:demo") && e.contains(&format!("batch:{batch}"))),
        "{ended:?}"
    );

    // Not due yet (the result TTL has not passed): nothing is trimmed.
    assert_eq!(q.trim_indexes(100).await.unwrap(), 0);

    // The first record expires; listing skips its entry before the trim runs.
    let _: () = conn.pexpire(q.keys().job(&ids[0]), 1).await.unwrap();
    eventually("the record expired", Duration::from_secs(5), || {
        let mut conn = q.connection();
        let key = q.keys().job(&ids[0]);
        async move { (!conn.exists::<_, bool>(key).await.unwrap()).then_some(()) }
    })
    .await;
    let by_batch = JobFilter {
        batch: Some(batch.clone()),
        ..Default::default()
    };
    let page = q
        .list_jobs(&by_batch, Order::OldestFirst, None, 10, 100)
        .await
        .unwrap();
    let listed: Vec<&str> = page.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(listed, [ids[1].as_str(), ids[2].as_str()]);

    // Make every ended entry due (as if the result TTL had passed): the trim takes out
    // the one whose record is gone, everywhere, and looks again later at the cancelled
    // one whose record lives.
    for e in &ended {
        let _: () = conn.zadd(q.keys().ended_index(), e, 0).await.unwrap();
    }
    assert_eq!(q.trim_indexes(100).await.unwrap(), 1);
    assert!(indexes_of(&q, &ids[0]).await.is_empty());
    for ix in ["agent:demo".to_string(), format!("batch:{batch}")] {
        let members: Vec<String> = conn.zrange(q.keys().index(&ix), 0, -1).await.unwrap();
        assert_eq!(members, ids[1..].to_vec(), "{ix}");
    }
    assert_eq!(indexes_of(&q, &ids[1]).await, ["succeeded"]);
    assert_eq!(indexes_of(&q, &ids[2]).await, ["cancelled"]);
    let left: Vec<(String, f64)> = conn
        .zrange_withscores(q.keys().ended_index(), 0, -1)
        .await
        .unwrap();
    assert_eq!(left.len(), 2);
    let cancelled = left.iter().find(|(e, _)| e.starts_with(&ids[2])).unwrap();
    assert!(
        cancelled.1 > 0.0,
        "the living record's entry waits another TTL"
    );
    // The trim bounds its work: one entry per call here.
    let _: () = conn.del(q.keys().job(&ids[1])).await.unwrap();
    let _: () = conn.del(q.keys().job(&ids[2])).await.unwrap();
    for (e, _) in &left {
        let _: () = conn.zadd(q.keys().ended_index(), e, 0).await.unwrap();
    }
    assert_eq!(q.trim_indexes(1).await.unwrap(), 1);
    assert_eq!(q.trim_indexes(1).await.unwrap(), 1);
    assert_eq!(q.trim_indexes(1).await.unwrap(), 0);
    let agent: usize = conn.zcard(q.keys().index("agent:demo")).await.unwrap();
    assert_eq!(agent, 0, "emptied indexes are gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_transition_is_counted_in_its_minute_and_old_minutes_roll_into_the_log() {
    let redis = RedisServer::start();
    let q = open(&redis, &[("QUEUE__RESEARCH__MAX_ATTEMPTS", "3")]).await;
    let error = json!({"class": "transient", "message": "x"});
    let specs = (0..4).map(|n| spec(&format!("q{n}"), "demo")).collect();
    q.enqueue_many(specs, None).await.unwrap();
    let leases = q.fetch("w", 4).await.unwrap().leases;
    q.complete_many(&[Completion {
        id: leases[0].id.clone(),
        token: leases[0].token.clone(),
        result_json: r#"{"answer":"ok","cost_usd":0.25}"#.into(),
        staged: false,
        cost_usd: 0.25,
    }])
    .await
    .unwrap();
    q.fail(
        &leases[1],
        Settlement::Retry {
            delay: Duration::ZERO,
        },
        &error,
        &record(1),
    )
    .await
    .unwrap();
    q.fail(&leases[2], Settlement::Dead, &error, &record(1))
        .await
        .unwrap();
    let mut conn = q.connection();
    let _: () = conn.zadd(&q.keys().active, &leases[3].id, 0).await.unwrap();
    assert_eq!(q.reclaim_expired(10).await.unwrap(), 1);
    assert_eq!(q.retry_dead(&[leases[2].id.clone()], 10).await.unwrap(), 1);

    let total = |minutes: &[fleet_shared::queue::index::HistoryMinute]| {
        let mut t = fleet_shared::queue::index::HistoryMinute::default();
        minutes.iter().for_each(|m| t.add(m));
        t
    };
    // Everything happened within a minute or two (Redis' clock): sum what is there.
    let now: (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let now_ms = now.0 * 1000;
    let minutes = q.history(now_ms - 180_000, now_ms + 60_000).await.unwrap();
    let t = total(&minutes);
    assert_eq!(
        (t.enqueued, t.succeeded, t.failed, t.dead, t.retried),
        (4, 1, 3, 1, 3),
        "{minutes:?}"
    );
    assert!((t.cost_usd - 0.25).abs() < 1e-9, "{minutes:?}");

    // The current minute's hash, made to look two minutes old (no waiting for a
    // minute to pass): the next count rolls it into the log, and a log entry older
    // than 8 days is trimmed by that roll.
    let cur_minute: u64 = conn
        .hget(q.keys().history_current(), "minute")
        .await
        .unwrap();
    let old_minute = cur_minute - 120_000;
    let _: () = conn
        .hset(q.keys().history_current(), "minute", old_minute)
        .await
        .unwrap();
    let ancient = cur_minute - 9 * 24 * 3600 * 1000;
    let _: () = conn
        .zadd(
            q.keys().history_log(),
            format!("{ancient} enqueued=7"),
            ancient,
        )
        .await
        .unwrap();
    q.enqueue(spec("one more", "demo")).await.unwrap();
    let log: Vec<String> = conn.zrange(q.keys().history_log(), 0, -1).await.unwrap();
    assert!(
        !log.iter().any(|m| m.starts_with(&format!("{ancient} "))),
        "the 9-day-old minute is gone: {log:?}"
    );
    assert!(
        log.iter().any(|m| m.starts_with(&format!("{old_minute} "))),
        "{log:?}"
    );
    let cur: u64 = conn
        .hget(q.keys().history_current(), "minute")
        .await
        .unwrap();
    assert!(cur > old_minute, "a new current minute");
    let minutes = q.history(now_ms - 300_000, now_ms + 120_000).await.unwrap();
    assert_eq!(total(&minutes).enqueued, 5, "{minutes:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_indexes_off_no_index_is_written_and_the_history_still_counts() {
    let redis = RedisServer::start();
    let q = open(
        &redis,
        &[
            ("QUEUE__LISTING_INDEXES", "false"),
            ("QUEUE__RESEARCH__MAX_ATTEMPTS", "1"),
        ],
    )
    .await;
    assert!(!q.keys().indexes_on());
    let batch = uuid::Uuid::now_v7().to_string();
    let specs = (0..4).map(|n| spec(&format!("q{n}"), "demo")).collect();
    let ids = q.enqueue_many(specs, Some(&batch)).await.unwrap();
    q.enqueue(spec("alone", "demo")).await.unwrap();
    q.cancel(&ids[3]).await.unwrap();
    let leases = q.fetch("w", 10).await.unwrap().leases;
    assert_eq!(leases.len(), 4, "the cancelled one is dropped");
    q.complete(&leases[0], r#"{"answer":"ok"}"#).await.unwrap();
    let error = json!({"class": "permanent", "message": "no"});
    q.fail(&leases[1], Settlement::Dead, &error, &record(1))
        .await
        .unwrap();
    let mut conn = q.connection();
    let ix_keys: Vec<String> = redis::cmd("KEYS")
        .arg("*ix:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ix_keys.is_empty(), "no index kept: {ix_keys:?}");
    let job: Option<String> = conn
        .hget(q.keys().job(&ids[0].to_string()), "ix")
        .await
        .unwrap();
    assert_eq!(job.as_deref(), Some(""), "no memberships noted");
    let (alone, _) = q.enqueue(spec("no batch", "demo")).await.unwrap();
    let field: Option<String> = conn
        .hget(q.keys().job(&alone.to_string()), "ix")
        .await
        .unwrap();
    assert_eq!(
        field, None,
        "a job in no batch and no index has no `ix` field"
    );
    // the batch counts and the history are kept either way
    let minutes = q.history(0, u64::MAX).await.unwrap();
    let sum = minutes.iter().fold(
        Default::default(),
        |mut a: fleet_shared::queue::index::HistoryMinute, m| {
            a.add(m);
            a
        },
    );
    assert_eq!((sum.enqueued, sum.succeeded, sum.dead), (6, 1, 1));
    assert_eq!(q.trim_indexes(100).await.unwrap(), 0);
}
