//! The whole system on the E2B provider: producer → Redis → worker processes → the
//! real E2B client → the spec-following fake E2B server, with faults injected.

use std::time::Duration;

use fleet_shared::job::JobSpec;
use fleet_shared::results::JobStatus;
use fleet_tests::fake_e2b::FakeE2b;
use fleet_tests::fixture::Fleet;

const N: usize = 100;

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_survives_e2b_faults_and_leaves_no_sandbox_running() {
    let fake = FakeE2b::start_local().await;
    let extra = format!(
        r#"
[queue]
lease_ttl_secs = 5
reclaim_interval_ms = 200
[queue.research]
max_attempts = 8
backoff_base_ms = 50
backoff_cap_ms = 500
[worker]
concurrency = 4
drain_timeout_secs = 5
[sandbox]
provider = "e2b"
[sandbox.e2b]
api_url = "{api}"
envd_url = "{envd}"
creates_per_second = 20.0
max_concurrent_sandboxes = 8
request_timeout_secs = 5
request_attempts = 8
"#,
        api = fake.api_url(),
        envd = fake.envd_url(),
    );
    let mut fleet = Fleet::start(r#"q=$(cat); sleep 0.05; printf 'answer: %s' "$q""#, &extra).await;
    let env = [
        ("E2B_API_KEY", fake.api_key().to_string()),
        ("RUST_LOG", "debug,fleet_shared=trace".to_string()),
    ];
    fleet.start_worker_with_env("e1", &env);
    fleet.start_worker_with_env("e2", &env);

    // Weather: 30% of control-plane calls fail with 5xx, a burst of 429s with
    // Retry-After, and 5% of jobs lose their sandbox mid-command.
    fake.faults().set_control_error_rate(0.3, 503);
    fake.faults().rate_limit_next(3, Duration::from_secs(1));
    let specs: Vec<JobSpec> = (0..N)
        .map(|i| JobSpec::research(format!("q{i}"), "test"))
        .collect();
    let ids = fleet.queue.enqueue_many(specs, Some("e2b")).await.unwrap();
    for step in 1..=5u64 {
        fleet
            .eventually("progress", Duration::from_secs(120), || async {
                let b = fleet.queue.batch_record("e2b").await.ok()??;
                (b.finished() >= step * 15).then_some(())
            })
            .await;
        fake.faults().vanish_during_next_exec();
    }
    fleet
        .wait_batch_final("e2b", N as u64, Duration::from_secs(180))
        .await;

    let (mut succeeded, mut dead) = (0, 0);
    let mut lost = 0;
    for id in &ids {
        let r = fleet.record(&id.to_string()).await;
        lost += r
            .history
            .iter()
            .filter(|h| h.outcome == "sandbox_lost")
            .count();
        match r.status {
            JobStatus::Succeeded => {
                succeeded += 1;
                let answer = r.result.as_ref().unwrap()["output"]["answer"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let query = match &r.spec.as_ref().unwrap().payload {
                    fleet_shared::job::JobPayload::Research(q) => q.query.clone(),
                    _ => unreachable!(),
                };
                assert_eq!(answer, format!("answer: {query}"));
            }
            JobStatus::Dead => {
                dead += 1;
                let message = r.error.as_ref().unwrap()["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                assert!(
                    !message.is_empty(),
                    "a dead letter carries its reason: {r:?}"
                );
            }
            other => panic!("job {id} ended {other}"),
        }
    }
    eprintln!(
        "e2b batch: {succeeded} succeeded, {dead} dead-lettered, {lost} attempts lost their sandbox"
    );
    assert_eq!(succeeded + dead, N);
    assert!(
        lost >= 1,
        "vanishing sandboxes were retried on other agents"
    );
    assert!(
        succeeded >= N * 9 / 10,
        "weather is retried: {succeeded}/{N} succeeded"
    );

    // Shutdown: the pools kill what they own; nothing is left running.
    fake.faults().clear();
    for w in fleet.workers.iter() {
        w.sigterm();
    }
    for w in fleet.workers.iter_mut() {
        w.assert_clean_exit();
    }
    let c = fake.counters();
    eprintln!(
        "fake E2B: created {}, killed {}, paused {}, running {}",
        c.created, c.killed, c.paused, c.running
    );
    let left = fleet_shared::pool::Registry::open(&fleet.settings.redis)
        .await
        .unwrap()
        .list(None)
        .await
        .unwrap();
    assert_eq!(
        c.running,
        0,
        "no sandbox left running after shutdown; registry: {left:?}\n{}",
        fleet.logs()
    );
    assert_eq!(
        c.created,
        c.killed + c.paused,
        "every sandbox created was killed or pooled (paused)"
    );
    assert!(c.max_running <= 8 * 2, "each worker's plan cap held");

    // Secrets never reach the logs.
    let logs = fleet.logs();
    assert!(logs.contains("fleet_shared"), "trace logs were captured");
    assert!(
        !logs.contains(fake.api_key()),
        "the API key leaked into the logs"
    );
    for token in fake.issued_tokens() {
        assert!(
            !logs.contains(&token),
            "an envd access token leaked into the logs"
        );
    }
}

/// A fleet config on the fake E2B, with kills not retried inside one call for long.
fn e2b_config(fake: &FakeE2b) -> String {
    format!(
        r#"
[queue]
lease_ttl_secs = 5
reclaim_interval_ms = 200
[worker]
concurrency = 1
drain_timeout_secs = 6
[sandbox]
provider = "e2b"
[sandbox.e2b]
api_url = "{api}"
envd_url = "{envd}"
request_timeout_secs = 2
request_attempts = 2
"#,
        api = fake.api_url(),
        envd = fake.envd_url(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn kills_that_fail_at_shutdown_are_retried_within_the_drain_time_and_the_rest_reported() {
    let fake = FakeE2b::start_local().await;
    let mut fleet = Fleet::start(r#"q=$(cat); printf 'answer: %s' "$q""#, &e2b_config(&fake)).await;
    let env = [("E2B_API_KEY", fake.api_key().to_string())];

    // 1. The control plane is down for 2 s while the worker shuts down: its kill
    // fails at first, is retried, and the sandbox is killed before it exits.
    fleet.start_worker_with_env("e1", &env);
    let id = fleet.submit(JobSpec::research("q1", "test")).await;
    fleet
        .wait_status(
            &id.to_string(),
            JobStatus::Succeeded,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(fake.counters().running, 1, "the agent is kept warm");
    fake.faults().set_control_error_rate(1.0, 503);
    let faults = fake.faults();
    let outage = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        faults.clear();
    });
    fleet.workers[0].sigterm();
    fleet.workers[0].assert_clean_exit();
    outage.await.unwrap();
    assert_eq!(
        fake.counters().running,
        0,
        "the kill was retried until it went through\n{}",
        fleet.logs()
    );

    // 2. The control plane stays down: the worker still exits, and names the
    // sandbox it could not kill.
    fleet.start_worker_with_env("e2", &env);
    let id = fleet.submit(JobSpec::research("q2", "test")).await;
    fleet
        .wait_status(
            &id.to_string(),
            JobStatus::Succeeded,
            Duration::from_secs(60),
        )
        .await;
    let sandbox = fleet.record(&id.to_string()).await.result.unwrap()["output"]["sandbox_id"]
        .as_str()
        .unwrap()
        .to_string();
    fake.faults().set_control_error_rate(1.0, 503);
    let t0 = std::time::Instant::now();
    fleet.workers[1].sigterm();
    fleet.workers[1].assert_clean_exit();
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "shutdown gave up within the drain time: {:?}",
        t0.elapsed()
    );
    let log = fleet.workers[1].log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("could not be killed") && l.contains(&sandbox)),
        "the sandbox left running is reported with its ID:\n{log}"
    );
    fake.faults().clear();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_running_sandbox_is_killed_within_the_lease_ttl_plus_two_seconds() {
    let fake = FakeE2b::start_local().await;
    let mut fleet = Fleet::start(
        r#"cat >/dev/null; echo started >> {dir}/started; exec sleep 300"#,
        &e2b_config(&fake),
    )
    .await;
    let ttl = fleet.settings.lease_ttl();
    let env = [("E2B_API_KEY", fake.api_key().to_string())];
    fleet.start_worker_with_env("doomed", &env);
    fleet.submit(JobSpec::research("long", "test")).await;
    fleet
        .eventually(
            "the doomed worker's agent to run",
            Duration::from_secs(30),
            || async { std::fs::read_to_string(fleet.path("started")).ok() },
        )
        .await;
    let sandbox = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path == "/sandboxes" && r.status == 201)
        .and_then(|r| r.response_body)
        .map(|b| serde_json::from_slice::<serde_json::Value>(&b).unwrap())
        .and_then(|v| v["sandboxID"].as_str().map(String::from))
        .expect("the doomed worker created a sandbox");
    fleet.start_worker_with_env("survivor", &env);
    fleet.wait_started(1).await;

    fleet.workers[0].kill9();
    let killed_at = std::time::Instant::now();
    let path = format!("/sandboxes/{sandbox}");
    let kill = fake
        .wait_for_request(ttl + Duration::from_secs(2), |r| {
            r.method == "DELETE" && r.path == path && r.status == 204
        })
        .await;
    assert!(
        kill.is_some(),
        "the dead worker's sandbox {sandbox} still runs {:?} after the kill\n{}",
        killed_at.elapsed(),
        fleet.logs()
    );
    eprintln!(
        "orphaned sandbox killed {:?} after its worker",
        kill.unwrap().at - killed_at
    );
    fleet.workers[1].sigterm();
    fleet.workers[1].assert_clean_exit();
}
