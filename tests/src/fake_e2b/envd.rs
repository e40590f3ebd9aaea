//! The fake's envd, one per sandbox under `/envd/{id}`: `/health`, `/files`
//! (per `envd.yaml`) and the `process.Process` Connect RPCs (per `process.proto`)
//! with the JSON codec: streaming calls answer 200 with enveloped events and an
//! end-of-stream envelope (errors as its `error`), unary calls answer plain JSON
//! with Connect error bodies (`{"code":"not_found",...}`) on failure.
//!
//! In front of it sits what E2B's edge does: a sandbox that is gone or paused is
//! a 502 `{"sandboxId","message":"The sandbox was not found","code":502}`, and a
//! missing or wrong `X-Access-Token` is envd's 401.
//!
//! Paths (`/files?path=`, `cwd`) under `/home/user` are given to the provider
//! relative to its sandbox's home.
//!
//! Processes run through the provider's `exec`, which takes stdin whole; so a
//! process started with `stdin: true` starts when `CloseStdin` arrives (envd
//! starts it at once with a pipe). The `start` event is sent at once either way.
//! It encodes envelopes itself rather than using the client's codec, so a bug in
//! one is not mirrored in the other.

// Handlers hand back ready `Response`s as their errors; their size is no
// concern in a test server.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use fleet_shared::sandbox::{ExecControl, ExecRequest, OutputChunk, SandboxError};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::control::sweep;
use super::faults::{NotFoundBody, StreamFault};
use super::openapi::{OpenApi, RequestParts};
use super::{Shared, State, provider_path};

/// What a process publishes to its stream subscribers.
#[derive(Debug, Clone)]
pub(crate) enum ProcEvent {
    Data {
        stderr: bool,
        bytes: Vec<u8>,
    },
    End {
        exit_code: i32,
        exited: bool,
        status: String,
        trailer: Option<(String, String)>,
    },
    /// It never ran: the stream ends with this Connect error and no `end` event.
    Failed {
        code: String,
        message: String,
    },
}

#[derive(Default)]
struct Subscribers {
    list: Vec<mpsc::UnboundedSender<ProcEvent>>,
    ended: bool,
}

#[derive(Default)]
struct Stdin {
    data: Vec<u8>,
    closed: bool,
}

/// A process started through `process.Process/Start`.
pub(crate) struct Proc {
    pub pid: u32,
    pub tag: Option<String>,
    pub cmd: String,
    pub args: Vec<String>,
    pub cancel: CancellationToken,
    subscribers: Mutex<Subscribers>,
    stdin: Mutex<Stdin>,
    stdin_closed: Notify,
}

impl Proc {
    /// A receiver of its future events; `None` once it has ended.
    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<ProcEvent>> {
        let mut s = self.subscribers.lock().unwrap();
        if s.ended {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        s.list.push(tx);
        Some(rx)
    }

    fn publish(&self, ev: ProcEvent) {
        let mut s = self.subscribers.lock().unwrap();
        if matches!(ev, ProcEvent::End { .. } | ProcEvent::Failed { .. }) {
            s.ended = true;
        }
        s.list.retain(|tx| tx.send(ev.clone()).is_ok());
    }
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/envd/{id}/health", get(health))
        .route("/envd/{id}/files", get(read_file).post(write_file))
        .route("/envd/{id}/process.Process/{method}", post(rpc))
        .with_state(shared)
}

/// What the edge answers for a sandbox it cannot route to.
fn sandbox_not_found(id: &str, body: NotFoundBody) -> Response {
    match body {
        NotFoundBody::Json => (
            StatusCode::BAD_GATEWAY,
            Json(json!({"sandboxId": id, "message": "The sandbox was not found", "code": 502})),
        )
            .into_response(),
        NotFoundBody::Html => (
            StatusCode::BAD_GATEWAY,
            [("content-type", "text/html; charset=utf-8")],
            format!(
                "<!doctype html><html><head><title>Sandbox not found</title></head>\
                 <body><h1>The sandbox was not found</h1><p>{id}</p></body></html>"
            ),
        )
            .into_response(),
    }
}

/// The edge and envd's token check. On success: the provider's sandbox ID.
async fn admit(
    s: &Shared,
    id: &str,
    headers: &HeaderMap,
    check_token: bool,
) -> Result<String, Response> {
    sweep(s).await;
    if let Some(body) = s.faults.envd_not_found() {
        return Err(sandbox_not_found(id, body));
    }
    let w = s.world.lock().unwrap();
    let Some(sb) = w.sandboxes.get(id).filter(|sb| sb.state == State::Running) else {
        return Err(sandbox_not_found(id, NotFoundBody::Json));
    };
    if let (true, Some(token)) = (check_token, &sb.token)
        && headers.get("x-access-token").and_then(|v| v.to_str().ok()) != Some(token.as_str())
    {
        return Err((
            StatusCode::UNAUTHORIZED,
            Json(json!({"code": 401, "message": "unauthorized access, please provide a valid access token or method signing if supported"})),
        )
            .into_response());
    }
    Ok(sb.inner.clone())
}

async fn health(
    AxState(s): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match admit(&s, &id, &headers, false).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    }
}

