//! The gateway's HTTP side: a pass-through reverse proxy.
//!
//! Routes: `POST /v1/messages` (Anthropic), `POST /v1/chat/completions` and
//! `POST /v1/responses` (OpenAI), other `/v1/...` paths to Anthropic when the request
//! carries `x-api-key` or `anthropic-version` and to OpenAI otherwise, and
//! `/upstream/<name>/...` to a named data API. For each request:
//!
//! 1. the attempt token is taken from where the agent's SDK puts its key (`x-api-key` or
//!    `Authorization: Bearer`; a data API's own header) and looked up by its hash;
//! 2. `reserve` admits it (attempt live, lease held, budgets not passed) or it is refused
//!    in the provider's own error shape (401 for a dead token, the provider's "out of
//!    credit" error for a budget);
//! 3. a key whose limiter lets it go now is chosen, else the request waits in the
//!    gateway (bounded); a 429 from upstream pauses the group and the request waits its
//!    turn again, rather than failing;
//! 4. it is sent upstream with the real key, and the answer is streamed back as it
//!    arrives, byte for byte, while a [`Meter`] reads its usage; when the body ends (or
//!    the client goes away) the spend is settled in the background.
//!
//! The request body is read whole (it is needed to find the model and is sent again after
//! a 429); the response body never is.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::{any, get};
use futures::Stream;
use serde_json::{Value, json};

use super::budget::{Admission, Settlement};
use super::keys::{Key, KeyPool};
use super::metering::{Api, Meter, estimate_input_tokens};
use super::ratelimit::{Admit, Limits, model_family, pause_from};
use super::{Gateway, SettleJob};

/// Largest request body accepted (model requests carry whole conversations).
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;
/// A request that met 429s this many times in a row is answered with the last one.
const MAX_429_RETRIES: u32 = 8;

pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/{*rest}", any(model_api))
        .route("/upstream/{name}/{*rest}", any(data_api))
        .with_state(gw)
}

/// Who answers a request.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Anthropic,
    OpenAi,
    Upstream(String),
}

impl Target {
    fn limiter_name(&self) -> String {
        match self {
            Target::Anthropic => "anthropic".into(),
            Target::OpenAi => "openai".into(),
            Target::Upstream(name) => format!("upstream-{name}"),
        }
    }
}

fn classify(method: &Method, path: &str, headers: &HeaderMap) -> (Target, Api) {
    let post = method == Method::POST;
    match path {
        "/v1/messages" if post => (Target::Anthropic, Api::AnthropicMessages),
        "/v1/chat/completions" if post => (Target::OpenAi, Api::OpenAiChat),
        "/v1/responses" if post => (Target::OpenAi, Api::OpenAiResponses),
        _ if path.starts_with("/v1/messages")
            || headers.contains_key("x-api-key")
            || headers.contains_key("anthropic-version") =>
        {
            (Target::Anthropic, Api::Other)
        }
        _ => (Target::OpenAi, Api::Other),
    }
}

async fn model_api(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let (target, api) = classify(req.method(), req.uri().path(), req.headers());
    let path = req
        .uri()
        .path_and_query()
        .map_or(req.uri().path(), |p| p.as_str())
        .to_string();
    forward(gw, target, api, path, req).await
}

async fn data_api(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let full = req
        .uri()
        .path_and_query()
        .map_or(req.uri().path(), |p| p.as_str())
        .to_string();
    let rest = full.strip_prefix("/upstream/").unwrap_or_default();
    let (name, path) = rest.split_once('/').unwrap_or((rest, ""));
    let name = name.to_string();
    if !gw.upstreams.contains_key(&name) {
        return refusal(
            &Target::Upstream(name.clone()),
            Refusal::NotFound(format!("no upstream named {name:?}")),
        );
    }
    let path = format!("/{path}");
    forward(gw, Target::Upstream(name), Api::Other, path, req).await
}

