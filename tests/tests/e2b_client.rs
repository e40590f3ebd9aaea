//! The E2B client (`fleet_shared::sandbox::e2b::E2bProvider`) against the fake
//! E2B server (`fleet_tests::fake_e2b`) over real HTTP on loopback.
//!
//! What is proven here: every control-plane request the client sends is valid
//! against the vendored `openapi.yml` (and every `/files` request against
//! `envd.yaml`, every RPC body against `process.proto`); every response shape the
//! spec defines for those calls parses with the client's types; and the client
//! behaves under E2B's failure modes (5xx bursts, 429 with `Retry-After`, 502
//! "sandbox not found", sandboxes vanishing mid-command, cut streams, slow
//! responses), keeps the plan limits, pages through lists, and never lets the API
//! key or an access token reach a log line.
//!
//! Commands run through the local provider (`fleet_shared::sandbox::local`) behind the fake.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_shared::error::ErrorClass;
use fleet_shared::error::JobError;
use fleet_shared::sandbox::e2b::control::{
    ApiError, ListedSandbox, Sandbox, SandboxDetail, SandboxMetric,
};
use fleet_shared::sandbox::e2b::{E2bProvider, META_CREATE_ID};
use fleet_shared::sandbox::{
    ExecControl, ExecRequest, ListFilter, META_AGENT_ID, META_OWNER, META_POOL, OutputChunk,
    SandboxError, SandboxProvider, SandboxSpec, SandboxState,
};
use fleet_shared::secret::Secret;
use fleet_shared::settings::E2bSettings;
use fleet_tests::fake_e2b::openapi::{OpenApi, RequestParts, specs_dir};
use fleet_tests::fake_e2b::{FakeE2b, NotFoundBody, Plan, RecordedRequest, SandboxUsage};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

async fn fake() -> FakeE2b {
    FakeE2b::start_local().await
}

/// A client of `fake` with fast retries; `tweak` adjusts its settings.
fn client(fake: &FakeE2b, tweak: impl FnOnce(&mut E2bSettings)) -> E2bProvider {
    let mut s = fake.settings();
    tweak(&mut s);
    E2bProvider::new(&s)
        .unwrap()
        .with_backoff(Duration::from_millis(5), Duration::from_millis(50))
}

fn spec(extra: &[(&str, &str)]) -> SandboxSpec {
    let mut metadata = BTreeMap::from([
        (META_OWNER.to_string(), "dexter-fleet".to_string()),
        (META_POOL.to_string(), "demo".to_string()),
        (META_AGENT_ID.to_string(), "agent-1".to_string()),
    ]);
    for (k, v) in extra {
        metadata.insert(k.to_string(), v.to_string());
    }
    SandboxSpec {
        template: "base".into(),
        timeout: Duration::from_secs(300),
        metadata,
        env: BTreeMap::new(),
        auto_pause: false,
        network: None,
        stop: None,
    }
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    }
}

fn parts(r: &RecordedRequest) -> RequestParts<'_> {
    RequestParts {
        method: &r.method,
        path: &r.path,
        query: r.query.as_deref(),
        headers: &r.headers,
        body: &r.body,
    }
}

fn count(fake: &FakeE2b, method: &str, pred: impl Fn(&str) -> bool) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == method && pred(&r.path))
        .count()
}

// ---------------------------------------------------------------------------
// Spec conformance
// ---------------------------------------------------------------------------

/// `process.proto`, reduced to what checking a JSON body needs: per message
/// (qualified `Outer.Inner` for nested ones), its fields by JSON name and type;
/// and per enum, its value names.
struct Proto {
    messages: HashMap<String, HashMap<String, String>>,
    enums: HashMap<String, Vec<String>>,
}

impl Proto {
    fn load(file: &str) -> Proto {
        let text = std::fs::read_to_string(specs_dir().join(file)).unwrap();
        let mut messages: HashMap<String, HashMap<String, String>> = HashMap::new();
        let mut enums: HashMap<String, Vec<String>> = HashMap::new();
        // Open blocks: ("message"|"enum"|"oneof"|"service", name).
        let mut stack: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            let l = line.split("//").next().unwrap().trim();
            if l.is_empty()
                || l.starts_with("syntax")
                || l.starts_with("package")
                || l.starts_with("rpc ")
            {
                continue;
            }
            if l.ends_with('{') {
                let mut words = l.trim_end_matches('{').split_whitespace();
                let kind = words.next().unwrap().to_string();
                let name = words.next().unwrap_or_default().to_string();
                stack.push((kind.clone(), name.clone()));
                let qualified = qualified(&stack);
                match kind.as_str() {
                    "message" => {
                        messages.entry(qualified).or_default();
                    }
                    "enum" => {
                        enums.entry(qualified).or_default();
                    }
                    _ => {}
                }
                continue;
            }
            if l == "}" {
                stack.pop();
                continue;
            }
            let Some((decl, _number)) = l.trim_end_matches(';').split_once('=') else {
                continue;
            };
            let innermost = stack
                .iter()
                .rev()
                .find(|(k, _)| k == "message" || k == "enum");
            match innermost.map(|(k, _)| k.as_str()) {
                Some("enum") => {
                    let e = qualified_upto(&stack, "enum");
                    enums.get_mut(&e).unwrap().push(decl.trim().to_string());
                }
                Some("message") => {
                    let m = qualified_upto(&stack, "message");
                    let mut words: Vec<&str> = decl.split_whitespace().collect();
                    let name = words.pop().unwrap();
                    let ty = words
                        .into_iter()
                        .filter(|w| *w != "optional" && *w != "repeated")
                        .collect::<Vec<_>>()
                        .join(" ");
                    messages.get_mut(&m).unwrap().insert(camel(name), ty);
                }
                _ => {}
            }
        }
        Proto { messages, enums }
    }

    /// Check a JSON message: every key is a field, nested messages and enum
    /// values recursively. `scope` resolves nested type names.
    fn check(&self, message: &str, v: &Value, at: &str, errors: &mut Vec<String>) {
        let Some(fields) = self.messages.get(message) else {
            errors.push(format!("{at}: no message {message}"));
            return;
        };
        let Some(obj) = v.as_object() else {
            errors.push(format!("{at}: {message} must be a JSON object"));
            return;
        };
        for (k, val) in obj {
            let Some(ty) = fields.get(k) else {
                errors.push(format!("{at}/{k}: not a field of {message}"));
                continue;
            };
            let resolved = [format!("{message}.{ty}"), ty.clone()];
            if let Some(m) = resolved.iter().find(|t| self.messages.contains_key(*t)) {
                self.check(m, val, &format!("{at}/{k}"), errors);
            } else if let Some(e) = resolved.iter().find_map(|t| self.enums.get(t))
                && !val.as_str().is_some_and(|s| e.iter().any(|x| x == s))
            {
                errors.push(format!("{at}/{k}: {val} is not a value of {ty}"));
            }
        }
    }
}

