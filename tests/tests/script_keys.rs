//! Every key a Lua script touches is one its caller declared in KEYS (the Redis rule
//! Redis Cluster and Dragonfly rely on), checked on a real redis-server: MONITOR
//! records what each script ran and `COMMAND GETKEYS` names the keys of each command
//! (`fleet_tests::script_audit`). No exception: the records a script would find by
//! reading (jobs popped from a list, a job's batch record, a cache entry's jobs) are
//! read by its caller first and declared (docs/ARCHITECTURE.md, "Keys and Redis
//! Cluster").

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use fleet_shared::job::{Job, JobSpec, QueueKind};
use fleet_shared::queue::{AttemptRecord, Completion, Fenced, Renewal, Settlement, script_digests};
use fleet_shared::results::JobStatus;
use fleet_tests::fixture::Fleet;
use fleet_tests::harness::{self, eventually};
use fleet_tests::script_audit::{Monitor, ScriptCall, command_keys};
use fleet_tests::tcp_proxy::{Fault, TcpProxy};
use redis::AsyncCommands;

/// The queue scripts the test must see run (every one of `script_digests()`).
const QUEUE_SCRIPTS: &[&str] = &[
    "enqueue",
    "renew_leases",
    "enqueue_cached",
    "claim",
    "lease",
    "due_delayed",
    "promote_delayed",
    "reclaim_clock",
    "reclaim_expired",
    "complete",
    "fail",
    "cancel",
    "retry_dead",
    "purge_dead",
    "trim_indexes",
];

/// `{tag}` of a key, if it has one.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open..].find('}')? + open;
    Some(&key[open + 1..close])
}

/// The kind of a queue key: `job` in `fleet:{research}:job:<id>`.
fn kind(key: &str) -> &str {
    let rest = key.split_once("}:").map(|(_, r)| r).unwrap_or(key);
    rest.split(':').next().unwrap_or(rest)
}

/// Each undeclared key access, and the script names seen.
fn violations(
    calls: &[ScriptCall],
    conn: &mut redis::Connection,
) -> (Vec<String>, HashSet<String>) {
    let names: HashMap<String, &str> = script_digests()
        .into_iter()
        .map(|(name, sha)| (sha, name))
        .collect();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for call in calls {
        let name = names
            .get(&call.sha)
            .copied()
            .unwrap_or("a script outside the queue");
        seen.insert(name.to_string());
        let tags: HashSet<&str> = call.declared.iter().filter_map(|k| hash_tag(k)).collect();
        if name != "a script outside the queue" && tags.len() != 1 {
            out.push(format!(
                "{name} ({}): keys of {} hash tags",
                call.sha,
                tags.len()
            ));
        }
        for cmd in &call.commands {
            for key in command_keys(conn, cmd) {
                if !call.declared.contains(&key) {
                    out.push(format!(
                        "{name} ({}): {} touched undeclared key {key:?} ({})",
                        call.sha,
                        cmd.first().map(String::as_str).unwrap_or("?"),
                        kind(&key)
                    ));
                }
            }
        }
    }
    (out, seen)
}

fn record(attempt: u32) -> AttemptRecord {
    AttemptRecord {
        attempt,
        worker: "w".into(),
        outcome: "transient".into(),
        ..Default::default()
    }
}