/// envd's `/files` error body: `{"code": int, "message"}`.
fn files_error(status: u16, message: String) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({"code": status, "message": message})),
    )
        .into_response()
}

/// Validate a `/files` request against `envd.yaml`; the file path and user.
fn files_request(
    method: &str,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
) -> Result<String, Response> {
    let hs: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if let Err(e) = OpenApi::envd().check_request(&RequestParts {
        method,
        path: "/files",
        query,
        headers: &hs,
        body,
    }) {
        return Err(files_error(400, e.join("; ")));
    }
    let pairs: BTreeMap<String, String> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    if let Some(u) = pairs.get("username")
        && u != "user"
        && u != "root"
    {
        return Err(files_error(
            401,
            format!("error looking up user '{u}': user: unknown user {u}"),
        ));
    }
    match pairs.get("path") {
        Some(p) if !p.is_empty() => Ok(p.clone()),
        _ => Err(files_error(400, "path is required".into())),
    }
}

async fn read_file(
    AxState(s): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let inner = match admit(&s, &id, &headers, true).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let path = match files_request("GET", &headers, q.as_deref(), &[]) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match s.provider.read_file(&inner, &provider_path(&path)).await {
        Ok(bytes) => ([("content-type", "application/octet-stream")], bytes).into_response(),
        Err(_) => files_error(404, format!("path '{path}' does not exist")),
    }
}

