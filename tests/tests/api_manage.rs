//! What the CLI manages, over HTTP, against a real `fleet serve`, a real redis-server
//! and (for agents) a real `fleet-worker` with the demo agent: agents and pools, dead
//! letters, job listings with filters and cursor pages, batch results a page at a
//! time, workers and their leases; named tokens (read-only or admin) and the
//! per-token rate limit. Each route: its happy path, 400 with a message, 401, 403 for
//! a read-only token on an action, 404, 429.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fleet_shared::job::QueueKind;
use fleet_shared::queue::{AttemptRecord, RedisQueue, Settlement};
use fleet_tests::RedisServer;
use fleet_tests::harness::eventually;
use fleet_tests::processes::{ServeProcess, WorkerProcess};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-0123456789";
const READER: &str = "reader-token-0123456789";

struct Api {
    redis: RedisServer,
    dir: tempfile::TempDir,
    config: PathBuf,
    server: ServeProcess,
    http: reqwest::Client,
}

impl Api {
    /// redis-server, a config (`extra` TOML appended) and `fleet serve`, answering.
    async fn start(extra: &str, env: &[(&str, String)]) -> Api {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let config = fleet_tests::harness::local_config(dir.path(), extra);
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
        let http = api.http.clone();
        let url = api.server.url("/healthz");
        eventually("/healthz answers", Duration::from_secs(30), || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.get(url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        api
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    fn settings(&self) -> fleet_shared::settings::Settings {
        fleet_tests::harness::settings(&self.redis.url(), &[])
    }

    async fn queue(&self, kind: QueueKind) -> RedisQueue {
        fleet_tests::harness::queue(&self.settings(), kind).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        send(self.http.get(self.url(path))).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        send(self.http.post(self.url(path)).json(&body)).await
    }

    /// Submit a job over HTTP; its ID.
    async fn submit(&self, job: Value) -> String {
        let (status, body) = self.post("/v1/jobs", job).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    /// Wait for a job to end, over HTTP; its result answer.
    async fn wait_result(&self, id: &str) -> (StatusCode, Value) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.get(&format!("/v1/jobs/{id}/result?wait=30")).await;
            if status != StatusCode::ACCEPTED || Instant::now() > deadline {
                return (status, body);
            }
        }
    }
}

async fn send(rb: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let r = rb.send().await.expect("the request reaches fleet serve");
    let status = r.status();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{status}: the body is not JSON: {text:?}"));
    (status, body)
}

fn error_of(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no \"error\" in {body}"))
}

/// Assert a status and that the error message holds `message`.
fn refused(got: (StatusCode, Value), status: StatusCode, message: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert!(
        error_of(&got.1).contains(message),
        "wanted {message:?} in {}",
        got.1
    );
}

const UNKNOWN_ID: &str = "01a217cf-bef0-7595-8600-e8846f368fb2";