/// Why the gateway answers itself.
enum Refusal {
    Unauthorized(String),
    Budget(String),
    RateLimited(Duration),
    Unavailable(String),
    BadGateway(String),
    NotFound(String),
    TooLarge,
}

/// An error in the shape the target's own API uses, so agents' SDKs read it as usual.
fn refusal(target: &Target, r: Refusal) -> Response {
    let (status, a_type, o_type, o_code, message, retry_after) = match r {
        Refusal::Unauthorized(m) => (
            401,
            "authentication_error",
            "invalid_request_error",
            "invalid_api_key",
            format!("fleet gateway: {m}"),
            None,
        ),
        // Anthropic's answer for an account out of credit; OpenAI's for a spent quota.
        Refusal::Budget(m) => (
            0,
            "invalid_request_error",
            "insufficient_quota",
            "insufficient_quota",
            format!("fleet gateway: budget exceeded: {m}"),
            None,
        ),
        Refusal::RateLimited(wait) => (
            429,
            "rate_limit_error",
            "requests",
            "rate_limit_exceeded",
            "fleet gateway: rate limited; too many requests are waiting".to_string(),
            Some(wait),
        ),
        Refusal::Unavailable(m) => (
            503,
            "overloaded_error",
            "server_error",
            "service_unavailable",
            format!("fleet gateway: {m}"),
            Some(Duration::from_secs(1)),
        ),
        Refusal::BadGateway(m) => (
            502,
            "api_error",
            "server_error",
            "bad_gateway",
            format!("fleet gateway: {m}"),
            None,
        ),
        Refusal::NotFound(m) => (
            404,
            "not_found_error",
            "invalid_request_error",
            "not_found",
            format!("fleet gateway: {m}"),
            None,
        ),
        Refusal::TooLarge => (
            413,
            "request_too_large",
            "invalid_request_error",
            "request_too_large",
            "fleet gateway: request body too large".to_string(),
            None,
        ),
    };
    let (status, body) = match target {
        Target::Anthropic => (
            if status == 0 { 400 } else { status },
            json!({"type": "error", "error": {"type": a_type, "message": message}}),
        ),
        Target::OpenAi => (
            if status == 0 { 429 } else { status },
            json!({"error": {"message": message, "type": o_type, "param": null, "code": o_code}}),
        ),
        Target::Upstream(_) => (
            if status == 0 { 402 } else { status },
            json!({"error": message}),
        ),
    };
    let mut resp = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY))
        .header("content-type", "application/json")
        .header("x-fleet-gateway", "refused")
        .body(Body::from(body.to_string()))
        .expect("a valid response");
    if let Some(wait) = retry_after {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from(secs));
    }
    resp
}

/// The attempt token as the agent's SDK sent it.
fn token_of<'a>(gw: &Gateway, target: &Target, headers: &'a HeaderMap) -> Option<&'a str> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = || {
        header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
    };
    match target {
        Target::Anthropic => header("x-api-key").map(str::trim).or_else(bearer),
        Target::OpenAi => bearer(),
        Target::Upstream(name) => {
            let h = gw
                .upstreams
                .get(name)?
                .settings
                .auth_header
                .to_ascii_lowercase();
            if h == "authorization" {
                bearer()
            } else {
                header(&h).map(str::trim)
            }
        }
    }
}

/// Request headers not passed on: hop-by-hop ones, the host, the length (recomputed),
/// every place a key may sit (the real key is set instead), and accept-encoding (the
/// answer must come uncompressed for its usage to be read).
fn passes_on(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "authorization"
            | "x-api-key"
            | "accept-encoding"
    )
}