fn qualified(stack: &[(String, String)]) -> String {
    stack
        .iter()
        .filter(|(k, _)| k == "message" || k == "enum")
        .map(|(_, n)| n.as_str())
        .collect::<Vec<_>>()
        .join(".")
}

fn qualified_upto(stack: &[(String, String)], kind: &str) -> String {
    let last = stack.iter().rposition(|(k, _)| k == kind).unwrap();
    qualified(&stack[..=last])
}

fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
async fn every_request_the_client_sends_matches_the_specs() {
    let fake = fake().await;
    let p = client(&fake, |_| {});
    let mut s = spec(&[("team name", "a&b=c d/é")]);
    s.env = BTreeMap::from([("GREETING".to_string(), "hello".to_string())]);
    s.auto_pause = true;
    let sb = p.create(&s).await.unwrap();
    assert_eq!(sb.state, SandboxState::Running);
    assert_eq!(sb.metadata, s.metadata, "the create-id tag is not shown");

    let listed = p
        .list(&ListFilter {
            metadata: BTreeMap::from([("team name".to_string(), "a&b=c d/é".to_string())]),
            states: vec![],
        })
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [sb.id.as_str()]
    );
    assert_eq!(listed[0].template, "base");

    p.set_timeout(&sb.id, Duration::from_secs(600))
        .await
        .unwrap();
    p.write_file(&sb.id, "notes/a.txt", b"alpha").await.unwrap();
    let mut req = sh("cat; echo \"$GREETING\"");
    req.stdin = Some(b"in ".to_vec());
    let out = p.exec(&sb.id, &req, ExecControl::default()).await.unwrap();
    assert_eq!(out.stdout, b"in hello\n");

    // A second client does not know the token: it asks GET /sandboxes/{id}.
    let other = client(&fake, |_| {});
    assert_eq!(
        other.read_file(&sb.id, "notes/a.txt").await.unwrap(),
        b"alpha"
    );
    let mut killable = sh("sleep 30");
    killable.timeout = Some(Duration::from_millis(200));
    let e = other
        .exec(&sb.id, &killable, ExecControl::default())
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::Timeout(_)), "{e:?}");

    assert!(p.metrics(&sb.id).await.unwrap().is_some());
    p.pause(&sb.id).await.unwrap();
    p.pause(&sb.id).await.unwrap(); // 409: already paused
    assert_eq!(p.metrics(&sb.id).await.unwrap(), None); // paused: no samples
    let resumed = p.connect(&sb.id, Duration::from_secs(300)).await.unwrap();
    assert_eq!(resumed.metadata, s.metadata);
    p.connect(&sb.id, Duration::from_secs(300)).await.unwrap(); // 200: running
    p.kill(&sb.id).await.unwrap();
    p.kill(&sb.id).await.unwrap(); // 404: already gone
    let e = p.metrics(&sb.id).await.unwrap_err(); // 404
    assert!(matches!(e, SandboxError::NotFound(_)), "{e:?}");

    let openapi = OpenApi::load(specs_dir().join("openapi.yml")).unwrap();
    let envd = OpenApi::load(specs_dir().join("envd.yaml")).unwrap();
    let proto = Proto::load("process.proto");
    let mut operations = BTreeSet::new();
    let mut statuses = BTreeSet::new();
    let mut errors = Vec::new();
    let requests = fake.requests();
    for r in &requests {
        assert_ne!(r.status, 0, "{} {} got no response", r.method, r.path);
        if r.is_control() {
            if let Err(e) = openapi.check_request(&parts(r)) {
                errors.extend(e);
            }
            // The fake's answers follow the spec too.
            let body = r.response_body.as_deref().unwrap_or_default();
            if let Err(e) = openapi.check_response(&r.method, &r.path, r.status, body) {
                errors.extend(e);
            }
            let op = openapi.operation(&r.method, &r.path).unwrap();
            operations.insert(format!("{} {}", r.method, op.template));
            statuses.insert(format!("{} {} {}", r.method, op.template, r.status));
            assert_eq!(r.header("x-api-key"), Some(fake.api_key()));
            continue;
        }
        let path = r.envd_path().unwrap();
        if path == "/files" {
            let mut p = parts(r);
            p.path = "/files";
            if let Err(e) = envd.check_request(&p) {
                errors.extend(e);
            }
        } else if let Some(method) = path.strip_prefix("/process.Process/") {
            let message = format!("{method}Request");
            match r.json() {
                Some(v) => proto.check(&message, &v, &message, &mut errors),
                None => errors.push(format!("{method}: body is not JSON")),
            }
        }
    }
    assert_eq!(errors, Vec::<String>::new());
    let expected: BTreeSet<String> = [
        "POST /sandboxes",
        "GET /v2/sandboxes",
        "GET /sandboxes/{sandboxID}",
        "DELETE /sandboxes/{sandboxID}",
        "POST /sandboxes/{sandboxID}/timeout",
        "POST /sandboxes/{sandboxID}/connect",
        "POST /sandboxes/{sandboxID}/pause",
        "GET /sandboxes/{sandboxID}/metrics",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(operations, expected);
    for s in [
        "POST /sandboxes/{sandboxID}/pause 409",
        "POST /sandboxes/{sandboxID}/connect 200",
        "POST /sandboxes/{sandboxID}/connect 201",
        "DELETE /sandboxes/{sandboxID} 404",
        "GET /sandboxes/{sandboxID}/metrics 200",
        "GET /sandboxes/{sandboxID}/metrics 404",
    ] {
        assert!(statuses.contains(s), "{s} not exercised: {statuses:?}");
    }

    // What the create body and the list query hold, precisely.
    let create = requests
        .iter()
        .find(|r| r.method == "POST" && r.path == "/sandboxes")
        .unwrap();
    let body = create.json().unwrap();
    assert_eq!(body["templateID"], "base");
    assert_eq!(body["timeout"], 300);
    assert_eq!(body["secure"], true);
    assert_eq!(body["autoPause"], true);
    assert_eq!(body["envVars"], json!({"GREETING": "hello"}));
    assert_eq!(body["metadata"]["team name"], "a&b=c d/é");
    assert!(body["metadata"][META_CREATE_ID].is_string());
    let list = requests.iter().find(|r| r.path == "/v2/sandboxes").unwrap();
    let q = list.query.as_deref().unwrap();
    assert!(q.contains("state=running,paused"), "{q}");
    assert!(
        q.contains("metadata=team%2520name%3Da%2526b%253Dc%2520d%252F%25C3%25A9"),
        "{q}"
    );
}

