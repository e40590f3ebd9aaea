//! The real Claude Code CLI (npm `@anthropic-ai/claude-code`, the pinned version) run
//! through real `fleet-worker` processes and a real Redis, against a fake Anthropic
//! Messages API (`fleet_tests::fake_anthropic`): answers, cost and session stored;
//! API errors classified (401 dead-lettered at once, 429 retried after its
//! `retry-after`, 529 retried); a persistent agent keeps one session across jobs and
//! across a retry; the query reaches the model byte for byte; the API key stays out of
//! Redis, results and logs.
//!
//! The CLI is installed once into `target/agent-clis/` with npm. Where it cannot be
//! installed, each test says so and skips.

use std::time::Duration;

use fleet_shared::job::{JobSpec, LifecycleJob, QueueKind};
use fleet_shared::results::{JobRecord, JobStatus};
use fleet_tests::agent_clis::{CLAUDE_CODE, npm_bin_dir, path_with};
use fleet_tests::fake_anthropic::{FakeAnthropic, Mode};
use fleet_tests::fixture::Fleet;
use fleet_tests::harness::queue;
use serde_json::Value;

const API_KEY: &str = "sk-ant-fake-test-key-0123456789";
const HOSTILE_QUERY: &str = "What was Apple's revenue? $(touch pwned) `id` 'single' \"double\" \\ ; | & > x\nSecond line\ttab — Über ünïcödé 📈 日本語";
const WAIT: Duration = Duration::from_secs(90);

struct ClaudeFleet {
    fleet: Fleet,
    fake: FakeAnthropic,
}

/// A fleet whose `claude` profile runs the real CLI against a fake in `mode`; `None`
/// (with a message) when the CLI cannot be installed.
async fn claude_fleet(mode: Mode) -> Option<ClaudeFleet> {
    let bin = match npm_bin_dir(CLAUDE_CODE) {
        Ok(bin) => bin,
        Err(why) => {
            eprintln!("SKIPPED: the Claude Code CLI cannot be installed here: {why}");
            return None;
        }
    };
    let fake = FakeAnthropic::start(mode).await;
    let extra = format!(
        r#"
[agents.claude]
runtime = "claude_code"
repo = ""
model = "claude-sonnet-4-5"
max_turns = 3
max_budget_usd = 1.0
allowed_tools = ["Read", "Grep"]
permission_mode = "dontAsk"
resume_session = true
secret_env = ["ANTHROPIC_API_KEY"]
env = {{ ANTHROPIC_BASE_URL = "{url}", IS_SANDBOX = "1" }}
"#,
        url = fake.url
    );
    let mut fleet = Fleet::start("cat", &extra).await;
    fleet.start_worker_with_env(
        "w1",
        &[
            ("ANTHROPIC_API_KEY", API_KEY.to_string()),
            ("PATH", path_with(&bin)),
        ],
    );
    Some(ClaudeFleet { fleet, fake })
}

fn research(query: &str, agent_id: Option<&str>, max_attempts: u32) -> JobSpec {
    let mut spec = JobSpec::research(query, "claude");
    if let fleet_shared::job::JobPayload::Research(r) = &mut spec.payload {
        r.agent_id = agent_id.map(str::to_string);
    }
    spec.options.max_attempts = Some(max_attempts);
    // Tiny backoff: any wait seen is the provider's retry-after.
    spec.options.backoff_base_ms = Some(10);
    spec.options.backoff_cap_ms = Some(10);
    spec
}

/// Launch a persistent `claude` agent through the lifecycle queue; its agent ID and
/// sandbox ID.
async fn launch_persistent_agent(f: &ClaudeFleet) -> (String, String) {
    let lifecycle = queue(&f.fleet.settings, QueueKind::Lifecycle).await;
    let (id, _) = lifecycle
        .enqueue(JobSpec::lifecycle(LifecycleJob::Launch {
            agent: "claude".into(),
            persistent: true,
        }))
        .await
        .unwrap();
    let record = f
        .fleet
        .eventually("the persistent agent to launch", WAIT, || async {
            let r = lifecycle.job_record(&id.to_string()).await.ok()??;
            (r.status == JobStatus::Succeeded).then_some(r)
        })
        .await;
    let agent = &record.result.unwrap()["output"]["agent"];
    (
        agent["agent_id"].as_str().unwrap().to_string(),
        agent["sandbox_id"].as_str().unwrap().to_string(),
    )
}

async fn launch_persistent(f: &ClaudeFleet) -> String {
    launch_persistent_agent(f).await.0
}

fn output(record: &JobRecord) -> &Value {
    &record.result.as_ref().expect("a result")["output"]
}