/// Response headers not passed back: hop-by-hop ones.
fn passes_back(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// A reservation that has not been settled yet: settled as unused if the request never
/// got an answer (refused, failed, or the client left while it waited).
struct Pending {
    gw: Arc<Gateway>,
    settlement: Option<Settlement>,
    profile: String,
    limiter: Option<(String, Limits, i64)>,
}

impl Pending {
    /// Settle in the background (the request is over without a body read to its end).
    fn finish(&mut self, model: Option<String>, usage: Option<super::metering::Usage>, sent: bool) {
        if let Some(job) = self.take(model, usage, sent) {
            let _ = self.gw.settle_tx.send(job);
        }
    }

    /// What to settle, once.
    fn take(
        &mut self,
        model: Option<String>,
        usage: Option<super::metering::Usage>,
        sent: bool,
    ) -> Option<SettleJob> {
        let mut s = self.settlement.take()?;
        s.sent = sent;
        if let Some(model) = model {
            s.model = model;
        }
        if let Some(u) = usage {
            s.usage = u;
            match self.gw.prices.cost(&s.model, &u) {
                Some(cost) => s.cost = cost,
                None => s.unpriced = u.total() > 0,
            }
        }
        if sent {
            let model = if s.model.is_empty() {
                "-"
            } else {
                s.model.as_str()
            };
            self.gw
                .metrics
                .count(&self.profile, model, &s.usage, s.cost);
        }
        let limiter = self.limiter.take().map(|(k, l, estimate)| {
            let extra = s.usage.total() as i64 - estimate;
            (k, l, if usage.is_some() { extra } else { 0 })
        });
        Some(SettleJob {
            settlement: s,
            limiter,
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(None, None, false);
    }
}

/// Removes a request from the waiting count when it stops waiting (or is dropped).
struct Waiting<'a>(&'a Gateway);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn forward(
    gw: Arc<Gateway>,
    target: Target,
    api: Api,
    path: String,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let Some(token) = token_of(&gw, &target, &parts.headers).map(str::to_string) else {
        gw.metrics.refuse("no_token");
        return refusal(&target, Refusal::Unauthorized("no API key given".into()));
    };
    if !super::tokens::looks_like_token(&token) {
        gw.metrics.refuse("bad_token");
        return refusal(&target, Refusal::Unauthorized("invalid API key".into()));
    }
    let token_hash = super::tokens::token_hash(&token);
    drop(token);
    let Ok(mut body) = axum::body::to_bytes(body, MAX_REQUEST_BYTES).await else {
        return refusal(&target, Refusal::TooLarge);
    };

    // The model, whether it streams, and (for streamed chat completions) the usage option.
    let mut model = String::new();
    if api != Api::Other
        && let Ok(mut v) = serde_json::from_slice::<Value>(&body)
    {
        model = v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let streams = v.get("stream").and_then(Value::as_bool) == Some(true);
        if api == Api::OpenAiChat
            && streams
            && gw.settings.openai_stream_usage
            && v.pointer("/stream_options/include_usage").is_none()
            && let Some(obj) = v.as_object_mut()
        {
            let opts = obj.entry("stream_options").or_insert_with(|| json!({}));
            if let Some(o) = opts.as_object_mut() {
                o.insert("include_usage".into(), Value::Bool(true));
                body = Bytes::from(serde_json::to_vec(&v).expect("JSON re-serialises"));
            }
        }
    }

    // Who the token belongs to (cached: a binding never changes).
    let cached = gw.bindings.lock().unwrap().get(&token_hash).cloned();
    let binding = match cached {
        Some(b) => b,
        None => match gw.store.binding(&token_hash).await {
            Ok(Some(b)) => {
                let mut cache = gw.bindings.lock().unwrap();
                if cache.len() > 10_000 {
                    cache.clear();
                }
                cache.insert(token_hash.clone(), b.clone());
                b
            }
            Ok(None) => {
                gw.metrics.refuse("unknown_token");
                return refusal(&target, Refusal::Unauthorized("invalid API key".into()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "gateway: Redis unreachable");
                return refusal(
                    &target,
                    Refusal::Unavailable("the gateway cannot reach its store".into()),
                );
            }
        },
    };
    let (job_id, batch, tenant_day) = binding;

    // Admit (or refuse) against the attempt's state and budgets.
    let estimate = if api == Api::Other {
        0
    } else {
        estimate_input_tokens(body.len())
    };
    let reserve_cost = gw.prices.input_cost(&model, estimate);
    let admission = gw
        .store
        .reserve(
            &token_hash,
            &job_id,
            batch.as_deref(),
            tenant_day.as_deref(),
            reserve_cost,
            estimate,
        )
        .await;
    let profile = match admission {
        Ok(Admission::Admitted { profile }) => profile,
        Ok(Admission::Unknown) => {
            gw.metrics.refuse("unknown_token");
            return refusal(&target, Refusal::Unauthorized("invalid API key".into()));
        }
        Ok(Admission::Ended(why)) => {
            gw.metrics.refuse("attempt_ended");
            return refusal(
                &target,
                Refusal::Unauthorized(format!("this key is no longer valid: {why}")),
            );
        }
        Ok(Admission::Budget(why)) => {
            gw.metrics.refuse("budget");
            tracing::info!(%job_id, reason = %why, "gateway: request refused: budget exceeded");
            gw.budget_refused(&token_hash);
            return refusal(&target, Refusal::Budget(why));
        }
        Err(e) => {
            tracing::warn!(error = %e, "gateway: Redis unreachable");
            return refusal(
                &target,
                Refusal::Unavailable("the gateway cannot reach its store".into()),
            );
        }
    };
    let mut pending = Pending {
        gw: gw.clone(),
        settlement: Some(Settlement {
            token_hash,
            job_id,
            batch,
            tenant_day,
            reserved_cost: reserve_cost,
            reserved_tokens: estimate,
            model: model.clone(),
            ..Default::default()
        }),
        profile,
        limiter: None,
    };

    let (pool, limits, base_url): (&KeyPool, Limits, String) = match &target {
        Target::Anthropic => (
            &gw.anthropic,
            limits_of(&gw.settings.anthropic),
            gw.settings.anthropic.base_url.clone(),
        ),
        Target::OpenAi => (
            &gw.openai,
            limits_of(&gw.settings.openai),
            gw.settings.openai.base_url.clone(),
        ),
        Target::Upstream(name) => {
            let u = &gw.upstreams[name];
            (
                &u.keys,
                Limits {
                    requests_per_minute: u.settings.requests_per_minute,
                    tokens_per_minute: 0,
                },
                u.settings.base_url.clone(),
            )
        }
    };
    let url = format!("{}{}", base_url.trim_end_matches('/'), path);
    let family = if model.is_empty() {
        "-".to_string()
    } else {
        model_family(&model)
    };
    let deadline = Instant::now() + Duration::from_secs(gw.settings.max_wait_secs);
    let mut waiting: Option<Waiting> = None;
    let mut limited = 0u32;

    let (response, limiter_key) = loop {
        // A key whose limiter lets this request go now.
        let keys = pool.keys();
        if keys.is_empty() {
            return refusal(
                &target,
                Refusal::Unavailable("no key is configured for this provider".into()),
            );
        }
        // A slot may be reserved as far ahead as the request may still wait (once it
        // counts among the waiting: the queue bound applies first).
        let horizon = if waiting.is_some() {
            deadline.saturating_duration_since(Instant::now())
        } else {
            Duration::ZERO
        };
        let (chosen, wait) =
            match choose_key(&gw, &target, &keys, &family, limits, estimate, horizon).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "gateway: Redis unreachable");
                    return refusal(
                        &target,
                        Refusal::Unavailable("the gateway cannot reach its store".into()),
                    );
                }
            };
        let Some((key, limiter_key)) = chosen else {
            let wait = wait.unwrap_or(Duration::from_millis(50));
            if waiting.is_none() {
                if gw.waiting.fetch_add(1, Ordering::Relaxed) >= gw.settings.max_waiting {
                    gw.waiting.fetch_sub(1, Ordering::Relaxed);
                    gw.metrics.refuse("queue_full");
                    return refusal(&target, Refusal::RateLimited(wait));
                }
                waiting = Some(Waiting(&gw));
                gw.metrics.rate_limit_waits.fetch_add(1, Ordering::Relaxed);
                // Now among the waiting: ask again at once, reserving a slot.
                continue;
            }
            if Instant::now() + wait > deadline {
                gw.metrics.refuse("wait_too_long");
                return refusal(&target, Refusal::RateLimited(wait));
            }
            tokio::time::sleep(wait).await;
            continue;
        };
        let sent = send(&gw, &target, &parts, &url, &key, body.clone()).await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                // Never the URL's query or a header: only what failed.
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "cannot connect"
                } else {
                    "failed"
                };
                tracing::warn!(target = ?target, "gateway: upstream request {what}");
                return refusal(
                    &target,
                    Refusal::BadGateway(format!("the upstream request {what}")),
                );
            }
        };
        let status = response.status().as_u16();
        let pause = pause_from(status, response.headers());
        if let Some(pause) = pause
            && let Err(e) = gw
                .limiter
                .observe(&limiter_key, limits, 0, Some(pause))
                .await
        {
            tracing::debug!(error = %e, "gateway: could not record a rate-limit pause");
        }
        if status == 429 {
            gw.metrics.upstream_429.fetch_add(1, Ordering::Relaxed);
            limited += 1;
            let wait = pause.unwrap_or(Duration::from_secs(1));
            if limited <= MAX_429_RETRIES && Instant::now() + wait <= deadline {
                tracing::info!(target = ?target, wait_ms = wait.as_millis() as u64, "gateway: upstream answered 429; the group waits and the request is sent again");
                if waiting.is_none() {
                    gw.waiting.fetch_add(1, Ordering::Relaxed);
                    waiting = Some(Waiting(&gw));
                }
                continue;
            }
        }
        break (response, limiter_key);
    };
    drop(waiting);

    let status = response.status();
    let mut builder = Response::builder().status(status.as_u16());
    for (name, value) in response.headers() {
        // The length goes too: the body is sent chunked, its end held until the spend
        // is recorded (see MeteredBody).
        if passes_back(name) && name != "content-length" {
            builder = builder.header(name, value);
        }
    }
    let streamed = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    pending.limiter =
        (limits.tokens_per_minute > 0).then_some((limiter_key, limits, estimate as i64));
    let meter = Meter::new(if status.is_success() { api } else { Api::Other }, streamed);
    let body = MeteredBody {
        inner: Box::pin(response.bytes_stream()),
        meter: Some(meter),
        pending,
        settling: None,
    };
    builder
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| refusal(&target, Refusal::BadGateway("bad upstream response".into())))
}

