//! The GitHub client against the fake GitHub server over real HTTP: GitHub's headers
//! on every request, rate limits waited out as GitHub documents (`retry-after` on
//! 403 and 429, `x-ratelimit-reset` when `x-ratelimit-remaining` is 0, secondary
//! limits with exponential waits from a floor), waits too long to sleep through
//! handed back to the queue, pagination by `Link`, GitHub App tokens minted from an
//! RS256 JWT and minted again before they expire, and webhook creation.

use std::sync::Arc;
use std::time::Duration;

use fleet_shared::error::{ErrorClass, JobError};
use fleet_shared::github::GithubClient;
use fleet_shared::github::app::AppAuth;
use fleet_shared::github::client::{Auth, RateLimitPolicy};
use fleet_shared::secret::Secret;
use fleet_tests::fake_github::{FakeGithub, FakeGithubServer, Fault};
use serde_json::json;

const TOKEN: &str = "ghp_ClientTestToken_0123456789";

async fn setup(policy: RateLimitPolicy) -> (FakeGithubServer, GithubClient) {
    let gh = FakeGithub::start(TOKEN).await;
    gh.add_repo("octo/agent");
    let client = GithubClient::new(&gh.url(), Auth::Token(Secret::new(TOKEN)), "fleet-test")
        .unwrap()
        .with_policy(policy);
    (gh, client)
}

fn short_policy() -> RateLimitPolicy {
    RateLimitPolicy {
        secondary_wait: Duration::from_millis(300),
        max_wait: Duration::from_secs(10),
    }
}

/// Gaps between consecutive requests to `path`.
fn gaps(gh: &FakeGithub, path: &str) -> Vec<Duration> {
    let times: Vec<_> = gh
        .requests()
        .into_iter()
        .filter(|r| r.path == path)
        .map(|r| r.at)
        .collect();
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test]
async fn retry_after_on_429_and_403_is_waited_out() {
    let (gh, client) = setup(short_policy()).await;
    gh.inject(
        "/repos/octo/agent",
        Fault::RetryAfter {
            status: 429,
            secs: 1,
        },
    );
    gh.inject(
        "/repos/octo/agent",
        Fault::RetryAfter {
            status: 403,
            secs: 1,
        },
    );
    let repo = client.get("/repos/octo/agent").await.unwrap();
    assert_eq!(repo["default_branch"], "main");
    let gaps = gaps(&gh, "/repos/octo/agent");
    assert_eq!(gaps.len(), 2, "two limited answers, then the real one");
    for gap in gaps {
        assert!(
            gap >= Duration::from_secs(1),
            "retried after {gap:?}, before retry-after"
        );
        assert!(gap < Duration::from_secs(3), "waited far too long: {gap:?}");
    }
}

#[tokio::test]
async fn an_exhausted_primary_limit_waits_until_the_reset_time() {
    let (gh, client) = setup(short_policy()).await;
    gh.inject(
        "/repos/octo/agent",
        Fault::PrimaryLimit { reset_in_secs: 2 },
    );
    let started = std::time::SystemTime::now();
    client.get("/repos/octo/agent").await.unwrap();
    let waited = started.elapsed().unwrap();
    let gaps = gaps(&gh, "/repos/octo/agent");
    assert_eq!(gaps.len(), 1);
    // The reset is 2 s after the limited answer, in whole seconds: between 1 and 2 s.
    assert!(
        gaps[0] >= Duration::from_secs(1),
        "did not wait for the reset: {gaps:?}"
    );
    assert!(waited < Duration::from_secs(4), "waited {waited:?}");
}

#[tokio::test]
async fn secondary_limits_wait_from_the_floor_and_double() {
    let (gh, client) = setup(short_policy()).await;
    gh.inject("/repos/octo/agent", Fault::Secondary);
    gh.inject("/repos/octo/agent", Fault::Secondary);
    client.get("/repos/octo/agent").await.unwrap();
    let gaps = gaps(&gh, "/repos/octo/agent");
    assert_eq!(gaps.len(), 2);
    assert!(gaps[0] >= Duration::from_millis(300), "{gaps:?}");
    assert!(
        gaps[1] >= Duration::from_millis(600),
        "exponential: {gaps:?}"
    );
    // GitHub's own floor is a minute.
    assert_eq!(
        RateLimitPolicy::default().secondary_wait,
        Duration::from_secs(60)
    );
}

#[tokio::test]
async fn a_wait_longer_than_the_cap_goes_back_to_the_queue_with_its_time() {
    let policy = RateLimitPolicy {
        secondary_wait: Duration::from_millis(300),
        max_wait: Duration::from_secs(5),
    };
    let (gh, client) = setup(policy).await;
    gh.inject(
        "/repos/octo/agent",
        Fault::RetryAfter {
            status: 403,
            secs: 120,
        },
    );
    let started = std::time::Instant::now();
    let err = client.get("/repos/octo/agent").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "it slept");
    assert_eq!(err.retry_after, Some(Duration::from_secs(120)));
    let job: JobError = err.into();
    assert_eq!(job.class, ErrorClass::Transient);
    assert_eq!(job.retry_after, Some(Duration::from_secs(120)));
}