#[tokio::test]
async fn agents_are_launched_listed_shown_paused_and_scaled_over_http() {
    let api = Api::start("", &[]).await;
    let _worker = WorkerProcess::start(
        &api.config,
        "w1",
        &[("FLEET_REDIS__URL", api.redis.url())],
        api.dir.path(),
    );
    let (status, empty) = api.get("/v1/agents").await;
    assert_eq!((status, empty), (StatusCode::OK, json!({"agents": []})));

    let r = api
        .http
        .post(api.url("/v1/agents"))
        .json(&json!({"agent": "demo", "persistent": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let launch: Value = r.json().await.unwrap();
    assert_eq!(launch["queue"], "lifecycle");
    assert_eq!(launch["operation"], "launch demo (persistent)");
    let job = launch["id"].as_str().unwrap();
    assert_eq!(location, format!("/v1/jobs/{job}"));
    let (status, done) = api.wait_result(job).await;
    assert_eq!(status, StatusCode::OK, "{done}\n{}", api.server.logs());

    let (status, list) = api.get("/v1/agents?profile=demo").await;
    assert_eq!(status, StatusCode::OK);
    let agents = list["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{list}");
    assert_eq!(agents[0]["persistent"], true);
    assert_eq!(agents[0]["profile"], "demo");
    let agent_id = agents[0]["agent_id"].as_str().unwrap().to_string();
    let (_, other) = api.get("/v1/agents?profile=nobody").await;
    assert_eq!(other, json!({"agents": []}));

    let (status, record) = api.get(&format!("/v1/agents/{agent_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["agent_id"], agent_id.as_str());
    assert_eq!(record["state"], "idle", "{record}");

    let (status, pause) = api
        .post(&format!("/v1/agents/{agent_id}/pause"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{pause}");
    assert_eq!(pause["operation"], format!("pause {agent_id}"));
    let (status, _) = api.wait_result(pause["id"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let (_, record) = api.get(&format!("/v1/agents/{agent_id}")).await;
    assert_eq!(record["state"], "paused", "{record}");
    let (_, paused) = api.get("/v1/agents?state=paused").await;
    assert_eq!(paused["agents"].as_array().unwrap().len(), 1);

    let (status, scale) = api.post("/v1/pool/scale", json!({"size": 2})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{scale}");
    assert_eq!(scale["operation"], "scale demo to 2");
    let (status, job) = api
        .get(&format!("/v1/jobs/{}", scale["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["queue"], "lifecycle");
    // Done before the queue is counted below (a worker taking it meanwhile would change
    // the counts).
    let (status, _) = api.wait_result(scale["id"].as_str().unwrap()).await;
    assert_ne!(status, StatusCode::ACCEPTED, "the scale job did not end");

    // Bad input: 400, nothing enqueued. Unknown agent: 404.
    let before = api
        .queue(QueueKind::Lifecycle)
        .await
        .counts()
        .await
        .unwrap();
    refused(
        api.post("/v1/pool/scale", json!({"size": 5000})).await,
        StatusCode::BAD_REQUEST,
        "invalid job:",
    );
    refused(
        api.post("/v1/pool/scale", json!({"agent": "demo"})).await,
        StatusCode::BAD_REQUEST,
        "missing field `size`",
    );
    refused(
        api.post("/v1/agents", json!({"agent": "nobody"})).await,
        StatusCode::BAD_REQUEST,
        "unknown agent profile \"nobody\"",
    );
    refused(
        api.post("/v1/agents", json!({"persistant": true})).await,
        StatusCode::BAD_REQUEST,
        "unknown field `persistant`",
    );
    refused(
        api.post("/v1/agents/%20/terminate", json!({})).await,
        StatusCode::BAD_REQUEST,
        "the agent ID is empty",
    );
    refused(
        api.get("/v1/agents?state=sleepy").await,
        StatusCode::BAD_REQUEST,
        "state: not an agent state",
    );
    let after = api
        .queue(QueueKind::Lifecycle)
        .await
        .counts()
        .await
        .unwrap();
    assert_eq!(before, after, "nothing was enqueued");
    refused(
        api.get("/v1/agents/no-such-agent").await,
        StatusCode::NOT_FOUND,
        "no agent with ID \"no-such-agent\"",
    );
}

/// A research job submitted over HTTP and dead-lettered by a worker of the test's own
/// (through the queue's scripts), with `class`.
async fn dead_job(api: &Api, q: &RedisQueue, n: usize, class: &str) -> String {
    let id = api.submit(json!({"query": format!("question {n}")})).await;
    let fetched = q.fetch("w-test", 1).await.unwrap();
    let lease = &fetched.leases[0];
    assert_eq!(lease.id, id);
    let error = json!({"class": class, "message": format!("bad data {n}"), "attempt": 1});
    let record = AttemptRecord {
        attempt: 1,
        worker: "w-test".into(),
        outcome: class.into(),
        error: Some(format!("bad data {n}")),
        ..Default::default()
    };
    q.fail(lease, Settlement::Dead, &error, &record)
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn dead_letters_are_paged_filtered_retried_and_purged_over_http() {
    let api = Api::start("", &[]).await;
    let q = api.queue(QueueKind::Research).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let class = if n % 2 == 0 { "permanent" } else { "timeout" };
        ids.push(dead_job(&api, &q, n, class).await);
    }

    // Two at a time, in the order they died, each once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/dead?limit=2&cursor={c}"),
            None => "/v1/dead?limit=2".to_string(),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["total"], 5);
        assert!(page["jobs"].as_array().unwrap().len() <= 2);
        for row in page["jobs"].as_array().unwrap() {
            assert_eq!(row["queue"], "research");
            assert_eq!(row["attempts"], 1);
            assert!(
                row["reason"].as_str().unwrap().starts_with("bad data"),
                "{row}"
            );
            seen.push(row["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every dead letter once, oldest first");

    let (_, timeouts) = api.get("/v1/dead?class=timeout").await;
    let found: Vec<&str> = timeouts["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(found, vec![ids[1].as_str(), ids[3].as_str()]);
    assert_eq!(timeouts["truncated"], false);
    let (_, none) = api.get("/v1/dead?queue=lifecycle").await;
    assert_eq!(none["jobs"], json!([]));
    let (_, later) = api.get("/v1/dead?died_since=99999999999999").await;
    assert_eq!(later["jobs"], json!([]));

    let (status, record) = api.get(&format!("/v1/dead/{}", ids[0])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["status"], "dead");
    assert_eq!(record["history"][0]["error"], "bad data 0");

    // Bad input and unknown IDs: nothing is done.
    refused(
        api.get("/v1/dead?cursor=nonsense").await,
        StatusCode::BAD_REQUEST,
        "cursor: not a cursor of this listing",
    );
    refused(
        api.get("/v1/dead?limit=0").await,
        StatusCode::BAD_REQUEST,
        "limit: must be 1 to 1000",
    );
    refused(
        api.get("/v1/dead/not-a-uuid").await,
        StatusCode::BAD_REQUEST,
        "not a job ID",
    );
    refused(
        api.get(&format!("/v1/dead/{UNKNOWN_ID}")).await,
        StatusCode::NOT_FOUND,
        "no job with ID",
    );
    refused(
        api.post("/v1/dead/retry", json!({"ids": [ids[0], "x"]}))
            .await,
        StatusCode::BAD_REQUEST,
        "not a job ID",
    );
    refused(
        api.post("/v1/dead/retry", json!({"ids": [ids[0]], "filter": {}}))
            .await,
        StatusCode::BAD_REQUEST,
        "exactly one of ids",
    );
    refused(
        api.post("/v1/dead/purge", json!({"filter": {"queue": "other"}}))
            .await,
        StatusCode::BAD_REQUEST,
        "queue: must be research or lifecycle",
    );
    refused(
        api.post("/v1/dead/retry", json!({"ids": [ids[0], UNKNOWN_ID]}))
            .await,
        StatusCode::NOT_FOUND,
        "nothing was done",
    );
    assert_eq!(q.dead_count().await.unwrap(), 5);

    // Retry one by ID (a job that is not dead is named, not touched), then purge the
    // timeouts by filter, then everything left.
    let live = api.submit(json!({"query": "alive"})).await;
    let (status, retried) = api
        .post("/v1/dead/retry", json!({"ids": [ids[0], live]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(
        retried,
        json!({"requeued": 1, "not_dead": [{"id": live, "status": "queued"}], "truncated": false})
    );
    let (_, job) = api.get(&format!("/v1/jobs/{}", ids[0])).await;
    assert_eq!(job["status"], "queued");
    let (status, purged) = api
        .post("/v1/dead/purge", json!({"filter": {"class": "timeout"}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{purged}");
    assert_eq!(purged["purged"], 2);
    let (_, job) = api.get(&format!("/v1/jobs/{}", ids[1])).await;
    assert_eq!(job["status"], "failed");
    let (_, purged) = api.post("/v1/dead/purge", json!({"filter": {}})).await;
    assert_eq!(purged["purged"], 2);
    assert_eq!(q.dead_count().await.unwrap(), 0);
}

#[tokio::test]
async fn jobs_are_listed_by_filter_in_cursor_pages_and_batch_results_paged() {
    let api = Api::start("", &[]).await;
    // One dead job first (the test's own worker takes the oldest queued job).
    let q = api.queue(QueueKind::Research).await;
    let dead = dead_job(&api, &q, 9, "permanent").await;
    let lines: String = (0..5)
        .map(|n| {
            format!("{{\"query\": \"batch question {n}\", \"metadata\": {{\"team\": \"red\"}}}}\n")
        })
        .collect();
    let (status, batch) = send(
        api.http
            .post(api.url("/v1/batches"))
            .header("content-type", "application/x-ndjson")
            .body(lines),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{batch}");
    let batch_id = batch["batch_id"].as_str().unwrap().to_string();
    let batch_ids: Vec<String> = batch["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let since = fleet_shared::time::now_ms();
    let blue = api
        .submit(json!({"query": "single", "metadata": {"team": "blue"}}))
        .await;

    // Every job, newest first, three at a time, each once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=3&cursor={c}"),
            None => "/v1/jobs?limit=3".to_string(),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["truncated"], false);
        // a page reads its index entries, not every record: the limit and one more
        assert!(page["scanned"].as_u64().unwrap() <= 4, "{page}");
        seen.extend(
            page["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut all: Vec<String> = vec![dead.clone()];
    all.extend(batch_ids.iter().cloned());
    all.push(blue.clone());
    all.reverse();
    assert_eq!(seen, all, "newest first, every job once");

    let ids_of = |page: &Value| -> BTreeSet<String> {
        page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, page) = api.get("/v1/jobs?status=dead").await;
    assert_eq!(ids_of(&page), BTreeSet::from([dead.clone()]));
    assert_eq!(page["jobs"][0]["error"]["class"], "permanent");
    assert_eq!(page["jobs"][0]["query"], "question 9");
    let (_, page) = api
        .get(&format!("/v1/jobs?batch={batch_id}&status=queued"))
        .await;
    assert_eq!(ids_of(&page), batch_ids.iter().cloned().collect());
    let (_, page) = api.get("/v1/jobs?meta=team%3Dblue").await;
    assert_eq!(ids_of(&page), BTreeSet::from([blue.clone()]));
    let (_, page) = api.get(&format!("/v1/jobs?since={since}&agent=demo")).await;
    assert_eq!(ids_of(&page), BTreeSet::from([blue.clone()]));
    let (_, page) = api
        .get(&format!("/v1/jobs?until={since}&order=oldest&limit=2"))
        .await;
    assert_eq!(page["jobs"][0]["id"], dead.as_str());
    assert_eq!(page["jobs"][1]["id"], batch_ids[0].as_str());
    assert!(page["next_cursor"].is_string());
    let (_, page) = api.get("/v1/jobs?queue=lifecycle").await;
    assert_eq!(page["jobs"], json!([]));

    // A batch's results, in submission order, two at a time.
    let mut results = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/batches/{batch_id}/results?limit=2&cursor={c}"),
            None => format!("/v1/batches/{batch_id}/results?limit=2"),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["batch_id"], batch_id.as_str());
        for job in page["jobs"].as_array().unwrap() {
            assert_eq!(job["status"], "queued");
            assert!(job["answer"].is_null());
            results.push(job["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(results, batch_ids);

    for (path, message) in [
        ("/v1/jobs?status=sleeping", "status: not a job status"),
        ("/v1/jobs?limit=5000", "limit: must be 1 to 1000"),
        ("/v1/jobs?meta=team", "meta: must be KEY=VALUE"),
        (
            "/v1/jobs?since=yesterday",
            "since: not a time in Unix milliseconds",
        ),
        (
            "/v1/jobs?cursor=abc",
            "cursor: not a cursor of this listing",
        ),
        ("/v1/jobs?colour=red", "unknown query parameter `colour`"),
        ("/v1/batches/nope/results", "not a batch ID"),
    ] {
        refused(api.get(path).await, StatusCode::BAD_REQUEST, message);
    }
    refused(
        api.get(&format!("/v1/batches/{UNKNOWN_ID}/results")).await,
        StatusCode::NOT_FOUND,
        "no batch with ID",
    );
}

#[tokio::test]
async fn a_listing_is_exact_past_its_scan_bound_and_says_when_a_record_filter_cut_it_short() {
    let api = Api::start("[api]\nlist_scan_max = 1\n", &[]).await;
    for n in 0..30 {
        let team = if n == 25 { "blue" } else { "red" };
        api.submit(json!({"query": format!("q{n}"), "metadata": {"team": team}}))
            .await;
    }
    // An index answers this alone: every job, whatever the bound.
    let (status, page) = api.get("/v1/jobs?limit=100").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["truncated"], false, "{page}");
    assert_eq!(page["scan_max"], 1);
    assert_eq!(page["jobs"].as_array().unwrap().len(), 30);
    // A metadata filter is checked on the records of index entries, at most the bound
    // a page: the pages say so, and their cursors still reach the match.
    let mut found = Vec::new();
    let mut cursor: Option<String> = None;
    let mut truncated = false;
    for _ in 0..40 {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?meta=team%3Dblue&order=oldest&cursor={c}"),
            None => "/v1/jobs?meta=team%3Dblue&order=oldest".into(),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        truncated |= page["truncated"] == true;
        found.extend(
            page["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["query"].clone()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert!(truncated);
    assert_eq!(found, [json!("q25")]);
}

#[tokio::test]
async fn history_is_served_per_minute_with_its_range_checked() {
    let api = Api::start("", &[]).await;
    let q = api.queue(QueueKind::Research).await;
    let dead = dead_job(&api, &q, 1, "permanent").await;
    assert!(!dead.is_empty());
    let (status, body) = api.get("/v1/stats/history").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let minutes = body["minutes"].as_array().unwrap();
    let sum = |k: &str| minutes.iter().map(|m| m[k].as_u64().unwrap()).sum::<u64>();
    assert!(sum("enqueued") >= 1, "{body}");
    assert!(sum("dead") >= 1, "{body}");
    assert!(sum("failed") >= 1, "{body}");
    let to = body["to"].as_u64().unwrap();
    assert_eq!(
        body["from"].as_u64().unwrap(),
        to - 3_600_000,
        "an hour by default"
    );
    // a range that holds none of it
    let (status, body) = api.get("/v1/stats/history?from=0&to=60000").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["minutes"], json!([]));
    for (path, message) in [
        ("/v1/stats/history?from=2&to=1", "from (2) is after to (1)"),
        (
            "/v1/stats/history?from=0&to=999999999999",
            "spans more than 7 days",
        ),
        ("/v1/stats/history?from=yesterday", "from"),
        ("/v1/stats/history?colour=red", "colour"),
    ] {
        refused(api.get(path).await, StatusCode::BAD_REQUEST, message);
    }
}

#[tokio::test]
async fn workers_are_listed_with_the_leases_they_hold() {
    let api = Api::start("", &[]).await;
    let q = api.queue(QueueKind::Research).await;
    let (status, none) = api.get("/v1/workers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(none["workers"], json!([]));
    let id = api.submit(json!({"query": "held"})).await;
    q.announce_worker("w-test", Duration::from_secs(60))
        .await
        .unwrap();
    q.announce_worker("w-gone", Duration::from_millis(1))
        .await
        .unwrap();
    let fetched = q.fetch("w-test", 1).await.unwrap();
    assert_eq!(fetched.leases[0].id, id);
    let list = eventually(
        "w-gone's announcement expired",
        Duration::from_secs(5),
        || async {
            let (_, list) = api.get("/v1/workers").await;
            (list["workers"].as_array().unwrap().len() == 2 && list["workers"][1]["live"] == false)
                .then_some(list)
        },
    )
    .await;
    let w = &list["workers"][0];
    assert_eq!(w["name"], "w-test");
    assert_eq!(w["live"], true);
    assert_eq!(w["leases"][0]["job"], id.as_str());
    assert_eq!(w["leases"][0]["queue"], "research");
    assert!(w["leases"][0]["lease_until"].as_u64().unwrap() > fleet_shared::time::now_ms());
    assert_eq!(list["workers"][1]["name"], "w-gone");
    assert_eq!(list["scanned"], 1);
    refused(
        api.get("/v1/workers?name=w-test").await,
        StatusCode::BAD_REQUEST,
        "unknown field `name`",
    );
}

/// Every route added for the CLI's commands, with a body an action accepts.
fn new_routes(job: &str) -> Vec<(Method, String, Value)> {
    vec![
        (Method::GET, "/v1/jobs".into(), Value::Null),
        (
            Method::GET,
            format!("/v1/batches/{UNKNOWN_ID}/results"),
            Value::Null,
        ),
        (Method::GET, "/v1/agents".into(), Value::Null),
        (Method::GET, "/v1/agents/a-1".into(), Value::Null),
        (Method::GET, "/v1/dead".into(), Value::Null),
        (Method::GET, format!("/v1/dead/{job}"), Value::Null),
        (Method::GET, "/v1/workers".into(), Value::Null),
        (Method::GET, "/v1/stats/history".into(), Value::Null),
        (Method::POST, "/v1/agents".into(), json!({})),
        (Method::POST, "/v1/agents/a-1/pause".into(), json!({})),
        (Method::POST, "/v1/agents/a-1/resume".into(), json!({})),
        (Method::POST, "/v1/agents/a-1/terminate".into(), json!({})),
        (Method::POST, "/v1/pool/scale".into(), json!({"size": 1})),
        (Method::POST, "/v1/dead/retry".into(), json!({"ids": [job]})),
        (Method::POST, "/v1/dead/purge".into(), json!({"ids": [job]})),
    ]
}

#[tokio::test]
async fn tokens_are_read_only_or_admin_and_each_is_rate_limited() {
    let extra = "[api]\nrequests_per_minute = 1000\nauth_failures_per_minute = 1000\n[[api.tokens]]\nname = \"dashboard\"\ntoken_env = \"DASHBOARD_TOKEN\"\nrole = \"read\"\n";
    let api = Api::start(
        extra,
        &[
            ("FLEET_API__TOKEN", ADMIN.to_string()),
            ("DASHBOARD_TOKEN", READER.to_string()),
        ],
    )
    .await;
    let job = {
        let (status, body) = send(
            api.http
                .post(api.url("/v1/jobs"))
                .bearer_auth(ADMIN)
                .json(&json!({"query": "q"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_string()
    };
    let call = |method: &Method, path: &str, body: &Value, token: Option<&str>| {
        let mut rb = api.http.request(method.clone(), api.url(path));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if !body.is_null() {
            rb = rb.json(body);
        }
        send(rb)
    };
    for (method, path, body) in new_routes(&job) {
        let what = format!("{method} {path}");
        let (status, answer) = call(&method, &path, &body, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {answer}");
        let (status, answer) = call(&method, &path, &body, Some("wrong-token-0123456789")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {answer}");
        let (status, answer) = call(&method, &path, &body, Some(READER)).await;
        if method == Method::GET {
            assert!(
                status == StatusCode::OK || status == StatusCode::NOT_FOUND,
                "{what}: the reader reads: {status} {answer}"
            );
        } else {
            assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {answer}");
            assert_eq!(
                error_of(&answer),
                format!(
                    "token \"dashboard\" is read-only: {what} needs a token with role \"admin\" (api.tokens)"
                )
            );
        }
        let (status, answer) = call(&method, &path, &body, Some(ADMIN)).await;
        assert!(
            [StatusCode::OK, StatusCode::ACCEPTED, StatusCode::NOT_FOUND].contains(&status),
            "{what}: the admin acts: {status} {answer}"
        );
    }
    // The OpenAPI document is open, like the health checks.
    let (status, doc) = api.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/v1/dead/retry"]["post"].is_object());
    assert!(
        !api.server.logs().contains(READER),
        "a token reached the log"
    );
}

#[tokio::test]
async fn a_token_past_its_rate_limit_gets_429_with_retry_after() {
    let extra = "[api]\nrequests_per_minute = 1000\n[[api.tokens]]\nname = \"dashboard\"\ntoken_env = \"DASHBOARD_TOKEN\"\nrole = \"read\"\nrequests_per_minute = 4\n";
    let api = Api::start(
        extra,
        &[
            ("FLEET_API__TOKEN", ADMIN.to_string()),
            ("DASHBOARD_TOKEN", READER.to_string()),
        ],
    )
    .await;
    for path in ["/v1/jobs", "/v1/stats/history", "/v1/dead", "/v1/workers"] {
        let (status, body) = send(api.http.get(api.url(path)).bearer_auth(READER)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    let r = api
        .http
        .get(api.url("/v1/jobs"))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "15", "one request per 15 s");
    let body: Value = r.json().await.unwrap();
    assert!(
        error_of(&body)
            .contains("token \"dashboard\" is over its rate limit of 4 requests per minute"),
        "{body}"
    );
    // Another token is not held back.
    let (status, _) = send(api.http.get(api.url("/v1/jobs")).bearer_auth(ADMIN)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_class_filter_over_many_dead_letters_carries_on_past_its_bound() {
    let api = Api::start("[api]\nlist_scan_max = 2\n", &[]).await;
    let q = api.queue(QueueKind::Research).await;
    let mut timeouts = Vec::new();
    for n in 0..5 {
        let class = if n == 0 || n == 4 {
            "timeout"
        } else {
            "permanent"
        };
        let id = dead_job(&api, &q, n, class).await;
        if class == "timeout" {
            timeouts.push(id);
        }
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/dead?class=timeout&cursor={c}"),
            None => "/v1/dead?class=timeout".to_string(),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(page["scanned"].as_u64().unwrap() <= 2, "{page}");
        pages += 1;
        seen.extend(
            page["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(page["truncated"], true, "{page}");
                cursor = Some(c.to_string());
            }
            None => break,
        }
        assert!(pages < 10, "the cursor does not move on");
    }
    assert_eq!(seen, timeouts, "each match once, in death order");
}
