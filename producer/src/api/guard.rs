//! Request guards, outermost first: [`observe`] (request ID, safety headers, access
//! log), [`authenticate`] (one `Authorization` header; the bearer token; failed
//! attempts throttled per client address), [`browser`] (without a token: what a web
//! page could send is refused), [`read_body`] (the body within `api.body_timeout_secs`
//! and `api.max_body_bytes`). Nothing here logs or echoes a header's value.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HOST, ORIGIN, RETRY_AFTER,
    WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use subtle::ConstantTimeEq as _;

use super::ui::session;
use super::{ApiError, Shared};
use fleet_shared::secret::Secret;
use fleet_shared::settings::ApiRole;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Failed token attempts are counted per client address over this window.
const THROTTLE_WINDOW: Duration = Duration::from_secs(60);
/// Above this many addresses, expired entries are dropped (bounds the map).
const THROTTLE_PRUNE_AT: usize = 10_000;

/// Paths open without a token.
pub fn is_open(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/openapi.json")
}

/// The client's address, when the request came over a socket.
fn client_of(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| *a)
}

/// Request ID (the client's `X-Request-Id` when it is short and plain, else a fresh
/// UUID), `X-Content-Type-Options: nosniff` and `Cache-Control: no-store` on every
/// answer (records and results change; none may be cached), and one info line per
/// request: ID, client address, method, path (not the query), status, latency.
pub async fn observe(req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let client = client_of(&req).map_or_else(|| "-".to_string(), |a| a.to_string());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = Instant::now();
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(X_REQUEST_ID, v);
    }
    tracing::info!(
        request_id = %request_id,
        client = %client,
        %method,
        %path,
        status = response.status().as_u16(),
        latency_ms = format!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
        "request"
    );
    response
}