#[test]
fn every_response_the_spec_defines_parses_with_the_client_types() {
    let openapi = OpenApi::load(specs_dir().join("openapi.yml")).unwrap();
    let calls = [
        ("POST", "/sandboxes"),
        ("GET", "/v2/sandboxes"),
        ("GET", "/sandboxes/i1"),
        ("DELETE", "/sandboxes/i1"),
        ("POST", "/sandboxes/i1/timeout"),
        ("POST", "/sandboxes/i1/connect"),
        ("POST", "/sandboxes/i1/pause"),
        ("GET", "/sandboxes/i1/metrics"),
    ];
    let mut parsed = 0;
    for (method, path) in calls {
        let op = openapi.operation(method, path).unwrap();
        for (status, _) in op.op["responses"].as_object().unwrap() {
            let status: u16 = status.parse().unwrap();
            let Some(Some((_, schema))) = openapi.response_schema(op, status) else {
                assert!(
                    matches!(status, 204),
                    "{method} {path} {status} has no body"
                );
                continue;
            };
            for sample in openapi.samples(schema) {
                assert_eq!(
                    openapi.validate(schema, &sample),
                    Vec::<String>::new(),
                    "{sample}"
                );
                let what = format!("{method} {path} {status}: {sample}");
                let ok = match (method, op.template, status) {
                    (_, _, s) if s >= 400 => {
                        serde_json::from_value::<ApiError>(sample.clone()).map(drop)
                    }
                    ("POST", "/sandboxes", 201) | ("POST", "/sandboxes/{sandboxID}/connect", _) => {
                        serde_json::from_value::<Sandbox>(sample.clone()).map(drop)
                    }
                    ("GET", "/sandboxes/{sandboxID}", 200) => {
                        serde_json::from_value::<SandboxDetail>(sample.clone()).map(drop)
                    }
                    ("GET", "/v2/sandboxes", 200) => {
                        serde_json::from_value::<Vec<ListedSandbox>>(sample.clone()).map(drop)
                    }
                    ("GET", "/sandboxes/{sandboxID}/metrics", 200) => {
                        serde_json::from_value::<Vec<SandboxMetric>>(sample.clone()).map(drop)
                    }
                    _ => panic!("no client type for {what}"),
                };
                ok.unwrap_or_else(|e| panic!("{what}: {e}"));
                parsed += 1;
            }
        }
    }
    assert!(parsed >= 40, "only {parsed} samples");

    // The types are not "accept anything": dropping a field the client needs fails.
    let schema = openapi.schema("Sandbox");
    let mut sample = openapi.samples(schema).remove(0);
    sample.as_object_mut().unwrap().remove("sandboxID");
    assert!(serde_json::from_value::<Sandbox>(sample).is_err());
    // Enum values the client does not know yet do not break parsing.
    let mut detail = openapi.samples(openapi.schema("SandboxDetail")).remove(0);
    detail["state"] = json!("snapshotting");
    assert!(serde_json::from_value::<SandboxDetail>(detail).is_ok());
}

// ---------------------------------------------------------------------------
// Commands and files
// ---------------------------------------------------------------------------

#[tokio::test]
async fn exec_runs_a_command_with_stdin_env_and_cwd_and_streams_its_output() {
    let fake = fake().await;
    let p = client(&fake, |_| {});
    let sb = p.create(&spec(&[])).await.unwrap();
    // An empty file goes as multipart (an empty octet-stream body reads as none).
    p.write_file(&sb.id, "work/.keep", b"").await.unwrap();
    assert_eq!(p.read_file(&sb.id, "work/.keep").await.unwrap(), b"");
    let upload = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path.ends_with("/files"))
        .unwrap();
    assert!(
        upload
            .header("content-type")
            .unwrap()
            .starts_with("multipart/form-data; boundary=")
    );

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut req = sh("echo out; echo err >&2; cat; echo \"$FOO\"; basename \"$(pwd)\"; exit 3");
    req.stdin = Some(b"from stdin\n".to_vec());
    req.env = BTreeMap::from([("FOO".to_string(), "bar baz".to_string())]);
    req.cwd = Some("work".into());
    let control = ExecControl {
        output: Some(tx),
        ..Default::default()
    };
    let out = p.exec(&sb.id, &req, control).await.unwrap();
    assert_eq!(out.exit_code, 3);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "out\nfrom stdin\nbar baz\nwork\n"
    );
    assert_eq!(out.stderr, b"err\n");
    assert!(!out.truncated);
    let (mut streamed_out, mut streamed_err) = (Vec::new(), Vec::new());
    while let Ok(chunk) = rx.try_recv() {
        match chunk {
            OutputChunk::Stdout(b) => streamed_out.extend(b),
            OutputChunk::Stderr(b) => streamed_err.extend(b),
        }
    }
    assert_eq!(streamed_out, out.stdout);
    assert_eq!(streamed_err, out.stderr);

    let start = fake
        .wait_for_request(WAIT, |r| r.envd_path() == Some("/process.Process/Start"))
        .await
        .unwrap();
    assert_eq!(
        start.header("content-type"),
        Some("application/connect+json")
    );
    assert_eq!(start.header("connect-protocol-version"), Some("1"));
    assert_eq!(start.header("authorization"), Some("Basic dXNlcjo="));
    assert_eq!(
        start.header("x-access-token"),
        Some(fake.issued_tokens()[0].as_str())
    );
    assert_eq!(
        start.header("connect-timeout-ms"),
        None,
        "no timeout asked, none sent"
    );
    let body = start.json().unwrap();
    assert_eq!(body["stdin"], true);
    assert_eq!(body["process"]["cmd"], "/bin/sh");
    assert_eq!(body["process"]["cwd"], "work");
    assert_eq!(count(&fake, "POST", |p| p.ends_with("/SendInput")), 1);
    assert_eq!(count(&fake, "POST", |p| p.ends_with("/CloseStdin")), 1);

    // Without stdin: `stdin: false`, no input calls; exit 0 arrives with no exitCode.
    fake.clear_requests();
    let out = p
        .exec(&sb.id, &sh("printf ok"), ExecControl::default())
        .await
        .unwrap();
    assert_eq!((out.exit_code, out.stdout.as_slice()), (0, &b"ok"[..]));
    let start = fake
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/Start"))
        .unwrap();
    assert_eq!(start.json().unwrap()["stdin"], false);
    assert_eq!(
        count(&fake, "POST", |p| p.ends_with("/SendInput")
            || p.ends_with("/CloseStdin")),
        0
    );

    // Output beyond max_output_bytes is dropped and flagged.
    let mut big = sh("head -c 100000 /dev/zero");
    big.max_output_bytes = 1000;
    let out = p.exec(&sb.id, &big, ExecControl::default()).await.unwrap();
    assert_eq!(out.stdout.len(), 1000);
    assert!(out.truncated);
}

