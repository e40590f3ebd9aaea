//! The result cache: an identical query (same normalized text, profile and code
//! revision) within the cache TTL is served the earlier job's result, marked
//! `cached: true` with that job's ID, and no agent runs. Identical queries submitted
//! together run once. A different profile or revision, an expired entry, or a failure
//! (never cached) means a run. Real workers; the test agent appends a line to a file
//! each time it runs, so runs are counted.

use std::time::Duration;

use fleet_shared::job::{JobSpec, QueueKind};
use fleet_shared::queue::{QueueConfig, RedisQueue};
use fleet_shared::results::JobStatus;
use fleet_tests::fixture::Fleet;
use redis::AsyncCommands;

/// Counts its runs in {dir}/runs; fails (permanent, 65) for a query holding "fail",
/// and for "flaky" fails only its first run; prints 50,000 bytes for "long"; else
/// answers with the query it got.
const AGENT: &str = r#"q=$(cat); echo run >> {dir}/runs
case "$q" in
  *fail*) echo "refused: $q" >&2; exit 65 ;;
  *flaky*) if [ ! -e {dir}/flaked ]; then touch {dir}/flaked; echo "first run fails" >&2; exit 65; fi ;;
  *long*) yes 'a long line' | head -c 50000; exit 0 ;;
esac
printf 'answer to [%s]' "$q""#;

/// `cache = true` on the test profile (the line lands in `[agents.test]`), a second
/// profile with the same agent, and no retries (a failure is dead at once).
fn config(extra: &str) -> String {
    format!(
        r#"cache = true
[agents.other]
runtime = "command"
repo = "{{dir}}/agent-repo"
command = ["sh", "-c", {AGENT:?}]
query_via = "stdin"
cache = true
[queue.research]
max_attempts = 1
{extra}"#
    )
}

const WITHIN: Duration = Duration::from_secs(60);

fn runs(fleet: &Fleet) -> usize {
    fleet.lines("runs").len()
}

