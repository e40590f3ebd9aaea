//! Fault tests: real `fleet-worker` processes, a real redis-server, and the faults
//! production brings — kill -9, Redis restarts, SIGTERM, cancellation, failing agents.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fleet_shared::job::JobSpec;
use fleet_shared::results::{JobRecord, JobStatus};
use fleet_tests::fixture::{FAST_RECOVERY, Fleet};
use fleet_tests::harness::eventually;
use fleet_tests::processes::process_ended;

/// The test agent: records each run in `runs.log`, then answers with the query.
const RECORDING_ECHO: &str =
    r#"q=$(cat); echo "$q" >> {dir}/runs.log; sleep 0.05; printf '%s' "$q""#;

fn specs(n: usize) -> Vec<JobSpec> {
    (0..n)
        .map(|i| JobSpec::research(format!("query {i}"), "test"))
        .collect()
}

/// Lines of a run log the test agent appends to: one line per run of a query.
fn runs(path: &std::path::Path) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *m.entry(line.to_string()).or_default() += 1;
    }
    m
}

fn assert_consistent(r: &JobRecord) {
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
    assert_eq!(
        r.attempts as usize,
        r.history.len(),
        "one history entry per attempt: {r:?}"
    );
    assert_eq!(r.history.last().unwrap().outcome, "succeeded", "{r:?}");
    assert_eq!(
        r.history
            .iter()
            .filter(|h| h.outcome == "succeeded")
            .count(),
        1,
        "exactly one final result: {r:?}"
    );
    assert!(
        r.history[..r.history.len() - 1]
            .iter()
            .all(|h| h.outcome == "lease_lost"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_worker_processes_share_a_queue_and_run_no_job_twice() {
    let mut fleet = Fleet::start(RECORDING_ECHO, "").await;
    fleet.start_worker("w1");
    fleet.start_worker("w2");
    let ids = fleet
        .queue
        .enqueue_many(specs(200), Some("b"))
        .await
        .unwrap();
    fleet
        .wait_batch_final("b", 200, Duration::from_secs(120))
        .await;
    for id in &ids {
        let r = fleet.record(&id.to_string()).await;
        assert_eq!(r.status, JobStatus::Succeeded);
        assert_eq!(r.attempts, 1);
    }
    let runs = runs(&fleet.path("runs.log"));
    assert_eq!(runs.len(), 200);
    assert!(runs.values().all(|&n| n == 1), "a job ran twice: {runs:?}");
    let workers: std::collections::HashSet<_> = {
        let mut s = std::collections::HashSet::new();
        for id in &ids {
            s.insert(
                fleet.record(&id.to_string()).await.history[0]
                    .worker
                    .clone(),
            );
        }
        s
    };
    assert_eq!(workers.len(), 2, "both workers took jobs");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_workers_jobs_all_complete_with_exactly_one_result() {
    let mut fleet = Fleet::start(
        r#"q=$(cat); echo "$q" >> {dir}/runs.log; sleep 0.3; printf '%s' "$q""#,
        FAST_RECOVERY,
    )
    .await;
    for i in 0..3 {
        fleet.start_worker(&format!("w{i}"));
    }
    let ids = fleet
        .queue
        .enqueue_many(specs(300), Some("b"))
        .await
        .unwrap();
    // Five kill -9s while the batch runs, each replaced by a new worker.
    let mut kills = 0;
    let mut next = 3;
    while kills < 5 {
        let done_before = fleet
            .queue
            .batch_record("b")
            .await
            .unwrap()
            .unwrap()
            .finished();
        eventually(
            "progress between kills",
            Duration::from_secs(60),
            || async {
                let b = fleet.queue.batch_record("b").await.ok()??;
                (b.finished() >= done_before + 20).then_some(())
            },
        )
        .await;
        let victim = kills % fleet.workers.len();
        fleet.workers[victim].kill9();
        kills += 1;
        fleet.workers.remove(victim);
        fleet.start_worker(&format!("w{next}"));
        next += 1;
    }
    fleet
        .wait_batch_final("b", 300, Duration::from_secs(180))
        .await;
    let mut lost_leases = 0;
    for id in &ids {
        let r = fleet.record(&id.to_string()).await;
        assert_consistent(&r);
        lost_leases += r
            .history
            .iter()
            .filter(|h| h.outcome == "lease_lost")
            .count();
    }
    assert!(lost_leases > 0, "the kills interrupted running jobs");
    // Every query ran. (An agent orphaned by a kill -9 may log a truncated line when
    // its stdin pipe breaks, so extra lines are expected; missing ones are not.)
    let runs = runs(&fleet.path("runs.log"));
    let missing: Vec<String> = (0..300)
        .map(|i| format!("query {i}"))
        .filter(|q| !runs.contains_key(q))
        .collect();
    assert!(missing.is_empty(), "never ran: {missing:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_restart_mid_batch_loses_nothing_and_workers_survive() {
    let mut fleet = Fleet::start(RECORDING_ECHO, FAST_RECOVERY).await;
    fleet.start_worker("w1");
    fleet.start_worker("w2");
    let ids = fleet
        .queue
        .enqueue_many(specs(150), Some("b"))
        .await
        .unwrap();
    eventually("some progress", Duration::from_secs(60), || async {
        let b = fleet.queue.batch_record("b").await.ok()??;
        (b.finished() >= 30).then_some(())
    })
    .await;
    fleet.redis.kill9();
    fleet.redis.restart();
    fleet
        .wait_batch_final("b", 150, Duration::from_secs(180))
        .await;
    for id in &ids {
        assert_eq!(
            fleet.record(&id.to_string()).await.status,
            JobStatus::Succeeded
        );
    }
    for w in fleet.workers.iter_mut() {
        assert!(
            w.is_running(),
            "worker {} died of a Redis restart:\n{}",
            w.name,
            w.log_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_jobs_finish_and_runs_none_twice() {
    let extra = FAST_RECOVERY.replace("drain_timeout_secs = 2", "drain_timeout_secs = 30");
    let mut fleet = Fleet::start(
        r#"q=$(cat); echo "$q" >> {dir}/runs.log; sleep 1; printf '%s' "$q""#,
        &extra,
    )
    .await;
    fleet.start_worker("w1");
    let ids = fleet.queue.enqueue_many(specs(4), Some("b")).await.unwrap();
    // In flight means the agents run, not only that Redis says `running`: a job
    // fetched but not yet started when the signal comes is handed back unstarted.
    eventually(
        "all four agents running",
        Duration::from_secs(30),
        || async { (runs(&fleet.path("runs.log")).len() == 4).then_some(()) },
    )
    .await;
    fleet.workers[0].sigterm();
    assert_eq!(fleet.workers[0].wait(), Some(0), "{}", fleet.logs());
    for id in &ids {
        let r = fleet.record(&id.to_string()).await;
        assert_eq!(r.status, JobStatus::Succeeded, "{r:?}\n{}", fleet.logs());
        assert_eq!(r.attempts, 1);
    }
    assert!(runs(&fleet.path("runs.log")).values().all(|&n| n == 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_timeout_releases_unfinished_jobs_without_counting_an_attempt() {
    let mut fleet = Fleet::start(
        r#"q=$(cat); echo "$q" >> {dir}/runs.log; if [ -f {dir}/fast ]; then printf '%s' "$q"; else sleep 60; fi"#,
        FAST_RECOVERY,
    )
    .await;
    fleet.start_worker("w1");
    let id = fleet.submit(JobSpec::research("slow one", "test")).await;
    fleet
        .wait_status(&id.to_string(), JobStatus::Running, Duration::from_secs(30))
        .await;
    eventually("agent started", Duration::from_secs(10), || async {
        fleet.path("runs.log").exists().then_some(())
    })
    .await;
    let stopped = Instant::now();
    fleet.workers[0].sigterm();
    assert_eq!(fleet.workers[0].wait(), Some(0), "{}", fleet.logs());
    assert!(
        stopped.elapsed() < Duration::from_secs(20),
        "drain timeout (2 s) bounded the stop"
    );
    let r = fleet.record(&id.to_string()).await;
    assert_eq!(
        r.status,
        JobStatus::Queued,
        "released back to the queue: {r:?}"
    );
    assert_eq!(r.attempts, 0, "the released attempt is not counted");
    // A new worker runs it to the end.
    std::fs::write(fleet.path("fast"), "").unwrap();
    fleet.start_worker("w2");
    let r = fleet
        .wait_status(
            &id.to_string(),
            JobStatus::Succeeded,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(r.attempts, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_running_job_kills_its_process() {
    let mut fleet = Fleet::start(
        r#"echo $$ > {dir}/agent.pid; exec sleep 300"#,
        FAST_RECOVERY,
    )
    .await;
    fleet.start_worker("w1");
    let id = fleet.submit(JobSpec::research("long", "test")).await;
    let pid: i32 = eventually("agent pid", Duration::from_secs(30), || async {
        std::fs::read_to_string(fleet.path("agent.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
    .await;
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let outcome = fleet.queue.cancel(&id).await.unwrap();
    assert_eq!(outcome, fleet_shared::queue::CancelOutcome::Cancelling);
    let r = fleet
        .wait_status(
            &id.to_string(),
            JobStatus::Cancelled,
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(r.history.last().unwrap().outcome, "cancelled");
    eventually("agent process gone", Duration::from_secs(10), || async {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        // gone, or a zombie awaiting its reaper
        match stat {
            None => Some(()),
            Some(s) => s
                .split_whitespace()
                .nth(2)
                .filter(|st| *st == "Z")
                .map(|_| ()),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_failures_are_retried_inside_the_backoff_envelope() {
    // Fails with EX_TEMPFAIL (75) twice, then answers. One agent, so the counter
    // file in its sandbox survives between attempts.
    let extra = r#"
[queue.research]
max_attempts = 5
backoff_base_ms = 300
backoff_cap_ms = 1000
[worker]
concurrency = 1
"#;
    let mut fleet = Fleet::start(
        r#"n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; if [ $n -lt 3 ]; then echo "upstream busy" >&2; exit 75; fi; cat"#,
        extra,
    )
    .await;
    fleet.start_worker("w1");
    let id = fleet.submit(JobSpec::research("retry me", "test")).await;
    let r = fleet
        .wait_status(
            &id.to_string(),
            JobStatus::Succeeded,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(r.attempts, 3);
    assert_eq!(r.result.as_ref().unwrap()["output"]["answer"], "retry me");
    let h = &r.history;
    assert_eq!(h[0].outcome, "transient");
    assert!(
        h[0].error.as_deref().unwrap().contains("upstream busy"),
        "{h:?}"
    );
    // retry n waits a random time in [0, min(cap, base * 2^(n-1))]
    for (n, ceiling) in [(0, 300), (1, 600)] {
        let planned = h[n].retry_in_ms.expect("a retry delay was recorded");
        assert!(
            planned <= ceiling,
            "retry {} planned {planned} ms > {ceiling} ms",
            n + 1
        );
        let gap = h[n + 1].started_at.saturating_sub(h[n].ended_at);
        assert!(
            gap + 5 >= planned,
            "attempt {} started {gap} ms after the failure, before its {planned} ms delay",
            n + 2
        );
        assert!(
            gap <= planned + 1500,
            "attempt {} started {gap} ms after the failure; planned {planned} ms",
            n + 2
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn permanent_error_dead_letters_on_the_first_attempt_with_its_reason() {
    let mut fleet =
        Fleet::start(r#"echo "no such ticker: ZZZZ" >&2; exit 65"#, FAST_RECOVERY).await;
    fleet.start_worker("w1");
    let id = fleet
        .submit(JobSpec::research("ZZZZ revenue?", "test"))
        .await;
    let r = fleet
        .wait_status(&id.to_string(), JobStatus::Dead, Duration::from_secs(30))
        .await;
    assert_eq!(r.attempts, 1);
    let err = r.error.unwrap();
    assert_eq!(err["class"], "permanent");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("no such ticker: ZZZZ"),
        "{err}"
    );
    assert_eq!(
        fleet.queue.dead_list(0, 10).await.unwrap()[0].0,
        id.to_string()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_attempts_is_honoured() {
    let mut fleet = Fleet::start(r#"echo "still down" >&2; exit 75"#, FAST_RECOVERY).await;
    fleet.start_worker("w1");
    let mut spec = JobSpec::research("never works", "test");
    spec.options.max_attempts = Some(3);
    let id = fleet.submit(spec).await;
    let r = fleet
        .wait_status(&id.to_string(), JobStatus::Dead, Duration::from_secs(30))
        .await;
    assert_eq!(r.attempts, 3);
    assert_eq!(r.history.len(), 3);
    assert!(
        r.error.unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("attempt 3 of 3")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_agents_serve_the_next_worker_and_unclaimed_sandboxes_are_killed() {
    use fleet_shared::pool::{META_PERSISTENT, META_WORKER, OWNER, Registry};
    use fleet_shared::sandbox::local::{LocalConfig, LocalProvider};
    use fleet_shared::sandbox::{
        META_AGENT_ID, META_OWNER, META_POOL, SandboxProvider, SandboxSpec,
    };
    let mut fleet = Fleet::start(RECORDING_ECHO, FAST_RECOVERY).await;
    fleet.start_worker("doomed");
    let ids = fleet.queue.enqueue_many(specs(8), Some("b")).await.unwrap();
    fleet
        .wait_batch_final("b", 8, Duration::from_secs(60))
        .await;
    let sandboxes = fleet.path("sandboxes");
    let on_disk = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir(&sandboxes)
            .map(|d| {
                d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let warm = on_disk();
    assert!(!warm.is_empty(), "the pool kept warm agents");
    // A sandbox of this system that no agent record claims (an older version's, or a
    // kill whose record went first): a stray.
    let provider = LocalProvider::new(LocalConfig {
        root: sandboxes.clone(),
        env_allowlist: vec![],
        max_output_bytes: 1024,
        extra_path: vec![],
    });
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert(META_OWNER.to_string(), OWNER.to_string());
    metadata.insert(META_POOL.to_string(), "test".to_string());
    metadata.insert(META_AGENT_ID.to_string(), "agent-nobody".to_string());
    metadata.insert(META_WORKER.to_string(), "doomed".to_string());
    metadata.insert(META_PERSISTENT.to_string(), "false".to_string());
    let stray = provider
        .create(&SandboxSpec {
            metadata,
            timeout: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .unwrap()
        .id;
    fleet.workers[0].kill9();
    // A new worker (another name) reconciles at start: the stray is killed, and the
    // dead worker's agents are the fleet's — kept, and serving the new worker.
    fleet.start_worker("heir");
    fleet
        .eventually("the stray killed", Duration::from_secs(30), || async {
            (!on_disk().contains(&stray)).then_some(())
        })
        .await;
    assert_eq!(on_disk(), warm, "the warm agents are kept");
    let registry = Registry::open(&fleet.settings.redis).await.unwrap();
    let agents = registry.list(None).await.unwrap();
    assert_eq!(agents.len(), warm.len(), "{agents:?}");
    let more = fleet.queue.enqueue_many(specs(8), Some("c")).await.unwrap();
    fleet
        .wait_batch_final("c", 8, Duration::from_secs(60))
        .await;
    for id in ids.iter().chain(&more) {
        assert_eq!(
            fleet.record(&id.to_string()).await.status,
            JobStatus::Succeeded
        );
    }
    assert_eq!(on_disk(), warm, "the heir ran on the dead worker's agents");
}

#[tokio::test(flavor = "multi_thread")]
async fn attempt_timeout_kills_the_agent_and_is_retried_as_a_timeout() {
    let mut fleet = Fleet::start(r#"echo $$ >> {dir}/pids; exec sleep 300"#, FAST_RECOVERY).await;
    fleet.start_worker("w1");
    let mut spec = JobSpec::research("hangs", "test");
    spec.options.attempt_timeout_secs = Some(1);
    spec.options.max_attempts = Some(2);
    let id = fleet.submit(spec).await;
    let r = fleet
        .wait_status(&id.to_string(), JobStatus::Dead, Duration::from_secs(60))
        .await;
    assert_eq!(r.attempts, 2);
    assert!(r.history.iter().all(|h| h.outcome == "timeout"), "{r:?}");
    for h in &r.history {
        let took = h.ended_at - h.started_at;
        assert!(
            took < 10_000,
            "the attempt ended at its 1 s timeout, not at the agent's end: {took} ms"
        );
    }
    let pids = std::fs::read_to_string(fleet.path("pids")).unwrap();
    for pid in pids.lines() {
        assert!(
            process_ended(pid),
            "agent {pid} still runs after its attempt timed out"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_past_its_deadline_is_dead_lettered_instead_of_retried() {
    let extra = FAST_RECOVERY
        .replace("backoff_base_ms = 50", "backoff_base_ms = 3000")
        .replace("backoff_cap_ms = 200", "backoff_cap_ms = 3000");
    let mut fleet = Fleet::start(r#"echo "flaky" >&2; exit 75"#, &extra).await;
    fleet.start_worker("w1");
    let mut spec = JobSpec::research("in a hurry", "test");
    spec.options.deadline_secs = Some(1);
    let id = fleet.submit(spec).await;
    let r = fleet
        .wait_status(&id.to_string(), JobStatus::Dead, Duration::from_secs(30))
        .await;
    assert!(
        r.attempts < 10,
        "max_attempts was not what stopped it: {r:?}"
    );
    let finished = r.finished_at.unwrap();
    assert!(
        finished - r.created_at < 10_000,
        "it ended near its deadline: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_workers_late_result_cannot_overwrite_the_new_attempts() {
    // The first run is slow; any later run answers at once.
    let mut fleet = Fleet::start(
        r#"q=$(cat); if [ -f {dir}/first ]; then printf 'second:%s' "$q"; else touch {dir}/first; sleep 4; printf 'first:%s' "$q"; fi"#,
        FAST_RECOVERY,
    )
    .await;
    fleet.start_worker("frozen");
    let id = fleet.submit(JobSpec::research("q", "test")).await;
    let id = id.to_string();
    fleet
        .wait_status(&id, JobStatus::Running, Duration::from_secs(30))
        .await;
    fleet
        .eventually("first run started", Duration::from_secs(10), || async {
            fleet.path("first").exists().then_some(())
        })
        .await;
    // Freeze the whole worker (its lease keeper too), as a stalled host would.
    let frozen = fleet.workers[0].pid();
    unsafe { libc::kill(frozen, libc::SIGSTOP) };
    fleet.start_worker("rescuer");
    let r = fleet
        .wait_status(&id, JobStatus::Succeeded, Duration::from_secs(30))
        .await;
    assert_eq!(r.result.as_ref().unwrap()["output"]["answer"], "second:q");
    assert_eq!(r.history.first().unwrap().outcome, "lease_lost");

    // Thaw it: its attempt ends, and whatever it tries to write is refused.
    unsafe { libc::kill(frozen, libc::SIGCONT) };
    fleet
        .wait_for_log(
            0,
            "the stale attempt noticed",
            Duration::from_secs(30),
            &["outcome refused", "stale attempt ended"],
        )
        .await;
    let after = fleet.record(&id).await;
    assert_eq!(after.result, r.result, "the result was written once");
    assert_eq!(after.history, r.history);
    assert_eq!(after.status, JobStatus::Succeeded);
}

/// Lifecycle jobs stop when their attempt is told to: a cancelled `launch` ends
/// cancelled at once, and one still launching at the drain timeout is released (the
/// attempt not counted) instead of holding the worker's shutdown.
#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_jobs_honour_cancel_and_the_drain_timeout() {
    use fleet_shared::job::{LifecycleJob, QueueKind};
    // Setting the agent up takes longer than either test step may.
    let extra = format!("setup = [[\"sh\", \"-c\", \"sleep 20\"]]\n{FAST_RECOVERY}");
    let mut fleet = Fleet::start(RECORDING_ECHO, &extra).await;
    let lifecycle = fleet_tests::harness::queue(&fleet.settings, QueueKind::Lifecycle).await;
    fleet.start_worker("w1");
    let launch = || {
        JobSpec::lifecycle(LifecycleJob::Launch {
            agent: "test".into(),
            persistent: false,
        })
    };
    let status_of = |id: fleet_shared::job::JobId, want: JobStatus| {
        let lifecycle = lifecycle.clone();
        move || {
            let lifecycle = lifecycle.clone();
            async move {
                let r = lifecycle.job_record(&id.to_string()).await.ok()??;
                (r.status == want).then_some(r)
            }
        }
    };

    let (id, _) = lifecycle.enqueue(launch()).await.unwrap();
    fleet
        .eventually(
            "the launch to run",
            Duration::from_secs(30),
            status_of(id, JobStatus::Running),
        )
        .await;
    assert_eq!(
        lifecycle.cancel(&id).await.unwrap(),
        fleet_shared::queue::CancelOutcome::Cancelling
    );
    fleet
        .eventually(
            "the cancelled launch to end cancelled",
            Duration::from_secs(10),
            status_of(id, JobStatus::Cancelled),
        )
        .await;

    let (id, _) = lifecycle.enqueue(launch()).await.unwrap();
    fleet
        .eventually(
            "the second launch to run",
            Duration::from_secs(30),
            status_of(id, JobStatus::Running),
        )
        .await;
    let stopped = Instant::now();
    fleet.workers[0].sigterm();
    assert_eq!(fleet.workers[0].wait(), Some(0), "{}", fleet.logs());
    assert!(
        stopped.elapsed() < Duration::from_secs(12),
        "the drain timeout (2 s) bounded the stop: {:?}",
        stopped.elapsed()
    );
    let r = lifecycle
        .job_record(&id.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.status, r.attempts),
        (JobStatus::Queued, 0),
        "released, the attempt not counted: {r:?}"
    );
}

/// A research job on agent `agent_id`, with its own attempt timeout and one attempt.
fn on_agent(query: &str, agent_id: &str, timeout_secs: u64) -> JobSpec {
    let mut spec = JobSpec::research(query, "test");
    if let fleet_shared::job::JobPayload::Research(r) = &mut spec.payload {
        r.agent_id = Some(agent_id.to_string());
    }
    spec.options.attempt_timeout_secs = Some(timeout_secs);
    spec.options.max_attempts = Some(1);
    spec
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attempt_cut_off_while_it_holds_a_persistent_agent_gives_the_agent_back() {
    // "slow" queries hold the agent for 11 s; any other answers at once.
    let mut fleet = Fleet::start(
        r#"q=$(cat); if [ "$q" = slow ]; then echo $$ >> {dir}/slow.pids; sleep 11; fi; printf '%s' "$q""#,
        FAST_RECOVERY,
    )
    .await;
    fleet.start_worker("w1");
    let lifecycle =
        fleet_tests::harness::queue(&fleet.settings, fleet_shared::job::QueueKind::Lifecycle).await;
    let launch = lifecycle
        .enqueue(JobSpec::lifecycle(
            fleet_shared::job::LifecycleJob::Launch {
                agent: "test".into(),
                persistent: true,
            },
        ))
        .await
        .unwrap()
        .0;
    let launched = fleet
        .eventually(
            "the persistent agent to launch",
            Duration::from_secs(30),
            || async {
                let r = lifecycle.job_record(&launch.to_string()).await.ok()??;
                (r.status == JobStatus::Succeeded).then_some(r)
            },
        )
        .await;
    let agent_id = launched.result.unwrap()["output"]["agent"]["agent_id"]
        .as_str()
        .unwrap()
        .to_string();

    // A holds the agent 11 s. B (2 s timeout) waits for it: B must end at its own
    // timeout, not lease the agent at 11 s with a fresh timeout and be dropped by
    // the outer limit (timeout + grace) while holding it.
    let a = fleet.submit(on_agent("slow", &agent_id, 30)).await;
    fleet
        .eventually("A to run", Duration::from_secs(30), || async {
            std::fs::read_to_string(fleet.path("slow.pids")).ok()
        })
        .await;
    let b = fleet.submit(on_agent("slow", &agent_id, 2)).await;
    let b = fleet
        .wait_status(&b.to_string(), JobStatus::Dead, Duration::from_secs(40))
        .await;
    assert_eq!(b.history.last().unwrap().outcome, "timeout", "{b:?}");
    fleet
        .wait_status(
            &a.to_string(),
            JobStatus::Succeeded,
            Duration::from_secs(40),
        )
        .await;

    // The agent is free again: a quick job on it answers.
    let c = fleet.submit(on_agent("quick", &agent_id, 5)).await;
    let c = fleet
        .eventually("C to end", Duration::from_secs(40), || async {
            let r = fleet.queue.job_record(&c.to_string()).await.ok()??;
            matches!(r.status, JobStatus::Succeeded | JobStatus::Dead).then_some(r)
        })
        .await;
    assert_eq!(
        c.status,
        JobStatus::Succeeded,
        "the agent was given back after B's attempt ended: {c:?}\n{}",
        fleet.logs()
    );
    let pids = std::fs::read_to_string(fleet.path("slow.pids")).unwrap();
    for pid in pids.lines() {
        assert!(process_ended(pid), "agent process {pid} still runs");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_an_agent_prints_in_its_json_output_reaches_no_result_redis_or_log() {
    const SECRET: &str = "sk-live-0f1e2d3c4b5a69788796a5b4";
    // The agent answers in JSON and puts its key into the metadata, in a nested
    // value, a key and a number-like string.
    let extra = format!("secret_env = [\"MODEL_API_KEY\"]\n{FAST_RECOVERY}");
    let mut fleet = Fleet::start(
        r#"cat >/dev/null; printf '{"answer": "fine", "debug": "key=%s", "nested": {"list": ["%s"], "%s": 1}}' "$MODEL_API_KEY" "$MODEL_API_KEY" "$MODEL_API_KEY""#,
        &extra,
    )
    .await;
    fleet.start_worker_with_env(
        "w1",
        &[
            ("MODEL_API_KEY", SECRET.to_string()),
            ("RUST_LOG", "debug".to_string()),
        ],
    );
    let id = fleet.submit(JobSpec::research("q", "test")).await;
    let r = fleet
        .wait_status(
            &id.to_string(),
            JobStatus::Succeeded,
            Duration::from_secs(30),
        )
        .await;
    let result = serde_json::to_string(&r.result).unwrap();
    assert!(
        result.contains("key=[redacted]"),
        "the metadata is kept, the secret redacted: {result}"
    );
    assert!(!result.contains(SECRET), "secret in the result: {result}");

    // Nowhere in Redis (every key, every field) nor in the AOF.
    let mut conn = fleet.redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    for key in keys {
        let dump: Vec<u8> = redis::cmd("DUMP").arg(&key).query(&mut conn).unwrap();
        assert!(
            !String::from_utf8_lossy(&dump).contains(SECRET),
            "secret in Redis key {key}"
        );
    }
    let mut aof = Vec::new();
    for entry in walk(&fleet.redis.data_dir()) {
        aof.extend(std::fs::read(entry).unwrap_or_default());
    }
    assert!(!aof.is_empty(), "the AOF was read");
    assert!(
        !String::from_utf8_lossy(&aof).contains(SECRET),
        "secret in the AOF"
    );
    fleet.workers[0].sigterm();
    fleet.workers[0].assert_clean_exit();
    let log = fleet.workers[0].log_text();
    assert!(log.contains("DEBUG"), "the log is at debug level");
    assert!(!log.contains(SECRET), "secret in the worker's debug log");
}

/// Every file under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_running_agent_is_killed_within_the_lease_ttl_plus_two_seconds() {
    let ttl = Duration::from_secs(3);
    let mut fleet = Fleet::start(
        r#"cat >/dev/null; echo $$ >> {dir}/agent.pids; exec sleep 300"#,
        FAST_RECOVERY,
    )
    .await;
    assert_eq!(fleet.settings.lease_ttl(), ttl);
    fleet.start_worker("doomed");
    let id = fleet.submit(JobSpec::research("long", "test")).await;
    let pid: i32 = fleet
        .eventually(
            "the doomed worker's agent to run",
            Duration::from_secs(30),
            || async {
                std::fs::read_to_string(fleet.path("agent.pids"))
                    .ok()?
                    .lines()
                    .next()?
                    .parse()
                    .ok()
            },
        )
        .await;
    fleet.start_worker("survivor");
    fleet.wait_started(1).await;

    fleet.workers[0].kill9();
    let killed_at = Instant::now();
    let deadline = ttl + Duration::from_secs(2);
    loop {
        if process_ended(&pid.to_string()) {
            break;
        }
        assert!(
            killed_at.elapsed() < deadline,
            "the dead worker's agent (pid {pid}) still runs {:?} after the kill, while its job runs again elsewhere\n{}",
            killed_at.elapsed(),
            fleet.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "orphaned agent killed {:?} after its worker",
        killed_at.elapsed()
    );
    // The job itself runs again on the survivor.
    fleet
        .eventually("the job to run again", Duration::from_secs(30), || async {
            let r = fleet.queue.job_record(&id.to_string()).await.ok()??;
            (r.attempts >= 2).then_some(())
        })
        .await;
}

/// The agents whose sandboxes exist under the fleet's local sandbox root and are
/// persistent: their agent IDs (from each sandbox's `meta.json`).
fn persistent_agents(fleet: &Fleet) -> Vec<String> {
    let Ok(dirs) = std::fs::read_dir(fleet.path("sandboxes")) else {
        return Vec::new();
    };
    let mut agents: Vec<String> = dirs
        .filter_map(|d| std::fs::read_to_string(d.ok()?.path().join("meta.json")).ok())
        .filter_map(|m| serde_json::from_str::<serde_json::Value>(&m).ok())
        .filter(|m| m["metadata"]["dexter-fleet-persistent"] == "true")
        .filter_map(|m| Some(m["metadata"]["dexter-fleet-agent-id"].as_str()?.to_string()))
        .collect();
    agents.sort();
    agents
}

/// Item 8 of issue 9: a `launch` whose worker stalls (SIGSTOP) past its lease is
/// reclaimed and launched again; the stalled attempt's launch, which finished setting
/// its agent up during the stall, must not leave a second agent once the worker goes
/// on: exactly one agent per successful launch.
#[tokio::test(flavor = "multi_thread")]
async fn a_reclaimed_launch_does_not_leave_a_second_agent() {
    use fleet_shared::job::{LifecycleJob, QueueKind};
    // The setup records its process ID and takes 2 s.
    let extra = format!(
        "setup = [[\"sh\", \"-c\", \"echo $$ >> {{dir}}/setups; sleep 2\"]]\n{FAST_RECOVERY}"
    );
    let mut fleet = Fleet::start(RECORDING_ECHO, &extra).await;
    let lifecycle = fleet_tests::harness::queue(&fleet.settings, QueueKind::Lifecycle).await;
    fleet.start_worker("w1");
    fleet.wait_started(0).await;
    let (id, _) = lifecycle
        .enqueue(JobSpec::lifecycle(LifecycleJob::Launch {
            agent: "test".into(),
            persistent: true,
        }))
        .await
        .unwrap();
    let id = id.to_string();
    let setups = || fleet.lines("setups");
    let setup = fleet
        .eventually(
            "the launch's setup to run",
            Duration::from_secs(30),
            || async { setups().first().cloned() },
        )
        .await;
    let worker = fleet.workers[0].pid();
    unsafe { libc::kill(worker, libc::SIGSTOP) };
    // Another worker's reclaim tick, until the stalled lease expires.
    fleet
        .eventually(
            "the stalled launch to be reclaimed",
            Duration::from_secs(10),
            || async { (lifecycle.reclaim_expired(10).await.unwrap() == 1).then_some(()) },
        )
        .await;
    // The stalled attempt's setup finished meanwhile: its agent is ready to be
    // handed out the moment the worker goes on.
    fleet
        .eventually(
            "the first setup to end",
            Duration::from_secs(10),
            || async { process_ended(&setup).then_some(()) },
        )
        .await;
    unsafe { libc::kill(worker, libc::SIGCONT) };
    let r = fleet
        .eventually("the launch to end", Duration::from_secs(30), || async {
            let r = lifecycle.job_record(&id).await.ok()??;
            r.status.is_final().then_some(r)
        })
        .await;
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}\n{}", fleet.logs());
    assert_eq!(
        r.history
            .iter()
            .map(|h| h.outcome.as_str())
            .collect::<Vec<_>>(),
        ["lease_lost", "succeeded"],
        "{r:?}"
    );
    let launched = r.result.as_ref().unwrap()["output"]["agent"]["agent_id"]
        .as_str()
        .unwrap()
        .to_string();
    fleet
        .wait_for_log(
            0,
            "the stalled attempt to be noticed",
            Duration::from_secs(10),
            &["stale attempt ended", "outcome refused"],
        )
        .await;
    // The stale attempt's agent is killed (that may take a moment): only the agent
    // the job's result names is left.
    fleet
        .eventually(
            "one persistent agent, the launched one",
            Duration::from_secs(5),
            || async {
                let agents = persistent_agents(&fleet);
                (agents == std::slice::from_ref(&launched)).then_some(())
            },
        )
        .await;
    assert_eq!(setups().len(), 2, "one setup per attempt");
}

/// Item 8 of issue 9, the other order: the `launch` finished (its agent is up) but its
/// result could not be written before the lease was lost (as when the worker stalls
/// between the two). The job is launched again by its next attempt; the first
/// attempt's agent, whose ID nobody will ever learn, must not be left running.
#[tokio::test(flavor = "multi_thread")]
async fn a_launch_whose_result_is_discarded_does_not_leave_its_agent() {
    use fleet_shared::job::{LifecycleJob, QueueKind};
    use fleet_tests::tcp_proxy::{Fault, TcpProxy};
    let mut fleet = Fleet::start(RECORDING_ECHO, FAST_RECOVERY).await;
    let lifecycle = fleet_tests::harness::queue(&fleet.settings, QueueKind::Lifecycle).await;
    let proxy = TcpProxy::start(fleet.redis.port());
    fleet.start_worker_with_env("w1", &[("FLEET_REDIS__URL", proxy.url())]);
    fleet.wait_started(0).await;
    // Every write of a launch's result is refused until the lease is gone.
    proxy.inject(r#""output":{"agent":{"#, Fault::Error, usize::MAX);
    let (id, _) = lifecycle
        .enqueue(JobSpec::lifecycle(LifecycleJob::Launch {
            agent: "test".into(),
            persistent: true,
        }))
        .await
        .unwrap();
    let id = id.to_string();
    fleet
        .eventually(
            "the first launch's result to be refused",
            Duration::from_secs(30),
            || async { (proxy.injected() >= 1).then_some(()) },
        )
        .await;
    assert_eq!(persistent_agents(&fleet).len(), 1, "the first agent is up");
    // Its lease is lost (expired, as after a stall) and reclaimed by another worker.
    let _: () =
        redis::Commands::zadd(&mut fleet.redis.conn(), &lifecycle.keys().active, &id, 0).unwrap();
    assert_eq!(lifecycle.reclaim_expired(10).await.unwrap(), 1);
    proxy.clear_faults();
    let r = fleet
        .eventually("the launch to end", Duration::from_secs(30), || async {
            let r = lifecycle.job_record(&id).await.ok()??;
            r.status.is_final().then_some(r)
        })
        .await;
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}\n{}", fleet.logs());
    assert_eq!(r.attempts, 2, "{r:?}");
    let launched = r.result.as_ref().unwrap()["output"]["agent"]["agent_id"]
        .as_str()
        .unwrap()
        .to_string();
    fleet
        .eventually(
            "only the agent the result names to be left",
            Duration::from_secs(10),
            || async {
                (persistent_agents(&fleet) == std::slice::from_ref(&launched)).then_some(())
            },
        )
        .await;
}