#[tokio::test]
async fn exec_timeout_kills_the_process_and_reports_timeout() {
    let fake = fake().await;
    let p = client(&fake, |_| {});
    let sb = p.create(&spec(&[])).await.unwrap();
    let mut req = sh("sleep 30");
    req.timeout = Some(Duration::from_millis(300));
    let t0 = Instant::now();
    let e = p
        .exec(&sb.id, &req, ExecControl::default())
        .await
        .unwrap_err();
    assert_eq!(e, SandboxError::Timeout(Duration::from_millis(300)));
    assert_eq!(e.class(), ErrorClass::Timeout);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let kill = fake
        .wait_for_request(WAIT, |r| r.path.ends_with("/process.Process/SendSignal"))
        .await
        .expect("SIGKILL sent");
    assert_eq!(kill.json().unwrap()["signal"], "SIGNAL_SIGKILL");
    let start = fake
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/Start"))
        .unwrap();
    // envd's own deadline is only a backstop, a few seconds after ours.
    assert_eq!(start.header("connect-timeout-ms"), Some("5300"));
}

#[tokio::test]
async fn cancelling_kills_the_process_and_reports_cancelled() {
    let fake = fake().await;
    let p = Arc::new(client(&fake, |_| {}));
    let sb = p.create(&spec(&[])).await.unwrap();
    let control = ExecControl::default();
    let cancel = control.cancel.clone();
    let task = {
        let (p, id) = (p.clone(), sb.id.clone());
        tokio::spawn(async move { p.exec(&id, &sh("sleep 30"), control).await })
    };
    fake.wait_for_request(WAIT, |r| r.path.ends_with("/Start") && r.status == 200)
        .await
        .unwrap();
    cancel.cancel();
    let e = task.await.unwrap().unwrap_err();
    assert_eq!(e, SandboxError::Cancelled);
    assert_eq!(e.class(), ErrorClass::Cancelled);
    let kill = fake
        .wait_for_request(WAIT, |r| r.path.ends_with("/SendSignal"))
        .await
        .unwrap();
    assert_eq!(kill.json().unwrap()["signal"], "SIGNAL_SIGKILL");
}

#[tokio::test]
async fn a_dropped_stream_is_reattached_with_connect() {
    let fake = fake().await;
    let p = Arc::new(client(&fake, |_| {}));
    let sb = p.create(&spec(&[])).await.unwrap();
    fake.faults().cut_next_stream();
    // The command waits for a file the test writes once the client has re-attached.
    let task = {
        let (p, id) = (p.clone(), sb.id.clone());
        tokio::spawn(async move {
            let req = sh("while [ ! -f go ]; do sleep 0.02; done; echo done; exit 4");
            p.exec(&id, &req, ExecControl::default()).await
        })
    };
    let connect = fake
        .wait_for_request(WAIT, |r| {
            r.path.ends_with("/process.Process/Connect") && r.status == 200
        })
        .await
        .expect("client re-attached");
    let selector = &connect.json().unwrap()["process"];
    assert!(selector["pid"].is_u64(), "re-attached by PID: {selector}");
    p.write_file(&sb.id, "go", b"").await.unwrap();
    let out = task.await.unwrap().unwrap();
    assert_eq!(out.exit_code, 4);
    assert_eq!(out.stdout, b"done\n");
    assert!(
        out.truncated,
        "output while detached may be lost, so the result says so"
    );
}

#[tokio::test]
async fn a_start_whose_answer_was_lost_is_found_by_its_tag() {
    let fake = fake().await;
    let p = Arc::new(client(&fake, |_| {}));
    let sb = p.create(&spec(&[])).await.unwrap();
    fake.faults().lose_next_start_answer();
    let task = {
        let (p, id) = (p.clone(), sb.id.clone());
        tokio::spawn(async move {
            let req = sh("while [ ! -f go ]; do sleep 0.02; done; echo found");
            p.exec(&id, &req, ExecControl::default()).await
        })
    };
    let connect = fake
        .wait_for_request(WAIT, |r| {
            r.path.ends_with("/process.Process/Connect") && r.status == 200
        })
        .await
        .expect("client looked for the process");
    let start = fake
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/Start"))
        .unwrap();
    let tag = start.json().unwrap()["tag"].clone();
    assert!(tag.is_string());
    assert_eq!(connect.json().unwrap()["process"], json!({ "tag": tag }));
    p.write_file(&sb.id, "go", b"1").await.unwrap();
    let out = task.await.unwrap().unwrap();
    assert_eq!((out.exit_code, out.stdout.as_slice()), (0, &b"found\n"[..]));
    assert_eq!(
        count(&fake, "POST", |p| p.ends_with("/Start")),
        1,
        "not started twice"
    );
}

