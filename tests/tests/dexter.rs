//! The `dexter` runtime and its run-once wrapper (`agents/dexter/run-once.ts`), run by
//! real Bun (npm `bun`) against a stand-in Dexter checkout with Dexter's layout and agent
//! entry point (`tests/fixtures/dexter-standin`) and a fake OpenAI-compatible endpoint
//! (`fleet_tests::fake_openai`): answers with every model call's tokens, failures
//! classified from the HTTP status, the timeout, the per-job cache, setup once per agent,
//! the query byte for byte — and one run through a real worker and Redis.
//!
//! Bun is installed once into `target/agent-clis/`; where it cannot be, the tests skip
//! with a message.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use fleet_shared::error::ErrorClass;
use fleet_shared::job::JobSpec;
use fleet_shared::results::JobStatus;
use fleet_shared::runtime::dexter::DexterRuntime;
use fleet_shared::runtime::{AgentRuntime, RunOptions};
use fleet_shared::sandbox::local::{LocalConfig, LocalProvider};
use fleet_shared::sandbox::{SandboxProvider, SandboxSpec};
use fleet_shared::secret::Secret;
use fleet_shared::settings::{AgentProfile, RuntimeKind};
use fleet_tests::agent_clis::{BUN, npm_bin_dir, path_with};
use fleet_tests::fake_openai::{FakeOpenAi, Mode};
use fleet_tests::fixture::Fleet;
use fleet_tests::harness::workspace_root;

const API_KEY: &str = "sk-openai-fake-test-key-42";
const HOSTILE_QUERY: &str = "Revenue of \"AAPL\" vs 'MSFT'? $(touch pwned) `id`; rm -rf ~ | cat > x\nline 2\ttab — Über 📈 日本語";

fn standin() -> PathBuf {
    workspace_root().join("tests/fixtures/dexter-standin")
}

fn bun_dir() -> Option<PathBuf> {
    match npm_bin_dir(BUN) {
        Ok(dir) => Some(dir),
        Err(why) => {
            eprintln!("SKIPPED: Bun cannot be installed here: {why}");
            None
        }
    }
}

struct Sandbox {
    _root: tempfile::TempDir,
    provider: LocalProvider,
    id: String,
    home: PathBuf,
}

async fn sandbox(bun: &std::path::Path) -> Sandbox {
    let root = tempfile::tempdir().unwrap();
    let provider = LocalProvider::new(LocalConfig {
        root: root.path().to_path_buf(),
        env_allowlist: vec!["PATH".into()],
        max_output_bytes: 1024 * 1024,
        extra_path: vec![bun.to_path_buf()],
    });
    let id = provider.create(&SandboxSpec::default()).await.unwrap().id;
    let home = root.path().join(&id).join("home");
    Sandbox {
        _root: root,
        provider,
        id,
        home,
    }
}

fn runtime(fake: &FakeOpenAi, tweak: impl FnOnce(&mut AgentProfile)) -> DexterRuntime {
    let mut profile = AgentProfile {
        runtime: RuntimeKind::Dexter,
        repo: standin().display().to_string(),
        model: "gpt-4.1".into(),
        env: BTreeMap::from([("OPENAI_BASE_URL".to_string(), fake.base_url.clone())]),
        secret_env: vec!["OPENAI_API_KEY".into()],
        ..Default::default()
    };
    tweak(&mut profile);
    let secrets = BTreeMap::from([("OPENAI_API_KEY".to_string(), Secret::new(API_KEY))]);
    DexterRuntime::new(profile, secrets, workspace_root())
}

