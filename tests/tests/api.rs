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
            h.post(url("/v1/jobs"))
                .header("content-type", "application/json")
                .body("{\"query\": \"q\""),
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
            h.post(url("/v1/jobs"))
                .header("content-type", "application/json")
                .body(oversized.clone()),
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
                .header("content-type", "application/x-ndjson")
                .body("fine\n\n{\"query\": \"\"}\n"),
            StatusCode::BAD_REQUEST,
            "line 3: the query is empty",
        ),
        (
            h.post(url("/v1/batches"))
                .header("content-type", "application/x-ndjson")
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
                .header("content-type", "application/x-ndjson")
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
            .header("content-type", "application/x-ndjson")
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

// ---- Load and abuse (issue 9, item 14) ----

/// `INFO` field of a redis-server, as a number.
fn info_field(api: &Api, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query(&mut api.redis.conn())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in INFO {section}"))
        .trim()
        .parse()
        .unwrap()
}

/// Submit `n` one-line queries as one batch; their IDs.
async fn submit_lines(api: &Api, n: usize) -> Vec<String> {
    let body: String = (0..n).map(|i| format!("question {i}\n")).collect();
    let (status, body, _) = send(
        api.http
            .post(api.url("/v1/batches"))
            .header("content-type", "application/x-ndjson")
            .body(body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// How many times the server's log says `needle`.
fn log_count(api: &Api, needle: &str) -> usize {
    std::fs::read_to_string(&api.server.stderr)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

#[tokio::test]
async fn a_thousand_result_waits_share_one_redis_subscriber_and_are_capped() {
    const WAITS: usize = 1000;
    let api = Api::start(&[
        ("RUST_LOG", "info,fleet=debug,fleet_producer=debug".into()),
        ("FLEET_API__MAX_WAITS", WAITS.to_string()),
        ("FLEET_API__MAX_CONNECTIONS", (WAITS + 100).to_string()),
    ])
    .await;
    let ids = submit_lines(&api, WAITS).await;
    let clients_before = info_field(&api, "clients", "connected_clients");
    // Each wait on a connection of its own (the pool would otherwise queue them).
    let waits: Vec<_> = ids
        .iter()
        .map(|id| {
            let http = api.http.clone();
            let url = api.url(&format!("/v1/jobs/{id}/result?wait=30"));
            tokio::spawn(async move { send(http.get(url)).await })
        })
        .collect();
    fleet_tests::harness::eventually("every wait has begun", Duration::from_secs(30), || async {
        (log_count(&api, "waiting for the job to end") >= WAITS).then_some(())
    })
    .await;
    let clients = info_field(&api, "clients", "connected_clients");
    assert!(
        clients <= clients_before + 3,
        "{WAITS} result waits hold {clients} Redis clients (before them: {clients_before})"
    );

    // One more is over api.max_waits: 503 at once, with Retry-After.
    let started = Instant::now();
    let r = api
        .http
        .get(api.url(&format!("/v1/jobs/{}/result?wait=30", ids[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"), "{:?}", r.headers());
    let (_, body, _) = read(r).await;
    assert!(error_of(&body).contains("api.max_waits"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A job that ends wakes its own waiter, and costs Redis a few commands, not a
    // re-read per waiter.
    let commands_before = info_field(&api, "stats", "total_commands_processed");
    let (status, body, _) = send(
        api.http
            .post(api.url(&format!("/v1/jobs/{}/cancel", ids[1]))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut waits = waits.into_iter();
    let first = waits.next().unwrap();
    let (status, body, _) = waits.next().unwrap().await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["status"], "cancelled");
    let commands = info_field(&api, "stats", "total_commands_processed") - commands_before;
    assert!(
        commands < 100,
        "one job ending with {WAITS} waiters cost {commands} Redis commands"
    );
    assert!(!first.is_finished(), "the other waits go on");
    first.abort();
    for w in waits {
        w.abort();
    }
}

#[tokio::test]
async fn a_batch_whose_client_goes_away_is_enqueued_whole() {
    const JOBS: usize = 20_000;
    let mut api = Api::start(&[]).await;
    let wait_key = "fleet:{research}:wait";
    let body: String = (0..JOBS).map(|i| format!("question {i}\n")).collect();
    let request = {
        let rb = api
            .http
            .post(api.url("/v1/batches"))
            .header("content-type", "application/x-ndjson")
            .body(body);
        tokio::spawn(async move { rb.send().await })
    };
    // The enqueue has begun: now the client goes away.
    let mut conn = api.redis.conn();
    fleet_tests::harness::eventually(
        "the batch's first jobs are enqueued",
        Duration::from_secs(30),
        || {
            let n: usize = redis::cmd("LLEN").arg(wait_key).query(&mut conn).unwrap();
            async move { (n > 0).then_some(()) }
        },
    )
    .await;
    request.abort();
    let _ = request.await;
    // And the server is told to stop: it still finishes the batch first.
    api.server.sigterm();
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: usize = redis::cmd("LLEN").arg(wait_key).query(&mut conn).unwrap();
        if n == JOBS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {JOBS} jobs enqueued 30s after the client went away (nothing moved since {last})\n{}",
            api.server.logs()
        );
        last = n;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fleet_tests::harness::eventually(
        "the server logs the batch it finished",
        Duration::from_secs(10),
        || async { (log_count(&api, "batch submitted") >= 1).then_some(()) },
    )
    .await;
    assert!(api.server.logs().contains(&format!("count={JOBS}")));
    assert_eq!(
        api.server.wait_timeout(Duration::from_secs(15)),
        Some(0),
        "{}",
        api.server.logs()
    );
    let n: usize = redis::cmd("LLEN").arg(wait_key).query(&mut conn).unwrap();
    assert_eq!(n, JOBS, "no job twice");
}

#[tokio::test]
async fn a_batch_over_max_batch_jobs_is_refused_whole() {
    let api = Api::start(&[("FLEET_API__MAX_BATCH_JOBS", "100".into())]).await;
    let lines: String = (0..101).map(|i| format!("q {i}\n\n")).collect();
    let array = Value::Array(
        (0..101)
            .map(|i| json!({"query": format!("q {i}")}))
            .collect(),
    );
    for request in [
        api.http
            .post(api.url("/v1/batches"))
            .header("content-type", "application/x-ndjson")
            .body(lines),
        api.http.post(api.url("/v1/batches")).json(&array),
    ] {
        let (status, body, _) = send(request).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert!(
            error_of(&body).contains("over the limit of 100 jobs (api.max_batch_jobs)"),
            "{body}"
        );
        assert_eq!(api.keys(), 0);
    }
    assert_eq!(submit_lines(&api, 100).await.len(), 100);
}

/// Read from a raw connection until the server closes it (or answers and closes);
/// what it sent, or `None` if it was still open after `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|_| String::from_utf8_lossy(&got).into_owned())
}

fn open_sockets(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().starts_with("socket:"))
        .count()
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed_and_capped() {
    use tokio::io::AsyncWriteExt as _;
    const CAP: usize = 20;
    let api = Api::start(&[
        ("FLEET_API__HEADER_TIMEOUT_SECS", "1".into()),
        ("FLEET_API__BODY_TIMEOUT_SECS", "1".into()),
        ("FLEET_API__MAX_CONNECTIONS", CAP.to_string()),
    ])
    .await;
    let addr = api.server.base.trim_start_matches("http://").to_string();
    let connect = || tokio::net::TcpStream::connect(addr.clone());

    // Idle from the start, and half a request head: closed after the header timeout.
    let mut idle = connect().await.unwrap();
    let mut half = connect().await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut idle, Duration::from_secs(5))
            .await
            .is_some(),
        "an idle connection was still open after 5s"
    );
    assert!(
        closed_within(&mut half, Duration::from_secs(5))
            .await
            .is_some(),
        "a connection that sent half a request head was still open after 5s"
    );

    // A body that stops half-way: 408 after the body timeout, nothing written.
    let mut slow = connect().await.unwrap();
    slow.write_all(
        b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"query\": ",
    )
    .await
    .unwrap();
    let answer = closed_within(&mut slow, Duration::from_secs(5))
        .await
        .expect("a stalled body was still being read after 5s");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("api.body_timeout_secs"), "{answer}");
    assert_eq!(api.keys(), 0);

    // Many idle sockets: at most CAP of them are held, and /healthz is answered
    // once the idle ones time out.
    // The server's sockets are counted by a thread of their own every few ms, from
    // before the clients connect until they are all served: the cap must hold at every
    // count, and be reached (each idle client is held for the 1 s header timeout, so
    // the window is short; a loaded machine must not make the test miss it).
    let pid = api.server.pid();
    let baseline = open_sockets(pid);
    let counting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let counts = std::sync::Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let counter = std::thread::spawn({
        let (counting, counts) = (counting.clone(), counts.clone());
        move || {
            while counting.load(std::sync::atomic::Ordering::Relaxed) {
                counts.lock().unwrap().push(open_sockets(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    let mut idle: Vec<_> = Vec::new();
    for _ in 0..(CAP * 3) {
        idle.push(connect().await.unwrap());
    }
    fleet_tests::harness::eventually(
        "the server accepted connections up to its cap",
        Duration::from_secs(20),
        || async {
            let most = counts.lock().unwrap().iter().copied().max().unwrap_or(0);
            (most >= baseline + CAP).then_some(())
        },
    )
    .await;
    counting.store(false, std::sync::atomic::Ordering::Relaxed);
    counter.join().unwrap();
    let held = counts.lock().unwrap().iter().copied().max().unwrap_or(0);
    assert!(
        held <= baseline + CAP,
        "{held} sockets open at once with {} idle clients and a cap of {CAP} (baseline {baseline})",
        CAP * 3
    );
    let started = Instant::now();
    let r = reqwest::Client::new()
        .get(api.url("/healthz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("/healthz answers once idle connections are closed");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

/// Start `fleet serve --listen LISTEN`: `Ok` once it says it listens (then it is
/// killed), or its exit code and stderr if it refused to; 10s at most.
fn serve_on(listen: &str, env: &[(&str, String)]) -> Result<(), (i32, String)> {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut cmd = std::process::Command::new(fleet_tests::processes::binary("fleet"));
    cmd.args(["serve", "--listen", listen])
        .current_dir(fleet_tests::harness::workspace_root())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stderr = || std::fs::read_to_string(&err).unwrap_or_default();
        if let Some(status) = child.try_wait().unwrap() {
            return Err((status.code().unwrap_or(-1), stderr()));
        }
        if std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("listening on")
        {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "fleet serve neither listened nor exited within 10s: {}",
                stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `fleet serve --listen LISTEN` must refuse to start: its exit code and stderr.
fn serve_refuses(listen: &str, env: &[(&str, String)]) -> (i32, String) {
    serve_on(listen, env)
        .err()
        .unwrap_or_else(|| panic!("fleet serve --listen {listen} is serving"))
}

#[tokio::test]
async fn without_a_token_a_browser_page_cannot_submit() {
    let api = Api::start(&[]).await;
    let h = &api.http;
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            h.post(api.url("/v1/batches"))
                .header("content-type", "text/plain")
                .body("q\n"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "without api.token",
        ),
        (
            h.post(api.url("/v1/jobs"))
                .header("content-type", "text/plain")
                .body(r#"{"query": "q"}"#),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        (
            h.post(api.url("/v1/jobs")).body(r#"{"query": "q"}"#),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        (
            h.post(api.url("/v1/jobs"))
                .header("origin", "https://evil.example")
                .json(&json!({"query": "q"})),
            StatusCode::FORBIDDEN,
            "Origin",
        ),
        (
            h.post(api.url("/v1/jobs"))
                .header("host", "evil.example")
                .json(&json!({"query": "q"})),
            StatusCode::FORBIDDEN,
            "Host",
        ),
    ];
    for (request, want_status, want_message) in cases {
        let (status, body, _) = send(request).await;
        assert_eq!(status, want_status, "{body}");
        assert!(error_of(&body).contains(want_message), "{body}");
        assert_eq!(api.keys(), 0);
    }
    for host in ["localhost", "127.0.0.1:1234", "[::1]:80"] {
        let (status, body, _) = send(
            h.post(api.url("/v1/jobs"))
                .header("host", host)
                .json(&json!({"query": "q"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "Host {host}: {body}");
    }

    // Not on a non-loopback address unless asked for.
    let env = [("FLEET_REDIS__URL", api.redis.url())];
    let (code, stderr) = serve_refuses("0.0.0.0:0", &env);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("api.allow_remote_without_token"),
        "{stderr}"
    );
    let allowed = [
        ("FLEET_REDIS__URL", api.redis.url()),
        ("FLEET_API__ALLOW_REMOTE_WITHOUT_TOKEN", "true".into()),
    ];
    assert_eq!(serve_on("0.0.0.0:0", &allowed), Ok(()));
    let token = [
        ("FLEET_REDIS__URL", api.redis.url()),
        ("FLEET_API__TOKEN", "a-token-long-enough-for-this".into()),
    ];
    assert_eq!(serve_on("0.0.0.0:0", &token), Ok(()));
}

#[tokio::test]
async fn with_a_token_short_ones_duplicates_and_guessing_are_refused() {
    let (code, stderr) =
        serve_refuses("127.0.0.1:0", &[("FLEET_API__TOKEN", "short-token".into())]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("api.token: must be at least 16"),
        "{stderr}"
    );
    assert!(!stderr.contains("short-token"), "{stderr}");

    let token = format!("tok-{}", uuid::Uuid::now_v7().simple());
    let api = Api::start(&[
        ("FLEET_API__TOKEN", token.clone()),
        ("FLEET_API__AUTH_FAILURES_PER_MINUTE", "5".into()),
    ])
    .await;
    let job = json!({"query": QUESTION});
    let (status, body, _) = send(
        api.http
            .post(api.url("/v1/jobs"))
            .header("authorization", format!("Bearer {token}"))
            .header("authorization", "Bearer something-else")
            .json(&job),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        error_of(&body).contains("more than one Authorization"),
        "{body}"
    );
    assert_eq!(api.keys(), 0);

    for _ in 0..5 {
        let (status, body, _) = send(
            api.http
                .post(api.url("/v1/jobs"))
                .bearer_auth("a-wrong-guess-of-the-token")
                .json(&job),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    // Past the limit, even the right token waits.
    for auth in ["a-wrong-guess-of-the-token", token.as_str()] {
        let r = api
            .http
            .post(api.url("/v1/jobs"))
            .bearer_auth(auth)
            .json(&job)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
    }
    assert_eq!(api.keys(), 0);
    let (status, _, _) = send(api.http.get(api.url("/healthz"))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_redis_outage_gets_503_and_retry_after_quickly() {
    let mut api = Api::start(&[("FLEET_API__REDIS_TIMEOUT_MS", "1000".into())]).await;
    let (status, body, _) = send(
        api.http
            .post(api.url("/v1/jobs"))
            .json(&json!({"query": QUESTION})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let port = api.redis.port().to_string();
    api.redis.kill9();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for request in [
        http.get(api.url(&format!("/v1/jobs/{id}"))),
        http.get(api.url(&format!("/v1/jobs/{id}/result?wait=5"))),
        http.post(api.url("/v1/jobs"))
            .json(&json!({"query": QUESTION})),
        http.post(api.url("/v1/batches"))
            .json(&json!([{"query": QUESTION}])),
        http.post(api.url(&format!("/v1/jobs/{id}/cancel"))),
    ] {
        let request = request.build().unwrap();
        let what = format!("{} {}", request.method(), request.url().path());
        let started = Instant::now();
        let r = http
            .execute(request)
            .await
            .unwrap_or_else(|e| panic!("{what} during a Redis outage: {e}"));
        let took = started.elapsed();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
        assert!(
            r.headers().contains_key("retry-after"),
            "{what}: {:?}",
            r.headers()
        );
        let (_, body, _) = read(r).await;
        assert!(took < Duration::from_secs(4), "{what} took {took:?}");
        assert!(error_of(&body).contains("Redis"), "{what}: {body}");
        assert!(!body.to_string().contains(&port), "{what}: {body}");
    }
}

#[tokio::test]
async fn a_json_array_is_not_a_job() {
    let api = Api::start(&[]).await;
    for (path, body) in [
        ("/v1/jobs", json!(["q", "demo", null, true])),
        ("/v1/batches", json!([["q", "demo", null, true]])),
    ] {
        let (status, body, _) = send(api.http.post(api.url(path)).json(&body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(error_of(&body).contains("a JSON object"), "{path}: {body}");
    }
    assert_eq!(api.keys(), 0);
}

#[tokio::test]
async fn answers_are_not_sniffed_or_cached_and_carry_a_request_id() {
    let api = Api::start(&[]).await;
    let r = api
        .http
        .post(api.url("/v1/jobs"))
        .json(&json!({"query": QUESTION}))
        .send()
        .await
        .unwrap();
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let (_, body, _) = read(r).await;
    let id = body["id"].as_str().unwrap().to_string();
    for path in [
        format!("/v1/jobs/{id}/result"),
        format!("/v1/jobs/{id}"),
        "/v1/nothing".into(),
    ] {
        let r = api.http.get(api.url(&path)).send().await.unwrap();
        let h = r.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["cache-control"], "no-store", "{path}");
        assert!(h.contains_key("x-request-id"), "{path}");
    }
    let logs = api.server.logs();
    let line = logs
        .lines()
        .find(|l| l.contains(&request_id))
        .unwrap_or_else(|| panic!("request {request_id} is not in the log:\n{logs}"));
    assert!(line.contains("client=127.0.0.1:"), "{line}");
    assert!(line.contains("status=201"), "{line}");
}
