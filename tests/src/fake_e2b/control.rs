//! The fake's control plane: the sandbox endpoints of E2B's `openapi.yml` that
//! the client uses, with the status codes, bodies and headers the spec (and E2B's
//! API code, where the spec is silent) give them.
//!
//! A guard in front of every route plays the parts of E2B's middleware: it
//! expires sandboxes whose `endAt` passed (kill, or pause when `autoPause`), then
//! injects faults, checks `X-API-Key`, and validates the request against the
//! spec (400 when it does not match), and after the handler applies any delay.

// Handlers hand back ready `Response`s as their errors; their size is no
// concern in a test server.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State as AxState};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use fleet_shared::sandbox::SandboxSpec;
use serde::Deserialize;
use serde_json::{Value, json};

use super::faults::{Call, ControlFault};
use super::openapi::{OpenApi, RequestParts};
use super::{FakeSandbox, Shared, State, new_sandbox_id, new_token, rfc3339};

/// E2B's constant, deprecated `clientID`.
const CLIENT_ID: &str = "6532622b";
const ENVD_VERSION: &str = "0.6.13";
/// The longest timeout the fake accepts (a Pro plan's 24 h).
const MAX_TIMEOUT_SECS: i64 = 24 * 3600;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/sandboxes", post(create))
        .route("/v2/sandboxes", get(list))
        .route("/sandboxes/{id}", get(get_one).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// E2B's error body: `{"code": <status>, "message": ...}`.
pub(crate) fn api_error(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = json!({"code": status.as_u16(), "message": message});
    if status.is_server_error() {
        body["error_code"] = json!(if status == StatusCode::SERVICE_UNAVAILABLE {
            "sandbox_capacity_unavailable"
        } else {
            "internal_server_error"
        });
    }
    (status, Json(body)).into_response()
}

/// A 429 from the plan (`Faults::set_plan`), shaped as E2B's.
fn plan_refusal(message: &str, retry_after: Option<u64>) -> Response {
    let mut r = api_error(429, message);
    if let Some(secs) = retry_after {
        r.headers_mut()
            .insert("Retry-After", HeaderValue::from(secs));
    }
    r
}

/// Admit a start under the plan; the guard ends it (admitted or not, it stops
/// counting as starting when the handler returns).
struct Starting<'a>(&'a Shared);

impl Starting<'_> {
    /// The sandbox is in the world as running: it stops counting as starting, in
    /// the same critical section.
    fn started(self, w: &mut super::World) {
        w.start_done();
        std::mem::forget(self);
    }
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.0.world.lock().unwrap().start_done();
    }
}

fn admit<'a>(s: &'a Shared, arrived: Instant) -> Result<Starting<'a>, Response> {
    let plan = s.faults.plan();
    s.world
        .lock()
        .unwrap()
        .admit_start(plan, arrived)
        .map(|()| Starting(s))
        .map_err(|(message, retry_after)| plan_refusal(&message, retry_after))
}

/// When a request reached the server, stamped before anything else is done with it:
/// what E2B's rate limit counts.
#[derive(Debug, Clone, Copy)]
struct Arrived(Instant, SystemTime);