#[tokio::test]
async fn a_missing_file_is_invalid_not_a_lost_sandbox() {
    let fake = fake().await;
    let p = client(&fake, |_| {});
    let sb = p.create(&spec(&[])).await.unwrap();
    let e = p.read_file(&sb.id, "nope.txt").await.unwrap_err();
    assert!(matches!(e, SandboxError::Invalid(_)), "{e:?}");
    // Absolute paths in the sandbox's home work as in E2B.
    p.write_file(&sb.id, "/home/user/abs/dir/f.bin", &[0, 1, 2, 255])
        .await
        .unwrap();
    assert_eq!(
        p.read_file(&sb.id, "abs/dir/f.bin").await.unwrap(),
        [0, 1, 2, 255]
    );
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

#[tokio::test]
async fn control_plane_5xx_bursts_are_retried() {
    let fake = fake().await;
    let p = client(&fake, |s| s.request_attempts = 3);
    fake.faults().fail_next_control(2, 503);
    let sb = p.create(&spec(&[])).await.unwrap();
    assert_eq!(count(&fake, "POST", |p| p == "/sandboxes"), 3);
    assert_eq!(fake.counters().created, 1);

    // More failures than attempts: the last error comes back, as Unavailable.
    fake.faults().fail_next_control(3, 500);
    let e = p.kill(&sb.id).await.unwrap_err();
    assert!(matches!(e, SandboxError::Unavailable(_)), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Transient);
    assert_eq!(count(&fake, "DELETE", |_| true), 3);

    // A steady 30 % of 502s: with 8 attempts every call gets through.
    let p = client(&fake, |s| s.request_attempts = 8);
    fake.faults().set_control_error_rate(0.3, 502);
    for _ in 0..10 {
        let sb = p.create(&spec(&[])).await.unwrap();
        p.set_timeout(&sb.id, Duration::from_secs(60))
            .await
            .unwrap();
        p.kill(&sb.id).await.unwrap();
    }
    fake.faults().clear();
    assert!(count(&fake, "POST", |_| true) > 20, "faults were injected");
    assert_eq!(fake.counters().running, 1, "only the first sandbox is left");
}

#[tokio::test]
async fn rate_limited_calls_wait_for_retry_after() {
    let fake = fake().await;
    let p = client(&fake, |_| {});
    fake.faults().rate_limit_next(1, Duration::from_secs(1));
    let t0 = Instant::now();
    p.create(&spec(&[])).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());
    let posts: Vec<Instant> = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/sandboxes")
        .map(|r| r.at)
        .collect();
    assert_eq!(posts.len(), 2);
    assert!(posts[1] - posts[0] >= Duration::from_secs(1));

    // A Retry-After longer than the limit wait: RateLimited at once, carrying
    // Retry-After to the queue.
    let p = client(&fake, |s| s.request_attempts = 1);
    fake.faults().rate_limit_next(1, Duration::from_secs(7));
    let e = p.create(&spec(&[])).await.unwrap_err();
    assert_eq!(
        e,
        SandboxError::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        }
    );
    let job: JobError = e.into();
    assert_eq!(
        (job.class, job.retry_after),
        (ErrorClass::Transient, Some(Duration::from_secs(7)))
    );
}

#[tokio::test]
async fn a_run_of_429s_on_create_and_resume_is_waited_out_without_using_up_tries() {
    let fake = fake().await;
    // One try per call: before, the first 429 failed the call (and the job's attempt).
    let p = client(&fake, |s| s.request_attempts = 1)
        .with_backoff(Duration::from_millis(50), Duration::from_millis(200));
    fake.faults().rate_limit_next(3, Duration::from_secs(1));
    let t0 = Instant::now();
    let a = p.create(&spec(&[])).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(count(&fake, "POST", |p| p == "/sandboxes"), 4);

    // E2B's own concurrency limit (a plan smaller than the client believes): 429
    // without Retry-After on create and on resume, waited out until a slot frees.
    fake.clear_requests();
    fake.faults().set_plan(Some(Plan {
        max_running: 1,
        starts_per_second: 1000.0,
    }));
    let p = Arc::new(p);
    let waiting = {
        let p = p.clone();
        tokio::spawn(async move { p.create(&spec(&[])).await })
    };
    fake.wait_for_request(WAIT, |r| r.path == "/sandboxes" && r.status == 429)
        .await
        .expect("the plan refused the second create");
    p.pause(&a.id).await.unwrap();
    let b = waiting.await.unwrap().unwrap();
    let resuming = {
        let (p, id) = (p.clone(), a.id.clone());
        tokio::spawn(async move { p.connect(&id, Duration::from_secs(60)).await })
    };
    let connect = format!("/sandboxes/{}/connect", a.id);
    fake.wait_for_request(WAIT, |r| r.path == connect && r.status == 429)
        .await
        .expect("the plan refused the resume");
    p.kill(&b.id).await.unwrap();
    resuming.await.unwrap().unwrap();
    let c = fake.counters();
    assert!(c.cap_refusals >= 2, "both were refused: {c:?}");
    assert_eq!(c.max_running, 1);
    p.kill(&a.id).await.unwrap();
}

#[tokio::test]
async fn envd_502_sandbox_not_found_means_the_sandbox_is_lost() {
    let fake = fake().await;
    let p = client(&fake, |_| {});
    let sb = p.create(&spec(&[])).await.unwrap();
    for body in [NotFoundBody::Json, NotFoundBody::Html] {
        fake.faults().set_envd_not_found(Some(body));
        let e = p
            .exec(&sb.id, &sh("true"), ExecControl::default())
            .await
            .unwrap_err();
        assert!(matches!(e, SandboxError::NotFound(_)), "{body:?}: {e:?}");
        assert_eq!(e.class(), ErrorClass::SandboxLost);
        let e = p.read_file(&sb.id, "x").await.unwrap_err();
        assert!(matches!(e, SandboxError::NotFound(_)), "{body:?}: {e:?}");
    }
    fake.faults().set_envd_not_found(None);
    // The token was forgotten: the next call fetches it again and works.
    p.exec(&sb.id, &sh("true"), ExecControl::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_sandbox_vanishing_mid_command_is_not_found() {
    let fake = fake().await;
    let p = client(&fake, |_| {});
    let sb = p.create(&spec(&[])).await.unwrap();
    fake.faults().vanish_during_next_exec();
    let e = p
        .exec(&sb.id, &sh("sleep 30"), ExecControl::default())
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::NotFound(_)), "{e:?}");
    assert_eq!(e.class(), ErrorClass::SandboxLost);
    assert_eq!(fake.counters().killed, 1);
    // The client tried to re-attach and the edge said the sandbox is gone.
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.path.ends_with("/Connect") && r.status == 502)
    );
    // The control plane agrees, and killing what is gone is not an error.
    let e = p
        .set_timeout(&sb.id, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::NotFound(_)), "{e:?}");
    p.kill(&sb.id).await.unwrap();
}

