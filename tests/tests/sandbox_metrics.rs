//! Per-profile sandbox metrics on a worker's `/metrics`: a worker process on the
//! E2B provider, against the spec-following fake E2B, reports the CPU and memory
//! of its running agents' sandboxes (from `GET /sandboxes/{id}/metrics`) by
//! profile, and keeps answering scrapes when the control plane is down.

use std::time::Duration;

use fleet_shared::job::JobSpec;
use fleet_shared::results::JobStatus;
use fleet_tests::fake_e2b::{FakeE2b, SandboxUsage};
use fleet_tests::fixture::Fleet;

/// `GET path` on the worker's HTTP server: status and body.
async fn scrape(port: u16, path: &str) -> Option<(u16, String)> {
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

fn value(body: &str, series: &str) -> Option<String> {
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')
            .map(str::to_string)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_agents_cpu_and_memory_appear_per_profile_and_scrapes_survive_an_outage() {
    let fake = FakeE2b::start_local().await;
    let extra = format!(
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
    );
    let mut fleet = Fleet::start(r#"q=$(cat); printf 'answer: %s' "$q""#, &extra).await;
    let port = fleet_tests::redis_server::free_port();
    let env = [
        ("E2B_API_KEY", fake.api_key().to_string()),
        ("FLEET_WORKER__HTTP_ADDR", format!("127.0.0.1:{port}")),
    ];
    fleet.start_worker_with_env("m1", &env);

    // Before any agent exists: the families are there, with no series.
    let body = fleet
        .eventually("/metrics answers", Duration::from_secs(30), || async {
            scrape(port, "/metrics").await.filter(|r| r.0 == 200)
        })
        .await
        .1;
    assert!(
        body.contains("# TYPE fleet_agent_cpu_used_pct gauge"),
        "{body}"
    );
    assert!(
        !body.contains("fleet_agent_cpu_used_pct{"),
        "no agent yet: {body}"
    );

    // One job: its agent stays warm (idle) afterwards.
    let id = fleet.submit(JobSpec::research("q1", "test")).await;
    fleet
        .wait_status(
            &id.to_string(),
            JobStatus::Succeeded,
            Duration::from_secs(60),
        )
        .await;
    let sandboxes = fake.sandbox_ids();
    assert_eq!(sandboxes.len(), 1, "one agent sandbox: {sandboxes:?}");
    fake.set_usage(
        &sandboxes[0],
        SandboxUsage {
            cpu_count: 2,
            cpu_used_pct: 42.5,
            mem_used: 200 << 20,
            mem_total: 512 << 20,
            disk_used: 1 << 20,
        },
    );

    // Served from a cache refreshed every few seconds: the new figures show up.
    let body = fleet
        .eventually(
            "per-profile sandbox gauges",
            Duration::from_secs(30),
            || async {
                let (_, body) = scrape(port, "/metrics").await?;
                (value(&body, "fleet_agent_memory_used_bytes{profile=\"test\"}").as_deref()
                    == Some("209715200"))
                .then_some(body)
            },
        )
        .await;
    for (series, expected) in [
        ("fleet_agent_sandboxes_sampled{profile=\"test\"}", "1"),
        ("fleet_agent_cpu_used_pct{profile=\"test\"}", "42.500"),
        (
            "fleet_agent_memory_total_bytes{profile=\"test\"}",
            "536870912",
        ),
        ("fleet_agents{profile=\"test\",state=\"idle\"}", "1"),
    ] {
        assert_eq!(
            value(&body, series).as_deref(),
            Some(expected),
            "{series}:\n{body}"
        );
    }
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.method == "GET" && r.path == format!("/sandboxes/{}/metrics", sandboxes[0])),
        "the figures came from the metrics endpoint"
    );

    // The control plane goes down: scrapes still answer 200 with the rest of the
    // metrics, and the sandbox gauges drop out once the cache is stale.
    fake.faults().set_control_error_rate(1.0, 503);
    let body = fleet
        .eventually(
            "sandbox gauges drop out",
            Duration::from_secs(30),
            || async {
                let (status, body) = scrape(port, "/metrics").await?;
                assert_eq!(status, 200, "a scrape never fails:\n{body}");
                (!body.contains("fleet_agent_cpu_used_pct{")).then_some(body)
            },
        )
        .await;
    assert!(body.contains("fleet_attempts_started_total"), "{body}");
    fake.faults().clear();

    fleet.workers[0].sigterm();
    fleet.workers[0].assert_clean_exit();
}