fn limits_of(p: &super::config::ProviderSettings) -> Limits {
    Limits {
        requests_per_minute: p.requests_per_minute,
        tokens_per_minute: p.tokens_per_minute,
    }
}

/// The first key (round robin) whose limiter admits the request now, with its limiter's
/// name; else a slot reserved, within `horizon`, on the key whose turn comes first (the
/// request sleeps until it: waiting requests then take every slot the limit allows);
/// else the shortest wait among them.
async fn choose_key(
    gw: &Gateway,
    target: &Target,
    keys: &[Key],
    family: &str,
    limits: Limits,
    tokens: u64,
    horizon: Duration,
) -> Result<(Option<(Key, String)>, Option<Duration>), crate::queue::QueueError> {
    let start = gw.next_key.fetch_add(1, Ordering::Relaxed);
    let mut soonest: Option<(Duration, usize)> = None;
    for i in 0..keys.len() {
        let k = (start + i) % keys.len();
        let name = gw
            .limiter
            .key(&target.limiter_name(), &keys[k].label, family);
        match gw
            .limiter
            .acquire(&name, limits, tokens, Duration::ZERO)
            .await?
        {
            Admit::Now | Admit::After(_) => return Ok((Some((keys[k].clone(), name)), None)),
            Admit::Wait(wait) => {
                if soonest.is_none_or(|(w, _)| wait < w) {
                    soonest = Some((wait, k));
                }
            }
        }
    }
    let Some((wait, k)) = soonest else {
        return Ok((None, None));
    };
    if horizon.is_zero() {
        return Ok((None, Some(wait)));
    }
    let name = gw
        .limiter
        .key(&target.limiter_name(), &keys[k].label, family);
    match gw.limiter.acquire(&name, limits, tokens, horizon).await? {
        Admit::Now => Ok((Some((keys[k].clone(), name)), None)),
        Admit::After(wait) => {
            tokio::time::sleep(wait).await;
            Ok((Some((keys[k].clone(), name)), None))
        }
        Admit::Wait(wait) => Ok((None, Some(wait))),
    }
}