fn options(timeout: Duration) -> RunOptions {
    RunOptions {
        timeout: Some(timeout),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_wrapper_answers_with_every_model_calls_tokens_and_the_query_byte_for_byte() {
    let Some(bun) = bun_dir() else { return };
    let fake = FakeOpenAi::start(Mode::Echo).await;
    let rt = runtime(&fake, |_| {});
    let sb = sandbox(&bun).await;
    rt.setup(&sb.provider, &sb.id).await.unwrap();
    let setup: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.home.join("agent/.fleet/setup.json")).unwrap())
            .unwrap();
    assert_eq!(setup["runtime"], "dexter");
    assert!(sb.home.join("agent/fleet-run-once.ts").is_file());

    let out = rt
        .run(
            &sb.provider,
            &sb.id,
            HOSTILE_QUERY,
            options(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(out.answer, format!("You asked: {HOSTILE_QUERY}"));
    let m = &out.metadata;
    assert_eq!(m["model_calls"], 2, "{m}");
    // Both calls (router + main) counted; the agent's own figure has the main one only.
    assert_eq!(m["token_usage"]["totalTokens"], 240, "{m}");
    assert_eq!(
        m["token_usage"]["reportedByAgent"]["totalTokens"], 120,
        "{m}"
    );
    assert_eq!(m["iterations"], 2);
    assert_eq!(m["tool_calls"][0]["tool"], "get_financials");
    assert_eq!(m["tool_calls"][0]["args"]["query"], HOSTILE_QUERY);
    assert!(m["elapsed_ms"].as_u64().is_some());
    let requests = fake.requests();
    assert_eq!(requests[1]["messages"][0]["content"], HOSTILE_QUERY);
    assert_eq!(requests[1]["model"], "gpt-4.1");
    assert!(!sb.home.join("agent/pwned").exists() && !sb.home.join("pwned").exists());
    assert!(!out.answer.contains(API_KEY) && !m.to_string().contains(API_KEY));
}

#[tokio::test]
async fn model_failures_are_classified_from_the_http_status() {
    let Some(bun) = bun_dir() else { return };
    for (mode, class, text) in [
        (Mode::Status(401), ErrorClass::Permanent, "HTTP 401"),
        (Mode::Status(400), ErrorClass::Permanent, "HTTP 400"),
        (Mode::Status(529), ErrorClass::Transient, "HTTP 529"),
        (Mode::Status(500), ErrorClass::Transient, "HTTP 500"),
    ] {
        let fake = FakeOpenAi::start(mode.clone()).await;
        let rt = runtime(&fake, |_| {});
        let sb = sandbox(&bun).await;
        rt.setup(&sb.provider, &sb.id).await.unwrap();
        let err = rt
            .run(&sb.provider, &sb.id, "q", options(Duration::from_secs(60)))
            .await
            .unwrap_err();
        assert_eq!(err.class, class, "{mode:?}: {err:?}");
        assert!(err.message.contains(text), "{mode:?}: {}", err.message);
        let details = err.details.expect("the run's figures");
        assert_eq!(details["model_calls"], 1, "{details}");
    }

    let fake = FakeOpenAi::start(Mode::RateLimited {
        retry_after_secs: 3,
        times: 5,
    })
    .await;
    let rt = runtime(&fake, |_| {});
    let sb = sandbox(&bun).await;
    rt.setup(&sb.provider, &sb.id).await.unwrap();
    let err = rt
        .run(&sb.provider, &sb.id, "q", options(Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient);
    assert_eq!(err.retry_after, Some(Duration::from_secs(3)));
}

#[tokio::test]
async fn running_out_of_iterations_is_a_permanent_failure_with_the_tool_errors() {
    let Some(bun) = bun_dir() else { return };
    let fake = FakeOpenAi::start(Mode::Echo).await;
    let rt = runtime(&fake, |p| p.max_iterations = 1);
    let sb = sandbox(&bun).await;
    rt.setup(&sb.provider, &sb.id).await.unwrap();
    let err = rt
        .run(&sb.provider, &sb.id, "q", options(Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message
            .starts_with("dexter: ran out of iterations: Reached maximum iterations (1)"),
        "{}",
        err.message
    );
    let details = err.details.unwrap();
    assert_eq!(details["tool_errors"], 1, "{details}");
    assert_eq!(details["tool_error_details"][0]["tool"], "get_financials");
    assert_eq!(details["iterations"], 1);
}

#[tokio::test]
async fn an_empty_answer_fails_and_a_slow_model_hits_the_wrappers_timeout() {
    let Some(bun) = bun_dir() else { return };
    let fake = FakeOpenAi::start(Mode::Empty).await;
    let rt = runtime(&fake, |_| {});
    let sb = sandbox(&bun).await;
    rt.setup(&sb.provider, &sb.id).await.unwrap();
    let err = rt
        .run(&sb.provider, &sb.id, "q", options(Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.starts_with("dexter: empty answer"),
        "{}",
        err.message
    );

    // An 8 s attempt gives the wrapper DEXTER_TIMEOUT_MS = 4000: it aborts the agent
    // and reports, before the sandbox kills it.
    let fake = FakeOpenAi::start(Mode::Slow(Duration::from_secs(30))).await;
    let rt = runtime(&fake, |_| {});
    rt.setup(&sb.provider, &sb.id).await.unwrap();
    let started = std::time::Instant::now();
    let err = rt
        .run(&sb.provider, &sb.id, "q", options(Duration::from_secs(8)))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Timeout, "{err:?}");
    assert!(
        err.message.contains("DEXTER_TIMEOUT_MS=4000"),
        "{}",
        err.message
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_scratch_cache_is_cleared_between_jobs_unless_shared_on_purpose() {
    let Some(bun) = bun_dir() else { return };
    let fake = FakeOpenAi::start(Mode::Echo).await;
    for (share, leaks) in [(false, false), (true, true)] {
        let rt = runtime(&fake, |p| p.share_cache = share);
        let sb = sandbox(&bun).await;
        rt.setup(&sb.provider, &sb.id).await.unwrap();
        let first = rt
            .run(
                &sb.provider,
                &sb.id,
                "first secret query",
                options(Duration::from_secs(60)),
            )
            .await
            .unwrap();
        assert_eq!(first.answer, "You asked: first secret query");
        let second = rt
            .run(
                &sb.provider,
                &sb.id,
                "second",
                options(Duration::from_secs(60)),
            )
            .await
            .unwrap();
        assert_eq!(
            second.answer.contains("first secret query"),
            leaks,
            "share_cache = {share}: {}",
            second.answer
        );
    }
}

#[tokio::test]
async fn dexter_runs_through_a_worker_and_a_401_is_dead_at_once() {
    let Some(bun) = bun_dir() else { return };
    let fake = FakeOpenAi::start(Mode::Echo).await;
    let bad = FakeOpenAi::start(Mode::Status(401)).await;
    let profile = |name: &str, url: &str| {
        format!(
            r#"
[agents.{name}]
runtime = "dexter"
repo = "{repo}"
model = "gpt-4.1"
setup = [["sh", "-c", "echo once >> setup-runs.log"]]
secret_env = ["OPENAI_API_KEY"]
env = {{ OPENAI_BASE_URL = "{url}" }}
"#,
            repo = standin().display()
        )
    };
    let extra = profile("dexter", &fake.base_url) + &profile("dexter_bad_key", &bad.base_url);
    let mut fleet = Fleet::start("cat", &extra).await;
    fleet.start_worker_with_env(
        "w1",
        &[
            ("OPENAI_API_KEY", API_KEY.to_string()),
            ("PATH", path_with(&bun)),
        ],
    );
    let started = std::time::Instant::now();
    let id = fleet
        .submit(JobSpec::research(HOSTILE_QUERY, "dexter"))
        .await;
    let record = fleet
        .wait_status(
            &id.to_string(),
            JobStatus::Succeeded,
            Duration::from_secs(90),
        )
        .await;
    eprintln!(
        "first dexter job (setup + run) took {:?}",
        started.elapsed()
    );
    let output = &record.result.as_ref().unwrap()["output"];
    assert_eq!(output["answer"], format!("You asked: {HOSTILE_QUERY}"));
    assert_eq!(output["metadata"]["model_calls"], 2);

    let started = std::time::Instant::now();
    let id = fleet.submit(JobSpec::research("again", "dexter")).await;
    fleet
        .wait_status(
            &id.to_string(),
            JobStatus::Succeeded,
            Duration::from_secs(90),
        )
        .await;
    eprintln!(
        "second dexter job on the warm agent took {:?}",
        started.elapsed()
    );

    let mut spec = JobSpec::research("q", "dexter_bad_key");
    spec.options.max_attempts = Some(4);
    let id = fleet.submit(spec).await;
    let record = fleet
        .wait_status(&id.to_string(), JobStatus::Dead, Duration::from_secs(90))
        .await;
    assert_eq!(record.attempts, 1);
    let error = record.error.unwrap();
    assert_eq!(error["class"], "permanent");
    assert!(
        error["message"].as_str().unwrap().contains("HTTP 401"),
        "{error}"
    );
    assert_eq!(
        record.history[0].details.as_ref().unwrap()["model_calls"],
        1
    );
    assert!(!fleet.logs().contains(API_KEY));
}