async fn write_file(
    AxState(s): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let inner = match admit(&s, &id, &headers, true).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let path = match files_request("POST", &headers, q.as_deref(), &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let contents = if content_type == "application/octet-stream" {
        body.to_vec()
    } else if let Some(boundary) = content_type
        .strip_prefix("multipart/form-data; boundary=")
        .map(|b| b.trim_matches('"'))
    {
        match first_part(&body, boundary) {
            Some(c) => c,
            None => return files_error(400, "malformed multipart body".into()),
        }
    } else {
        return files_error(400, format!("unsupported content type {content_type:?}"));
    };
    match s
        .provider
        .write_file(&inner, &provider_path(&path), &contents)
        .await
    {
        Ok(()) => {
            let name = path.rsplit('/').next().unwrap_or(&path).to_string();
            Json(json!([{"path": path, "name": name, "type": "file"}])).into_response()
        }
        Err(e) => files_error(500, format!("error writing file '{path}': {e}")),
    }
}

/// The content of the first part of a `multipart/form-data` body (the fake
/// writes it to the `path` query parameter, as envd does when one is given).
fn first_part(body: &[u8], boundary: &str) -> Option<Vec<u8>> {
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let start = find(body, format!("--{boundary}\r\n").as_bytes())?;
    let rest = &body[start..];
    let headers_end = find(rest, b"\r\n\r\n")? + 4;
    let content = &rest[headers_end..];
    let end = find(content, format!("\r\n--{boundary}").as_bytes())?;
    Some(content[..end].to_vec())
}

/// Connect code → HTTP status of a unary error.
fn code_status(code: &str) -> StatusCode {
    match code {
        "invalid_argument" | "failed_precondition" | "out_of_range" => StatusCode::BAD_REQUEST,
        "unauthenticated" => StatusCode::UNAUTHORIZED,
        "permission_denied" => StatusCode::FORBIDDEN,
        "not_found" => StatusCode::NOT_FOUND,
        "already_exists" | "aborted" => StatusCode::CONFLICT,
        "resource_exhausted" => StatusCode::TOO_MANY_REQUESTS,
        "unimplemented" => StatusCode::NOT_IMPLEMENTED,
        "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        "deadline_exceeded" => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn unary_error(code: &str, message: &str) -> Response {
    (
        code_status(code),
        Json(json!({"code": code, "message": message})),
    )
        .into_response()
}

fn envelope(flags: u8, payload: &Value) -> Vec<u8> {
    let body = serde_json::to_vec(payload).unwrap();
    let mut out = vec![flags];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn end_stream(error: Option<(&str, &str)>) -> Vec<u8> {
    match error {
        Some((code, message)) => {
            envelope(0x02, &json!({"error": {"code": code, "message": message}}))
        }
        None => envelope(0x02, &json!({})),
    }
}

/// A streaming call that fails before any event: 200 and an end-of-stream error.
fn stream_error(code: &str, message: &str) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/connect+json")],
        end_stream(Some((code, message))),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessConfigIn {
    cmd: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    envs: BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartIn {
    process: ProcessConfigIn,
    #[serde(default)]
    pty: Option<Value>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    stdin: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectorIn {
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessOnlyIn {
    process: SelectorIn,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputIn {
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    pty: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendInputIn {
    process: SelectorIn,
    input: InputIn,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendSignalIn {
    process: SelectorIn,
    signal: Value,
}

/// The user of `Authorization: Basic base64("user:")`; absent means the default.
fn check_user(headers: &HeaderMap) -> Result<(), String> {
    let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let user = v
        .strip_prefix("Basic ")
        .and_then(|b| B64.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(u, _)| u.to_string()))
        .ok_or("malformed Authorization header")?;
    if user == "user" || user == "root" {
        Ok(())
    } else {
        Err(format!("invalid username: '{user}'"))
    }
}

/// Open a Connect envelope holding one JSON message.
fn unwrap_envelope(body: &[u8]) -> Result<&[u8], String> {
    if body.len() < 5 {
        return Err("request body is not a Connect envelope".into());
    }
    if body[0] != 0 {
        return Err(format!("unexpected envelope flags {:#04x}", body[0]));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != 5 + len {
        return Err(format!(
            "envelope says {len} bytes, body has {}",
            body.len() - 5
        ));
    }
    Ok(&body[5..])
}

async fn rpc(
    AxState(s): AxState<Arc<Shared>>,
    Path((id, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admit(&s, &id, &headers, true).await {
        return r;
    }
    let streaming = matches!(method.as_str(), "Start" | "Connect");
    let fail = |code: &str, message: &str| {
        if streaming {
            stream_error(code, message)
        } else {
            unary_error(code, message)
        }
    };
    if let Some(v) = headers.get("connect-protocol-version")
        && v != "1"
    {
        return fail("invalid_argument", "connect-protocol-version must be \"1\"");
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let wanted = if streaming {
        "application/connect+json"
    } else {
        "application/json"
    };
    if content_type != wanted {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected {wanted}"),
        )
            .into_response();
    }
    if let Err(e) = check_user(&headers) {
        return fail("unauthenticated", &e);
    }
    let payload = if streaming {
        match unwrap_envelope(&body) {
            Ok(p) => p,
            Err(e) => return fail("invalid_argument", &e),
        }
    } else {
        &body[..]
    };
    match method.as_str() {
        "Start" => start(s, id, &headers, payload).await,
        "Connect" => connect(s, id, &headers, payload),
        "SendInput" => send_input(&s, &id, payload),
        "CloseStdin" => close_stdin(&s, &id, payload),
        "SendSignal" => send_signal(&s, &id, payload),
        "List" => list(&s, &id),
        other => unary_error(
            "unimplemented",
            &format!("process.Process/{other} is not implemented by the fake"),
        ),
    }
}

fn keepalive_interval(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

async fn start(s: Arc<Shared>, id: String, headers: &HeaderMap, payload: &[u8]) -> Response {
    let req: StartIn = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => return stream_error("invalid_argument", &format!("bad StartRequest: {e}")),
    };
    if req.pty.is_some() {
        return stream_error("unimplemented", "the fake has no PTY support");
    }
    let timeout = match headers
        .get("connect-timeout-ms")
        .map(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()))
    {
        None => None,
        Some(Some(ms)) if ms > 0 && ms < 10_000_000_000 => Some(Duration::from_millis(ms)),
        Some(_) => return stream_error("invalid_argument", "bad connect-timeout-ms"),
    };
    let (proc, rx, inner) = {
        let mut w = s.world.lock().unwrap();
        let Some(sb) = w.sandboxes.get_mut(&id) else {
            return sandbox_not_found(&id, NotFoundBody::Json);
        };
        let pid = sb.next_pid;
        sb.next_pid += 1;
        let proc = Arc::new(Proc {
            pid,
            tag: req.tag.clone(),
            cmd: req.process.cmd.clone(),
            args: req.process.args.clone(),
            cancel: CancellationToken::new(),
            subscribers: Mutex::default(),
            stdin: Mutex::default(),
            stdin_closed: Notify::new(),
        });
        let rx = proc.subscribe().expect("a new process has not ended");
        sb.processes.insert(pid, proc.clone());
        (proc, rx, sb.inner.clone())
    };
    let exec = ExecRequest {
        program: req.process.cmd,
        args: req.process.args,
        env: req.process.envs,
        cwd: req.process.cwd.as_deref().map(provider_path),
        stdin: None,
        timeout,
        max_output_bytes: 64 << 20,
    };
    tokio::spawn(run_process(
        s.clone(),
        id.clone(),
        inner,
        proc.clone(),
        exec,
        req.stdin.unwrap_or(true),
    ));
    let fault = s.faults.take_stream_fault();
    event_stream(s, id, proc.pid, rx, keepalive_interval(headers), fault)
}

/// Run the process through the provider and publish what happens.
async fn run_process(
    s: Arc<Shared>,
    id: String,
    inner: String,
    proc: Arc<Proc>,
    mut req: ExecRequest,
    wants_stdin: bool,
) {
    if wants_stdin {
        loop {
            let closed = proc.stdin_closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if proc.stdin.lock().unwrap().closed {
                break;
            }
            tokio::select! {
                _ = closed => {}
                _ = proc.cancel.cancelled() => break,
            }
        }
        req.stdin = Some(std::mem::take(&mut proc.stdin.lock().unwrap().data));
    }
    let killed = |trailer: Option<(String, String)>| ProcEvent::End {
        exit_code: -1,
        exited: false,
        status: "signal: killed".into(),
        trailer,
    };
    let end = if proc.cancel.is_cancelled() {
        killed(None)
    } else {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let control = ExecControl {
            cancel: proc.cancel.clone(),
            output: Some(tx),
        };
        let data = |c: OutputChunk| match c {
            OutputChunk::Stdout(bytes) => ProcEvent::Data {
                stderr: false,
                bytes,
            },
            OutputChunk::Stderr(bytes) => ProcEvent::Data {
                stderr: true,
                bytes,
            },
        };
        let exec = s.provider.exec(&inner, &req, control);
        tokio::pin!(exec);
        let result = loop {
            tokio::select! {
                biased;
                Some(c) = rx.recv() => proc.publish(data(c)),
                r = &mut exec => break r,
            }
        };
        // Output still queued (or held by tasks the provider spawned) goes out
        // before the end event; a provider that never drops its sender is cut off.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(c) = rx.recv().await {
                proc.publish(data(c));
            }
        })
        .await;
        match result {
            Ok(out) => ProcEvent::End {
                exit_code: out.exit_code,
                exited: true,
                status: format!("exit status {}", out.exit_code),
                trailer: None,
            },
            Err(SandboxError::Cancelled) => killed(None),
            Err(SandboxError::Timeout(_)) => killed(Some((
                "deadline_exceeded".into(),
                "context deadline exceeded".into(),
            ))),
            Err(e) => ProcEvent::Failed {
                code: "internal".into(),
                message: format!("error starting process: {e}"),
            },
        }
    };
    proc.publish(end);
    if let Some(sb) = s.world.lock().unwrap().sandboxes.get_mut(&id) {
        sb.processes.remove(&proc.pid);
    }
}

/// `{"event":{...}}` for one process event.
fn event_json(ev: &ProcEvent) -> Option<Value> {
    Some(match ev {
        ProcEvent::Data { stderr, bytes } => {
            let key = if *stderr { "stderr" } else { "stdout" };
            json!({"event": {"data": {key: B64.encode(bytes)}}})
        }
        ProcEvent::End {
            exit_code,
            exited,
            status,
            ..
        } => {
            // protojson omits zero values: no exitCode for 0, no error then either.
            let mut end = json!({"status": status});
            if *exit_code != 0 {
                end["exitCode"] = json!(exit_code);
                end["error"] = json!(status);
            }
            if *exited {
                end["exited"] = json!(true);
            }
            json!({"event": {"end": end}})
        }
        ProcEvent::Failed { .. } => return None,
    })
}

enum Phase {
    Start,
    AfterStart,
    Events,
    Done,
}

/// The response of `Start`/`Connect`: the `start` event, then the process's
/// events, then the end of stream. `fault` cuts the stream after `start`.
fn event_stream(
    s: Arc<Shared>,
    id: String,
    pid: u32,
    rx: mpsc::UnboundedReceiver<ProcEvent>,
    keepalive: Option<Duration>,
    fault: Option<StreamFault>,
) -> Response {
    let stream =
        futures::stream::unfold((Phase::Start, rx, fault), move |(phase, mut rx, fault)| {
            let s = s.clone();
            let id = id.clone();
            async move {
                let ok = |bytes: Vec<u8>| Ok::<Bytes, std::io::Error>(Bytes::from(bytes));
                match phase {
                    Phase::Start if fault == Some(StreamFault::LoseStart) => Some((
                        Err(std::io::Error::other("stream cut by a fault")),
                        (Phase::Done, rx, None),
                    )),
                    Phase::Start => Some((
                        ok(envelope(0, &json!({"event": {"start": {"pid": pid}}}))),
                        (Phase::AfterStart, rx, fault),
                    )),
                    Phase::AfterStart if fault.is_some() => {
                        // Let hyper flush the start event before the cut (a pending
                        // body makes it write out what it has).
                        tokio::task::yield_now().await;
                        if fault == Some(StreamFault::Vanish) {
                            // Gone before the client can see the cut: its next call finds no sandbox.
                            super::control::kill_sandbox(&s, &id).await;
                        }
                        Some((
                            Err(std::io::Error::other("stream cut by a fault")),
                            (Phase::Done, rx, None),
                        ))
                    }
                    Phase::AfterStart | Phase::Events => {
                        let ev = match keepalive {
                            Some(k) => match tokio::time::timeout(k, rx.recv()).await {
                                Err(_) => {
                                    return Some((
                                        ok(envelope(0, &json!({"event": {"keepalive": {}}}))),
                                        (Phase::Events, rx, None),
                                    ));
                                }
                                Ok(ev) => ev,
                            },
                            None => rx.recv().await,
                        };
                        match ev {
                            Some(ProcEvent::Data { .. }) => {
                                let bytes = envelope(0, &event_json(ev.as_ref().unwrap()).unwrap());
                                Some((ok(bytes), (Phase::Events, rx, None)))
                            }
                            Some(ProcEvent::End { ref trailer, .. }) => {
                                let mut bytes =
                                    envelope(0, &event_json(ev.as_ref().unwrap()).unwrap());
                                let t = trailer.as_ref().map(|(c, m)| (c.as_str(), m.as_str()));
                                bytes.extend(end_stream(t));
                                Some((ok(bytes), (Phase::Done, rx, None)))
                            }
                            Some(ProcEvent::Failed {
                                ref code,
                                ref message,
                            }) => Some((
                                ok(end_stream(Some((code, message)))),
                                (Phase::Done, rx, None),
                            )),
                            // The process went away without an end (its sandbox was killed).
                            None => Some((
                                Err(std::io::Error::other("sandbox gone")),
                                (Phase::Done, rx, None),
                            )),
                        }
                    }
                    Phase::Done => None,
                }
            }
        });
    (
        StatusCode::OK,
        [("content-type", "application/connect+json")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn find(s: &Shared, id: &str, sel: &SelectorIn) -> Option<Arc<Proc>> {
    let w = s.world.lock().unwrap();
    let sb = w.sandboxes.get(id)?;
    match (sel.pid, &sel.tag) {
        (Some(pid), _) => sb.processes.get(&pid).cloned(),
        (None, Some(tag)) => sb
            .processes
            .values()
            .find(|p| p.tag.as_ref() == Some(tag))
            .cloned(),
        (None, None) => None,
    }
}

fn describe(sel: &SelectorIn) -> String {
    match (sel.pid, &sel.tag) {
        (Some(pid), _) => format!("process with pid {pid}"),
        (None, Some(tag)) => format!("process with tag {tag}"),
        _ => "process".into(),
    }
}

fn connect(s: Arc<Shared>, id: String, headers: &HeaderMap, payload: &[u8]) -> Response {
    let req: ProcessOnlyIn = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => return stream_error("invalid_argument", &format!("bad ConnectRequest: {e}")),
    };
    let Some(proc) = find(&s, &id, &req.process) else {
        return stream_error(
            "not_found",
            &format!("{} not found", describe(&req.process)),
        );
    };
    let Some(rx) = proc.subscribe() else {
        return stream_error(
            "not_found",
            &format!("{} not found", describe(&req.process)),
        );
    };
    event_stream(s, id, proc.pid, rx, keepalive_interval(headers), None)
}

fn parse<'a, T: Deserialize<'a>>(payload: &'a [u8], what: &str) -> Result<T, Response> {
    serde_json::from_slice(payload)
        .map_err(|e| unary_error("invalid_argument", &format!("bad {what}: {e}")))
}

fn send_input(s: &Shared, id: &str, payload: &[u8]) -> Response {
    let req: SendInputIn = match parse(payload, "SendInputRequest") {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(proc) = find(s, id, &req.process) else {
        return unary_error(
            "not_found",
            &format!("{} not found", describe(&req.process)),
        );
    };
    let Some(data) = req.input.stdin.or(req.input.pty) else {
        return unary_error("invalid_argument", "input has neither stdin nor pty");
    };
    let Ok(bytes) = B64.decode(data) else {
        return unary_error("invalid_argument", "input is not base64");
    };
    let mut stdin = proc.stdin.lock().unwrap();
    if stdin.closed {
        return unary_error("failed_precondition", "stdin is closed");
    }
    stdin.data.extend(bytes);
    Json(json!({})).into_response()
}

fn close_stdin(s: &Shared, id: &str, payload: &[u8]) -> Response {
    let req: ProcessOnlyIn = match parse(payload, "CloseStdinRequest") {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(proc) = find(s, id, &req.process) else {
        return unary_error(
            "not_found",
            &format!("{} not found", describe(&req.process)),
        );
    };
    proc.stdin.lock().unwrap().closed = true;
    proc.stdin_closed.notify_waiters();
    Json(json!({})).into_response()
}

fn send_signal(s: &Shared, id: &str, payload: &[u8]) -> Response {
    let req: SendSignalIn = match parse(payload, "SendSignalRequest") {
        Ok(r) => r,
        Err(r) => return r,
    };
    let known = matches!(
        req.signal.as_str(),
        Some("SIGNAL_SIGKILL" | "SIGNAL_SIGTERM")
    ) || matches!(req.signal.as_u64(), Some(9 | 15));
    if !known {
        return unary_error(
            "invalid_argument",
            &format!("unknown signal {}", req.signal),
        );
    }
    let Some(proc) = find(s, id, &req.process) else {
        return unary_error(
            "not_found",
            &format!("{} not found", describe(&req.process)),
        );
    };
    proc.cancel.cancel();
    Json(json!({})).into_response()
}

fn list(s: &Shared, id: &str) -> Response {
    let w = s.world.lock().unwrap();
    let processes: Vec<Value> = w
        .sandboxes
        .get(id)
        .map(|sb| {
            sb.processes
                .values()
                .map(|p| {
                    let mut v = json!({"config": {"cmd": p.cmd, "args": p.args}, "pid": p.pid});
                    if let Some(t) = &p.tag {
                        v["tag"] = json!(t);
                    }
                    v
                })
                .collect()
        })
        .unwrap_or_default();
    Json(json!({"processes": processes})).into_response()
}
