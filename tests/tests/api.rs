//! `fleet serve`, the producer's HTTP API, as a real process against a real
//! redis-server and real `fleet-worker`s with the bundled demo agent: jobs and batches
//! submitted over HTTP are answered and read back; bad input gets a clear 4xx and
//! writes nothing; the bearer token guards /v1 and reaches no log; SIGTERM stops it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fleet_tests::RedisServer;
use fleet_tests::processes::{ServeProcess, WorkerProcess};
use reqwest::StatusCode;
use serde_json::{Value, json};

const QUESTION: &str = "What was Acme Robotics' revenue in 2023?";
const ANSWER: &str = "$1,342 million";

/// A redis-server, a temp directory with a config (its own sandbox root) and a
/// running `fleet serve`.
struct Api {
    redis: RedisServer,
    dir: tempfile::TempDir,
    config: PathBuf,
    server: ServeProcess,
    http: reqwest::Client,
}

impl Api {
    /// Start everything; `env` is extra environment for the server.
    async fn start(env: &[(&str, String)]) -> Api {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let config = fleet_tests::harness::local_config(dir.path(), "");
        let mut server_env = vec![("FLEET_REDIS__URL", redis.url())];
        server_env.extend(env.iter().cloned());
        let config_arg = config.display().to_string();
        let server = ServeProcess::start(&["--config", &config_arg], &server_env, dir.path());
        let api = Api {
            redis,
            dir,
            config,
            server,
            http: reqwest::Client::new(),
        };
        api.wait_healthy().await;
        api
    }

    /// Poll /healthz until it answers 200, within a deadline.
    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(self.server.url("/healthz")).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/healthz did not answer within 30s\n{}",
                self.server.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn worker(&self, name: &str) -> WorkerProcess {
        WorkerProcess::start(
            &self.config,
            name,
            &[("FLEET_REDIS__URL", self.redis.url())],
            self.dir.path(),
        )
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    fn keys(&self) -> i64 {
        redis::cmd("DBSIZE").query(&mut self.redis.conn()).unwrap()
    }
}

/// Send a request: (status, JSON body, Location header).
async fn send(rb: reqwest::RequestBuilder) -> (StatusCode, Value, Option<String>) {
    read(rb.send().await.expect("the request reaches fleet serve")).await
}

async fn read(r: reqwest::Response) -> (StatusCode, Value, Option<String>) {
    let status = r.status();
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{status}: the body is not JSON: {text:?}"));
    (status, body, location)
}

fn error_of(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no \"error\" in {body}"))
}

const UNKNOWN_ID: &str = "01a217cf-bef0-7595-8600-e8846f368fb2";

#[tokio::test]
async fn a_job_submitted_over_http_is_answered_and_read_back() {
    let api = Api::start(&[]).await;
    let (status, body, location) = send(
        api.http
            .post(api.url("/v1/jobs"))
            .json(&json!({"query": QUESTION, "metadata": {"team": "research"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["existing"], false);
    assert_eq!(body["queue"], "research");
    let id = body["id"].as_str().expect("a job ID").to_string();
    assert_eq!(location.as_deref(), Some(format!("/v1/jobs/{id}").as_str()));

    // No worker yet: queued, and the result is not there.
    let (status, record, _) = send(api.http.get(api.url(&format!("/v1/jobs/{id}")))).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["status"], "queued");
    assert_eq!(record["queue"], "research");
    assert_eq!(record["spec"]["query"], QUESTION);
    assert_eq!(record["spec"]["agent"], "demo");
    assert_eq!(record["spec"]["options"]["metadata"]["team"], "research");
    let (status, body, _) = send(api.http.get(api.url(&format!("/v1/jobs/{id}/result")))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "queued");

    // A result request waiting for the job returns as soon as a worker has done it.
    let waiting = {
        let http = api.http.clone();
        let url = api.url(&format!("/v1/jobs/{id}/result?wait=60"));
        tokio::spawn(async move {
            let started = Instant::now();
            let got = send(http.get(url)).await;
            (got, started.elapsed())
        })
    };
    let _worker = api.worker("w1");
    let ((status, body, _), took) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}\n{}", api.server.logs());
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["id"], id.as_str());
    assert!(body["answer"].as_str().unwrap().contains(ANSWER), "{body}");
    assert!(took < Duration::from_secs(50), "the wait ran out: {took:?}");
    let (_, record, _) = send(api.http.get(api.url(&format!("/v1/jobs/{id}")))).await;
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["attempts"], 1);
    let finished = record["finished_at"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        now.saturating_sub(finished) < 10_000,
        "the result came {}ms after the job ended",
        now.saturating_sub(finished)
    );

    // Ended: the result without waiting, and cancel leaves it alone.
    let (status, body, _) = send(api.http.get(api.url(&format!("/v1/jobs/{id}/result")))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["answer"].as_str().unwrap().contains(ANSWER));
    let (status, body, _) = send(api.http.post(api.url(&format!("/v1/jobs/{id}/cancel")))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"id": id, "queue": "research", "outcome": "already_ended", "status": "succeeded"})
    );
}