fn spec(query: &str, cache: bool) -> JobSpec {
    let mut s = JobSpec::research(query, "test");
    s.options.cache = Some(cache);
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn every_script_touches_only_declared_keys() {
    let mut fleet = Fleet::start("cat", "cache = true\n[queue.research]\nmax_attempts = 5\n").await;
    let monitor = Monitor::start(fleet.redis.port());
    let q = fleet.queue.clone();

    // enqueue: plain, and a batch with an idempotency key
    q.enqueue(spec("plain", false)).await.unwrap();
    let mut keyed = spec("keyed", false);
    keyed.options.idempotency_key = Some("k1".into());
    q.enqueue_many(
        vec![keyed, spec("b2", false), spec("b3", false)],
        Some("b1"),
    )
    .await
    .unwrap();
    // enqueue_cached: a leader and a follower of the same query, in a batch
    let same: Vec<Job> = (0..2).map(|_| Job::new(spec("same query", true))).collect();
    q.enqueue_jobs(&same, Some("b2")).await.unwrap();

    // fetch (and its retry under the same fetch ID), renew
    let first = q.fetch_once("w", 3, "fetch-one").await.unwrap();
    let again = q.fetch_once("w", 3, "fetch-one").await.unwrap();
    assert_eq!(first.leases.len(), again.leases.len());
    let more = q.fetch("w", 10).await.unwrap();
    let leases: Vec<_> = first.leases.into_iter().chain(more.leases).collect();
    assert_eq!(leases.len(), 5, "the follower waits on its leader");
    let held: Vec<(String, String)> = leases
        .iter()
        .map(|l| (l.id.clone(), l.token.clone()))
        .collect();
    let renewed = q.renew(&held).await.unwrap();
    assert!(
        renewed.iter().all(|r| *r == Renewal::Renewed),
        "{renewed:?}"
    );

    // complete: the cache leader with a staged answer serves its follower
    let (leader, rest): (Vec<_>, Vec<_>) = leases
        .into_iter()
        .partition(|l| l.spec_json.contains("same query"));
    let leader = &leader[0];
    let mut output = serde_json::json!({"answer": "a".repeat(5000), "agent": "test"});
    assert!(
        q.stage_answer(&leader.id, &leader.token, &mut output)
            .await
            .unwrap()
    );
    let result = serde_json::json!({"output": output, "worker": "w"}).to_string();
    q.complete_many(&[Completion {
        id: leader.id.clone(),
        token: leader.token.clone(),
        result_json: result,
        staged: true,
        cost_usd: 0.0,
    }])
    .await
    .unwrap();
    let follower = same
        .iter()
        .map(|j| j.id.to_string())
        .find(|id| *id != leader.id)
        .unwrap();
    assert_eq!(
        q.job_record(&follower).await.unwrap().unwrap().status,
        JobStatus::Succeeded
    );

    // fail: retry, dead, cancelled, release
    let error = serde_json::json!({"class": "transient", "message": "x"});
    let decisions = [
        Settlement::Retry {
            delay: Duration::ZERO,
        },
        Settlement::Dead,
        Settlement::Cancelled,
        Settlement::Release,
    ];
    for (lease, decision) in rest.iter().zip(decisions) {
        q.fail(lease, decision, &error, &record(lease.attempt))
            .await
            .unwrap();
    }
    // a plain complete (no staged answer), after the fetch that promotes the retry
    let promoted = q.fetch("w", 10).await.unwrap();
    assert!(!promoted.leases.is_empty());
    for lease in &promoted.leases[1..] {
        q.complete(lease, r#"{"output":{"answer":"ok"}}"#)
            .await
            .unwrap();
    }

    // reclaim: an expired lease (its expiry moved into the past)
    let stuck = &promoted.leases[0];
    let mut conn = q.connection();
    let _: () = conn.zadd(&q.keys().active, &stuck.id, 0).await.unwrap();
    assert_eq!(q.reclaim_expired(10).await.unwrap(), 1);

    // cancel: a queued job and a running one
    let (queued, _) = q.enqueue(spec("to cancel", false)).await.unwrap();
    q.cancel(&queued).await.unwrap();
    let running = q.fetch("w", 10).await.unwrap();
    for lease in &running.leases {
        q.cancel(&lease.id.parse().unwrap()).await.unwrap();
    }

    // the dead letters: retried (the oldest), then dead again and purged (by ID)
    assert!(q.retry_dead(&[], 10).await.unwrap() >= 1);
    let revived = q.fetch("w", 10).await.unwrap();
    for lease in &revived.leases {
        q.fail(lease, Settlement::Dead, &error, &record(lease.attempt))
            .await
            .unwrap();
    }
    let dead: Vec<String> = q
        .dead_list(0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(q.purge_dead(&dead, 10).await.unwrap() >= 1);

    // the index trim: every ended entry made due, one record gone (expired)
    let ended: Vec<String> = conn.zrange(q.keys().ended_index(), 0, -1).await.unwrap();
    assert!(!ended.is_empty());
    for e in &ended {
        let _: () = conn.zadd(q.keys().ended_index(), e, 0).await.unwrap();
    }
    let gone = ended[0].split('\t').next().unwrap().to_string();
    let _: () = conn.del(q.keys().job(&gone)).await.unwrap();
    assert_eq!(q.trim_indexes(100).await.unwrap(), 1);

    // a real worker on top: the scripts it runs (pool and queue) are audited too
    fleet.start_worker("w1");
    let id = fleet.submit(spec("by a worker", false)).await;
    fleet
        .wait_status(
            &id.to_string(),
            JobStatus::Succeeded,
            Duration::from_secs(60),
        )
        .await;

    // and the audit itself notices a script that reaches outside its KEYS
    let rogue = redis::Script::new(
        "redis.call('SET', KEYS[1], '1') redis.call('SET', 'fleet:{research}:job:rogue', '1')",
    );
    let _: () = rogue
        .key("fleet:{research}:declared")
        .invoke_async(&mut conn)
        .await
        .unwrap();

    let calls = monitor.finish();
    let mut sync = fleet.redis.conn();
    let (found, seen) = violations(&calls, &mut sync);
    let (rogue, found): (Vec<_>, Vec<_>) = found.into_iter().partition(|v| v.contains("job:rogue"));
    assert_eq!(rogue.len(), 1, "the audit missed the rogue script's key");
    assert!(
        found.is_empty(),
        "scripts touched undeclared keys:\n{}",
        found.join("\n")
    );
    let all: HashSet<&str> = script_digests().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        all,
        QUEUE_SCRIPTS.iter().copied().collect(),
        "a queue script is not listed"
    );
    for name in QUEUE_SCRIPTS {
        assert!(seen.contains(*name), "the test never ran the {name} script");
    }
}

/// A completion whose cache entry gains a follower between the read of its keys and
/// the script: the script refuses it (a key it would touch was not declared), the
/// caller reads again and sends it again, and every follower gets the result; no call
/// touches an undeclared key, and the result is written once.
#[tokio::test(flavor = "multi_thread")]
async fn a_completion_whose_followers_changed_since_the_read_is_sent_again() {
    let fleet = Fleet::start("cat", "cache = true\n").await;
    let q = fleet.queue.clone();
    // Every script loaded first, so the calls audited below are the real ones (not a
    // NOSCRIPT answered by loading the script).
    q.enqueue(spec("warm up", false)).await.unwrap();
    let warm = q.fetch("w", 1).await.unwrap();
    q.complete(&warm.leases[0], "{}").await.unwrap();

    let proxy = TcpProxy::start(fleet.redis.port());
    let mut s = fleet.settings.clone();
    s.redis.url = proxy.url();
    let through = harness::queue(&s, QueueKind::Research).await;
    let first: Vec<Job> = (0..2).map(|_| Job::new(spec("same query", true))).collect();
    q.enqueue_jobs(&first, None).await.unwrap();
    let fetched = through.fetch("w", 10).await.unwrap();
    assert_eq!(fetched.leases.len(), 1, "the second job follows the first");
    let leader = fetched.leases[0].clone();

    let monitor = Monitor::start(fleet.redis.port());
    // The complete reads the entry's followers (HKEYS on the entry): that reply is held
    // while another identical job joins the entry.
    proxy.inject(":cache:", Fault::HoldReply, 1);
    let done = tokio::spawn(async move {
        through
            .complete(&leader, r#"{"output":{"answer":"ok"}}"#)
            .await
    });
    eventually("the followers' read", Duration::from_secs(10), || async {
        (proxy.injected() == 1).then_some(())
    })
    .await;
    let late = Job::new(spec("same query", true));
    q.enqueue_jobs(std::slice::from_ref(&late), None)
        .await
        .unwrap();
    proxy.release_held();
    assert_eq!(done.await.unwrap().unwrap(), Fenced::Accepted);

    for job in first.iter().chain([&late]) {
        let r = q.job_record(&job.id.to_string()).await.unwrap().unwrap();
        assert_eq!(r.status, JobStatus::Succeeded, "{}", job.id);
    }
    let calls = monitor.finish();
    let complete = script_digests()
        .into_iter()
        .find(|(n, _)| *n == "complete")
        .unwrap()
        .1;
    assert_eq!(
        calls.iter().filter(|c| c.sha == complete).count(),
        2,
        "refused once (the late follower undeclared), then sent again"
    );
    let (found, _) = violations(&calls, &mut fleet.redis.conn());
    assert!(found.is_empty(), "{}", found.join("\n"));
}