/// Everything in the test Redis, as text.
async fn redis_dump(f: &Fleet) -> String {
    let client = redis::Client::open(f.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut text = String::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let value: Value = match kind.as_str() {
            "string" => redis::cmd("GET")
                .arg(&key)
                .query_async::<String>(&mut conn)
                .await
                .unwrap()
                .into(),
            "hash" => serde_json::to_value(
                redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async::<Vec<String>>(&mut conn)
                    .await
                    .unwrap(),
            )
            .unwrap(),
            "list" => serde_json::to_value(
                redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async::<Vec<String>>(&mut conn)
                    .await
                    .unwrap(),
            )
            .unwrap(),
            "zset" | "set" => Value::Null,
            _ => Value::Null,
        };
        text.push_str(&format!("{key} {value}\n"));
    }
    text
}

#[tokio::test]
async fn the_real_cli_answers_through_a_worker_with_cost_and_session_stored() {
    let answer = "Apple's FY2024 revenue was $391.0B — \"up\" 2%.\nSource: 10-K";
    let Some(f) = claude_fleet(Mode::Answer(answer.into())).await else {
        return;
    };
    let started = std::time::Instant::now();
    let id = f.fleet.submit(research(HOSTILE_QUERY, None, 3)).await;
    let record = f
        .fleet
        .wait_status(&id.to_string(), JobStatus::Succeeded, WAIT)
        .await;
    eprintln!(
        "first job (sandbox setup + CLI run) took {:?}",
        started.elapsed()
    );
    let out = output(&record);
    assert_eq!(out["answer"], answer);
    let m = &out["metadata"];
    assert_eq!(m["is_error"], false);
    assert_eq!(m["subtype"], "success");
    assert_eq!(m["num_turns"], 1);
    assert!(m["total_cost_usd"].as_f64().unwrap() > 0.0, "{m}");
    assert_eq!(m["usage"]["output_tokens"], 30);
    assert!(m["duration_ms"].as_u64().is_some(), "{m}");
    let session = m["session_id"].as_str().unwrap();
    assert_eq!(session.len(), 36, "{session}");

    // The query reached the model byte for byte, as the end of the user message the
    // CLI builds (after its own system reminders), and nothing ran it as shell text.
    let requests = f.fake.requests();
    let main = requests
        .iter()
        .rev()
        .find(|r| r.streams())
        .expect("a streamed request");
    let prompt = main.prompt().unwrap();
    assert!(
        prompt.ends_with(HOSTILE_QUERY),
        "the prompt ends with {:?}",
        &prompt[prompt.len().saturating_sub(200)..]
    );
    assert!(main.had_api_key);
    assert!(!f.fleet.path("sandboxes").join("pwned").exists());

    // The key went to the CLI (the fake saw it) but nowhere the fleet keeps things.
    let dump = redis_dump(&f.fleet).await;
    assert!(!dump.contains(API_KEY), "the API key is in Redis");
    assert!(dump.contains(session), "the session ID is stored");
    assert!(
        !f.fleet.logs().contains(API_KEY),
        "the API key is in a worker log"
    );
}

#[tokio::test]
async fn a_401_is_dead_lettered_on_the_first_attempt_with_its_reason() {
    let Some(f) = claude_fleet(Mode::Unauthorized).await else {
        return;
    };
    let id = f.fleet.submit(research("q", None, 5)).await;
    let record = f
        .fleet
        .wait_status(&id.to_string(), JobStatus::Dead, WAIT)
        .await;
    assert_eq!(record.attempts, 1, "{record:?}");
    let error = record.error.as_ref().unwrap();
    assert_eq!(error["class"], "permanent");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("HTTP 401 authentication_error"),
        "{message}"
    );
    assert!(message.contains("Invalid API key"), "{message}");
    let attempt = &record.history[0];
    assert_eq!(attempt.outcome, "permanent");
    assert_eq!(attempt.error.as_deref(), Some(message));
    let details = attempt
        .details
        .as_ref()
        .expect("the run's figures are on the attempt");
    assert_eq!(details["api_error_status"], 401);
    assert_eq!(details["is_error"], true);
    assert!(details["session_id"].is_string(), "{details}");
    let streamed = f.fake.requests().iter().filter(|r| r.streams()).count();
    assert_eq!(streamed, 1, "one model request, no CLI retries");
    assert!(!redis_dump(&f.fleet).await.contains(API_KEY));
}

