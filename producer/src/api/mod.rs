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
//! | `GET /v1/batches/{id}` | the batch's counts |
//! | `GET /healthz`, `GET /readyz` | the process is up; Redis answers PING |
//!
//! Every error is `{"error": "<message>"}`: 400 bad input (nothing written), 401 no or
//! wrong bearer token (when `api.token` is set), 404 unknown job, batch or route, 405
//! wrong method, 413 body over `api.max_body_bytes`, 415 unknown batch content type,
//! 503 Redis unreachable. Each request is logged at info (method, path, status,
//! latency), never its body or headers.

mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, OriginalUri, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fleet_shared::secret::Secret;
use serde_json::{Value, json};
use subtle::ConstantTimeEq as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;
use crate::context::Ctx;
use crate::exit::{self, FAILED, Fail, SUCCESS};

/// After a shutdown signal, connections still open after this long are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What every handler shares.
pub struct ApiState {
    /// Settings and both queues (connected on first use, so the server starts, and
    /// `/readyz` says so, while Redis is down).
    pub ctx: Ctx,
    /// Longest result wait (`api.result_wait_max_secs`).
    pub max_wait: Duration,
    /// Cancelled at SIGTERM/SIGINT: result waits in flight end at once.
    pub shutdown: CancellationToken,
}

type Shared = Arc<ApiState>;

impl ApiState {
    pub fn new(ctx: Ctx) -> Shared {
        Arc::new(ApiState {
            max_wait: Duration::from_secs(ctx.settings.api.result_wait_max_secs),
            ctx,
            shutdown: CancellationToken::new(),
        })
    }

    fn token(&self) -> Option<&Secret> {
        self.ctx.settings.api.token()
    }

    /// The request body, or the error that says why there is none (413 over the limit).
    fn body(&self, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
        body.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the request body is over the limit of {} bytes (api.max_body_bytes); nothing was submitted",
                        self.ctx.settings.api.max_body_bytes
                    ),
                )
            } else {
                ApiError::new(rejection.status(), rejection.body_text())
            }
        })
    }
}

/// An error answer: `{"error": message}` with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
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
        (self.status, axum::Json(json!({"error": self.message}))).into_response()
    }
}

/// Other errors get their status from what they are, as the CLI's exit codes do: a
/// Redis failure is 503, bad input 400, anything else 500.
impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> ApiError {
        let message = exit::render(&err);
        let status = match exit::code_of(&err) {
            exit::USAGE => StatusCode::BAD_REQUEST,
            exit::UNAVAILABLE => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %message, "request failed");
        }
        ApiError::new(status, message)
    }
}

/// The whole API, with its middleware: request log (outermost), authentication, body limit.
pub fn router(state: Shared) -> Router {
    let max_body = state.ctx.settings.api.max_body_bytes;
    Router::new()
        .route("/v1/jobs", post(routes::submit))
        .route("/v1/jobs/{id}", get(routes::status))
        .route("/v1/jobs/{id}/result", get(routes::result))
        .route("/v1/jobs/{id}/cancel", post(routes::cancel))
        .route("/v1/batches", post(routes::submit_batch))
        .route("/v1/batches/{id}", get(routes::batch_status))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(from_fn_with_state(state.clone(), authenticate))
        .layer(from_fn(log_request))
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

/// Paths open without a token.
fn is_open(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
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

async fn authenticate(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(token) = state.token()
        && !is_open(req.uri().path())
        && !bearer_matches(req.headers().get(AUTHORIZATION), token)
    {
        // The message never repeats what was sent.
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token: send `Authorization: Bearer <api.token>`",
        )
        .into_response();
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(req).await
}

/// One info line per request: method, path (not the query string), status, latency.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    tracing::info!(
        %method,
        %path,
        status = response.status().as_u16(),
        latency_ms = format!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
        "request"
    );
    response
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
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Fail::new(
            FAILED,
            format!("cannot listen on {addr} (api.listen or --listen): {e}"),
        )
    })?;
    let local = listener.local_addr().context("reading the bound address")?;
    let state = ApiState::new(ctx);
    let auth = state.token().is_some();
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
    let server = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tokio::select! {
        served = server => served.context("serving HTTP")?,
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!(
            grace_secs = SHUTDOWN_GRACE.as_secs(),
            "connections still open after the grace period; exiting anyway"
        ),
    }
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