async fn send(
    gw: &Gateway,
    target: &Target,
    parts: &axum::http::request::Parts,
    url: &str,
    key: &Key,
    body: Bytes,
) -> Result<reqwest::Response, reqwest::Error> {
    let mut headers = reqwest::header::HeaderMap::new();
    let upstream_header = match target {
        Target::Upstream(name) => {
            Some(gw.upstreams[name].settings.auth_header.to_ascii_lowercase())
        }
        _ => None,
    };
    for (name, value) in &parts.headers {
        if passes_on(name) && upstream_header.as_deref() != Some(name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    let secret = key.secret.expose();
    let (name, value) = match target {
        Target::Anthropic => ("x-api-key".to_string(), secret.to_string()),
        Target::OpenAi => ("authorization".to_string(), format!("Bearer {secret}")),
        Target::Upstream(_) => {
            let h = upstream_header.clone().unwrap_or_default();
            let v = if h == "authorization" {
                format!("Bearer {secret}")
            } else {
                secret.to_string()
            };
            (h, v)
        }
    };
    if let (Ok(name), Ok(mut value)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(&value),
    ) {
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    gw.http
        .request(parts.method.clone(), url)
        .headers(headers)
        .body(body)
        .send()
        .await
}

/// The upstream body on its way back, read by the meter as it passes. When it ends, the
/// request's spend is settled in Redis *before* the end is passed on, so an agent's next
/// request already sees it against the budgets (the answer is sent chunked for that: its
/// length header is dropped). A body dropped early (the client left) is settled in the
/// background.
struct MeteredBody {
    inner: Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>,
    meter: Option<Meter>,
    pending: Pending,
    settling: Option<futures::future::BoxFuture<'static, ()>>,
}

impl MeteredBody {
    fn measured(&mut self) -> Option<SettleJob> {
        let meter = self.meter.take()?;
        let (model, usage) = match meter.finish() {
            Some((m, u)) => (m, Some(u)),
            None => (None, None),
        };
        self.pending.take(model, usage, true)
    }
}

impl Stream for MeteredBody {
    type Item = Result<Bytes, reqwest::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(settling) = self.settling.as_mut() {
            return match std::future::Future::poll(settling.as_mut(), cx) {
                Poll::Ready(()) => {
                    self.settling = None;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            };
        }
        let polled = self.inner.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(m) = self.meter.as_mut() {
                    m.feed(chunk);
                }
            }
            Poll::Ready(None) => {
                if let Some(job) = self.measured() {
                    let gw = self.pending.gw.clone();
                    let mut settling: futures::future::BoxFuture<'static, ()> =
                        Box::pin(async move { super::settle(&gw.store, &gw.limiter, job).await });
                    if std::future::Future::poll(settling.as_mut(), cx).is_pending() {
                        self.settling = Some(settling);
                        return Poll::Pending;
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(job) = self.measured() {
                    let _ = self.pending.gw.settle_tx.send(job);
                }
            }
            Poll::Pending => {}
        }
        polled
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        if let Some(job) = self.measured() {
            let _ = self.pending.gw.settle_tx.send(job);
        }
    }
}
