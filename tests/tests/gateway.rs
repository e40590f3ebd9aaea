//! The model gateway over real HTTP and a real Redis: gateways started in this process
//! (two of them where the limiter is shared) in front of the fake Anthropic and OpenAI
//! endpoints and a fake data API, with attempt tokens issued for real leased jobs.
//!
//! Shown here: streamed and whole answers pass through byte for byte, and a stream is
//! passed on as it arrives; the real key reaches the upstream and nothing else (Redis
//! holds neither keys nor tokens); usage and cost are summed per job from streamed and
//! whole answers of all three APIs; a token is refused once its attempt ends or its lease
//! is lost; budget refusals come in the provider's own error shape and overshoot is
//! bounded by the requests in flight; a 429 makes every gateway sharing the limiter wait
//! out its retry-after; a rotated key file takes effect without a restart; a data API
//! gets the same key swap and metering.
//!
//! `gateway_fleet.rs` runs the same through real worker processes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use fleet_shared::error::ErrorClass;
use fleet_shared::gateway::{AttemptPass, Gateway};
use fleet_shared::job::{JobSpec, QueueKind, Usd};
use fleet_shared::queue::{AttemptRecord, Lease, RedisQueue, Settlement};
use fleet_shared::settings::Settings;
use fleet_tests::RedisServer;
use fleet_tests::fake_anthropic::{FakeAnthropic, FakeUsage, Mode};
use fleet_tests::fake_openai::{self, FakeOpenAi};
use fleet_tests::harness::{eventually, queue};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const ANTHROPIC_KEY: &str = "sk-ant-real-gateway-key-0123456789";
const OPENAI_KEY: &str = "sk-openai-real-gateway-key-9876543210";
const DATA_KEY: &str = "fd-real-data-key-5555555555";
const SONNET: &str = "claude-sonnet-4-5-20250929";

struct Rig {
    redis: RedisServer,
    dir: tempfile::TempDir,
    settings: Settings,
    queue: RedisQueue,
    stop: CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A Redis, key files and settings with the gateway in front of `anthropic`, `openai`
/// (API roots) and the data API `findata`; `extra` TOML is appended.
async fn rig(anthropic: &str, openai: &str, findata: &str, extra: &str) -> Rig {
    rig_with_env(anthropic, openai, findata, extra, &[]).await
}

/// [`rig`] with `FLEET_…` setting overrides (for keys of sections the rig writes).
async fn rig_with_env(
    anthropic: &str,
    openai: &str,
    findata: &str,
    extra: &str,
    env: &[(&str, &str)],
) -> Rig {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    for (file, key) in [
        ("anthropic.key", ANTHROPIC_KEY),
        ("openai.key", OPENAI_KEY),
        ("findata.key", DATA_KEY),
    ] {
        std::fs::write(dir.path().join(file), format!("{key}\n")).unwrap();
    }
    let d = dir.path().display();
    let text = format!(
        r#"
[redis]
url = "{url}"
[gateway]
enabled = true
listen = "127.0.0.1:0"
max_wait_secs = 30
[gateway.anthropic]
base_url = "{anthropic}"
key_env = []
key_files = ["{d}/anthropic.key"]
[gateway.openai]
base_url = "{openai}"
key_env = []
key_files = ["{d}/openai.key"]
[gateway.upstreams.findata]
base_url = "{findata}"
auth_header = "x-api-key"
key_env = "FINANCIAL_DATASETS_API_KEY"
key_files = ["{d}/findata.key"]
{extra}
"#,
        url = redis.url(),
    );
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (format!("FLEET_{k}"), v.to_string()))
        .collect();
    let settings = Settings::from_layers(Some(&text), &env).expect("gateway test settings");
    let queue = queue(&settings, QueueKind::Research).await;
    Rig {
        redis,
        dir,
        settings,
        queue,
        stop: CancellationToken::new(),
    }
}

impl Rig {
    async fn gateway(&self) -> (Arc<Gateway>, String) {
        let gw = Gateway::open(&self.settings)
            .await
            .expect("open the gateway");
        gw.serve(self.stop.clone()).await.expect("gateway listens");
        let url = gw.public_url();
        (gw, url)
    }