#[tokio::test]
async fn a_forbidden_request_that_is_no_rate_limit_fails_at_once() {
    let (gh, client) = setup(short_policy()).await;
    gh.inject("/repos/octo/agent", Fault::Status(403));
    let err = client.get("/repos/octo/agent").await.unwrap_err();
    assert_eq!(err.status, Some(403));
    assert_eq!(gaps(&gh, "/repos/octo/agent").len(), 0, "not retried");
    let job: JobError = err.into();
    assert_eq!(job.class, ErrorClass::Permanent);
}

#[tokio::test]
async fn listings_follow_the_link_header_to_the_last_page() {
    let (gh, client) = setup(short_policy()).await;
    for i in 0..7 {
        client
            .post(
                "/repos/octo/agent/issues/3/comments",
                &json!({"body": format!("c{i}")}),
            )
            .await
            .unwrap();
    }
    gh.set_max_per_page(3);
    let all = client
        .get_all("/repos/octo/agent/issues/3/comments")
        .await
        .unwrap();
    let bodies: Vec<&str> = all.iter().map(|c| c["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["c0", "c1", "c2", "c3", "c4", "c5", "c6"]);
    let pages = gh
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/repos/octo/agent/issues/3/comments"))
        .count();
    assert_eq!(pages, 3);
}

#[tokio::test]
async fn a_wrong_token_is_a_permanent_error_that_does_not_show_the_token() {
    let gh = FakeGithub::start(TOKEN).await;
    gh.add_repo("octo/agent");
    let client = GithubClient::new(
        &gh.url(),
        Auth::Token(Secret::new("ghp_wrong_value_9999")),
        "fleet-test",
    )
    .unwrap();
    let err = client.get("/repos/octo/agent").await.unwrap_err();
    assert_eq!(err.status, Some(401));
    assert!(
        !err.message.contains("ghp_wrong_value_9999"),
        "{}",
        err.message
    );
    assert!(!format!("{client:?}").contains("ghp_wrong_value_9999"));
}

fn app_key() -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pem");
    let status = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&path)
        .arg("2048")
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success());
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test]
async fn an_app_installation_token_is_minted_once_and_again_before_it_expires() {
    let pem = app_key();
    assert!(
        pem.contains("BEGIN RSA PRIVATE KEY"),
        "PKCS#1, as GitHub hands it out"
    );
    let gh = FakeGithub::start("ghp_unused_personal_token").await;
    gh.add_repo("octo/agent");
    let app = Arc::new(AppAuth::from_pem(42, 7, &pem).unwrap());
    gh.accept_app(app.public_key_der(), 3600);
    let client = GithubClient::new(&gh.url(), Auth::App(app.clone()), "fleet-test").unwrap();
    client.get("/repos/octo/agent").await.unwrap();
    client.get("/repos/octo/agent").await.unwrap();
    assert_eq!(gh.minted().len(), 1, "an hour-long token is reused");

    // Tokens that expire within the refresh margin (5 minutes) are minted again.
    let gh2 = FakeGithub::start("ghp_unused_personal_token").await;
    gh2.add_repo("octo/agent");
    let app2 = Arc::new(AppAuth::from_pem(42, 7, &pem).unwrap());
    gh2.accept_app(app2.public_key_der(), 120);
    let client2 = GithubClient::new(&gh2.url(), Auth::App(app2), "fleet-test").unwrap();
    client2.get("/repos/octo/agent").await.unwrap();
    client2.get("/repos/octo/agent").await.unwrap();
    assert_eq!(gh2.minted().len(), 2);
    let exchanges: Vec<_> = gh2
        .requests()
        .into_iter()
        .filter(|r| r.path == "/app/installations/7/access_tokens")
        .collect();
    assert!(
        exchanges.iter().all(|r| r.status == 201),
        "the JWT verified: {exchanges:?}"
    );
}

// The CLI runs as a blocking child process: the fake needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_github_hook_create_registers_the_three_events_with_the_secret() {
    let gh = FakeGithub::start(TOKEN).await;
    gh.add_repo("octo/agent");
    let dir = tempfile::tempdir().unwrap();
    let config = fleet_tests::harness::local_config(
        dir.path(),
        &format!("[github]\napi_url = \"{}\"\n", gh.url()),
    );
    let out = fleet_tests::processes::fleet(
        &[
            "--config",
            config.to_str().unwrap(),
            "--json",
            "github",
            "hook",
            "create",
            "octo/agent",
            "--url",
            "https://fleet.example.com/webhooks/github",
        ],
        &[
            ("GITHUB_TOKEN", TOKEN.to_string()),
            (
                "GITHUB_WEBHOOK_SECRET",
                "a-very-secret-webhook-value".to_string(),
            ),
        ],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let hooks = gh.repo("octo/agent").hooks;
    assert_eq!(hooks.len(), 1);
    assert_eq!(printed["hook_id"], hooks[0]["id"]);
    assert_eq!(
        hooks[0]["events"],
        json!(["push", "issues", "issue_comment"])
    );
    assert_eq!(hooks[0]["config"]["content_type"], "json");
    assert_eq!(hooks[0]["config"]["secret"], "a-very-secret-webhook-value");
    assert_eq!(
        hooks[0]["config"]["url"],
        "https://fleet.example.com/webhooks/github"
    );
    assert!(!stdout.contains("a-very-secret-webhook-value"));
}