/// Failed token attempts per client address, in fixed one-minute windows.
pub struct Throttle {
    limit: u32,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Throttle {
    pub fn new(limit: u32) -> Throttle {
        Throttle {
            limit,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds until `ip` may try again, if it used up its failures for this window.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let (since, count) = failures.get(&ip)?;
        let left = THROTTLE_WINDOW
            .checked_sub(now.duration_since(*since))
            .filter(|left| !left.is_zero())?;
        (*count >= self.limit).then(|| left.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// Count a failed attempt from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= THROTTLE_PRUNE_AT {
            failures.retain(|_, (since, _)| now.duration_since(*since) < THROTTLE_WINDOW);
        }
        let entry = failures.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= THROTTLE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// Whether an `Authorization` header carries the token (`Bearer <token>`), compared in
/// constant time.
pub fn bearer_matches(header: Option<&HeaderValue>, token: &Secret) -> bool {
    let Some((scheme, given)) = header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
    else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && bool::from(given.trim().as_bytes().ct_eq(token.expose().as_bytes()))
}

/// Who made a request: the token's name and role (`anonymous`, admin, without
/// authentication). Handlers find it in the request's extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: ApiRole,
}

/// Whether a request only reads: `GET` and `HEAD`. Everything else acts.
pub fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// One `Authorization` header at most (400: which one would count is ambiguous); with
/// `api.token` or `api.tokens`, every route but the health checks needs one of them
/// (401), and an address that failed `api.auth_failures_per_minute` times is refused
/// (429) until its minute is over. Without an `Authorization` header, a dashboard
/// session cookie stands for its token (401 once the session ended; 403 for an action
/// without the session's `X-CSRF-Token`). Then the token's rate limit (429 with
/// `Retry-After`), then its role: a read-only token may only read (403).
pub async fn authenticate(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    if req.headers().get_all(AUTHORIZATION).iter().count() > 1 {
        return ApiError::bad_request(
            "more than one Authorization header: send exactly one, `Authorization: Bearer <token>`",
        )
        .into_response();
    }
    if is_open(req.uri().path()) {
        return next.run(req).await;
    }
    let api = &state.ctx.settings.api;
    let now = Instant::now();
    let caller = if !api.auth_enabled() {
        Caller {
            name: "anonymous".into(),
            role: ApiRole::Admin,
        }
    } else {
        let ip = client_of(&req).map(|a| a.ip());
        if let Some(wait) = ip.and_then(|ip| state.throttle.blocked(ip, now)) {
            return ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many failed token attempts from this address (api.auth_failures_per_minute); try again in {wait}s"
                ),
            )
            .retry_after(wait)
            .into_response();
        }
        // Without an Authorization header, a dashboard session's cookie stands for the
        // token that opened it; an action with it needs the session's CSRF token.
        if !req.headers().contains_key(AUTHORIZATION)
            && let Some(id) = session::cookie_id(req.headers())
        {
            match session_caller(&state, &id, req.method(), req.uri().path(), req.headers()).await {
                Ok(caller) => caller,
                Err(response) => return *response,
            }
        } else {
            match bearer_caller(&state, &req, ip, now) {
                Ok(caller) => caller,
                Err(response) => return *response,
            }
        }
    };
    let per_minute = api
        .credentials
        .iter()
        .find(|c| c.name == caller.name)
        .map_or(api.requests_per_minute, |c| c.requests_per_minute);
    if let Err(wait) = state.rate.take(&caller.name, per_minute, now) {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "token {:?} is over its rate limit of {per_minute} requests per minute (api.requests_per_minute); try again in {wait}s",
                caller.name
            ),
        )
        .retry_after(wait)
        .into_response();
    }
    if caller.role == ApiRole::Read && !is_read(req.method()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "token {:?} is read-only: {} {} needs a token with role \"admin\" (api.tokens)",
                caller.name,
                req.method(),
                req.uri().path()
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// The caller a dashboard session stands for: 401 when the session has ended (or its
/// token is no longer in the settings), 403 when an action lacks its CSRF token.
pub async fn session_caller(
    state: &Shared,
    id: &str,
    method: &Method,
    path: &str,
    headers: &axum::http::HeaderMap,
) -> Result<Caller, Box<Response>> {
    let api = &state.ctx.settings.api;
    let found = session::load(state, id)
        .await
        .map_err(|e| Box::new(e.into_response()))?;
    let Some((session, credential)) =
        found.and_then(|s| s.credential(api).cloned().map(|c| (s, c)))
    else {
        return Err(Box::new(
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the dashboard session has ended (logged out, expired after api.session_ttl_secs, or its token was removed): log in again at /ui/login",
            )
            .into_response(),
        ));
    };
    if !is_read(method) && !session.csrf_matches(headers) {
        return Err(Box::new(
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{method} {path} with the dashboard's session cookie needs the session's {} header (GET /ui/session gives it)",
                    session::CSRF_HEADER
                ),
            )
            .into_response(),
        ));
    }
    Ok(Caller {
        name: credential.name,
        role: credential.role,
    })
}

/// The caller a bearer token stands for, or 401 (counted against the address).
fn bearer_caller(
    state: &Shared,
    req: &Request,
    ip: Option<IpAddr>,
    now: Instant,
) -> Result<Caller, Box<Response>> {
    let api = &state.ctx.settings.api;
    // Every configured token is compared, in constant time each.
    let header = req.headers().get(AUTHORIZATION);
    let matched = api.credentials.iter().fold(None, |found, c| {
        let hit = bearer_matches(header, &c.secret);
        found.or(hit.then_some(c))
    });
    let Some(credential) = matched else {
        if let Some(ip) = ip {
            state.throttle.failed(ip, now);
        }
        // The message never repeats what was sent.
        let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token: send `Authorization: Bearer <token>` with api.token or a token of api.tokens",
            )
            .into_response();
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Err(Box::new(response));
    };
    Ok(Caller {
        name: credential.name.clone(),
        role: credential.role,
    })
}