    /// Enqueue a job with `options`, lease it, and issue its attempt token.
    async fn attempt(&self, gw: &Gateway, edit: impl FnOnce(&mut JobSpec)) -> (Lease, AttemptPass) {
        let mut spec = JobSpec::research("q", "demo");
        edit(&mut spec);
        self.queue.enqueue(spec).await.unwrap();
        let lease = self.queue.fetch("w", 1).await.unwrap().leases.remove(0);
        let pass = self.issue(gw, &lease).await;
        (lease, pass)
    }

    async fn issue(&self, gw: &Gateway, lease: &Lease) -> AttemptPass {
        let job = lease.decode().unwrap();
        gw.begin_attempt(gw.binding(&job, lease, "demo"), &CancellationToken::new())
            .await
            .expect("issue a token")
    }

    /// Every key and value in Redis, as text.
    async fn redis_dump(&self) -> String {
        let client = redis::Client::open(self.redis.url()).unwrap();
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
            text.push('\n');
            text.push_str(&String::from_utf8_lossy(&dump));
            text.push('\n');
        }
        text
    }
}

fn token(pass: &AttemptPass) -> String {
    pass.env["ANTHROPIC_API_KEY"].clone()
}

/// POST a model request the way the providers' SDKs do: Anthropic with `x-api-key`,
/// OpenAI with a bearer token.
async fn call(url: &str, path: &str, token: &str, body: &Value) -> (u16, HeaderMap, Vec<u8>) {
    let client = reqwest::Client::new();
    let mut req = client.post(format!("{url}{path}")).json(body);
    req = if path == "/v1/messages" {
        req.header("x-api-key", token)
            .header("anthropic-version", "2023-06-01")
    } else {
        req.bearer_auth(token)
    };
    let resp = req.send().await.expect("the gateway answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

fn anthropic_request(stream: bool) -> Value {
    json!({"model": SONNET, "max_tokens": 100, "stream": stream,
           "messages": [{"role": "user", "content": "What was revenue?"}]})
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test]
async fn answers_pass_through_byte_for_byte_with_the_real_key_and_usage_is_counted_from_all_three_apis()
 {
    let anthropic = FakeAnthropic::start(Mode::Answer("Revenue was $391 billion.".into())).await;
    anthropic.set_usage(FakeUsage {
        input: 120,
        output: 30,
        cache_read: 50,
        cache_write: 7,
    });
    let openai = FakeOpenAi::start(fake_openai::Mode::Echo).await;
    let openai_root = openai.base_url.trim_end_matches("/v1").to_string();
    let r = rig(&anthropic.url, &openai_root, "http://127.0.0.1:9", "").await;
    let (gw, url) = r.gateway().await;
    let (_lease, pass) = r.attempt(&gw, |_| {}).await;
    let tok = token(&pass);
    assert!(tok.starts_with("fgw-"));
    assert_eq!(pass.env["OPENAI_API_KEY"], tok);
    assert_eq!(pass.env["ANTHROPIC_BASE_URL"], url);
    assert_eq!(pass.env["OPENAI_BASE_URL"], format!("{url}/v1"));
    assert_eq!(
        pass.env["FINANCIAL_DATASETS_API_KEY"], tok,
        "a data API's key variable holds the token"
    );

    // Anthropic, streamed and whole.
    for stream in [true, false] {
        let (status, headers, body) =
            call(&url, "/v1/messages", &tok, &anthropic_request(stream)).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let seen = anthropic.requests().pop().unwrap();
        assert_eq!(
            body, seen.response,
            "the answer arrives byte for byte (stream: {stream})"
        );
        assert_eq!(
            seen.api_key.as_deref(),
            Some(ANTHROPIC_KEY),
            "the upstream gets the real key"
        );
        assert_eq!(seen.prompt().as_deref(), Some("What was revenue?"));
        let ct = headers["content-type"].to_str().unwrap();
        assert_eq!(ct.starts_with("text/event-stream"), stream, "{ct}");
    }
    // OpenAI Chat Completions and Responses, streamed and whole.
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4.1", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4.1", "stream": true, "input": "hi"}),
        ),
        ("/v1/responses", json!({"model": "gpt-4.1", "input": "hi"})),
    ] {
        let (status, _, answer) = call(&url, path, &tok, &body).await;
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&answer));
        let seen = openai.recorded().pop().unwrap();
        assert_eq!(seen.path, path);
        assert_eq!(answer, seen.response, "{path}: byte for byte");
        assert_eq!(seen.api_key.as_deref(), Some(OPENAI_KEY));
        if path == "/v1/chat/completions" && body["stream"] == true {
            assert_eq!(
                seen.body["stream_options"]["include_usage"], true,
                "a streamed chat completion is asked for its usage"
            );
        }
    }

    let spend = gw.end_attempt(pass).await;
    assert_eq!(spend.budget_exceeded, None);
    let u = spend.job.usage;
    // Anthropic: 2 x (120 in, 30 out, 50 cache read, 7 cache write).
    // OpenAI: 4 x (100 prompt of which 40 cached, 20 out).
    let fresh_openai = fake_openai::PROMPT_TOKENS - fake_openai::CACHED_TOKENS;
    assert_eq!(u.input, 2 * 120 + 4 * fresh_openai);
    assert_eq!(u.output, 2 * 30 + 4 * fake_openai::COMPLETION_TOKENS);
    assert_eq!(u.cache_read, 2 * 50 + 4 * fake_openai::CACHED_TOKENS);
    assert_eq!(u.cache_write, 2 * 7);
    assert_eq!(spend.job.requests, 6);
    assert_eq!(
        spend.attempt.usage, u,
        "one attempt: the job's spend is the attempt's"
    );
    // Priced from config/default.toml: claude-sonnet-4-5 3/15/0.30/3.75, gpt-4.1 2/8/0.50.
    let sonnet = (120.0 * 3.0 + 30.0 * 15.0 + 50.0 * 0.30 + 7.0 * 3.75) / 1e6;
    let gpt = (fresh_openai as f64 * 2.0 + 20.0 * 8.0 + 40.0 * 0.50) / 1e6;
    assert!(
        close(spend.job.cost_usd, 2.0 * sonnet + 4.0 * gpt),
        "{}",
        spend.job.cost_usd
    );
    assert_eq!(
        spend.job.by_model[SONNET].2, 2,
        "per model: {:?}",
        spend.job.by_model
    );
    assert_eq!(spend.job.by_model["gpt-4.1"].2, 4);
    let metrics = gw.metrics_text();
    assert!(
        metrics.contains(&format!("fleet_gateway_tokens_total{{profile=\"demo\",model=\"{SONNET}\",kind=\"cache_read\"}} 100")),
        "{metrics}"
    );
    assert!(
        metrics.contains("fleet_gateway_requests_total{profile=\"demo\",model=\"gpt-4.1\"} 4"),
        "{metrics}"
    );

    // Redis holds neither the keys nor the token (only its hash).
    let dump = r.redis_dump().await;
    for secret in [ANTHROPIC_KEY, OPENAI_KEY, DATA_KEY, tok.as_str(), &tok[4..]] {
        assert!(!dump.contains(secret), "Redis holds a secret");
    }
}

