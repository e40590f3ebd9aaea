//! The router without Redis: everything here is answered before Redis is asked (the
//! queues are opened on first use, and the Redis URL points at a closed port), which
//! is itself the point: bad input never reaches Redis.

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode};
use fleet_shared::results::JobStatus;
use fleet_shared::settings::Settings;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::guard::bearer_matches;
use super::routes::{BatchFormat, batch_format, result_response};
use super::*;
use fleet_shared::secret::Secret;

fn app(env: &[(&str, &str)]) -> Router {
    let mut pairs = vec![("FLEET_REDIS__URL".to_string(), "redis://127.0.0.1:1".into())];
    pairs.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let settings = Settings::from_layers(None, &pairs).unwrap();
    router(ApiState::new(Ctx::new(settings, true)))
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, body)
}

fn post(path: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut b = Request::post(path);
    if let Some(t) = content_type {
        b = b.header("content-type", t);
    }
    b.body(body.into()).unwrap()
}

const JSON: Option<&str> = Some("application/json");

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn error_of(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {body}"))
}

#[tokio::test]
async fn bad_input_is_refused_before_redis_is_asked() {
    let app = app(&[]);
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            post("/v1/jobs", Some("application/json"), r#"{"query": "  "}"#),
            StatusCode::BAD_REQUEST,
            "invalid job: the query is empty",
        ),
        (
            post("/v1/jobs", JSON, r#"{"query": "q", "agent": "nobody"}"#),
            StatusCode::BAD_REQUEST,
            "unknown agent profile \"nobody\"",
        ),
        (
            post("/v1/jobs", JSON, "{\"query\": "),
            StatusCode::BAD_REQUEST,
            "invalid job: malformed JSON",
        ),
        (
            post(
                "/v1/batches",
                Some("application/x-ndjson"),
                "ok\n{\"query\": 3}\n",
            ),
            StatusCode::BAD_REQUEST,
            "invalid batch (nothing was submitted): line 2: malformed JSON",
        ),
        (
            post(
                "/v1/batches",
                Some("application/json; charset=utf-8"),
                r#"[{"query": "a"}, {"query": ""}]"#,
            ),
            StatusCode::BAD_REQUEST,
            "item 2 of 2 (index 1): the query is empty",
        ),
        (
            post("/v1/batches", None, "q\n"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "no Content-Type",
        ),
        (
            post("/v1/batches?agnt=demo", Some("application/x-ndjson"), "q\n"),
            StatusCode::BAD_REQUEST,
            "unknown field `agnt`",
        ),
        (
            get("/v1/jobs/not-a-uuid"),
            StatusCode::BAD_REQUEST,
            "not a job ID",
        ),
        (
            get("/v1/jobs/not-a-uuid/result?wait=5"),
            StatusCode::BAD_REQUEST,
            "not a job ID",
        ),
        (
            get("/v1/jobs/01932c7e-8d1c-7b3a-9f1e-2a4b5c6d7e8f/result?wait=soon"),
            StatusCode::BAD_REQUEST,
            "wait",
        ),
        (
            post("/v1/jobs/x/cancel", None, ""),
            StatusCode::BAD_REQUEST,
            "not a job ID",
        ),
        (
            get("/v1/batches/nope"),
            StatusCode::BAD_REQUEST,
            "not a batch ID",
        ),
    ];
    for (req, status, message) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (got, body) = call(&app, req).await;
        assert_eq!(got, status, "{what}: {body}");
        assert!(
            error_of(&body).contains(message),
            "{what}: wanted {message:?} in {body}"
        );
    }
}