#[tokio::test]
async fn a_429_is_retried_after_the_providers_retry_after_and_resumes_the_session() {
    let Some(f) = claude_fleet(Mode::RateLimited {
        retry_after_secs: 2,
        times: 1,
        then: "answer after the rate limit".into(),
    })
    .await
    else {
        return;
    };
    let agent = launch_persistent(&f).await;
    let id = f
        .fleet
        .submit(research(HOSTILE_QUERY, Some(&agent), 3))
        .await;
    let record = f
        .fleet
        .wait_status(&id.to_string(), JobStatus::Succeeded, WAIT)
        .await;
    assert_eq!(record.attempts, 2);
    assert_eq!(output(&record)["answer"], "answer after the rate limit");
    let first = &record.history[0];
    assert_eq!(first.outcome, "transient");
    assert!(
        first.error.as_deref().unwrap().contains("HTTP 429"),
        "{first:?}"
    );
    assert!(first.retry_in_ms.unwrap() >= 2000, "{first:?}");
    let streamed: Vec<_> = f
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.streams())
        .collect();
    assert_eq!(streamed.len(), 2, "the CLI did not retry by itself");
    assert_eq!(streamed[0].status, 429);
    let gap = streamed[1].at - streamed[0].at;
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
    // The retry resumed the failed attempt's session instead of starting a new one.
    let failed_session = first.details.as_ref().unwrap()["session_id"]
        .as_str()
        .unwrap();
    assert_eq!(output(&record)["metadata"]["session_id"], failed_session);
}

#[tokio::test]
async fn a_529_is_transient_and_retried_until_the_attempts_run_out() {
    let Some(f) = claude_fleet(Mode::Overloaded).await else {
        return;
    };
    let id = f.fleet.submit(research("q", None, 2)).await;
    let record = f
        .fleet
        .wait_status(&id.to_string(), JobStatus::Dead, WAIT)
        .await;
    assert_eq!(record.attempts, 2);
    let message = record.error.as_ref().unwrap()["message"].as_str().unwrap();
    assert!(message.contains("HTTP 529 overloaded_error"), "{message}");
    assert!(
        message.contains("gave up after attempt 2 of 2"),
        "{message}"
    );
    assert_eq!(record.history[0].outcome, "transient");
}

#[tokio::test]
async fn a_jobs_own_turn_and_budget_caps_dead_letter_it_at_once_with_the_figures() {
    // A model that keeps calling a tool: the profile allows 3 turns and $1, the jobs
    // ask for less, and the real CLI stops where they say.
    let Some(f) = claude_fleet(Mode::ToolLoop).await else {
        return;
    };
    let mut spec = research("q", None, 5);
    spec.options.max_turns = Some(1);
    let id = f.fleet.submit(spec).await;
    let record = f
        .fleet
        .wait_status(&id.to_string(), JobStatus::Dead, WAIT)
        .await;
    assert_eq!(record.attempts, 1);
    let message = record.error.as_ref().unwrap()["message"].as_str().unwrap();
    assert_eq!(
        message,
        "claude code error_max_turns: Reached maximum number of turns (1)"
    );
    let details = record.history[0].details.as_ref().unwrap();
    assert_eq!(details["subtype"], "error_max_turns");
    assert!(
        details["total_cost_usd"].as_f64().unwrap() > 0.0,
        "{details}"
    );

    let mut spec = research("q", None, 5);
    spec.options.max_budget_usd = Some(fleet_shared::job::Usd(0.0001));
    let id = f.fleet.submit(spec).await;
    let record = f
        .fleet
        .wait_status(&id.to_string(), JobStatus::Dead, WAIT)
        .await;
    assert_eq!(record.attempts, 1);
    let message = record.error.as_ref().unwrap()["message"].as_str().unwrap();
    assert_eq!(
        message,
        "claude code error_max_budget_usd: Reached maximum budget ($0.0001)"
    );
}