#[tokio::test]
async fn slow_control_plane_responses_time_out_into_unavailable() {
    let fake = fake().await;
    let p = client(&fake, |s| {
        s.request_timeout_secs = 1;
        s.request_attempts = 2;
    });
    let sb = p.create(&spec(&[])).await.unwrap();
    fake.faults().set_control_delay(Duration::from_secs(3));
    let t0 = Instant::now();
    let e = p
        .set_timeout(&sb.id, Duration::from_secs(60))
        .await
        .unwrap_err();
    let took = t0.elapsed();
    assert!(
        matches!(e, SandboxError::Unavailable(ref m) if m.contains("timed out")),
        "{e:?}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(count(&fake, "POST", |p| p.ends_with("/timeout")), 2);
}

#[tokio::test]
async fn a_create_whose_answer_was_lost_leaves_no_orphan() {
    let fake = fake().await;
    let p = client(&fake, |s| s.request_timeout_secs = 1);
    // The first create is done by the server but answered too late for the client.
    fake.faults().delay_next_control(1, Duration::from_secs(2));
    let sb = p.create(&spec(&[])).await.unwrap();
    let c = fake.counters();
    assert_eq!((c.created, c.killed, c.running), (2, 1, 1), "{c:?}");
    let alive = p.list(&ListFilter::default()).await.unwrap();
    assert_eq!(
        alive.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [sb.id.as_str()]
    );
}

#[tokio::test]
async fn pause_then_connect_keeps_files() {
    let fake = fake().await;
    let p = client(&fake, |_| {});
    let sb = p.create(&spec(&[])).await.unwrap();
    p.write_file(&sb.id, "state/progress.json", b"{\"step\":3}")
        .await
        .unwrap();
    p.pause(&sb.id).await.unwrap();
    let c = fake.counters();
    assert_eq!((c.running, c.paused), (0, 1));
    assert_eq!(p.running_sandboxes(), 0, "a paused sandbox holds no slot");
    // A paused sandbox is neither lost nor usable: connect first.
    let e = p
        .exec(&sb.id, &sh("true"), ExecControl::default())
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::Conflict(_)), "{e:?}");

    let info = p.connect(&sb.id, Duration::from_secs(300)).await.unwrap();
    assert_eq!(info.state, SandboxState::Running);
    assert_eq!(fake.counters().resumed, 1);
    assert_eq!(
        p.read_file(&sb.id, "state/progress.json").await.unwrap(),
        b"{\"step\":3}"
    );
    let out = p
        .exec(
            &sb.id,
            &sh("cat state/progress.json"),
            ExecControl::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, b"{\"step\":3}");

    // When E2B loses files across a resume (E2B#884), reading says so plainly.
    fake.faults().set_pause_keeps_files(false);
    p.pause(&sb.id).await.unwrap();
    p.connect(&sb.id, Duration::from_secs(300)).await.unwrap();
    let e = p
        .read_file(&sb.id, "state/progress.json")
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::Invalid(_)), "{e:?}");
}

/// `metrics` reads `GET /sandboxes/{id}/metrics` for the last two minutes and keeps
/// the newest sample. Mapping: samples → `Some(latest)`; none in the window (a
/// paused sandbox) → `None`; 404 (unknown, killed) → `NotFound`, which frees no
/// slot; passing failures are retried like every idempotent call.
#[tokio::test]
async fn metrics_report_the_latest_sample_and_map_a_missing_sandbox_to_not_found() {
    let fake = fake().await;
    let p = client(&fake, |_| {});
    let mut s = spec(&[]);
    s.auto_pause = true;
    let sb = p.create(&s).await.unwrap();
    let usage = SandboxUsage {
        cpu_count: 4,
        cpu_used_pct: 37.5,
        mem_used: 300 << 20,
        mem_total: 1 << 30,
        disk_used: 5 << 20,
    };
    fake.set_usage(&sb.id, usage);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let m = p
        .metrics(&sb.id)
        .await
        .unwrap()
        .expect("a running sandbox has a sample");
    assert_eq!(m.cpu_count, 4);
    assert_eq!(m.cpu_used_pct, 37.5);
    assert_eq!(m.mem_used_bytes, 300 << 20);
    assert_eq!(m.mem_total_bytes, 1 << 30);
    assert_eq!(m.disk_used_bytes, Some(5 << 20));
    assert!(
        m.at_ms / 1000 <= before + 1 && m.at_ms / 1000 + 120 >= before,
        "{m:?}"
    );

    // The query asks for a window ending now, not the sandbox's whole history.
    let r = fake
        .requests()
        .into_iter()
        .rfind(|r| r.path.ends_with("/metrics"))
        .unwrap();
    let q = r.query.clone().unwrap_or_default();
    let start: u64 = q.strip_prefix("start=").unwrap().parse().unwrap();
    assert!(start + 121 >= before && start + 119 <= before, "{q}");

    // Passing failures are retried.
    fake.faults().fail_next_control(2, 503);
    assert!(p.metrics(&sb.id).await.unwrap().is_some());
    assert_eq!(
        count(&fake, "GET", |path| path.ends_with("/metrics")),
        4,
        "one, then three tries"
    );

    // Paused: no samples.
    p.pause(&sb.id).await.unwrap();
    assert_eq!(p.metrics(&sb.id).await.unwrap(), None);

    // Unknown or killed: NotFound; a bad ID never reaches the server.
    let e = p.metrics("inosuchsandbox0000000").await.unwrap_err();
    assert!(matches!(e, SandboxError::NotFound(_)), "{e:?}");
    let e = p.metrics("../x").await.unwrap_err();
    assert!(matches!(e, SandboxError::Invalid(_)), "{e:?}");
    let other = p.create(&spec(&[])).await.unwrap();
    assert_eq!(p.running_sandboxes(), 1);
    fake.faults().fail_next_control(1, 404);
    let e = p.metrics(&other.id).await.unwrap_err();
    assert!(matches!(e, SandboxError::NotFound(_)), "{e:?}");
    assert_eq!(p.running_sandboxes(), 1, "a metrics 404 frees no slot");

    // A provider without metrics answers None (the trait's default).
    let (local, _dir) = fleet_tests::fake_e2b::local_provider().unwrap();
    let info = local.create(&spec(&[])).await.unwrap();
    assert_eq!(local.metrics(&info.id).await.unwrap(), None);
}

#[tokio::test]
async fn connect_to_an_unknown_or_expired_sandbox_is_not_found() {
    let fake = fake().await;
    let p = client(&fake, |_| {});
    let e = p
        .connect("inosuchsandbox0000000", Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::NotFound(_)), "{e:?}");
    let e = p
        .connect("../../admin", Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::Invalid(_)), "{e:?}");

    let sb = p.create(&spec(&[])).await.unwrap();
    assert_eq!(p.running_sandboxes(), 1);
    fake.expire(&sb.id);
    let e = p
        .set_timeout(&sb.id, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::NotFound(_)), "{e:?}");
    assert_eq!(p.running_sandboxes(), 0, "its slot was freed");

    // An auto-paused sandbox (timeout with autoPause) frees its slot once listed.
    let mut s = spec(&[]);
    s.auto_pause = true;
    let sb = p.create(&s).await.unwrap();
    fake.expire(&sb.id);
    let listed = p.list(&ListFilter::default()).await.unwrap();
    assert_eq!(listed[0].state, SandboxState::Paused);
    assert_eq!(p.running_sandboxes(), 0);

    // One killed on expiry frees its slot once a full list no longer shows it.
    let sb = p.create(&spec(&[])).await.unwrap();
    assert_eq!(p.running_sandboxes(), 1);
    fake.expire(&sb.id);
    assert!(
        p.list(&ListFilter::default())
            .await
            .unwrap()
            .iter()
            .all(|i| i.id != sb.id)
    );
    assert_eq!(p.running_sandboxes(), 0);
}