/// Poll the batch's status until every job ended; its last answer.
async fn batch_done(api: &Api, batch_id: &str, total: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body, _) =
            send(api.http.get(api.url(&format!("/v1/batches/{batch_id}")))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["total"], total, "{body}");
        if body["finished"] == total {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "batch {batch_id} did not finish within 60s: {body}\n{}",
            api.server.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn batches_as_a_json_array_and_as_lines_run_to_the_end() {
    let api = Api::start(&[]).await;
    let _worker = api.worker("w1");
    let array = json!([
        {"query": QUESTION},
        {"query": "Compare Globex and Initech margins", "agent": "demo", "max_attempts": 2},
        {"query": "What was Initech's revenue in 2022?", "metadata": {"n": "3"}},
    ]);
    let lines = format!(
        "{QUESTION}\n\n{{\"query\": \"What was Globex's revenue in 2023?\", \"attempt_timeout_secs\": 60}}\r\nWhat was Initech's revenue in 2023?\n"
    );
    let bodies = [
        api.http.post(api.url("/v1/batches")).json(&array),
        api.http
            .post(api.url("/v1/batches"))
            .header("content-type", "application/x-ndjson")
            .body(lines),
    ];
    for request in bodies {
        let (status, body, location) = send(request).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["count"], 3);
        let batch_id = body["batch_id"].as_str().unwrap().to_string();
        assert_eq!(
            location.as_deref(),
            Some(format!("/v1/batches/{batch_id}").as_str())
        );
        let ids: Vec<String> = body["job_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), 3);
        let done = batch_done(&api, &batch_id, 3).await;
        assert_eq!(done["counts"]["succeeded"], 3, "{done}");
        assert_eq!(done["batch_id"], batch_id.as_str());
        for id in &ids {
            let (status, body, _) =
                send(api.http.get(api.url(&format!("/v1/jobs/{id}/result")))).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert!(
                body["answer"].as_str().is_some_and(|a| !a.is_empty()),
                "{body}"
            );
            let (_, record, _) = send(api.http.get(api.url(&format!("/v1/jobs/{id}")))).await;
            assert_eq!(record["batch"], batch_id.as_str());
        }
        let (_, first, _) = send(
            api.http
                .get(api.url(&format!("/v1/jobs/{}/result", ids[0]))),
        )
        .await;
        assert!(
            first["answer"].as_str().unwrap().contains(ANSWER),
            "{first}"
        );
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let api = Api::start(&[
        ("FLEET_API__MAX_BODY_BYTES", "4096".into()),
        ("FLEET_QUEUE__MAX_QUERY_BYTES", "1000".into()),
    ])
    .await;
    let h = &api.http;
    let url = |p: &str| api.url(p);
    let oversized = format!(r#"{{"query": "{}"}}"#, "x".repeat(10_000));
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            h.post(url("/v1/jobs")).json(&json!({"query": ""})),
            StatusCode::BAD_REQUEST,
            "invalid job: the query is empty",
        ),
        (
            h.post(url("/v1/jobs")).json(&json!({"query": "   "})),
            StatusCode::BAD_REQUEST,
            "invalid job: the query is empty",
        ),
        (
            h.post(url("/v1/jobs"))
                .json(&json!({"query": "q", "agent": "nobody"})),
            StatusCode::BAD_REQUEST,
            "unknown agent profile \"nobody\" (configured: demo)",
        ),
        (
            h.post(url("/v1/jobs")).body("{\"query\": \"q\""),
            StatusCode::BAD_REQUEST,
            "invalid job: malformed JSON",
        ),
        (
            h.post(url("/v1/jobs"))
                .json(&json!({"query": "q", "retries": 3})),
            StatusCode::BAD_REQUEST,
            "unknown field `retries`",
        ),
        (
            h.post(url("/v1/jobs"))
                .json(&json!({"query": "q", "max_attempts": 0})),
            StatusCode::BAD_REQUEST,
            "max_attempts must be at least 1",
        ),
        (
            h.post(url("/v1/jobs"))
                .json(&json!({"query": "y".repeat(2000)})),
            StatusCode::BAD_REQUEST,
            "over the limit of 1000 bytes (queue.max_query_bytes)",
        ),
        (
            h.post(url("/v1/jobs")).body(oversized.clone()),
            StatusCode::PAYLOAD_TOO_LARGE,
            "over the limit of 4096 bytes (api.max_body_bytes)",
        ),
        (
            h.post(url("/v1/batches"))
                .header("content-type", "application/x-ndjson")
                .body("fine\n{\"query\": 3}\n"),
            StatusCode::BAD_REQUEST,
            "invalid batch (nothing was submitted): line 2: malformed JSON",
        ),
        (
            h.post(url("/v1/batches"))
                .header("content-type", "text/plain")
                .body("fine\n\n{\"query\": \"\"}\n"),
            StatusCode::BAD_REQUEST,
            "line 3: the query is empty",
        ),
        (
            h.post(url("/v1/batches"))
                .header("content-type", "text/plain")
                .body(b"fine\nbad \xff line\n".to_vec()),
            StatusCode::BAD_REQUEST,
            "line 2: not valid UTF-8",
        ),
        (
            h.post(url("/v1/batches"))
                .json(&json!([{"query": "a"}, {"query": "b", "agent": "nobody"}])),
            StatusCode::BAD_REQUEST,
            "item 2 of 2 (index 1): unknown agent profile \"nobody\"",
        ),
        (
            h.post(url("/v1/batches")).json(&json!([])),
            StatusCode::BAD_REQUEST,
            "the batch holds no queries",
        ),
        (
            h.post(url("/v1/batches")).json(&json!({"query": "a"})),
            StatusCode::BAD_REQUEST,
            "the body must be a JSON array of job objects",
        ),
        (
            h.post(url("/v1/batches")).body("q\n"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "no Content-Type",
        ),
        (
            h.post(url("/v1/batches"))
                .header("content-type", "text/plain")
                .body(oversized.clone()),
            StatusCode::PAYLOAD_TOO_LARGE,
            "api.max_body_bytes",
        ),
        (
            h.get(url("/v1/jobs/not-a-job-id")),
            StatusCode::BAD_REQUEST,
            "not a job ID (expected a UUID): \"not-a-job-id\"",
        ),
        (
            h.get(url(&format!("/v1/jobs/{UNKNOWN_ID}"))),
            StatusCode::NOT_FOUND,
            "no job with ID 01a217cf-bef0-7595-8600-e8846f368fb2",
        ),
        (
            h.get(url(&format!("/v1/jobs/{UNKNOWN_ID}/result?wait=1"))),
            StatusCode::NOT_FOUND,
            "no job with ID",
        ),
        (
            h.get(url(&format!("/v1/jobs/{UNKNOWN_ID}/result?wait=-1"))),
            StatusCode::BAD_REQUEST,
            "wait",
        ),
        (
            h.post(url(&format!("/v1/jobs/{UNKNOWN_ID}/cancel"))),
            StatusCode::NOT_FOUND,
            "no job with ID",
        ),
        (
            h.get(url(&format!("/v1/batches/{UNKNOWN_ID}"))),
            StatusCode::NOT_FOUND,
            "no batch with ID",
        ),
        (
            h.get(url("/v1/batches/not-a-batch")),
            StatusCode::BAD_REQUEST,
            "not a batch ID",
        ),
        (
            h.get(url("/v1/nothing")),
            StatusCode::NOT_FOUND,
            "no such route: GET /v1/nothing",
        ),
        (
            h.delete(url(&format!("/v1/jobs/{UNKNOWN_ID}"))),
            StatusCode::METHOD_NOT_ALLOWED,
            "method DELETE is not allowed",
        ),
        (
            h.get(url("/v1/batches")),
            StatusCode::METHOD_NOT_ALLOWED,
            "method GET is not allowed on /v1/batches",
        ),
    ];
    for (request, want_status, want_message) in cases {
        let request = request.build().unwrap();
        let what = format!("{} {}", request.method(), request.url().path());
        let (status, body, _) = read(api.http.execute(request).await.unwrap()).await;
        assert_eq!(status, want_status, "{what}: {body}");
        assert!(
            error_of(&body).contains(want_message),
            "{what}: wanted {want_message:?} in {body}"
        );
        assert_eq!(api.keys(), 0, "{what} wrote to Redis");
    }
    let (status, body, _) = send(api.http.get(api.url("/readyz"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(api.keys(), 0);
}

#[tokio::test]
async fn a_token_guards_v1_and_reaches_no_log_and_no_key() {
    let token = format!("tok-{}", uuid::Uuid::now_v7().simple());
    let mut api = Api::start(&[
        ("FLEET_API__TOKEN", token.clone()),
        // As chatty as it gets: the token still must not show.
        ("RUST_LOG", "debug".into()),
    ])
    .await;
    let marker = "What was Acme Robotics' revenue in 2021? (a query that must not be logged)";
    let job = json!({"query": marker});
    let submit = || api.http.post(api.url("/v1/jobs")).json(&job);
    let (status, body, _) = send(submit()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(error_of(&body).contains("bearer token"), "{body}");
    let (status, body, _) = send(submit().bearer_auth("wrong-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(!body.to_string().contains("wrong-token"), "{body}");
    let (status, body, _) = send(submit().header("authorization", token.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no scheme: {body}");
    assert_eq!(api.keys(), 0, "a refused request wrote to Redis");

    let (status, body, _) = send(submit().bearer_auth(&token)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let (status, _, _) = send(
        api.http
            .get(api.url(&format!("/v1/jobs/{id}")))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(api.http.get(api.url(&format!("/v1/jobs/{id}")))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for open in ["/healthz", "/readyz"] {
        let (status, body, _) = send(api.http.get(api.url(open))).await;
        assert_eq!(status, StatusCode::OK, "{open}: {body}");
    }

    // Not in Redis: every value of every key.
    let mut conn = api.redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert!(!keys.is_empty());
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).unwrap();
        let values: Vec<String> = match kind.as_str() {
            "string" => vec![redis::cmd("GET").arg(&key).query(&mut conn).unwrap()],
            "hash" => redis::cmd("HVALS").arg(&key).query(&mut conn).unwrap(),
            "list" => redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query(&mut conn)
                .unwrap(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query(&mut conn)
                .unwrap(),
            "set" => redis::cmd("SMEMBERS").arg(&key).query(&mut conn).unwrap(),
            other => panic!("unexpected key type {other} of {key}"),
        };
        assert!(
            std::iter::once(&key)
                .chain(&values)
                .all(|v| !v.contains(&token)),
            "the token is in Redis under {key}"
        );
    }

    api.server.sigterm();
    assert_eq!(api.server.wait_timeout(Duration::from_secs(15)), Some(0));
    let logs = api.server.logs();
    assert!(
        logs.contains("status=401") && logs.contains("status=201"),
        "each request is logged with its status:\n{logs}"
    );
    assert!(!logs.contains(&token), "the token is in the logs:\n{logs}");
    assert!(
        !logs.contains(marker),
        "a request body is in the logs:\n{logs}"
    );
}

#[tokio::test]
async fn an_idempotency_key_returns_the_first_job() {
    let api = Api::start(&[]).await;
    let job = json!({"query": QUESTION, "idempotency_key": "report-17"});
    let (status, first, _) = send(api.http.post(api.url("/v1/jobs")).json(&job)).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["existing"], false);
    let (status, again, _) = send(api.http.post(api.url("/v1/jobs")).json(&job)).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["existing"], true);
    assert_eq!(again["id"], first["id"]);
    let (status, other, _) = send(
        api.http
            .post(api.url("/v1/jobs"))
            .json(&json!({"query": QUESTION, "idempotency_key": "report-18"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(other["id"], first["id"]);
}

#[tokio::test]
async fn cancel_ends_a_queued_job_whose_result_is_then_409() {
    let api = Api::start(&[("FLEET_API__RESULT_WAIT_MAX_SECS", "1".into())]).await;
    let (_, body, _) = send(
        api.http
            .post(api.url("/v1/jobs"))
            .json(&json!({"query": QUESTION})),
    )
    .await;
    let id = body["id"].as_str().unwrap().to_string();
    // Waits are capped at api.result_wait_max_secs: 202 after about a second.
    let started = Instant::now();
    let (status, body, _) = send(
        api.http
            .get(api.url(&format!("/v1/jobs/{id}/result?wait=600"))),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "queued");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    let cancel = || api.http.post(api.url(&format!("/v1/jobs/{id}/cancel")));
    let (status, body, _) = send(cancel()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"id": id, "queue": "research", "outcome": "cancelled", "status": "cancelled"})
    );
    let (status, body, _) = send(api.http.get(api.url(&format!("/v1/jobs/{id}/result")))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert!(
        error_of(&body).starts_with(&format!("job {id} ended cancelled")),
        "{body}"
    );
    let (status, body, _) = send(cancel()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["outcome"], "already_ended");
    assert_eq!(body["status"], "cancelled");
}

#[tokio::test]
async fn the_cli_and_the_api_answer_batch_and_cancel_in_one_shape() {
    let api = Api::start(&[]).await;
    let config = api.config.display().to_string();
    let cli = |args: &[&str], stdin: Option<&[u8]>| {
        let mut all = vec!["--config", config.as_str(), "--json"];
        all.extend_from_slice(args);
        let out =
            fleet_tests::processes::fleet(&all, &[("FLEET_REDIS__URL", api.redis.url())], stdin);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).expect("one JSON document")
    };
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };

    // A batch: the same fields, the same kinds of values.
    let from_cli = cli(&["batch", "-"], Some(b"a\nb\n"));
    let (status, from_api, _) = send(
        api.http
            .post(api.url("/v1/batches"))
            .header("content-type", "text/plain")
            .body("a\nb\n"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{from_api}");
    assert_eq!(keys(&from_cli), keys(&from_api), "{from_cli} vs {from_api}");
    assert_eq!(keys(&from_api), ["batch_id", "count", "job_ids"]);
    assert_eq!(from_cli["count"], 2);
    assert_eq!(from_cli["job_ids"].as_array().unwrap().len(), 2);

    // Cancel (queued: no worker): the same document, with the status the job now has.
    let id_of = |v: &Value, i: usize| v["job_ids"][i].as_str().unwrap().to_string();
    let (cli_id, api_id) = (id_of(&from_cli, 0), id_of(&from_api, 0));
    let cancelled_cli = cli(&["cancel", &cli_id], None);
    let (status, cancelled_api, _) =
        send(api.http.post(api.url(&format!("/v1/jobs/{api_id}/cancel")))).await;
    assert_eq!(status, StatusCode::OK, "{cancelled_api}");
    assert_eq!(
        cancelled_cli,
        json!({"id": cli_id, "queue": "research", "outcome": "cancelled", "status": "cancelled"})
    );
    assert_eq!(
        cancelled_api,
        json!({"id": api_id, "queue": "research", "outcome": "cancelled", "status": "cancelled"})
    );
}

#[tokio::test]
async fn extreme_values_are_refused_over_http_and_write_nothing() {
    let api = Api::start(&[]).await;
    let labels: serde_json::Map<String, Value> =
        (0..500).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases = [
        (
            json!({"query": "q", "attempt_timeout_secs": u64::MAX}),
            "attempt_timeout_secs must be at most 86400",
        ),
        (
            json!({"query": "q", "deadline_secs": u64::MAX}),
            "deadline_secs must be at most 2592000",
        ),
        (
            json!({"query": "q", "max_attempts": u32::MAX}),
            "max_attempts must be at most 100",
        ),
        (
            json!({"query": "q", "metadata": labels}),
            "500 metadata entries",
        ),
        (
            json!({"query": "q", "metadata": {"notes": "x".repeat(1 << 20)}}),
            "metadata value of \"notes\" is 1048576 bytes",
        ),
        (
            json!({"query": "q", "agent_id": "a".repeat(1 << 20)}),
            "agent_id is 1048576 bytes",
        ),
    ];
    for (job, want) in cases {
        let (status, body, _) = send(api.http.post(api.url("/v1/jobs")).json(&job)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{want}: {body}");
        assert!(error_of(&body).contains(want), "wanted {want:?} in {body}");
        let (status, body, _) =
            send(api.http.post(api.url("/v1/batches")).json(&json!([job]))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{want}: {body}");
        assert!(error_of(&body).contains(want), "wanted {want:?} in {body}");
        assert_eq!(api.keys(), 0, "{want}: written to Redis");
    }
}

#[tokio::test]
async fn sigterm_stops_the_server_promptly_even_with_a_wait_in_flight() {
    let mut api = Api::start(&[("RUST_LOG", "debug".into())]).await;
    let (_, body, _) = send(
        api.http
            .post(api.url("/v1/jobs"))
            .json(&json!({"query": QUESTION})),
    )
    .await;
    let id = body["id"].as_str().unwrap().to_string();
    let waiting = {
        let http = api.http.clone();
        let url = api.url(&format!("/v1/jobs/{id}/result?wait=60"));
        tokio::spawn(async move { send(http.get(url)).await })
    };
    // The server says when the wait began.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&api.server.stderr)
        .unwrap_or_default()
        .contains("waiting for the job to end")
    {
        assert!(
            Instant::now() < deadline,
            "the wait never began\n{}",
            api.server.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopping = Instant::now();
    api.server.sigterm();
    let (status, body, _) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "queued");
    assert_eq!(
        api.server.wait_timeout(Duration::from_secs(15)),
        Some(0),
        "{}",
        api.server.logs()
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        stopping.elapsed()
    );
}
