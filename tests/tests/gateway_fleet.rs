//! The model gateway end to end: a real `fleet-worker` process with `[gateway]` on,
//! a stand-in agent (a shell script calling the OpenAI-compatible API with `curl`, the
//! way an SDK would, from what its environment says) in a local sandbox, and the fake
//! OpenAI endpoint.
//!
//! Shown: the job's result carries its usage and cost (streamed and whole answers
//! counted) and `/metrics` exports them by profile and model; the real key reaches the
//! provider and nothing else (not the sandbox's environment, not the result, Redis or the
//! worker's log); the attempt's token is refused once the job ended; a job over its
//! budget is dead-lettered on its first attempt as `budget_exceeded`, its spend kept; two
//! workers' gateways share one limiter, so a 429 makes both wait out its retry-after; the
//! real Claude Code CLI runs through the gateway with exactly the fake's token counts.

use std::time::Duration;

use fleet_shared::job::{JobSpec, Usd};
use fleet_shared::results::JobStatus;
use fleet_tests::fake_openai::{self, FakeOpenAi};
use fleet_tests::fixture::Fleet;
use fleet_tests::redis_server::free_port;
use serde_json::{Value, json};

const REAL_KEY: &str = "sk-openai-real-fleet-key-0123456789";
const WAIT: Duration = Duration::from_secs(60);

/// Reads how many calls to make from stdin; records its environment; calls the chat
/// completions API through `$OPENAI_BASE_URL` with `$OPENAI_API_KEY`, every other call
/// streamed. A refused call ends it with exit code 3.
const AGENT: &str = r#"read n
env > "{dir}/agent-env.txt"
i=0
while [ "$i" -lt "$n" ]; do
  if [ $((i % 2)) -eq 0 ]; then stream=true; else stream=false; fi
  body='{"model":"gpt-4.1","stream":'$stream',"messages":[{"role":"user","content":"revenue?"}]}'
  curl -sSf -o /dev/null -H "Authorization: Bearer $OPENAI_API_KEY" -H 'content-type: application/json' \
    -d "$body" "$OPENAI_BASE_URL/chat/completions" || exit 3
  i=$((i + 1))
done
echo "made $n calls"
"#;

struct GatewayFleet {
    fleet: Fleet,
    fake: FakeOpenAi,
    gateway_url: String,
    metrics_port: u16,
}

async fn gateway_fleet() -> GatewayFleet {
    let fake = FakeOpenAi::start(fake_openai::Mode::Echo).await;
    let port = free_port();
    let extra = format!(
        r#"
[gateway]
enabled = true
listen = "127.0.0.1:{port}"
[gateway.openai]
base_url = "{root}"
"#,
        root = fake.base_url.trim_end_matches("/v1"),
    );
    let mut fleet = Fleet::start(AGENT, &extra).await;
    let metrics_port = free_port();
    fleet.start_worker_with_env(
        "w1",
        &[
            ("OPENAI_API_KEY", REAL_KEY.to_string()),
            (
                "FLEET_WORKER__HTTP_ADDR",
                format!("127.0.0.1:{metrics_port}"),
            ),
            // The profile even asks for the real key: the token overrides it.
            (
                "FLEET_AGENTS__TEST__SECRET_ENV",
                "[\"OPENAI_API_KEY\"]".into(),
            ),
        ],
    );
    GatewayFleet {
        fleet,
        fake,
        gateway_url: format!("http://127.0.0.1:{port}"),
        metrics_port,
    }
}

/// Every key and value in Redis, as text.
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
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        text.push_str(&key);
        text.push_str(&String::from_utf8_lossy(&dump));
    }
    text
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// gpt-4.1 at 2 / 8 / 0.50 per million (config/default.toml): 60 fresh input, 40 cached,
/// 20 output tokens a call.
fn cost_per_call() -> f64 {
    let fresh = (fake_openai::PROMPT_TOKENS - fake_openai::CACHED_TOKENS) as f64;
    (fresh * 2.0
        + fake_openai::COMPLETION_TOKENS as f64 * 8.0
        + fake_openai::CACHED_TOKENS as f64 * 0.5)
        / 1e6
}