#[tokio::test]
async fn a_wrong_api_key_is_invalid_and_not_retried() {
    let fake = fake().await;
    let p = client(&fake, |s| s.api_key = Some(Secret::new("e2b_wrong")));
    let e = p.create(&spec(&[])).await.unwrap_err();
    assert!(
        matches!(e, SandboxError::Invalid(ref m) if m.contains("401")),
        "{e:?}"
    );
    assert_eq!(e.class(), ErrorClass::Permanent);
    assert_eq!(count(&fake, "POST", |_| true), 1);
}

// ---------------------------------------------------------------------------
// Plan limits
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_cap_is_never_exceeded() {
    let fake = fake().await;
    let p = Arc::new(client(&fake, |s| s.max_concurrent_sandboxes = 2));
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move {
                let sb = p.create(&spec(&[("n", &i.to_string())])).await?;
                p.exec(&sb.id, &sh("true"), ExecControl::default()).await?;
                p.kill(&sb.id).await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let c = fake.counters();
    assert_eq!(c.created, 6);
    assert!(c.max_running <= 2, "{c:?}");
    assert_eq!(c.max_running, 2, "the cap was used");
    assert_eq!(p.running_sandboxes(), 0);
}

#[tokio::test]
async fn at_the_cap_create_waits_for_a_slot_then_gives_up() {
    let fake = fake().await;
    let p = Arc::new(
        client(&fake, |s| s.max_concurrent_sandboxes = 1)
            .with_limit_wait(Duration::from_millis(300)),
    );
    let a = p.create(&spec(&[])).await.unwrap();
    let t0 = Instant::now();
    let e = p.create(&spec(&[])).await.unwrap_err();
    assert!(matches!(e, SandboxError::LimitReached(_)), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Transient);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        count(&fake, "POST", |p| p == "/sandboxes"),
        1,
        "nothing was sent"
    );

    // Pausing frees the slot; resuming needs one again.
    p.pause(&a.id).await.unwrap();
    let b = p.create(&spec(&[])).await.unwrap();
    let e = p.connect(&a.id, Duration::from_secs(60)).await.unwrap_err();
    assert!(matches!(e, SandboxError::LimitReached(_)), "{e:?}");

    // A waiting create goes ahead as soon as a kill frees a slot.
    let p = Arc::new(client(&fake, |s| s.max_concurrent_sandboxes = 1).with_limit_wait(WAIT));
    let c = p.create(&spec(&[])).await.unwrap();
    let waiting = {
        let p = p.clone();
        tokio::spawn(async move { p.create(&spec(&[])).await })
    };
    p.kill(&c.id).await.unwrap();
    let d = waiting.await.unwrap().unwrap();
    let reqs = fake.requests();
    let killed_at = reqs
        .iter()
        .find(|r| r.method == "DELETE" && r.path.ends_with(&c.id))
        .unwrap()
        .at;
    let created_at = reqs
        .iter()
        .filter(|r| r.path == "/sandboxes" && r.status == 201)
        .map(|r| r.at)
        .max()
        .unwrap();
    assert!(created_at > killed_at);
    for id in [&b.id, &d.id] {
        p.kill(id).await.unwrap();
    }
}

#[tokio::test]
async fn the_create_rate_is_never_exceeded() {
    let fake = fake().await;
    let rate = 4.0;
    let p = Arc::new(client(&fake, |s| s.creates_per_second = rate).with_limit_wait(WAIT));
    let creates: Vec<_> = (0..6)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move { p.create(&spec(&[])).await })
        })
        .collect();
    let mut ids = Vec::new();
    for t in creates {
        ids.push(t.await.unwrap().unwrap().id);
    }
    // Resumes count against the same rate.
    for id in &ids[..3] {
        p.pause(id).await.unwrap();
    }
    let resumes: Vec<_> = ids[..3]
        .iter()
        .map(|id| {
            let (p, id) = (p.clone(), id.clone());
            tokio::spawn(async move { p.connect(&id, Duration::from_secs(60)).await })
        })
        .collect();
    for t in resumes {
        t.await.unwrap().unwrap();
    }
    // Arrival times at the server of every create and resume.
    let mut starts: Vec<Instant> = fake
        .requests()
        .iter()
        .filter(|r| {
            r.method == "POST"
                && (r.path == "/sandboxes" || r.path.ends_with("/connect"))
                && r.status == 201
        })
        .map(|r| r.at)
        .collect();
    starts.sort();
    assert_eq!(starts.len(), 9);
    // No window of one second holds more than `rate` starts.
    let n = rate as usize;
    for w in starts.windows(n + 1) {
        let span = w[n] - w[0];
        assert!(
            span >= Duration::from_secs(1),
            "{} starts within {span:?}",
            n + 1
        );
    }
}

// ---------------------------------------------------------------------------
// Listing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn list_follows_pagination_and_filters() {
    let fake = fake().await;
    let p = client(&fake, |_| {});
    fake.faults().set_list_page_size(Some(2));
    let mut mine = BTreeSet::new();
    for i in 0..5 {
        mine.insert(
            p.create(&spec(&[("pool", "a b&c"), ("i", &i.to_string())]))
                .await
                .unwrap()
                .id,
        );
    }
    for _ in 0..2 {
        p.create(&spec(&[("pool", "other")])).await.unwrap();
    }
    fake.clear_requests();
    let filter = ListFilter {
        metadata: BTreeMap::from([("pool".to_string(), "a b&c".to_string())]),
        states: vec![],
    };
    let found: BTreeSet<String> = p
        .list(&filter)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(found, mine);
    let pages = fake.requests();
    assert_eq!(pages.len(), 3, "5 sandboxes in pages of 2");
    assert!(
        pages[0]
            .query
            .as_deref()
            .unwrap()
            .split('&')
            .all(|kv| !kv.starts_with("nextToken"))
    );
    assert!(pages[1].query.as_deref().unwrap().contains("nextToken="));

    let all = p.list(&ListFilter::default()).await.unwrap();
    assert_eq!(all.len(), 7);
    let paused_one = mine.iter().next().unwrap().clone();
    p.pause(&paused_one).await.unwrap();
    let paused = p
        .list(&ListFilter {
            metadata: BTreeMap::new(),
            states: vec![SandboxState::Paused],
        })
        .await
        .unwrap();
    assert_eq!(
        paused.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [paused_one.as_str()]
    );
    assert!(
        fake.requests()
            .last()
            .unwrap()
            .query
            .as_deref()
            .unwrap()
            .contains("state=paused")
    );
}

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