#[tokio::test]
async fn two_jobs_on_one_persistent_agent_share_the_session() {
    let Some(f) = claude_fleet(Mode::Answer("noted".into())).await else {
        return;
    };
    let (agent, sandbox) = launch_persistent_agent(&f).await;
    let first = f
        .fleet
        .submit(research("Remember the ticker AAPL.", Some(&agent), 1))
        .await;
    let first = f
        .fleet
        .wait_status(&first.to_string(), JobStatus::Succeeded, WAIT)
        .await;
    let second = f
        .fleet
        .submit(research("Which ticker did I name?", Some(&agent), 1))
        .await;
    let second = f
        .fleet
        .wait_status(&second.to_string(), JobStatus::Succeeded, WAIT)
        .await;
    let session = output(&first)["metadata"]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(output(&second)["metadata"]["session_id"], session.as_str());
    // The second job's model request carried the first exchange.
    let last = f
        .fake
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.streams())
        .unwrap();
    assert!(
        last.message_count() >= 3,
        "{} messages",
        last.message_count()
    );
    let text = last.body["messages"].to_string();
    assert!(text.contains("Remember the ticker AAPL."), "{text}");

    // A pooled (not addressed) job on the same profile starts its own session.
    let pooled = f.fleet.submit(research("Fresh question", None, 1)).await;
    let pooled = f
        .fleet
        .wait_status(&pooled.to_string(), JobStatus::Succeeded, WAIT)
        .await;
    assert_ne!(output(&pooled)["metadata"]["session_id"], session.as_str());

    // A saved session the CLI no longer has (its transcript lost) does not wedge the
    // agent: the job starts a new session, which later jobs then resume.
    let saved = f
        .fleet
        .path("sandboxes")
        .join(&sandbox)
        .join("home/agent/.fleet/claude-session-id");
    assert_eq!(std::fs::read_to_string(&saved).unwrap(), session);
    let lost = "0c3b8a7e-5a0e-4f7c-9d51-6f2f1f0e9b11";
    std::fs::write(&saved, lost).unwrap();
    let third = f
        .fleet
        .submit(research("Start over.", Some(&agent), 1))
        .await;
    let third = f
        .fleet
        .wait_status(&third.to_string(), JobStatus::Succeeded, WAIT)
        .await;
    let fresh = output(&third)["metadata"]["session_id"].as_str().unwrap();
    assert!(fresh != lost && fresh != session, "{fresh}");
    assert_eq!(std::fs::read_to_string(&saved).unwrap(), fresh);
}

#[tokio::test]
async fn setup_installs_the_pinned_cli_when_the_sandbox_has_none() {
    use fleet_shared::runtime::claude_code::ClaudeCodeRuntime;
    use fleet_shared::runtime::{AgentRuntime, RunOptions};
    use fleet_shared::sandbox::local::{LocalConfig, LocalProvider};
    use fleet_shared::sandbox::{SandboxProvider, SandboxSpec};
    use fleet_shared::settings::{AgentProfile, RuntimeKind};
    use std::collections::BTreeMap;

    // The test cache's install fills npm's cache, so the install in the sandbox below
    // comes from it rather than from the registry.
    if let Err(why) = npm_bin_dir(CLAUDE_CODE) {
        eprintln!("SKIPPED: the Claude Code CLI cannot be installed here: {why}");
        return;
    }
    let Some(npm) = ["/usr/bin", "/usr/local/bin"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|d| d.join("npm").is_file())
    else {
        eprintln!("SKIPPED: no npm in /usr/bin or /usr/local/bin");
        return;
    };
    let fake = FakeAnthropic::start(Mode::Answer("installed and answering".into())).await;
    let root = tempfile::tempdir().unwrap();
    // A sandbox whose PATH has node and npm but no claude.
    let provider = LocalProvider::new(LocalConfig {
        root: root.path().to_path_buf(),
        env_allowlist: Vec::new(),
        max_output_bytes: 1024 * 1024,
        extra_path: vec![npm, "/bin".into()],
    });
    let sandbox = provider.create(&SandboxSpec::default()).await.unwrap().id;
    let home = std::env::var("HOME").unwrap();
    let profile = AgentProfile {
        runtime: RuntimeKind::ClaudeCode,
        model: "claude-sonnet-4-5".into(),
        env: BTreeMap::from([
            ("ANTHROPIC_BASE_URL".to_string(), fake.url.clone()),
            ("ANTHROPIC_API_KEY".to_string(), API_KEY.to_string()),
            ("npm_config_cache".to_string(), format!("{home}/.npm")),
            ("npm_config_prefer_offline".to_string(), "true".to_string()),
        ]),
        ..Default::default()
    };
    let rt = ClaudeCodeRuntime::new(profile, BTreeMap::new(), std::path::PathBuf::new());
    let started = std::time::Instant::now();
    rt.setup(&provider, &sandbox).await.unwrap();
    eprintln!(
        "installing the CLI in a sandbox took {:?}",
        started.elapsed()
    );
    let cli = std::fs::read_to_string(
        root.path()
            .join(&sandbox)
            .join("home/agent/.fleet/claude-cli"),
    )
    .unwrap();
    assert!(
        cli.ends_with(".fleet/claude-code/node_modules/.bin/claude"),
        "{cli}"
    );
    let out = rt
        .run(
            &provider,
            &sandbox,
            "q",
            RunOptions {
                timeout: Some(Duration::from_secs(60)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(out.answer, "installed and answering");
    // Setup again (a recycled agent) finds the installed CLI and installs nothing.
    let started = std::time::Instant::now();
    rt.setup(&provider, &sandbox).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