#[tokio::test]
async fn a_job_through_the_gateway_records_usage_and_cost_and_its_sandbox_never_holds_the_key() {
    let g = gateway_fleet().await;
    let f = &g.fleet;
    let id = f.submit(JobSpec::research("2", "test")).await.to_string();
    let record = f.wait_status(&id, JobStatus::Succeeded, WAIT).await;
    let output = &record.result.as_ref().unwrap()["output"];
    assert_eq!(output["answer"].as_str().unwrap().trim(), "made 2 calls");

    // Usage and cost, one streamed and one whole answer.
    let usage = &output["usage"];
    let fresh = fake_openai::PROMPT_TOKENS - fake_openai::CACHED_TOKENS;
    assert_eq!(usage["input_tokens"], json!(2 * fresh), "{output}");
    assert_eq!(
        usage["output_tokens"],
        json!(2 * fake_openai::COMPLETION_TOKENS)
    );
    assert_eq!(
        usage["cache_read_tokens"],
        json!(2 * fake_openai::CACHED_TOKENS)
    );
    assert_eq!(usage["requests"], 2);
    assert_eq!(usage["models"]["gpt-4.1"]["requests"], 2);
    assert!(
        close(output["cost_usd"].as_f64().unwrap(), 2.0 * cost_per_call()),
        "{output}"
    );
    assert_eq!(
        output["attempt_usage"]["output_tokens"], usage["output_tokens"],
        "one attempt: its usage is the job's"
    );

    // The provider got the real key; the sandbox only the token and the gateway's URL.
    let seen = g.fake.recorded();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r.api_key.as_deref() == Some(REAL_KEY)));
    let env = std::fs::read_to_string(f.path("agent-env.txt")).unwrap();
    assert!(
        !env.contains(REAL_KEY),
        "the sandbox's environment holds the real key"
    );
    let token = env
        .lines()
        .find_map(|l| l.strip_prefix("OPENAI_API_KEY="))
        .expect("the agent has a key")
        .to_string();
    assert!(token.starts_with("fgw-"), "{token}");
    assert!(env.contains(&format!("OPENAI_BASE_URL={}/v1", g.gateway_url)));

    // The attempt is over: its token is refused.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", g.gateway_url))
        .bearer_auth(&token)
        .json(&json!({"model": "gpt-4.1", "messages": [{"role": "user", "content": "again"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(
        g.fake.recorded().len(),
        2,
        "the refused call never reached the provider"
    );

    // Prometheus, by profile and model.
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", g.metrics_port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let out = 2 * fake_openai::COMPLETION_TOKENS;
    assert!(
        metrics.contains(&format!(
            "fleet_gateway_tokens_total{{profile=\"test\",model=\"gpt-4.1\",kind=\"output\"}} {out}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("fleet_gateway_requests_total{profile=\"test\",model=\"gpt-4.1\"} 2"));
    assert!(metrics.contains("fleet_gateway_refused_total{reason=\"attempt_ended\"} 1"));

    // Nowhere else either: the result, Redis, the worker's log.
    let result = serde_json::to_string(&record.result).unwrap();
    let dump = redis_dump(f).await;
    let log = f.workers[0].log_text();
    for (place, text) in [("result", &result), ("Redis", &dump), ("log", &log)] {
        assert!(!text.contains(REAL_KEY), "the real key is in the {place}");
        assert!(!text.contains(&token), "the token is in the {place}");
    }
}

#[tokio::test]
async fn a_job_over_its_budget_is_dead_on_its_first_attempt_as_budget_exceeded_with_its_spend() {
    let g = gateway_fleet().await;
    let f = &g.fleet;
    // Two calls fit under the cap ($0.0003 each; the second starts at $0.0003), the
    // third would pass it and is refused; the agent gives up.
    let mut spec = JobSpec::research("20", "test");
    spec.options.max_budget_usd = Some(Usd(0.0005));
    spec.options.max_attempts = Some(3);
    let id = f.submit(spec).await.to_string();
    let record = f.wait_status(&id, JobStatus::Dead, WAIT).await;
    let error = record.error.as_ref().unwrap();
    assert_eq!(error["class"], "budget_exceeded", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("budget exceeded")
    );
    assert_eq!(record.attempts, 1, "a budget refusal is not retried");
    assert_eq!(record.history.len(), 1);
    let attempt = &record.history[0];
    assert_eq!(attempt.outcome, "budget_exceeded");
    let details = attempt.details.as_ref().expect("the spend is kept");
    assert!(
        close(details["cost_usd"].as_f64().unwrap(), 2.0 * cost_per_call()),
        "{details}"
    );
    assert_eq!(details["usage"]["requests"], 2);
    assert_eq!(
        g.fake.recorded().len(),
        2,
        "the refused call never reached the provider"
    );
}

const ANTHROPIC_KEY: &str = "sk-ant-real-fleet-key-abcdefghijklmnop";

/// The real Claude Code CLI through a worker, the gateway and the fake Anthropic API:
/// the job's tokens equal the fake's own counts, the CLI's own cost is kept next to
/// the gateway's, the CLI's environment and the sandbox's files never hold the key.
/// Skips (saying why) where the CLI cannot be installed from npm.
#[tokio::test]
async fn claude_code_runs_through_the_gateway_with_the_fakes_token_counts_and_no_key() {
    use fleet_tests::agent_clis::{CLAUDE_CODE, npm_bin_dir, path_with};
    use fleet_tests::fake_anthropic::{FakeAnthropic, FakeUsage, Mode};
    let bin = match npm_bin_dir(CLAUDE_CODE) {
        Ok(bin) => bin,
        Err(why) => {
            eprintln!("SKIPPED: the Claude Code CLI cannot be installed here: {why}");
            return;
        }
    };
    let fake = FakeAnthropic::start(Mode::Answer("Revenue was $391.0B.".into())).await;
    fake.set_usage(FakeUsage {
        input: 120,
        output: 30,
        cache_read: 64,
        cache_write: 16,
    });
    fake.accept_only(&[ANTHROPIC_KEY]);
    let port = free_port();
    // A `claude` on the sandbox's PATH that records its environment, then runs the CLI.
    let dir = tempfile::tempdir().unwrap();
    let wrapper_dir = dir.path().join("bin");
    std::fs::create_dir_all(&wrapper_dir).unwrap();
    let env_file = dir.path().join("claude-env.txt");
    let wrapper = wrapper_dir.join("claude");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nenv > '{}'\nexec '{}' \"$@\"\n",
            env_file.display(),
            bin.join("claude").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let extra = format!(
        r#"
[gateway]
enabled = true
listen = "127.0.0.1:{port}"
[gateway.anthropic]
base_url = "{url}"
[agents.claude]
runtime = "claude_code"
repo = ""
model = "claude-sonnet-4-5"
max_turns = 3
allowed_tools = ["Read", "Grep"]
permission_mode = "dontAsk"
env = {{ IS_SANDBOX = "1" }}
"#,
        url = fake.url
    );
    let mut fleet = Fleet::start("cat", &extra).await;
    fleet.start_worker_with_env(
        "w1",
        &[
            ("ANTHROPIC_API_KEY", ANTHROPIC_KEY.to_string()),
            ("PATH", path_with(&wrapper_dir)),
        ],
    );
    let mut spec = JobSpec::research("What was Apple's revenue?", "claude");
    spec.options.max_attempts = Some(1);
    let id = fleet.submit(spec).await.to_string();
    let record = fleet
        .wait_status(&id, JobStatus::Succeeded, Duration::from_secs(120))
        .await;
    let output = &record.result.as_ref().unwrap()["output"];
    assert_eq!(output["answer"], "Revenue was $391.0B.");

    // Exactly the fake's counts, over every request it answered.
    let answered: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.status == 200)
        .collect();
    assert!(!answered.is_empty());
    assert!(
        answered
            .iter()
            .all(|r| r.api_key.as_deref() == Some(ANTHROPIC_KEY))
    );
    let n = answered.len() as u64;
    let usage = &output["usage"];
    assert_eq!(usage["input_tokens"], json!(120 * n), "{output}");
    assert_eq!(usage["output_tokens"], json!(30 * n));
    assert_eq!(usage["cache_read_tokens"], json!(64 * n));
    assert_eq!(usage["cache_write_tokens"], json!(16 * n));
    assert!(output["cost_usd"].as_f64().unwrap() > 0.0);
    assert!(
        output["cost_usd_agent"].as_f64().is_some(),
        "the CLI's own figure is kept: {output}"
    );

    // The CLI's environment: the gateway and a token, never the key.
    let env = std::fs::read_to_string(&env_file).expect("the wrapper ran");
    assert!(
        !env.contains(ANTHROPIC_KEY),
        "the CLI's environment holds the key"
    );
    assert!(env.contains(&format!("ANTHROPIC_BASE_URL=http://127.0.0.1:{port}")));
    let token = env
        .lines()
        .find_map(|l| l.strip_prefix("ANTHROPIC_API_KEY="))
        .unwrap()
        .to_string();
    assert!(token.starts_with("fgw-"));
    // Nor anything the sandbox wrote, Redis, the result or the log.
    let mut files = String::new();
    for entry in walk(&fleet.path("sandboxes")) {
        files.push_str(&String::from_utf8_lossy(
            &std::fs::read(entry).unwrap_or_default(),
        ));
    }
    let dump = redis_dump(&fleet).await;
    let result = serde_json::to_string(&record.result).unwrap();
    let log = fleet.logs();
    for (place, text) in [
        ("sandbox files", &files),
        ("Redis", &dump),
        ("result", &result),
        ("log", &log),
    ] {
        assert!(!text.contains(ANTHROPIC_KEY), "the key is in the {place}");
    }
    // The attempt is over: its token is refused.
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/messages"))
        .header("x-api-key", &token)
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(walk(&p)),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
    out
}

/// Two worker processes, each with its own gateway, share one limiter through Redis: after
/// the provider answers one agent 429 with `retry-after: 5`, the other worker's agent waits
/// too — no request reaches the provider inside the window — and neither agent sees a 429.
#[tokio::test]
async fn a_429_seen_by_one_workers_gateway_makes_the_other_worker_wait_too() {
    use fleet_tests::fake_anthropic::{FakeAnthropic, Mode};
    let fake = FakeAnthropic::start(Mode::RateLimited {
        retry_after_secs: 5,
        times: 1,
        then: "ok".into(),
    })
    .await;
    let script = r#"read name
env > "{dir}/env-$name.txt"
curl -sSf -o /dev/null -H "x-api-key: $ANTHROPIC_API_KEY" -H 'anthropic-version: 2023-06-01' \
  -H 'content-type: application/json' \
  -d '{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}' \
  "$ANTHROPIC_BASE_URL/v1/messages" || exit 3
echo done
"#;
    let extra = format!(
        "[gateway]\nenabled = true\n[gateway.anthropic]\nbase_url = \"{}\"\n",
        fake.url
    );
    let mut fleet = Fleet::start(script, &extra).await;
    for name in ["w1", "w2"] {
        fleet.start_worker_with_env(
            name,
            &[
                ("ANTHROPIC_API_KEY", ANTHROPIC_KEY.to_string()),
                ("FLEET_WORKER__CONCURRENCY", "1".into()),
                (
                    "FLEET_GATEWAY__LISTEN",
                    format!("127.0.0.1:{}", free_port()),
                ),
            ],
        );
    }
    fleet.wait_started(0).await;
    fleet.wait_started(1).await;
    let a = fleet
        .submit(JobSpec::research("a", "test"))
        .await
        .to_string();
    let limited_at = fleet
        .eventually("the provider to answer 429", WAIT, || async {
            fake.requests()
                .iter()
                .find(|r| r.status == 429)
                .map(|r| r.at)
        })
        .await;
    // The pause is in Redis for every gateway (the limiter's `blocked_until`).
    let client = redis::Client::open(fleet.redis.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    fleet
        .eventually("the pause to be recorded", WAIT, || {
            let mut conn = conn.clone();
            async move {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg("*{gateway}:rl:*")
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                let key = keys.first()?;
                let until: Option<f64> = redis::cmd("HGET")
                    .arg(key)
                    .arg("blocked_until")
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                until.map(|_| ())
            }
        })
        .await;
    // The first worker is busy with `a` (its agent waits in its gateway): `b` goes to
    // the other worker, whose gateway must wait too.
    let b = fleet
        .submit(JobSpec::research("b", "test"))
        .await
        .to_string();
    let ra = fleet.wait_status(&a, JobStatus::Succeeded, WAIT).await;
    let rb = fleet.wait_status(&b, JobStatus::Succeeded, WAIT).await;
    assert_ne!(
        ra.worker, rb.worker,
        "the two jobs ran on different workers"
    );
    let url = |name: &str| {
        std::fs::read_to_string(fleet.path(&format!("env-{name}.txt")))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("ANTHROPIC_BASE_URL=").map(str::to_string))
            .unwrap()
    };
    assert_ne!(
        url("a"),
        url("b"),
        "each worker's agent used its own gateway"
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 3, "one 429, then each agent's request once");
    for r in requests.iter().filter(|r| r.status != 429) {
        let after = r.at.duration_since(limited_at);
        assert!(
            after >= Duration::from_millis(4900),
            "a request reached the provider {after:?} after the 429, inside its 5 s retry-after"
        );
    }
}

/// An agent that cannot be given a base URL keeps the old path (`gateway = false` on its
/// profile): its sandbox gets the key from `secret_env`, the gateway issues it no token,
/// and `fleet agents list` marks it — while a gateway profile beside it on the same worker
/// gets only a token.
#[tokio::test]
async fn a_profile_that_opts_out_of_the_gateway_keeps_its_key_and_is_marked_in_the_agent_list() {
    let fake = FakeOpenAi::start(fake_openai::Mode::Echo).await;
    let port = free_port();
    let extra = format!(
        r#"
[gateway]
enabled = true
listen = "127.0.0.1:{port}"
[gateway.openai]
base_url = "{root}"

[agents.direct]
runtime = "command"
repo = "{{dir}}/agent-repo"
command = ["sh", "-c", "env > \"{{dir}}/direct-env.txt\"; echo direct"]
secret_env = ["OPENAI_API_KEY"]
gateway = false
"#,
        root = fake.base_url.trim_end_matches("/v1"),
    );
    let mut fleet =
        Fleet::start("read n; env > \"{dir}/agent-env.txt\"; echo pooled", &extra).await;
    fleet.start_worker_with_env(
        "w1",
        &[
            ("OPENAI_API_KEY", REAL_KEY.to_string()),
            (
                "FLEET_AGENTS__TEST__SECRET_ENV",
                "[\"OPENAI_API_KEY\"]".into(),
            ),
        ],
    );
    let direct = fleet
        .submit(JobSpec::research("q", "direct"))
        .await
        .to_string();
    let through = fleet
        .submit(JobSpec::research("0", "test"))
        .await
        .to_string();
    fleet.wait_status(&direct, JobStatus::Succeeded, WAIT).await;
    fleet
        .wait_status(&through, JobStatus::Succeeded, WAIT)
        .await;

    // The old path: the real key in the sandbox, no gateway in sight.
    let env = std::fs::read_to_string(fleet.path("direct-env.txt")).unwrap();
    assert!(env.contains(&format!("OPENAI_API_KEY={REAL_KEY}")), "{env}");
    assert!(!env.contains("FLEET_GATEWAY_URL"), "{env}");
    assert!(!env.contains("OPENAI_BASE_URL"), "{env}");
    // The gateway profile beside it: a token, never the key.
    let env = std::fs::read_to_string(fleet.path("agent-env.txt")).unwrap();
    assert!(!env.contains(REAL_KEY), "{env}");
    assert!(env.contains("OPENAI_API_KEY=fgw-"), "{env}");

    // The registry records which is which, and the list shows it.
    let e = [("FLEET_REDIS__URL", fleet.redis.url())];
    let out = fleet_tests::processes::fleet(&["--json", "agents", "list"], &e, None);
    assert!(out.status.success(), "{out:?}");
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let access: std::collections::BTreeMap<String, String> = listed["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["profile"].as_str().unwrap().to_string(),
                a["model_access"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(access["direct"], "direct");
    assert_eq!(access["test"], "gateway");
    let out = fleet_tests::processes::fleet(&["agents", "list"], &e, None);
    let table = String::from_utf8_lossy(&out.stdout);
    let row = |profile: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(profile))
            .unwrap_or_else(|| panic!("no {profile} row in {table}"))
            .to_string()
    };
    assert!(
        row("direct").contains("direct (keys in sandbox)"),
        "{table}"
    );
    assert!(row("test").contains(" gateway "), "{table}");
}

/// Issue 12's rate-limit promise through real worker processes: 3 workers (each with its
/// own gateway, 10 agents each), sharing `requests_per_minute = R` for the key, against a
/// provider that allows R per sliding minute and answers 429 beyond. The 30 agents fire
/// back to back — far more than 2× R — yet fewer than 1% of their requests see a 429, and
/// the provider's requests are spread at R: the last goes within 10% of the ideal
/// (N - 1) / R after the first.
#[tokio::test]
async fn three_workers_thirty_agents_share_one_limit_with_under_one_percent_429s() {
    use fleet_tests::fake_anthropic::{FakeAnthropic, Mode};
    const RPM: u32 = 1200;
    const CALLS_PER_JOB: usize = 14;
    const JOBS: usize = 30;
    let fake = FakeAnthropic::start(Mode::Limited {
        per_minute: RPM,
        text: "ok".into(),
    })
    .await;
    // Each agent makes its calls back to back, retrying a 429 at once (the worst
    // client), and reports how many 429s it saw.
    let script = r#"read n
i=0; seen=0
while [ "$i" -lt "$n" ]; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $ANTHROPIC_API_KEY" \
    -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' \
    -d '{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}' \
    "$ANTHROPIC_BASE_URL/v1/messages")
  case "$code" in
    200) i=$((i + 1)) ;;
    429) seen=$((seen + 1)) ;;
    *) echo "status $code" >&2; exit 3 ;;
  esac
done
echo "seen429=$seen"
"#;
    let extra = format!(
        "[pool]\nmin_idle = {JOBS}\n[gateway]\nenabled = true\n[gateway.anthropic]\nbase_url = \"{}\"\nrequests_per_minute = {RPM}\n",
        fake.url
    );
    let mut fleet = Fleet::start(script, &extra).await;
    for name in ["w1", "w2", "w3"] {
        fleet.start_worker_with_env(
            name,
            &[
                ("ANTHROPIC_API_KEY", ANTHROPIC_KEY.to_string()),
                ("FLEET_WORKER__CONCURRENCY", "10".into()),
                (
                    "FLEET_GATEWAY__LISTEN",
                    format!("127.0.0.1:{}", free_port()),
                ),
            ],
        );
    }
    for i in 0..3 {
        fleet.wait_started(i).await;
    }
    let warming = std::time::Instant::now();
    // The 30 agents warm first (min_idle), so the batch measures the limiter, not
    // sandbox launches.
    let registry = fleet_shared::pool::Registry::open(&fleet.settings.redis)
        .await
        .unwrap();
    fleet
        .eventually("30 idle agents", WAIT, || async {
            (registry.idle("test").await.ok()?.len() >= JOBS).then_some(())
        })
        .await;
    eprintln!("{JOBS} agents warm after {:?}", warming.elapsed());
    let specs = (0..JOBS)
        .map(|_| JobSpec::research(CALLS_PER_JOB.to_string(), "test"))
        .collect();
    let ids = fleet.queue.enqueue_many(specs, Some("rl")).await.unwrap();
    fleet
        .wait_batch_final("rl", JOBS as u64, Duration::from_secs(120))
        .await;
    let batch = fleet.queue.batch_record("rl").await.unwrap().unwrap();
    assert_eq!(batch.count(JobStatus::Succeeded), JOBS as u64, "{batch:?}");

    let mut seen = 0u64;
    let mut workers = std::collections::BTreeSet::new();
    for id in &ids {
        let r = fleet.record(&id.to_string()).await;
        let answer = r.result.as_ref().unwrap()["output"]["answer"]
            .as_str()
            .unwrap()
            .trim()
            .to_string();
        seen += answer
            .strip_prefix("seen429=")
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{answer}"));
        workers.insert(r.worker.clone());
    }
    assert_eq!(workers.len(), 3, "every worker ran jobs: {workers:?}");
    let calls = (JOBS * CALLS_PER_JOB) as u64;
    let share = seen as f64 / (calls + seen) as f64;
    assert!(
        share < 0.01,
        "{seen} of {} agent requests saw a 429",
        calls + seen
    );

    let requests = fake.requests();
    let ok: Vec<_> = requests
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.at)
        .collect();
    assert_eq!(ok.len() as u64, calls);
    let span = ok
        .iter()
        .max()
        .unwrap()
        .duration_since(*ok.iter().min().unwrap());
    let ideal = (calls - 1) as f64 * 60.0 / RPM as f64;
    let first = *ok.iter().min().unwrap();
    let mut per_second = vec![0u32; span.as_secs() as usize + 1];
    for at in &ok {
        per_second[at.duration_since(first).as_secs() as usize] += 1;
    }
    eprintln!("provider requests per second: {per_second:?}");
    assert!(
        span.as_secs_f64() <= ideal * 1.10,
        "the provider's requests took {span:?}, the ideal at R is {ideal:.2} s; per second: {per_second:?}"
    );
    // Not faster than R either: the limiter spaces them (a burst would be 429s).
    assert!(
        span.as_secs_f64() >= ideal * 0.9,
        "the requests were not spread at R: {span:?} for an ideal {ideal:.2} s"
    );
    eprintln!(
        "rate limit: {calls} calls by {JOBS} agents on 3 workers at R = {RPM}/min: {seen} agent 429s, \
         {} provider 429s, span {:.2} s vs ideal {ideal:.2} s",
        requests.iter().filter(|r| r.status == 429).count(),
        span.as_secs_f64()
    );
}