#[tokio::test]
async fn routes_methods_and_body_size() {
    let app = app(&[("FLEET_API__MAX_BODY_BYTES", "64")]);
    let (status, body) = call(&app, get("/v1/nothing")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body), "no such route: GET /v1/nothing");
    let delete = Request::delete("/v1/jobs").body(Body::empty()).unwrap();
    let (status, body) = call(&app, delete).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_of(&body), "method DELETE is not allowed on /v1/jobs");
    let big = format!(r#"{{"query": "{}"}}"#, "x".repeat(100));
    let (status, body) = call(&app, post("/v1/jobs", JSON, big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        error_of(&body).contains("over the limit of 64 bytes (api.max_body_bytes)"),
        "{body}"
    );
    let (status, body) = call(&app, get("/healthz")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
}

#[tokio::test]
async fn a_token_guards_v1_but_not_health() {
    let app = app(&[("FLEET_API__TOKEN", "t0ken-for-the-tests")]);
    let with = |auth: Option<&str>| {
        let mut b = Request::get("/v1/jobs/not-a-uuid");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(Body::empty()).unwrap()
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("t0ken-for-the-tests"),
        Some("Basic t0ken-for-the-tests"),
    ] {
        let (status, body) = call(&app, with(auth)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(!body.to_string().contains("t0ken"), "{body}");
    }
    // Past authentication, the malformed ID is what is wrong.
    let (status, _) = call(&app, with(Some("Bearer t0ken-for-the-tests"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(&app, with(Some("bearer  t0ken-for-the-tests "))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Unknown routes are not revealed without the token.
    assert_eq!(
        call(&app, get("/v1/nothing")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(call(&app, get("/healthz")).await.0, StatusCode::OK);
}

#[test]
fn bearer_comparison() {
    let token = Secret::new("abc");
    let h = |s: &'static str| HeaderValue::from_static(s);
    assert!(bearer_matches(Some(&h("Bearer abc")), &token));
    assert!(bearer_matches(Some(&h("BEARER abc")), &token));
    assert!(!bearer_matches(Some(&h("Bearer abcd")), &token));
    assert!(!bearer_matches(Some(&h("Bearer ab")), &token));
    assert!(!bearer_matches(Some(&h("Bearer")), &token));
    assert!(!bearer_matches(Some(&h("abc")), &token));
    assert!(!bearer_matches(None, &token));
}

#[test]
fn content_types_choose_the_batch_format() {
    let f =
        |s: &'static str| batch_format(Some(&HeaderValue::from_static(s))).map_err(|e| e.status);
    assert_eq!(f("application/json"), Ok(BatchFormat::JsonArray));
    assert_eq!(
        f("Application/JSON; charset=utf-8"),
        Ok(BatchFormat::JsonArray)
    );
    assert_eq!(f("application/x-ndjson"), Ok(BatchFormat::Lines));
    assert_eq!(f("text/plain; charset=utf-8"), Ok(BatchFormat::Lines));
    assert_eq!(
        f("application/x-www-form-urlencoded"),
        Err(StatusCode::UNSUPPORTED_MEDIA_TYPE)
    );
    assert_eq!(
        batch_format(None).map_err(|e| e.status),
        Err(StatusCode::UNSUPPORTED_MEDIA_TYPE)
    );
}

fn record(status: JobStatus) -> fleet_shared::results::JobRecord {
    fleet_shared::results::JobRecord {
        id: "01932c7e-8d1c-7b3a-9f1e-2a4b5c6d7e8f".into(),
        status,
        spec: Some(fleet_shared::job::JobSpec::research("q?", "demo")),
        attempts: 1,
        max_attempts: 3,
        created_at: 1,
        started_at: None,
        finished_at: None,
        run_at: None,
        worker: None,
        error: None,
        result: None,
        batch: None,
        history: vec![],
    }
}

async fn response_json(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn results_read_as_documented() {
    let mut ok = record(JobStatus::Succeeded);
    ok.result = Some(json!({"output": {"answer": "42"}}));
    let (status, body) = response_json(result_response(&ok)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["answer"], "42");
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["query"], "q?");

    let mut dead = record(JobStatus::Dead);
    dead.error = Some(json!({"class": "permanent", "message": "bad data", "attempt": 1}));
    let (status, body) = response_json(result_response(&dead)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body["error"],
        "job 01932c7e-8d1c-7b3a-9f1e-2a4b5c6d7e8f ended dead: permanent: bad data (attempt 1)"
    );
    assert_eq!(body["detail"]["class"], "permanent");

    for s in [JobStatus::Queued, JobStatus::Running, JobStatus::Retrying] {
        let (status, body) = response_json(result_response(&record(s))).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(body["status"], s.as_str());
    }
    let (status, _) = response_json(result_response(&record(JobStatus::Cancelled))).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn guards_answer_before_redis_is_asked() {
    let open = app(&[]);
    let with = |f: &dyn Fn(axum::http::request::Builder) -> axum::http::request::Builder| {
        f(Request::post("/v1/jobs").header("content-type", "application/json"))
            .body(Body::from(r#"{"query": "q"}"#))
            .unwrap()
    };
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            with(&|b| b.header("origin", "https://evil.example")),
            StatusCode::FORBIDDEN,
            "Origin",
        ),
        (
            with(&|b| b.header("host", "evil.example:8080")),
            StatusCode::FORBIDDEN,
            "Host",
        ),
        (
            post("/v1/batches", Some("text/plain"), "q\n"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "without api.token",
        ),
        (
            with(&|b| {
                b.header("authorization", "Bearer a")
                    .header("authorization", "Bearer b")
            }),
            StatusCode::BAD_REQUEST,
            "more than one Authorization header",
        ),
        (
            post(
                "/v1/batches",
                JSON,
                r#"[{"query": "a"}, {"query": "b"}, {"query": "c"}]"#,
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "over the limit of 2 jobs (api.max_batch_jobs)",
        ),
    ];
    let capped = app(&[("FLEET_API__MAX_BATCH_JOBS", "2")]);
    for (req, status, message) in cases {
        let what = format!("{} {} {:?}", req.method(), req.uri(), req.headers());
        let app = if message.contains("max_batch_jobs") {
            &capped
        } else {
            &open
        };
        let response = app.clone().oneshot(req).await.unwrap();
        assert_eq!(
            response.headers()["x-content-type-options"],
            "nosniff",
            "{what}"
        );
        assert_eq!(response.headers()["cache-control"], "no-store", "{what}");
        assert!(response.headers().contains_key("x-request-id"), "{what}");
        let (got, body) = response_json(response).await;
        assert_eq!(got, status, "{what}: {body}");
        assert!(error_of(&body).contains(message), "{what}: {body}");
    }
    // A client's plain request ID is kept; anything else is replaced.
    let id = |sent: &'static str| {
        let open = open.clone();
        async move {
            let r = open
                .oneshot(
                    Request::get("/healthz")
                        .header("x-request-id", sent)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            r.headers()["x-request-id"].to_str().unwrap().to_string()
        }
    };
    assert_eq!(id("abc-123.x_y").await, "abc-123.x_y");
    assert_ne!(id("has space\"").await, "has space\"");
}

/// Every route the router serves is in the OpenAPI document, with its method, and
/// the document parses as OpenAPI 3.1; the document lists no route the router lacks.
#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let pairs = vec![(
        "FLEET_REDIS__URL".to_string(),
        "redis://127.0.0.1:1".to_string(),
    )];
    let settings = Settings::from_layers(None, &pairs).unwrap();
    let (app, served) = routes_and_router(ApiState::new(Ctx::new(settings, true)));
    assert!(served.len() >= 25, "{served:?}");
    let (status, doc) = call(&app, get("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    let spec = oas3::from_json(doc.to_string()).expect("an OpenAPI 3.1 document");
    assert!(spec.openapi.starts_with("3.1"), "{}", spec.openapi);
    let paths = spec.paths.as_ref().expect("paths");
    assert_eq!(
        missing_from(&served, paths),
        Vec::<String>::new(),
        "routes the document lacks"
    );
    let mut documented = 0;
    for (path, item) in paths {
        for (method, op) in item.methods() {
            documented += 1;
            assert!(
                served.iter().any(|(m, p)| m == method && p == path),
                "{method} {path} is documented but not served"
            );
            assert!(
                op.responses.as_ref().is_some_and(|r| !r.is_empty()),
                "{method} {path}: no responses"
            );
        }
    }
    assert_eq!(documented, served.len());
    // The check does catch a missing route.
    let mut more = served.clone();
    more.push((Method::DELETE, "/v1/jobs/{id}"));
    assert_eq!(missing_from(&more, paths), vec!["DELETE /v1/jobs/{id}"]);
}

fn missing_from(
    served: &[(Method, &'static str)],
    paths: &oas3::Map<String, oas3::spec::PathItem>,
) -> Vec<String> {
    served
        .iter()
        .filter(|(m, p)| {
            !paths
                .get(*p)
                .is_some_and(|item| item.methods().into_iter().any(|(dm, _)| dm == *m))
        })
        .map(|(m, p)| format!("{m} {p}"))
        .collect()
}

#[tokio::test]
async fn read_only_tokens_may_only_read_and_every_token_is_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reader");
    std::fs::write(&file, "reader-token-0123456789\n").unwrap();
    let config = format!(
        "[api]\nrequests_per_minute = 3\n[[api.tokens]]\nname = \"reader\"\ntoken_file = {:?}\nrole = \"read\"\n[[api.tokens]]\nname = \"ops\"\ntoken_env = \"OPS_TOKEN\"\nrole = \"admin\"\nrequests_per_minute = 100\n",
        file.display().to_string()
    );
    let pairs = vec![
        (
            "FLEET_REDIS__URL".to_string(),
            "redis://127.0.0.1:1".to_string(),
        ),
        ("OPS_TOKEN".to_string(), "ops-token-0123456789".to_string()),
    ];
    let settings = Settings::from_layers(Some(&config), &pairs).unwrap();
    let app = router(ApiState::new(Ctx::new(settings, true)));
    let with = |method: Method, path: &str, token: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap()
    };
    // The reader reads (a malformed ID: past authentication), and may not act.
    let (status, _) = call(
        &app,
        with(Method::GET, "/v1/jobs/x", "reader-token-0123456789"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = call(
        &app,
        with(Method::POST, "/v1/jobs/x/cancel", "reader-token-0123456789"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        error_of(&body),
        "token \"reader\" is read-only: POST /v1/jobs/x/cancel needs a token with role \"admin\" (api.tokens)"
    );
    // Its third request was its last of the minute; the admin's own limit is higher.
    let (status, _) = call(
        &app,
        with(Method::GET, "/v1/jobs/x", "reader-token-0123456789"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let response = app
        .clone()
        .oneshot(with(Method::GET, "/v1/jobs/x", "reader-token-0123456789"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "20");
    let (status, _) = call(
        &app,
        with(Method::POST, "/v1/jobs/x/cancel", "ops-token-0123456789"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the admin acts");
}

#[test]
fn token_settings_are_checked_by_name() {
    let bad = |config: &str, env: &[(&str, &str)]| {
        let pairs: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_layers(Some(config), &pairs)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        bad(
            "[[api.tokens]]\nname = \"a\"\ntoken_env = \"NOPE_TOKEN\"\nrole = \"read\"\n",
            &[]
        ),
        "api.tokens[0].token_env: the environment variable NOPE_TOKEN is not set"
    );
    assert_eq!(
        bad(
            "[[api.tokens]]\nname = \"a\"\ntoken_env = \"T\"\nrole = \"read\"\n",
            &[("T", "short")]
        ),
        "api.tokens[0].token_env: must be at least 16 characters"
    );
    assert!(
        bad(
            "[[api.tokens]]\nname = \"a\"\ntoken_env = \"T\"\nrole = \"root\"\n",
            &[("T", "0123456789abcdefgh")]
        )
        .starts_with("api.tokens[0].role: unknown variant `root`"),
    );
    assert_eq!(
        bad("[[api.tokens]]\nname = \"a\"\nrole = \"read\"\n", &[]),
        "api.tokens[0].token_env: set exactly one of token_env and token_file"
    );
}

#[tokio::test]
async fn listings_say_so_when_the_indexes_are_off() {
    let app = app(&[("FLEET_QUEUE__LISTING_INDEXES", "false")]);
    let batch = uuid::Uuid::now_v7();
    for path in [
        "/v1/jobs?status=failed".to_string(),
        format!("/v1/batches/{batch}/results"),
    ] {
        let (status, body) = call(&app, get(&path)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}: {body}");
        assert!(
            error_of(&body).contains("queue.listing_indexes = false"),
            "{path}: {body}"
        );
    }
}