async fn guard(AxState(s): AxState<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    req.extensions_mut()
        .insert(Arrived(Instant::now(), SystemTime::now()));
    sweep(&s).await;
    match s.faults.take_control_fault() {
        Some(ControlFault::Status(code)) => return api_error(code, "fault injected by the fake"),
        Some(ControlFault::RateLimited(secs)) => {
            let mut r = api_error(429, "Rate limit exceeded");
            let h = r.headers_mut();
            h.insert("Retry-After", HeaderValue::from(secs));
            h.insert("RateLimit-Limit", HeaderValue::from(20_000u32));
            h.insert("RateLimit-Remaining", HeaderValue::from(0u32));
            h.insert("RateLimit-Reset", HeaderValue::from(secs));
            return r;
        }
        None => {}
    }
    if req.headers().get("x-api-key").and_then(|v| v.to_str().ok()) != Some(s.api_key.as_str()) {
        return api_error(401, "Invalid API key");
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let check = OpenApi::e2b().check_request(&RequestParts {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &headers,
        body: &body,
    });
    if let Err(errors) = check {
        return api_error(
            400,
            &format!("request does not match the API spec: {}", errors.join("; ")),
        );
    }
    let resp = next.run(Request::from_parts(parts, Body::from(body))).await;
    let delay = s.faults.take_control_delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    resp
}

/// E2B's evictor: sandboxes past `endAt` are killed, or paused with `autoPause`.
pub(crate) async fn sweep(s: &Shared) {
    let now = SystemTime::now();
    let expired: Vec<(String, bool)> = s
        .world
        .lock()
        .unwrap()
        .sandboxes
        .values()
        .filter(|sb| sb.state == State::Running && sb.end_at <= now)
        .map(|sb| (sb.id.clone(), sb.auto_pause))
        .collect();
    for (id, auto_pause) in expired {
        if auto_pause {
            let _ = pause_sandbox(s, &id).await;
        } else {
            kill_sandbox(s, &id).await;
        }
    }
}

/// Remove a sandbox and its provider sandbox. `false`: there was none.
pub(crate) async fn kill_sandbox(s: &Shared, id: &str) -> bool {
    let inner = {
        let mut w = s.world.lock().unwrap();
        match w.sandboxes.remove(id) {
            Some(mut sb) => {
                Shared::stop_processes(&mut sb);
                w.counters.killed += 1;
                Some(sb.inner)
            }
            None => None,
        }
    };
    match inner {
        Some(inner) => {
            let _ = s.provider.kill(&inner).await;
            true
        }
        None => false,
    }
}

/// Pause a running sandbox. `Err(status)` when it cannot be.
async fn pause_sandbox(s: &Shared, id: &str) -> Result<(), u16> {
    let inner = {
        let mut w = s.world.lock().unwrap();
        let sb = w.sandboxes.get_mut(id).ok_or(404u16)?;
        if sb.state == State::Paused {
            return Err(409);
        }
        sb.state = State::Paused;
        sb.end_at = SystemTime::now();
        let inner = sb.inner.clone();
        w.counters.pauses += 1;
        inner
    };
    s.provider.pause(&inner).await.map_err(|_| 500u16)
}

/// Spend the time `call` takes at E2B ([`super::Latencies`]).
async fn sleep_for(s: &Shared, call: Call) {
    let d = s.faults.latency(call);
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

fn exists(s: &Shared, id: &str) -> bool {
    s.world.lock().unwrap().sandboxes.contains_key(id)
}

fn template_id(name: &str) -> String {
    format!("tpl_{name}")
}

/// `Sandbox`.
fn sandbox_json(sb: &FakeSandbox) -> Value {
    let mut v = json!({
        "templateID": template_id(&sb.template),
        "sandboxID": sb.id,
        "alias": sb.template,
        "clientID": CLIENT_ID,
        "envdVersion": ENVD_VERSION,
        "trafficAccessToken": null,
        "domain": null,
    });
    if let Some(t) = &sb.token {
        v["envdAccessToken"] = json!(t);
    }
    v
}

/// `ListedSandbox`.
fn listed_json(sb: &FakeSandbox) -> Value {
    json!({
        "templateID": template_id(&sb.template),
        "alias": sb.template,
        "sandboxID": sb.id,
        "clientID": CLIENT_ID,
        "startedAt": rfc3339(sb.started_at),
        "endAt": rfc3339(sb.end_at),
        "cpuCount": 2,
        "memoryMB": 512,
        "diskSizeMB": 2048,
        "metadata": sb.metadata,
        "state": if sb.state == State::Running { "running" } else { "paused" },
        "envdVersion": ENVD_VERSION,
    })
}

/// `SandboxDetail`.
fn detail_json(sb: &FakeSandbox) -> Value {
    let mut v = listed_json(sb);
    v["allowInternetAccess"] = Value::Null;
    v["domain"] = Value::Null;
    v["lifecycle"] = json!({
        "autoResume": false,
        "onTimeout": if sb.auto_pause { "pause" } else { "kill" },
    });
    if let Some(t) = &sb.token {
        v["envdAccessToken"] = json!(t);
    }
    v
}

fn not_found(id: &str) -> Response {
    api_error(
        404,
        &format!("Sandbox \"{id}\" doesn't exist or you don't have access to it"),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewSandboxIn {
    #[serde(rename = "templateID")]
    template_id: String,
    timeout: Option<i64>,
    #[serde(default)]
    auto_pause: bool,
    #[serde(default)]
    secure: bool,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    env_vars: BTreeMap<String, String>,
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    network: Option<NetworkIn>,
}

/// The egress part of `SandboxNetworkConfig` (the other fields are not modelled).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetworkIn {
    #[serde(default)]
    allow_out: Vec<String>,
    #[serde(default)]
    deny_out: Vec<String>,
}

fn is_ip_or_cidr(entry: &str) -> bool {
    match entry.split_once('/') {
        Some((ip, bits)) => {
            let max = if ip.contains(':') { 128 } else { 32 };
            ip.parse::<std::net::IpAddr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= max)
        }
        None => entry.parse::<std::net::IpAddr>().is_ok(),
    }
}

fn check_timeout(t: i64) -> Result<Duration, Response> {
    if t <= 0 {
        return Err(api_error(400, "Timeout must be greater than 0"));
    }
    if t > MAX_TIMEOUT_SECS {
        return Err(api_error(400, "Timeout cannot be greater than 24 hours"));
    }
    Ok(Duration::from_secs(t as u64))
}

async fn create(
    AxState(s): AxState<Arc<Shared>>,
    Extension(Arrived(arrived, arrived_at)): Extension<Arrived>,
    body: Bytes,
) -> Response {
    let req: NewSandboxIn = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return api_error(400, &format!("invalid body: {e}")),
    };
    let timeout = match check_timeout(req.timeout.unwrap_or(15)) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let starting = match admit(&s, arrived) {
        Ok(g) => g,
        Err(r) => return r,
    };
    // The schema allows any strings; E2B itself refuses a domain in `denyOut`.
    if let Some(bad) = req
        .network
        .as_ref()
        .and_then(|n| n.deny_out.iter().find(|e| !is_ip_or_cidr(e)))
    {
        return api_error(
            400,
            &format!("invalid denyOut entry {bad:?}: only IP addresses and CIDR blocks"),
        );
    }
    // Starting a microVM takes time; the create counts against the plan meanwhile.
    sleep_for(&s, Call::Create).await;
    // The backing sandbox runs locally: the fake records egress rules, never enforces them.
    let spec = SandboxSpec {
        template: req.template_id.clone(),
        timeout,
        metadata: req.metadata.clone(),
        env: req.env_vars.clone(),
        auto_pause: req.auto_pause,
        network: None,
        stop: None,
    };
    let inner = match s.provider.create(&spec).await {
        Ok(info) => info.id,
        Err(e) => return api_error(500, &format!("Failed to create sandbox: {e}")),
    };
    let now = SystemTime::now();
    let mut w = s.world.lock().unwrap();
    w.seq += 1;
    let token = req.secure.then(new_token);
    if let Some(t) = &token {
        w.tokens.push(t.clone());
    }
    let sb = FakeSandbox {
        id: new_sandbox_id(),
        template: req.template_id,
        metadata: req.metadata,
        env_vars: req.env_vars,
        egress: super::Egress {
            allow_internet_access: req.allow_internet_access,
            allow_out: req.network.as_ref().map(|n| n.allow_out.clone()),
            deny_out: req.network.map(|n| n.deny_out),
        },
        token,
        auto_pause: req.auto_pause,
        state: State::Running,
        started_at: now,
        end_at: now + timeout,
        seq: w.seq,
        inner,
        processes: Default::default(),
        next_pid: 100,
    };
    let body = sandbox_json(&sb);
    w.start_log.push(super::StartRecord {
        sandbox_id: sb.id.clone(),
        backing: sb.inner.clone(),
        resume: false,
        arrived: arrived_at,
        running: now,
    });
    w.sandboxes.insert(sb.id.clone(), sb);
    w.counters.created += 1;
    starting.started(&mut w);
    w.started(arrived);
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn get_one(AxState(s): AxState<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let w = s.world.lock().unwrap();
    match w.sandboxes.get(&id) {
        Some(sb) => Json(detail_json(sb)).into_response(),
        None => not_found(&id),
    }
}

async fn list(AxState(s): AxState<Arc<Shared>>, RawQuery(q): RawQuery) -> Response {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let param = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let mut states = Vec::new();
    for st in param("state").unwrap_or("running,paused").split(',') {
        states.push(match st {
            "running" => State::Running,
            "paused" => State::Paused,
            other => return api_error(400, &format!("invalid state {other:?}")),
        });
    }
    // The value was URL-decoded once by the query parser; its pairs are encoded again.
    let metadata: Vec<(String, String)> = param("metadata")
        .map(|m| form_urlencoded::parse(m.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let ascending = param("order") == Some("asc");
    let limit: usize = match param("limit").map(str::parse) {
        None => 100,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => return api_error(400, "limit must be between 1 and 100"),
    };
    let page = s
        .faults
        .list_page_size()
        .map_or(limit, |p| p.min(limit))
        .max(1);
    let cursor: Option<u64> = match param("nextToken") {
        None => None,
        Some(t) => match t.strip_prefix('c').and_then(|n| n.parse().ok()) {
            Some(n) => Some(n),
            None => return api_error(400, "Invalid next token"),
        },
    };
    let template = param("template");

    let w = s.world.lock().unwrap();
    let mut matching: Vec<&FakeSandbox> = w
        .sandboxes
        .values()
        .filter(|sb| states.contains(&sb.state))
        .filter(|sb| metadata.iter().all(|(k, v)| sb.metadata.get(k) == Some(v)))
        .filter(|sb| template.is_none_or(|t| t == sb.template || t == template_id(&sb.template)))
        .collect();
    matching.sort_by_key(|sb| sb.seq);
    if !ascending {
        matching.reverse();
    }
    let total_running = matching
        .iter()
        .filter(|sb| sb.state == State::Running)
        .count();
    let rest: Vec<&FakeSandbox> = matching
        .into_iter()
        .filter(|sb| match cursor {
            None => true,
            Some(c) if ascending => sb.seq > c,
            Some(c) => sb.seq < c,
        })
        .collect();
    let items: Vec<Value> = rest.iter().take(page).map(|sb| listed_json(sb)).collect();
    let mut resp = Json(items).into_response();
    if rest.len() > page {
        let next = format!("c{}", rest[page - 1].seq);
        resp.headers_mut()
            .insert("X-Next-Token", HeaderValue::from_str(&next).unwrap());
    }
    if states.contains(&State::Running) {
        resp.headers_mut()
            .insert("X-Total-Running", HeaderValue::from(total_running));
    }
    resp
}

async fn kill(AxState(s): AxState<Arc<Shared>>, Path(id): Path<String>) -> Response {
    if exists(&s, &id) {
        sleep_for(&s, Call::Kill).await;
    }
    if kill_sandbox(&s, &id).await {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found(&id)
    }
}

#[derive(Deserialize)]
struct TimeoutIn {
    timeout: i64,
}

async fn set_timeout(
    AxState(s): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(req) = serde_json::from_slice::<TimeoutIn>(&body) else {
        return api_error(400, "invalid body");
    };
    let mut w = s.world.lock().unwrap();
    match w.sandboxes.get_mut(&id) {
        Some(sb) if sb.state == State::Running => {
            sb.end_at = SystemTime::now() + Duration::from_secs(req.timeout.max(0) as u64);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => not_found(&id),
    }
}

async fn connect(
    AxState(s): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    Extension(Arrived(arrived, arrived_at)): Extension<Arrived>,
    body: Bytes,
) -> Response {
    let Ok(req) = serde_json::from_slice::<TimeoutIn>(&body) else {
        return api_error(400, "invalid body");
    };
    let timeout = match check_timeout(req.timeout) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let paused = {
        let mut w = s.world.lock().unwrap();
        match w.sandboxes.get_mut(&id) {
            None => return api_error(404, &format!("Paused sandbox {id} not found")),
            Some(sb) if sb.state == State::Running => {
                // Connect only ever extends the TTL.
                sb.end_at = sb.end_at.max(SystemTime::now() + timeout);
                return Json(sandbox_json(sb)).into_response();
            }
            Some(sb) => (
                sb.inner.clone(),
                SandboxSpec {
                    template: sb.template.clone(),
                    timeout,
                    metadata: sb.metadata.clone(),
                    env: sb.env_vars.clone(),
                    auto_pause: sb.auto_pause,
                    network: None,
                    stop: None,
                },
            ),
        }
    };
    let starting = match admit(&s, arrived) {
        Ok(g) => g,
        Err(r) => return r,
    };
    sleep_for(&s, Call::Resume).await;
    let (old_inner, spec) = paused;
    let inner = if s.faults.pause_keeps_files() {
        match s.provider.connect(&old_inner, timeout).await {
            Ok(_) => old_inner,
            Err(e) => return api_error(500, &format!("Failed to resume sandbox: {e}")),
        }
    } else {
        // Files lost across pause/resume: a fresh provider sandbox.
        let _ = s.provider.kill(&old_inner).await;
        match s.provider.create(&spec).await {
            Ok(info) => info.id,
            Err(e) => return api_error(500, &format!("Failed to resume sandbox: {e}")),
        }
    };
    let mut w = s.world.lock().unwrap();
    let Some(sb) = w.sandboxes.get_mut(&id) else {
        return api_error(404, &format!("Paused sandbox {id} not found"));
    };
    let now = SystemTime::now();
    sb.inner = inner;
    sb.state = State::Running;
    sb.started_at = now;
    sb.end_at = now + timeout;
    let body = sandbox_json(sb);
    let record = super::StartRecord {
        sandbox_id: id.clone(),
        backing: sb.inner.clone(),
        resume: true,
        arrived: arrived_at,
        running: now,
    };
    w.start_log.push(record);
    w.counters.resumed += 1;
    starting.started(&mut w);
    w.started(arrived);
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn pause(AxState(s): AxState<Arc<Shared>>, Path(id): Path<String>) -> Response {
    // Snapshotting takes time; the sandbox runs (and counts) until it is done.
    let running = s
        .world
        .lock()
        .unwrap()
        .sandboxes
        .get(&id)
        .is_some_and(|sb| sb.state == State::Running);
    if running {
        sleep_for(&s, Call::Pause).await;
    }
    match pause_sandbox(&s, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(404) => not_found(&id),
        Err(409) => api_error(
            409,
            &format!("Error pausing sandbox - sandbox '{id}' is already paused"),
        ),
        Err(code) => api_error(code, "Error pausing sandbox"),
    }
}

/// How often the fake "samples" a running sandbox (E2B: every few seconds).
pub(crate) const METRICS_INTERVAL_SECS: u64 = 5;
/// The most samples one answer holds (the newest ones).
const MAX_METRIC_SAMPLES: u64 = 1000;

/// `GET /sandboxes/{id}/metrics?start=&end=` → `[SandboxMetric]`: a sample at the
/// sandbox's (re)start and every [`METRICS_INTERVAL_SECS`] since, those inside
/// `[start, end]` (Unix seconds; default: since it started, up to now), oldest
/// first. Values are the sandbox's usage (`FakeE2b::set_usage`, else
/// `SandboxUsage::default()`). A paused sandbox is not sampled: the fake keeps no
/// history across a pause, so it answers `[]`. Unknown: 404; `start > end`: 400.
async fn metrics(
    AxState(s): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let mut start = None;
    let mut end = None;
    for (k, v) in form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        // The guard checked both against the spec (integers, at least 0).
        let v = v.parse::<u64>().ok();
        match k.as_ref() {
            "start" => start = v,
            "end" => end = v,
            _ => {}
        }
    }
    if let (Some(a), Some(b)) = (start, end)
        && a > b
    {
        return api_error(400, "start must be before end");
    }
    let w = s.world.lock().unwrap();
    let Some(sb) = w.sandboxes.get(&id) else {
        return not_found(&id);
    };
    if sb.state == State::Paused {
        return Json(json!([])).into_response();
    }
    let unix = |t: SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let born = unix(sb.started_at);
    let now = unix(SystemTime::now());
    let from = start.unwrap_or(born).max(born);
    let to = end.unwrap_or(now).min(now);
    let usage = w.usage.get(&id).copied().unwrap_or_default();
    let mut samples = Vec::new();
    if from <= to {
        // The first tick at or after `from`, then every interval up to `to`.
        let first = born + (from - born).div_ceil(METRICS_INTERVAL_SECS) * METRICS_INTERVAL_SECS;
        let count = if first > to {
            0
        } else {
            (to - first) / METRICS_INTERVAL_SECS + 1
        };
        let skip = count.saturating_sub(MAX_METRIC_SAMPLES);
        for i in skip..count {
            let t = first + i * METRICS_INTERVAL_SECS;
            samples.push(json!({
                "timestamp": rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(t)),
                "timestampUnix": t,
                "cpuCount": usage.cpu_count,
                "cpuUsedPct": usage.cpu_used_pct,
                "memUsed": usage.mem_used,
                "memTotal": usage.mem_total,
                "memCache": usage.mem_used / 4,
                "diskUsed": usage.disk_used,
                "diskTotal": 2048i64 << 20,
            }));
        }
    }
    Json(Value::Array(samples)).into_response()
}