/// Whether a `Host` header names this machine's loopback: `localhost`, `127.x.x.x` or
/// `[::1]`, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The `Content-Type` essence, lower case.
pub fn essence(value: Option<&HeaderValue>) -> Option<String> {
    value.and_then(|v| v.to_str().ok()).map(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    })
}

/// Without `api.token`, anything a web page in the user's browser could send is
/// refused: requests with an `Origin` (403), a `Host` that is not a loopback name (403,
/// DNS rebinding; unless `api.allow_remote_without_token`), and job or batch bodies
/// that are not JSON (415: `text/plain` and forms need no CORS preflight).
pub async fn browser(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if state.ctx.settings.api.auth_enabled() {
        return next.run(req).await;
    }
    let refuse = |status, message: String| ApiError::new(status, message).into_response();
    if req.headers().contains_key(ORIGIN) {
        return refuse(
            StatusCode::FORBIDDEN,
            "requests carrying an Origin header (sent by web browsers) are refused while api.token is not set; set api.token to call the API from a browser".into(),
        );
    }
    if !state.ctx.settings.api.allow_remote_without_token
        && let Some(host) = req.headers().get(HOST)
        && !host.to_str().is_ok_and(is_loopback_host)
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "the Host header does not name a loopback address (localhost, 127.0.0.1, [::1]); without api.token only those are served".into(),
        );
    }
    if req.method() == Method::POST && matches!(req.uri().path(), "/v1/jobs" | "/v1/batches") {
        let ok: &[&str] = if req.uri().path() == "/v1/jobs" {
            &["application/json"]
        } else {
            &[
                "application/json",
                "application/x-ndjson",
                "application/jsonl",
                "application/jsonlines",
            ]
        };
        let given = essence(req.headers().get(CONTENT_TYPE));
        if !given.as_deref().is_some_and(|t| ok.contains(&t)) {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "{}: without api.token, send {} (text/plain and form bodies are what a web page could send)",
                    match given {
                        Some(t) => format!("Content-Type {t:?} is refused"),
                        None => "no Content-Type".to_string(),
                    },
                    ok.join(" or ")
                ),
            );
        }
    }
    next.run(req).await
}

/// Read the whole body within `api.body_timeout_secs` (408, and the connection is
/// closed) and `api.max_body_bytes` (413), before any handler sees the request.
pub async fn read_body(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let api = &state.ctx.settings.api;
    let limit = api.max_body_bytes;
    let (parts, body) = req.into_parts();
    let read = async {
        let mut stream = body.into_data_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request(format!("the request body could not be read: {e}"))
            })?;
            if bytes.len() + chunk.len() > limit {
                return Err(state.too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    match tokio::time::timeout(Duration::from_secs(api.body_timeout_secs), read).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => e.into_response(),
        Err(_) => {
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {}s (api.body_timeout_secs); nothing was submitted",
                    api.body_timeout_secs
                ),
            )
            .into_response();
            // The rest of the body will not be read: the connection cannot be reused.
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

/// `Retry-After` for an answer.
pub fn retry_after_header(secs: u64) -> (HeaderName, HeaderValue) {
    (RETRY_AFTER, HeaderValue::from(secs.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "127.1.2.3:9",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:8080",
            "10.0.0.1:80",
            "localhost.evil.example",
            "[::2]:80",
            "",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn failures_are_throttled_per_address_per_minute() {
        let t = Throttle::new(3);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.blocked(a, start), None);
            t.failed(a, start);
        }
        assert_eq!(t.blocked(a, start), Some(60));
        assert_eq!(t.blocked(a, start + Duration::from_secs(59)), Some(1));
        assert_eq!(t.blocked(b, start), None, "another address is not blocked");
        let later = start + THROTTLE_WINDOW;
        assert_eq!(t.blocked(a, later), None, "a new minute");
        t.failed(a, later);
        assert_eq!(t.blocked(a, later), None);
    }
}