/// A `tracing` writer into memory.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// Everything runs on this one thread, so a thread-local TRACE subscriber sees
/// every log line of the client, the fake, reqwest and hyper (`log` records too).
#[tokio::test(flavor = "current_thread")]
async fn credentials_never_reach_logs_errors_or_debug_output() {
    use tracing_subscriber::util::SubscriberInitExt;
    let capture = Capture::default();
    let _guard = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(capture.clone())
        .finish()
        .set_default();

    let fake = fake().await;
    let p = client(&fake, |_| {});
    let env_secret = "sk-model-key-0b5e55ed";
    let mut s = spec(&[]);
    s.env = BTreeMap::from([("MODEL_KEY".to_string(), env_secret.to_string())]);
    let sb = p.create(&s).await.unwrap();
    let mut req = sh("cat >/dev/null; echo \"${#MODEL_KEY}\"");
    req.env = BTreeMap::from([("OTHER_KEY".to_string(), env_secret.to_string())]);
    req.stdin = Some(b"query".to_vec());
    let mut errors = vec![format!(
        "{:?}",
        p.exec(&sb.id, &req, ExecControl::default()).await
    )];
    p.write_file(&sb.id, "f", b"x").await.unwrap();
    p.read_file(&sb.id, "f").await.unwrap();
    p.pause(&sb.id).await.unwrap();
    errors.push(format!(
        "{:?}",
        p.exec(&sb.id, &sh("true"), ExecControl::default()).await
    ));
    p.connect(&sb.id, Duration::from_secs(60)).await.unwrap();
    let mut slow = sh("sleep 30");
    slow.timeout = Some(Duration::from_millis(100));
    errors.push(format!(
        "{:?}",
        p.exec(&sb.id, &slow, ExecControl::default()).await
    ));
    fake.faults().set_envd_not_found(Some(NotFoundBody::Html));
    errors.push(format!(
        "{:?}",
        p.exec(&sb.id, &sh("true"), ExecControl::default()).await
    ));
    fake.faults().set_envd_not_found(None);
    fake.faults().fail_next_control(1, 503);
    p.list(&ListFilter::default()).await.unwrap();
    let wrong = client(&fake, |s| {
        s.api_key = Some(Secret::new("e2b_0000wrongkey0000"))
    });
    errors.push(format!("{:?}", wrong.kill(&sb.id).await));
    errors.push(format!("{:?} {:?} {:?}", p, wrong, fake.settings()));
    p.kill(&sb.id).await.unwrap();

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let errors = errors.join("\n");
    assert!(
        logs.contains(&sb.id) && logs.contains("call="),
        "capture works and names sandbox and call"
    );
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "low levels were captured"
    );
    let tokens = fake.issued_tokens();
    assert!(!tokens.is_empty());
    let mut secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    secrets.extend([fake.api_key(), "e2b_0000wrongkey0000", env_secret]);
    for secret in secrets {
        assert!(!logs.contains(secret), "a secret reached the logs");
        assert!(
            !errors.contains(secret),
            "a secret reached an error or Debug output"
        );
    }
    // The credentials did go over the wire: the check above is not vacuous.
    let wire: String = fake.requests().iter().map(RecordedRequest::text).collect();
    assert!(wire.contains(fake.api_key()) && wire.contains(tokens[0].as_str()));
}

#[tokio::test]
async fn an_answer_whose_output_stream_was_cut_is_never_a_success() {
    use fleet_shared::runtime::command::CommandRuntime;
    use fleet_shared::runtime::{AgentRuntime, RunOptions};
    use fleet_shared::settings::{AgentProfile, QueryVia, RuntimeKind};
    let fake = fake().await;
    let p = Arc::new(client(&fake, |_| {}));
    let sb = p.create(&spec(&[])).await.unwrap();
    // The agent prints its answer, then waits (for a file the test writes once the
    // client has re-attached) and exits 0.
    let profile = AgentProfile {
        runtime: RuntimeKind::Command,
        command: vec![
            "sh".into(),
            "-c".into(),
            r#"q=$(cat); printf '{"answer": "%s"}' "$q"; while [ ! -f go ]; do sleep 0.02; done"#
                .into(),
        ],
        query_via: QueryVia::Stdin,
        ..Default::default()
    };
    let rt = Arc::new(CommandRuntime::new(
        profile,
        BTreeMap::new(),
        std::env::temp_dir(),
    ));
    rt.setup(p.as_ref(), &sb.id).await.unwrap();
    fake.faults().cut_next_stream();
    let task = {
        let (p, rt, id) = (p.clone(), rt.clone(), sb.id.clone());
        tokio::spawn(async move {
            rt.run(p.as_ref(), &id, "the question", RunOptions::default())
                .await
        })
    };
    fake.wait_for_request(WAIT, |r| {
        r.path.ends_with("/process.Process/Connect") && r.status == 200
    })
    .await
    .expect("client re-attached");
    p.write_file(&sb.id, "agent/go", b"").await.unwrap();
    let result = task.await.unwrap();
    let err = result.expect_err("output lost to a cut stream is not an answer");
    assert_eq!(err.class, ErrorClass::Transient, "{err:?}");
    p.kill(&sb.id).await.unwrap();
}

#[tokio::test]
async fn a_kill_that_failed_keeps_no_slot_once_retried_and_confirmed() {
    let fake = fake().await;
    let p = client(&fake, |s| {
        s.max_concurrent_sandboxes = 1;
        s.request_attempts = 2;
    })
    .with_limit_wait(Duration::from_millis(300));
    let a = p.create(&spec(&[])).await.unwrap();
    // The control plane is down for the kill.
    fake.faults().set_control_error_rate(1.0, 503);
    let e = p.kill(&a.id).await.unwrap_err();
    assert!(matches!(e, SandboxError::Unavailable(_)), "{e:?}");
    assert_eq!(fake.counters().running, 1, "the sandbox is still running");
    fake.faults().clear();

    // Back up: the next create retries the kill, which frees the slot.
    let b = p
        .create(&spec(&[]))
        .await
        .expect("the failed kill was retried and its slot freed");
    assert_eq!(fake.counters().killed, 1, "the first sandbox was killed");
    assert_eq!(p.running_sandboxes(), 1);
    p.kill(&b.id).await.unwrap();
    assert_eq!(fake.counters().running, 0);
}