async fn succeeded(fleet: &Fleet, query: &str, agent: &str) -> (String, serde_json::Value) {
    let id = fleet
        .submit(JobSpec::research(query, agent))
        .await
        .to_string();
    let r = fleet.wait_status(&id, JobStatus::Succeeded, WITHIN).await;
    (id, r.result.expect("a result"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hit_runs_no_agent_and_names_the_job_that_answered() {
    let mut fleet = Fleet::start(AGENT, &config("")).await;
    fleet.start_worker("w1");
    let (first, result) = succeeded(&fleet, "What was ACME's revenue?", "test").await;
    assert_eq!(
        result["output"]["answer"],
        "answer to [What was ACME's revenue?]"
    );
    assert!(result.get("cached").is_none(), "{result}");
    assert_eq!(runs(&fleet), 1);

    // The same query, written differently only in its whitespace: served at enqueue.
    let id = fleet
        .submit(JobSpec::research("  What  was\tACME's\nrevenue? ", "test"))
        .await
        .to_string();
    let r = fleet.record(&id).await;
    assert_eq!(
        r.status,
        JobStatus::Succeeded,
        "a hit ends at enqueue: {r:?}"
    );
    let cached = r.result.unwrap();
    assert_eq!(cached["cached"], true, "{cached}");
    assert_eq!(cached["cached_from"], first.as_str());
    assert_eq!(cached["output"]["answer"], result["output"]["answer"]);

    // Case is not normalized: another query. A job may also opt out.
    succeeded(&fleet, "what was acme's revenue?", "test").await;
    let mut opted_out = JobSpec::research("What was ACME's revenue?", "test");
    opted_out.options.cache = Some(false);
    let id = fleet.submit(opted_out).await.to_string();
    let r = fleet.wait_status(&id, JobStatus::Succeeded, WITHIN).await;
    assert!(r.result.unwrap().get("cached").is_none());
    assert_eq!(runs(&fleet), 3, "the hit ran nothing; the others ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_profile_or_revision_misses() {
    let mut fleet = Fleet::start(AGENT, &config("")).await;
    fleet.start_worker("w1");
    succeeded(&fleet, "same question", "test").await;
    let (_, other) = succeeded(&fleet, "same question", "other").await;
    assert!(other.get("cached").is_none(), "{other}");
    assert_eq!(runs(&fleet), 2);

    // A producer whose profile names another revision of the agent's code (the hook
    // for a commit hash) does not get the cached answer either.
    let mut config = QueueConfig::from_settings(&fleet.settings, QueueKind::Research);
    config.cache.profiles.get_mut("test").unwrap().revision = "another-commit".into();
    let producer = RedisQueue::open(&fleet.settings.redis, config)
        .await
        .unwrap();
    let (id, _) = producer
        .enqueue(JobSpec::research("same question", "test"))
        .await
        .unwrap();
    let r = fleet
        .wait_status(&id.to_string(), JobStatus::Succeeded, WITHIN)
        .await;
    assert!(r.result.unwrap().get("cached").is_none());
    assert_eq!(runs(&fleet), 3);
    // And the first revision still hits its own entry.
    let id = fleet
        .submit(JobSpec::research("same question", "test"))
        .await
        .to_string();
    assert_eq!(fleet.record(&id).await.status, JobStatus::Succeeded);
    assert_eq!(runs(&fleet), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_entry_misses() {
    let mut fleet = Fleet::start(AGENT, &config("[results]\ncache_ttl_secs = 1\n")).await;
    fleet.start_worker("w1");
    succeeded(&fleet, "short-lived", "test").await;
    let mut conn = fleet.queue.connection();
    let pattern = format!("{}cache:*", fleet.queue.keys().prefix);
    let entries: Vec<String> = conn.keys(&pattern).await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let ttl: i64 = conn.pttl(&entries[0]).await.unwrap();
    assert!(
        ttl > 0 && ttl <= 1000,
        "the entry lives cache_ttl_secs: {ttl} ms"
    );
    fleet
        .eventually("the cache entry to expire", Duration::from_secs(10), || {
            let mut conn = conn.clone();
            let key = entries[0].clone();
            async move { (!conn.exists::<_, bool>(key).await.ok()?).then_some(()) }
        })
        .await;
    let (_, again) = succeeded(&fleet, "short-lived", "test").await;
    assert!(again.get("cached").is_none(), "{again}");
    assert_eq!(runs(&fleet), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_not_cached() {
    let mut fleet = Fleet::start(AGENT, &config("")).await;
    fleet.start_worker("w1");
    for round in 1..=2 {
        let id = fleet
            .submit(JobSpec::research("please fail", "test"))
            .await
            .to_string();
        let r = fleet.wait_status(&id, JobStatus::Dead, WITHIN).await;
        assert!(r.result.is_none());
        assert_eq!(runs(&fleet), round, "each failing job ran the agent");
    }
    let mut conn = fleet.queue.connection();
    let entries: Vec<String> = conn
        .keys(format!("{}cache:*", fleet.queue.keys().prefix))
        .await
        .unwrap();
    assert!(
        entries.is_empty(),
        "no entry is left for a failure: {entries:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_identical_queries_in_a_batch_run_the_agent_once() {
    let mut fleet = Fleet::start(AGENT, &config("")).await;
    // Several workers, so that a second run, had it been allowed, could happen.
    fleet.start_worker("w1");
    fleet.start_worker("w2");
    let specs: Vec<JobSpec> = (0..10)
        .map(|i| JobSpec::research(format!("{}batch question", " ".repeat(i)), "test"))
        .collect();
    let batch = uuid::Uuid::now_v7().to_string();
    let ids = fleet.queue.enqueue_many(specs, Some(&batch)).await.unwrap();
    fleet.wait_batch_final(&batch, 10, WITHIN).await;
    let mut leaders = Vec::new();
    let mut answers = std::collections::BTreeSet::new();
    for id in &ids {
        let r = fleet.record(&id.to_string()).await;
        assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
        let result = r.result.unwrap();
        answers.insert(result["output"]["answer"].to_string());
        match result.get("cached_from") {
            Some(from) => assert_eq!(from, &ids[0].to_string().as_str()),
            None => leaders.push(id.to_string()),
        }
    }
    assert_eq!(
        leaders,
        vec![ids[0].to_string()],
        "the first ran, the others waited"
    );
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(runs(&fleet), 1);
    let b = fleet.queue.batch_record(&batch).await.unwrap().unwrap();
    assert_eq!(b.count(JobStatus::Succeeded), 10, "{b:?}");
    assert_eq!(b.count(JobStatus::Queued), 0, "{b:?}");

    // Two producers submitting the same new query at once: one run.
    let (a, b) = tokio::join!(
        fleet.queue.enqueue(JobSpec::research("raced", "test")),
        fleet.queue.enqueue(JobSpec::research("raced", "test")),
    );
    for id in [a.unwrap().0, b.unwrap().0] {
        fleet
            .wait_status(&id.to_string(), JobStatus::Succeeded, WITHIN)
            .await;
    }
    assert_eq!(runs(&fleet), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_job_others_wait_on_fails_the_next_one_runs_the_query() {
    let mut fleet = Fleet::start(AGENT, &config("")).await;
    fleet.start_worker("w1");
    let specs = (0..3)
        .map(|_| JobSpec::research("flaky question", "test"))
        .collect();
    let batch = uuid::Uuid::now_v7().to_string();
    let ids = fleet.queue.enqueue_many(specs, Some(&batch)).await.unwrap();
    fleet.wait_batch_final(&batch, 3, WITHIN).await;
    let records: Vec<_> = {
        let mut out = Vec::new();
        for id in &ids {
            out.push(fleet.record(&id.to_string()).await);
        }
        out
    };
    // The first failed on its own (its error is its own, not hidden) ...
    assert_eq!(records[0].status, JobStatus::Dead, "{:?}", records[0]);
    assert!(
        records[0].error.as_ref().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("first run fails")
    );
    // ... the second took over and ran the query itself, the third got its answer.
    assert_eq!(records[1].status, JobStatus::Succeeded, "{:?}", records[1]);
    let second = records[1].result.as_ref().unwrap();
    assert!(second.get("cached").is_none(), "{second}");
    assert_eq!(records[2].status, JobStatus::Succeeded, "{:?}", records[2]);
    let third = records[2].result.as_ref().unwrap();
    assert_eq!(third["cached_from"], ids[1].to_string().as_str());
    assert_eq!(runs(&fleet), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_waiting_job_stops_waiting_and_a_cancelled_leader_hands_over() {
    // No worker yet: the jobs stay queued, the first leading, the others waiting on it.
    let mut fleet = Fleet::start(AGENT, &config("")).await;
    let specs = (0..3)
        .map(|_| JobSpec::research("patient", "test"))
        .collect();
    let ids = fleet.queue.enqueue_many(specs, None).await.unwrap();
    use fleet_shared::queue::CancelOutcome;
    assert_eq!(
        fleet.queue.cancel(&ids[2]).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        fleet.queue.cancel(&ids[0]).await.unwrap(),
        CancelOutcome::Cancelled
    );
    fleet.start_worker("w1");
    let r = fleet
        .wait_status(&ids[1].to_string(), JobStatus::Succeeded, WITHIN)
        .await;
    assert!(
        r.result.unwrap().get("cached").is_none(),
        "it ran the query itself"
    );
    for id in [ids[0], ids[2]] {
        assert_eq!(
            fleet.record(&id.to_string()).await.status,
            JobStatus::Cancelled
        );
    }
    assert_eq!(runs(&fleet), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hit_on_a_large_answer_gets_its_own_copy_of_the_chunks() {
    let mut fleet = Fleet::start(AGENT, &config("")).await;
    fleet.start_worker("w1");
    let (first, result) = succeeded(&fleet, "a long answer", "test").await;
    assert!(result["output"].get("answer_stored").is_some(), "{result}");
    let id = fleet
        .submit(JobSpec::research("a long answer", "test"))
        .await
        .to_string();
    let r = fleet.record(&id).await;
    assert_eq!(r.status, JobStatus::Succeeded);
    let cached = r.result.unwrap();
    assert_eq!(cached["cached_from"], first.as_str());
    assert_eq!(
        cached["output"]["answer_stored"],
        result["output"]["answer_stored"]
    );
    let mine = fleet.queue.answer_chunk(&id, 0).await.unwrap().unwrap();
    let theirs = fleet.queue.answer_chunk(&first, 0).await.unwrap().unwrap();
    assert_eq!(mine, theirs);
    assert!(mine.starts_with(b"a long line\na long line"));
    let mut conn = fleet.queue.connection();
    let ttl: i64 = conn.pttl(fleet.queue.keys().answer(&id)).await.unwrap();
    assert!(ttl > 0, "the copy expires with the job that got it: {ttl}");
    assert_eq!(runs(&fleet), 1);
}