#[tokio::test]
async fn a_stream_is_passed_on_as_it_arrives_not_after_it_ends() {
    // An upstream that sends its first event, then holds the stream open until told.
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let release_rx = Arc::new(std::sync::Mutex::new(Some(release_rx)));
    let app = Router::new().route(
        "/v1/messages",
        post(move || {
            let rx = release_rx.lock().unwrap().take().expect("one request");
            async move {
                let first = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n";
                let rest = "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n";
                let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(first.to_string()) })
                    .chain(futures::stream::once(async move {
                        let _ = rx.await;
                        Ok(rest.to_string())
                    }));
                axum::response::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(stream))
                    .unwrap()
            }
        }),
    );
    use futures::StreamExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let r = rig(&upstream, "http://127.0.0.1:9", "http://127.0.0.1:9", "").await;
    let (gw, url) = r.gateway().await;
    let (_lease, pass) = r.attempt(&gw, |_| {}).await;
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/messages"))
        .header("x-api-key", token(&pass))
        .json(&json!({"model": "m", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("the first event arrives while the upstream still holds the stream open")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("message_start"));
    release_tx.send(()).unwrap();
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(String::from_utf8_lossy(&rest).contains("message_delta"));
    let spend = gw.end_attempt(pass).await;
    assert_eq!((spend.job.usage.input, spend.job.usage.output), (5, 9));
}

#[tokio::test]
async fn a_token_is_refused_once_its_attempt_ended_or_its_lease_was_lost() {
    let anthropic = FakeAnthropic::start(Mode::Answer("ok".into())).await;
    let openai = FakeOpenAi::start(fake_openai::Mode::Echo).await;
    let r = rig(
        &anthropic.url,
        openai.base_url.trim_end_matches("/v1"),
        "http://127.0.0.1:9",
        "",
    )
    .await;
    let (gw, url) = r.gateway().await;

    // No key, a made-up key, a forged token: 401 in Anthropic's shape.
    let forged = format!("fgw-{}", "A".repeat(43));
    for key in ["", "sk-ant-guess", forged.as_str()] {
        let (status, _, body) = call(&url, "/v1/messages", key, &anthropic_request(false)).await;
        assert_eq!(status, 401);
        let body = json_of(&body);
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "authentication_error");
    }

    // Ended: refused (Anthropic and OpenAI shapes).
    let (_lease, pass) = r.attempt(&gw, |_| {}).await;
    let tok = token(&pass);
    assert_eq!(
        call(&url, "/v1/messages", &tok, &anthropic_request(false))
            .await
            .0,
        200
    );
    gw.end_attempt(pass).await;
    let (status, _, body) = call(&url, "/v1/messages", &tok, &anthropic_request(false)).await;
    assert_eq!(
        (status, json_of(&body)["error"]["type"].clone()),
        (401, json!("authentication_error"))
    );
    let chat = json!({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, body) = call(&url, "/v1/chat/completions", &tok, &chat).await;
    assert_eq!(status, 401);
    assert_eq!(json_of(&body)["error"]["code"], "invalid_api_key");

    // Lease lost: the job was handed back and leased again (a new fencing token); the
    // old attempt's token is refused at once, the new attempt's works.
    let (lease, pass) = r.attempt(&gw, |_| {}).await;
    let old = token(&pass);
    assert_eq!(
        call(&url, "/v1/messages", &old, &anthropic_request(false))
            .await
            .0,
        200
    );
    let record = AttemptRecord::ended(&lease, "w", 0, "released", None);
    r.queue
        .fail(&lease, Settlement::Release, &json!(null), &record)
        .await
        .unwrap();
    let again = r.queue.fetch("w2", 1).await.unwrap().leases.remove(0);
    assert_ne!(again.token, lease.token);
    let before = anthropic.requests().len();
    assert_eq!(
        call(&url, "/v1/messages", &old, &anthropic_request(false))
            .await
            .0,
        401
    );
    assert_eq!(
        anthropic.requests().len(),
        before,
        "a refused request never reaches the provider"
    );
    let new_pass = r.issue(&gw, &again).await;
    assert_eq!(
        call(
            &url,
            "/v1/messages",
            &token(&new_pass),
            &anthropic_request(false)
        )
        .await
        .0,
        200
    );
}

#[tokio::test]
async fn a_request_over_the_job_budget_is_refused_in_the_providers_shape_and_overshoot_is_bounded()
{
    let anthropic = FakeAnthropic::start(Mode::Answer("ok".into())).await;
    let openai = FakeOpenAi::start(fake_openai::Mode::Echo).await;
    let r = rig(
        &anthropic.url,
        openai.base_url.trim_end_matches("/v1"),
        "http://127.0.0.1:9",
        "",
    )
    .await;
    let (gw, url) = r.gateway().await;
    // 120 in + 30 out on claude-sonnet-4-5: $0.00081 a request.
    let per_request = (120.0 * 3.0 + 30.0 * 15.0) / 1e6;
    let cap = 0.001;
    let (_lease, pass) = r
        .attempt(&gw, |s| s.options.max_budget_usd = Some(Usd(cap)))
        .await;
    let tok = token(&pass);
    let mut ok = 0;
    let refused = loop {
        let (status, _, body) = call(&url, "/v1/messages", &tok, &anthropic_request(true)).await;
        if status != 200 {
            break (status, json_of(&body));
        }
        ok += 1;
        assert!(ok < 10, "the budget never stopped the job");
    };
    assert_eq!(
        ok, 2,
        "the second request started under the cap; the third would pass it"
    );
    assert_eq!(refused.0, 400);
    assert_eq!(refused.1["type"], "error");
    assert_eq!(refused.1["error"]["type"], "invalid_request_error");
    assert!(
        refused.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("budget exceeded")
    );
    // Through the OpenAI side the same token gets OpenAI's quota error.
    let chat = json!({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, body) = call(&url, "/v1/chat/completions", &tok, &chat).await;
    assert_eq!(
        (status, json_of(&body)["error"]["code"].clone()),
        (429, json!("insufficient_quota"))
    );
    assert_eq!(
        anthropic.requests().len(),
        2,
        "refused requests never reach the provider"
    );
    let spend = gw.end_attempt(pass).await;
    assert!(spend.budget_exceeded.is_some());
    assert!(close(spend.job.cost_usd, 2.0 * per_request));
    let err = spend.error(None).expect("the attempt fails");
    assert_eq!(err.class, ErrorClass::BudgetExceeded);
    assert!(!err.class.is_retryable());
    let details = err.details.unwrap();
    assert!(
        close(details["cost_usd"].as_f64().unwrap(), 2.0 * per_request),
        "{details}"
    );
    assert_eq!(details["usage"]["requests"], 2);

    // Ten requests at once against a fresh job with the same cap: those admitted all
    // started under it; afterwards the cap holds. Spend exceeds it by at most the
    // requests that were in flight together.
    let (_lease, pass) = r
        .attempt(&gw, |s| s.options.max_budget_usd = Some(Usd(cap)))
        .await;
    let tok = token(&pass);
    let calls = (0..10).map(|_| {
        let (url, tok) = (url.clone(), tok.clone());
        async move {
            call(&url, "/v1/messages", &tok, &anthropic_request(true))
                .await
                .0
        }
    });
    let statuses = futures::future::join_all(calls).await;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        admitted >= 1 && statuses.iter().all(|s| *s == 200 || *s == 400),
        "{statuses:?}"
    );
    assert_eq!(
        call(&url, "/v1/messages", &tok, &anthropic_request(true))
            .await
            .0,
        400
    );
    let spend = gw.end_attempt(pass).await;
    assert!(close(spend.job.cost_usd, admitted as f64 * per_request));
    assert!(spend.job.cost_usd <= cap + admitted as f64 * per_request);

    // max_tokens works the same way: 150 tokens a request (and about 40 reserved for the
    // next one's input), a 160-token cap.
    let (_lease, pass) = r.attempt(&gw, |s| s.options.max_tokens = Some(160)).await;
    let tok = token(&pass);
    assert_eq!(
        call(&url, "/v1/messages", &tok, &anthropic_request(false))
            .await
            .0,
        200
    );
    assert_eq!(
        call(&url, "/v1/messages", &tok, &anthropic_request(false))
            .await
            .0,
        400
    );
    let spend = gw.end_attempt(pass).await;
    assert!(spend.budget_exceeded.unwrap().contains("tokens"));
}

#[tokio::test]
async fn a_batch_and_a_tenant_share_their_budgets_across_jobs() {
    let anthropic = FakeAnthropic::start(Mode::Answer("ok".into())).await;
    let r = rig(
        &anthropic.url,
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        "[gateway.budgets]\nbatch_usd = 0.001\ntenant_key = \"tenant\"\ntenant_daily_usd = 0.0\ntenants = { acme = 0.001 }\n",
    )
    .await;
    let (gw, url) = r.gateway().await;
    // Two jobs of one batch: $0.00081 each; the second job's second request is refused.
    let in_batch = |s: &mut JobSpec| s.options.batch_id = Some("b1".into());
    let (_l1, a) = r.attempt(&gw, in_batch).await;
    let (_l2, b) = r.attempt(&gw, in_batch).await;
    assert_eq!(
        call(&url, "/v1/messages", &token(&a), &anthropic_request(false))
            .await
            .0,
        200
    );
    assert_eq!(
        call(&url, "/v1/messages", &token(&b), &anthropic_request(false))
            .await
            .0,
        200
    );
    let (status, _, body) = call(&url, "/v1/messages", &token(&b), &anthropic_request(false)).await;
    assert_eq!(status, 400);
    assert!(
        json_of(&body)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("batch")
    );
    // A tenant's day: the same across two jobs of different batches.
    let acme = |s: &mut JobSpec| {
        s.options.metadata.insert("tenant".into(), "acme".into());
    };
    let (_l3, c) = r.attempt(&gw, acme).await;
    let (_l4, d) = r.attempt(&gw, acme).await;
    assert_eq!(
        call(&url, "/v1/messages", &token(&c), &anthropic_request(false))
            .await
            .0,
        200
    );
    assert_eq!(
        call(&url, "/v1/messages", &token(&d), &anthropic_request(false))
            .await
            .0,
        200
    );
    let (status, _, body) = call(&url, "/v1/messages", &token(&c), &anthropic_request(false)).await;
    assert_eq!(status, 400);
    assert!(
        json_of(&body)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tenant")
    );
    // Another tenant is not held to acme's cap (and has none: tenant_daily_usd = 0).
    let (_l5, e) = r
        .attempt(&gw, |s| {
            s.options.metadata.insert("tenant".into(), "globex".into());
        })
        .await;
    for _ in 0..3 {
        assert_eq!(
            call(&url, "/v1/messages", &token(&e), &anthropic_request(false))
                .await
                .0,
            200
        );
    }
}

#[tokio::test]
async fn a_429_makes_every_gateway_sharing_the_limiter_wait_out_its_retry_after() {
    let anthropic = FakeAnthropic::start(Mode::RateLimited {
        retry_after_secs: 2,
        times: 1,
        then: "ok".into(),
    })
    .await;
    let r = rig(
        &anthropic.url,
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        "",
    )
    .await;
    // Two gateways (as two workers would run) on one Redis.
    let (gw1, url1) = r.gateway().await;
    let (gw2, url2) = r.gateway().await;
    assert_ne!(url1, url2);
    let (_l1, a) = r.attempt(&gw1, |_| {}).await;
    let (_l2, b) = r.attempt(&gw2, |_| {}).await;
    let first = {
        let (url, tok) = (url1.clone(), token(&a));
        tokio::spawn(
            async move { call(&url, "/v1/messages", &tok, &anthropic_request(true)).await },
        )
    };
    let limited_at = eventually(
        "the upstream to answer 429",
        Duration::from_secs(10),
        || async {
            anthropic
                .requests()
                .iter()
                .find(|r| r.status == 429)
                .map(|r| r.at)
        },
    )
    .await;
    // The first gateway has recorded the pause (it counts the 429 once it has).
    eventually(
        "the 429 to be recorded",
        Duration::from_secs(10),
        || async {
            gw1.metrics_text()
                .contains("fleet_gateway_upstream_429_total 1")
                .then_some(())
        },
    )
    .await;
    // The other gateway's agent asks while the group is paused.
    let second = call(&url2, "/v1/messages", &token(&b), &anthropic_request(false)).await;
    let first = first.await.unwrap();
    assert_eq!(
        first.0,
        200,
        "the agent never sees the 429: {}",
        String::from_utf8_lossy(&first.2)
    );
    assert_eq!(second.0, 200);
    let requests = anthropic.requests();
    assert_eq!(requests.len(), 3, "one 429, then each request once");
    for r in requests.iter().filter(|r| r.status != 429) {
        let after = r.at.duration_since(limited_at);
        assert!(
            after >= Duration::from_millis(1900),
            "a request reached the provider {after:?} after the 429, inside its 2 s retry-after"
        );
    }
    assert!(
        gw1.metrics_text()
            .contains("fleet_gateway_upstream_429_total 1")
    );
    assert!(
        gw2.metrics_text()
            .contains("fleet_gateway_rate_limit_waits_total 1")
    );
}

#[tokio::test]
async fn the_limiter_spaces_requests_to_the_configured_rate_and_bounds_its_queue() {
    let anthropic = FakeAnthropic::start(Mode::Answer("ok".into())).await;
    let r = rig_with_env(
        &anthropic.url,
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        "",
        &[
            ("GATEWAY__MAX_WAITING", "2"),
            ("GATEWAY__ANTHROPIC__REQUESTS_PER_MINUTE", "600"),
        ],
    )
    .await;
    let (gw, url) = r.gateway().await;
    let (_lease, pass) = r.attempt(&gw, |_| {}).await;
    let tok = token(&pass);
    // 600/min: one every 100 ms. Three at once: one goes, two wait their turn.
    let started = Instant::now();
    let calls = (0..3).map(|_| {
        let (url, tok) = (url.clone(), tok.clone());
        async move {
            call(&url, "/v1/messages", &tok, &anthropic_request(false))
                .await
                .0
        }
    });
    let statuses = futures::future::join_all(calls).await;
    assert_eq!(statuses, vec![200, 200, 200]);
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "{:?}",
        started.elapsed()
    );
    let mut at: Vec<Instant> = anthropic.requests().iter().map(|r| r.at).collect();
    at.sort();
    for pair in at.windows(2) {
        assert!(
            pair[1].duration_since(pair[0]) >= Duration::from_millis(90),
            "{at:?}"
        );
    }
    // Five at once with room for two waiting: two are answered 429 by the gateway itself.
    let calls = (0..5).map(|_| {
        let (url, tok) = (url.clone(), tok.clone());
        async move { call(&url, "/v1/messages", &tok, &anthropic_request(false)).await }
    });
    let answers = futures::future::join_all(calls).await;
    let over: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
    // At most one goes at once and two wait; the others are turned away.
    let codes: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert!((2..=3).contains(&over.len()), "{codes:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 429), "{codes:?}");
    for (_, headers, body) in over {
        assert!(headers.contains_key("retry-after"));
        assert_eq!(json_of(body)["error"]["type"], "rate_limit_error");
    }
}

#[tokio::test]
async fn a_rotated_key_file_takes_effect_without_a_restart_or_a_failed_request() {
    let anthropic = FakeAnthropic::start(Mode::Answer("ok".into())).await;
    const NEW_KEY: &str = "sk-ant-rotated-key-abcdefghij";
    anthropic.accept_only(&[ANTHROPIC_KEY, NEW_KEY]);
    let r = rig(
        &anthropic.url,
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        "",
    )
    .await;
    let (gw, url) = r.gateway().await;
    let (_lease, pass) = r.attempt(&gw, |_| {}).await;
    let tok = token(&pass);
    assert_eq!(
        call(&url, "/v1/messages", &tok, &anthropic_request(false))
            .await
            .0,
        200
    );
    std::fs::write(r.dir.path().join("anthropic.key"), format!("{NEW_KEY}\n")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(
            call(&url, "/v1/messages", &tok, &anthropic_request(false))
                .await
                .0,
            200
        );
        if anthropic.requests().last().unwrap().api_key.as_deref() == Some(NEW_KEY) {
            break;
        }
        assert!(Instant::now() < deadline, "the new key was never used");
    }
    // From then on only the new key is sent; the old one can be revoked.
    anthropic.accept_only(&[NEW_KEY]);
    for _ in 0..3 {
        assert_eq!(
            call(&url, "/v1/messages", &tok, &anthropic_request(true))
                .await
                .0,
            200
        );
    }
    assert!(anthropic.requests().iter().all(|r| r.status == 200));
}

#[tokio::test]
async fn a_data_api_gets_the_key_swap_and_its_requests_are_counted_per_job() {
    // (the key each request carried, its query)
    type Seen = Vec<(Option<String>, String)>;
    let seen: Arc<std::sync::Mutex<Seen>> = Arc::default();
    let app = {
        let seen = seen.clone();
        Router::new().route(
            "/financials/income-statements/",
            get(move |headers: HeaderMap, uri: axum::http::Uri| {
                let seen = seen.clone();
                async move {
                    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_string);
                    seen.lock().unwrap().push((key, uri.query().unwrap_or_default().to_string()));
                    axum::Json(json!({"income_statements": [{"ticker": "AAPL", "revenue": 391035000000u64}]}))
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let data_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let r = rig("http://127.0.0.1:9", "http://127.0.0.1:9", &data_url, "").await;
    let (gw, url) = r.gateway().await;
    let (_lease, pass) = r.attempt(&gw, |_| {}).await;
    let base = pass.env["FLEET_UPSTREAM_FINDATA_URL"].clone();
    assert_eq!(base, format!("{url}/upstream/findata"));
    let key = pass.env["FINANCIAL_DATASETS_API_KEY"].clone();
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let resp = client
            .get(format!(
                "{base}/financials/income-statements/?ticker=AAPL&period=annual&limit=4"
            ))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["income_statements"][0]["ticker"], "AAPL");
    }
    let refused = client
        .get(format!("{base}/financials/income-statements/?ticker=AAPL"))
        .header("x-api-key", DATA_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "the real key is not a token");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for (key, query) in seen {
        assert_eq!(key.as_deref(), Some(DATA_KEY));
        assert_eq!(query, "ticker=AAPL&period=annual&limit=4");
    }
    let spend = gw.end_attempt(pass).await;
    assert_eq!(spend.job.requests, 2, "{spend:?}");
    assert_eq!(spend.job.cost_usd, 0.0);
}
