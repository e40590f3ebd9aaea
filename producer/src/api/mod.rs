//! `fleet serve`: the producer's HTTP API, for programs. It does what the CLI does,
//! through the same code: validation at the edge (`JobSpec::validate`, the batch
//! parsers of `fleet_shared::job::batch`), the same queue calls, the same JSON.
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/jobs` | 201 `{id, existing, queue}`; 200 when the idempotency key named a job already |
//! | `POST /v1/batches` | 201 `{batch_id, count, job_ids}`; JSON array or `fleet batch` lines |
//! | `GET /v1/jobs/{id}` | the record, as `fleet status --json` prints it |
//! | `GET /v1/jobs/{id}/result[?wait=S]` | 200 answer; 202 not ended; 409 ended without one |
//! | `POST /v1/jobs/{id}/cancel` | what `fleet cancel --json` prints |
//! | `GET /v1/jobs/{id}/events` | the job's live events as Server-Sent Events until it ends (`Last-Event-ID` resumes) |
//! | `GET /v1/batches/{id}` | the batch's counts |
//! | `GET /v1/batches/{id}/results` | each job's answer or error, a page at a time (`listing.rs`) |
//! | `GET /v1/jobs?status=…` | jobs by filter, in cursor pages, from the listing indexes (`listing.rs`) |
//! | `GET /v1/agents[/{agent_id}]`, `POST /v1/agents[/{agent_id}/pause\|resume\|terminate]`, `POST /v1/pool/scale` | agents (`agents.rs`) |
//! | `GET /v1/dead[/{id}]`, `POST /v1/dead/retry\|purge` | dead letters (`dead.rs`) |
//! | `GET /v1/workers` | workers and their leases (`listing.rs`) |
//! | `GET /openapi.json` | the OpenAPI document (`openapi.rs`) |
//! | `GET /v1/queues` | the depths of both queues (ready, running, delayed, dead) |
//! | `GET /v1/stats/history?from=&to=` | per-minute counters: enqueued, succeeded, failed, dead, retried, cost (`stats.rs`) |
//! | `GET /healthz`, `GET /readyz` | the process is up; Redis answers PING |
//! | `/ui/...` | the dashboard (`ui/`): login, session, its pages; the API takes its session cookie |
//! | `POST /webhooks/github` | GitHub deliveries, signed with the webhook secret instead of the bearer token (`github.rs`) |
//!
//! Every error is `{"error": "<message>"}`: 400 bad input (nothing written), 401 no or
//! wrong bearer token (when `api.token` or `api.tokens` is set), 403 a read-only token
//! on an action or a browser's request without a token, 404 unknown job, batch or route, 405 wrong method, 408 body too slow, 413
//! body over `api.max_body_bytes` or batch over `api.max_batch_jobs`, 415 content type,
//! 429 too many failed token attempts or a token over its rate limit, 503 (with `Retry-After`) Redis unreachable or
//! slower than `api.redis_timeout_ms`, or `api.max_waits` waits in flight. Every answer
//! carries `X-Request-Id`, `X-Content-Type-Options: nosniff`, `Cache-Control: no-store`.
//! Each request is logged at info (request ID, client address, method, path, status,
//! latency), never its body or headers.
//!
//! | file | does |
//! |---|---|
//! | `routes.rs` | the handlers |
//! | `github.rs` | the GitHub webhook: signature, replay guard, jobs from deliveries |
//! | `guard.rs` | request ID and access log, token and throttle, browser guards, body timeout |
//! | `waiters.rs` | one Redis subscriber shared by every result wait |
//! | `events.rs` | `GET /v1/jobs/{id}/events`: live events as Server-Sent Events |
//! | `server.rs` | the connection loop: connection cap, header and idle timeout, drain |
//! | `ui/` | the dashboard: embedded assets, login and logout, sessions in Redis |

mod agents;
mod answer_stream;
mod dead;
mod events;
mod github;
mod guard;
mod limits;
mod listing;
pub mod openapi;
mod queues;
mod rate;
mod routes;
mod server;
mod stats;
mod ui;
mod waiters;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, OriginalUri};
use axum::http::{Method, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli::ServeArgs;
use crate::context::{Ctx, Queues};
use crate::exit::{self, FAILED, Fail, SUCCESS};

/// What every handler shares.
pub struct ApiState {
    /// Settings and both queues (connected on first use, so the server starts, and
    /// `/readyz` says so, while Redis is down).
    pub ctx: Ctx,
    /// Longest result wait (`api.result_wait_max_secs`).
    pub max_wait: Duration,
    /// Longest a request waits for Redis (`api.redis_timeout_ms`).
    pub redis_timeout: Duration,
    /// Cancelled at SIGTERM/SIGINT: result waits in flight end at once.
    pub shutdown: CancellationToken,
    /// Result waits and their shared subscriber.
    pub waiters: waiters::Waiters,
    /// Failed token attempts per client address.
    pub throttle: guard::Throttle,
    /// Batch enqueues in flight, each in a task of its own: waited for at shutdown.
    pub batches: TaskTracker,
    /// Requests per token per minute (`rate.rs`).
    pub rate: rate::RateLimiter,
}

type Shared = Arc<ApiState>;

impl ApiState {
    pub fn new(ctx: Ctx) -> Shared {
        let api = &ctx.settings.api;
        let shutdown = CancellationToken::new();
        Arc::new(ApiState {
            max_wait: Duration::from_secs(api.result_wait_max_secs),
            redis_timeout: Duration::from_millis(api.redis_timeout_ms),
            waiters: waiters::Waiters::new(api.max_waits, shutdown.clone()),
            throttle: guard::Throttle::new(api.auth_failures_per_minute),
            batches: TaskTracker::new(),
            rate: rate::RateLimiter::default(),
            shutdown,
            ctx,
        })
    }

    /// 413: the body is over `api.max_body_bytes`.
    fn too_large(&self) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is over the limit of {} bytes (api.max_body_bytes); nothing was submitted",
                self.ctx.settings.api.max_body_bytes
            ),
        )
    }

    /// The request body, or the error that says why there is none (413 over the limit).
    fn body(&self, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
        body.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                self.too_large()
            } else {
                ApiError::new(rejection.status(), rejection.body_text())
            }
        })
    }

    /// Run a Redis call within `api.redis_timeout_ms`: past it, 503 and `Retry-After`
    /// (the queue's own retries would otherwise hold the request for half a minute).
    pub async fn redis<T>(
        &self,
        call: impl Future<Output = anyhow::Result<T>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.redis_timeout, call).await {
            Ok(result) => result.map_err(ApiError::from),
            Err(_) => {
                tracing::warn!(
                    timeout_ms = self.redis_timeout.as_millis() as u64,
                    "Redis did not answer in time"
                );
                Err(ApiError::unavailable(format!(
                    "Redis did not answer within {} ms (api.redis_timeout_ms); try again later",
                    self.redis_timeout.as_millis()
                )))
            }
        }
    }

    /// Both queues (connecting on first use), within `api.redis_timeout_ms`.
    pub async fn queues(&self) -> Result<&Queues, ApiError> {
        self.redis(self.ctx.queues()).await
    }
}

/// An error answer: `{"error": message}` with its status (and `Retry-After`).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds, for `Retry-After`.
    pub retry_after: Option<u64>,
}

/// `Retry-After` of a 503 for Redis.
const REDIS_RETRY_AFTER_SECS: u64 = 5;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
    /// 503 because of Redis, with `Retry-After`.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).retry_after(REDIS_RETRY_AFTER_SECS)
    }
    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(json!({"error": self.message}));
        match self.retry_after {
            Some(secs) => (self.status, [guard::retry_after_header(secs)], body).into_response(),
            None => (self.status, body).into_response(),
        }
    }
}

/// Other errors get their status from what they are, as the CLI's exit codes do: a
/// Redis failure is 503 (its details, which name the Redis host, go to the log only),
/// bad input 400, anything else 500.
impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> ApiError {
        let message = exit::render(&err);
        match exit::code_of(&err) {
            exit::USAGE => ApiError::bad_request(message),
            exit::UNAVAILABLE => {
                tracing::warn!(error = %message, "request failed: Redis unavailable");
                ApiError::unavailable("Redis is unavailable; try again later")
            }
            _ => {
                tracing::warn!(error = %message, "request failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
            }
        }
    }
}

/// The whole API, with its guards (see `guard.rs`), outermost first: request ID and
/// access log, authentication (role and rate limit), browser guards, body read.
pub fn router(state: Shared) -> Router {
    routes_and_router(state).0
}

/// Every route, each recorded with its method (`openapi::Routes`): the API's table.
fn api_routes() -> openapi::Routes {
    use Method as M;
    openapi::Routes::new()
        .on(M::POST, "/v1/jobs", routes::submit)
        .on(M::GET, "/v1/jobs", listing::list)
        .on(M::GET, "/v1/jobs/{id}", routes::status)
        .on(M::GET, "/v1/jobs/{id}/result", routes::result)
        .on(M::POST, "/v1/jobs/{id}/cancel", routes::cancel)
        .on(M::GET, "/v1/jobs/{id}/events", events::events)
        .on(M::POST, "/v1/batches", routes::submit_batch)
        .on(M::GET, "/v1/batches/{id}", routes::batch_status)
        .on(M::GET, "/v1/batches/{id}/results", listing::batch_results)
        .on(M::GET, "/v1/agents", agents::list)
        .on(M::POST, "/v1/agents", agents::launch)
        .on(M::GET, "/v1/agents/{agent_id}", agents::show)
        .on(M::POST, "/v1/agents/{agent_id}/pause", agents::pause)
        .on(M::POST, "/v1/agents/{agent_id}/resume", agents::resume)
        .on(
            M::POST,
            "/v1/agents/{agent_id}/terminate",
            agents::terminate,
        )
        .on(M::POST, "/v1/pool/scale", agents::scale)
        .on(M::GET, "/v1/dead", dead::list)
        .on(M::GET, "/v1/dead/{id}", dead::show)
        .on(M::POST, "/v1/dead/retry", dead::retry)
        .on(M::POST, "/v1/dead/purge", dead::purge)
        .on(M::GET, "/v1/workers", listing::workers)
        .on(M::GET, "/v1/queues", queues::depths)
        .on(M::GET, "/v1/stats/history", stats::history)
        .on(M::GET, "/healthz", routes::healthz)
        .on(M::GET, "/readyz", routes::readyz)
        .on(M::GET, "/openapi.json", openapi::openapi_json)
}

/// The router, and every (method, path) it serves.
pub fn routes_and_router(state: Shared) -> (Router, Vec<(Method, &'static str)>) {
    let max_body = state.ctx.settings.api.max_body_bytes;
    let api = api_routes();
    let webhook = openapi::Routes::new().on(Method::POST, "/webhooks/github", github::webhook);
    let mut served = api.served;
    served.extend(webhook.served);
    let router = api
        .router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(from_fn_with_state(state.clone(), guard::read_body))
        .layer(from_fn_with_state(state.clone(), guard::browser))
        .layer(from_fn_with_state(state.clone(), guard::authenticate))
        .layer(from_fn(guard::observe))
        .with_state(state.clone())
        .merge(webhook_router(webhook.router, state.clone()))
        .merge(ui::router(state));
    (router, served)
}

/// `POST /webhooks/github`: outside the bearer-token and browser guards (GitHub signs
/// its deliveries instead, checked first thing in the handler), with the access log
/// and the same body limit and body timeout.
fn webhook_router(routes: axum::Router<Shared>, state: Shared) -> Router {
    let max_body = state.ctx.settings.api.max_body_bytes;
    routes
        .layer(DefaultBodyLimit::max(max_body))
        .layer(from_fn_with_state(state.clone(), guard::read_body))
        .layer(from_fn(guard::observe))
        .with_state(state)
}

async fn not_found(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::not_found(format!("no such route: {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

/// `fleet serve`: bind, print the address, serve until SIGTERM/SIGINT, exit 0.
pub async fn serve(ctx: Ctx, args: ServeArgs, json: bool) -> anyhow::Result<u8> {
    let listen = match &args.listen {
        Some(flag) => flag.clone(),
        None => ctx.settings.api.listen.clone(),
    };
    let addr: SocketAddr = listen.parse().map_err(|_| {
        Fail::usage(format!(
            "--listen: must be host:port (an IP address), got {listen:?}"
        ))
    })?;
    let api = &ctx.settings.api;
    if !api.auth_enabled() && !addr.ip().is_loopback() && !api.allow_remote_without_token {
        return Err(Fail::usage(format!(
            "refusing to listen on {addr} without api.token: anyone who can reach it could submit and cancel jobs. \
             Set api.token (FLEET_API__TOKEN, at least 16 characters), listen on 127.0.0.1, \
             or set api.allow_remote_without_token = true to accept that"
        ))
        .into());
    }
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Fail::new(
            FAILED,
            format!("cannot listen on {addr} (api.listen or --listen): {e}"),
        )
    })?;
    let local = listener.local_addr().context("reading the bound address")?;
    let state = ApiState::new(ctx);
    let auth = state.ctx.settings.api.auth_enabled();
    // On stdout, for whoever started it (with port 0, the port chosen).
    let announce: Value = json!({"listen": local.to_string(), "auth": auth});
    if json {
        crate::output::emit_json(&announce)?;
    } else {
        crate::output::emit_text(&format!("listening on http://{local}"))?;
    }
    tracing::info!(address = %local, auth, "serving the HTTP API");
    if !auth && !local.ip().is_loopback() {
        tracing::warn!(
            "api.token is not set: anyone who can reach {local} can submit and cancel jobs"
        );
    }
    watch_signals(state.shutdown.clone())?;
    let shutdown = state.shutdown.clone();
    let settings = state.ctx.settings.api.clone();
    server::run(listener, router(state.clone()), &settings, shutdown).await;
    // A batch whose client went away is still enqueued whole (bounded by the queue's
    // own retries while Redis is away).
    state.batches.close();
    if !state.batches.is_empty() {
        tracing::info!(
            batches = state.batches.len(),
            "waiting for batch enqueues in flight"
        );
    }
    state.batches.wait().await;
    tracing::info!("stopped");
    Ok(SUCCESS)
}

fn watch_signals(shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down: no new connections; finishing requests in flight");
        shutdown.cancel();
    });
    Ok(())
}

#[cfg(test)]
mod tests;
