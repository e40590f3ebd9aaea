//! The handlers. Each checks its input first (400, nothing written), then does what
//! the matching CLI command does, through the same functions.

use std::time::Duration;

use anyhow::Context as _;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fleet_shared::job::JobId;
use fleet_shared::job::batch::{parse_batch, parse_batch_array, parse_job};
use fleet_shared::results::JobRecord;
use serde::Deserialize;
use serde_json::{Value, json};

use super::openapi::ErrorBody;
use super::{ApiError, Shared, limits};
use crate::commands::batch::submit_batch as enqueue_batch;
use crate::commands::cancel::{cancel_job, cancel_json};
use crate::commands::inspect::ending;
use crate::context::{parse_id, unknown_job};
use crate::exit::{FAILED, Fail, SUCCESS};
use crate::output::{BatchItem, batch_json, error_text, record_json};

/// How long `/readyz` gives Redis to connect and answer.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// A job ID from the path: 400 when malformed.
pub(super) fn job_id(path: Result<Path<String>, PathRejection>) -> Result<JobId, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    parse_id(&raw).map_err(|e| ApiError::bad_request(e.message))
}

/// Query parameters: unknown or malformed ones are refused (400).
pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body(content = Object, description = "a job object, as a JSON Lines batch line: query, agent, agent_id, ephemeral, max_attempts, attempt_timeout_secs, deadline_secs, backoff_base_ms, backoff_cap_ms, idempotency_key, metadata, max_turns, max_budget_usd, max_tokens, cache"),
    responses((status = 201, description = "`{id, existing: false, queue}`", body = Object), (status = 200, description = "its idempotency_key named a job already: `existing: true`", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// `POST /v1/jobs`: one job object, as a JSON Lines batch line.
pub async fn submit(
    State(s): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = s.body(body)?;
    let settings = &s.ctx.settings;
    let (agent, limits) = (settings.default_agent.clone(), settings.limits());
    // A body can be megabytes of JSON: parsed on a blocking thread.
    let spec = tokio::task::spawn_blocking(move || {
        parse_job(&bytes, &agent, &limits)
            .map_err(|e| ApiError::bad_request(format!("invalid job: {e}")))
    })
    .await
    .context("parsing the job")??;
    let queue = &s.queues().await?.research;
    // One script: on a timeout the job was written whole or not at all.
    let (id, existing) = s
        .redis(async {
            let (id, existing) = queue
                .enqueue(spec.clone())
                .await
                .context("submitting the job")?;
            fleet_shared::pool::expect_submitted(&s.ctx.settings.redis, &[(id, &spec)])
                .await
                .context("queueing the job for its agent")?;
            Ok((id, existing))
        })
        .await?;
    let status = if existing {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        [(LOCATION, format!("/v1/jobs/{id}"))],
        Json(json!({"id": id, "existing": existing, "queue": "research"})),
    )
        .into_response())
}

/// The two batch body formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchFormat {
    /// `application/json`: an array of job objects.
    JsonArray,
    /// `application/x-ndjson`, `application/jsonl`, `text/plain`: what `fleet batch` reads.
    Lines,
}

/// The batch format a `Content-Type` names; 415 otherwise.
pub fn batch_format(content_type: Option<&HeaderValue>) -> Result<BatchFormat, ApiError> {
    let essence = content_type.and_then(|v| v.to_str().ok()).map(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    match essence.as_deref() {
        Some("application/json") => Ok(BatchFormat::JsonArray),
        Some(
            "application/x-ndjson" | "application/jsonl" | "application/jsonlines" | "text/plain",
        ) => Ok(BatchFormat::Lines),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "{}: send application/json (an array of job objects), or application/x-ndjson or text/plain (one query or JSON object per line, as `fleet batch` reads)",
                match other {
                    Some(t) => format!("unsupported Content-Type {t:?}"),
                    None => "no Content-Type".to_string(),
                }
            ),
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchQuery {
    /// Agent profile for jobs that name none (as `fleet batch --agent`).
    agent: Option<String>,
}

#[utoipa::path(post, path = "/v1/batches", tag = "batches",
    params(("agent" = Option<String>, Query, description = "agent profile for jobs that name none")),
    request_body(content = Object, description = "application/json: an array of job objects; application/x-ndjson (or text/plain with a token): `fleet batch` lines"),
    responses((status = 201, description = "`{batch_id, count, job_ids}`", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// `POST /v1/batches[?agent=NAME]`: all or nothing.
pub async fn submit_batch(
    State(s): State<Shared>,
    headers: HeaderMap,
    q: Result<Query<BatchQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let format = batch_format(headers.get(CONTENT_TYPE))?;
    let q = query(q)?;
    let bytes = s.body(body)?;
    let settings = &s.ctx.settings;
    let agent = q.agent.unwrap_or_else(|| settings.default_agent.clone());
    let max_jobs = settings.api.max_batch_jobs;
    let limits = settings.limits();
    // Parsing a large body takes long enough to stall the async threads: on a blocking
    // thread, after a cheap count that refuses an oversized batch before it is built.
    let specs = tokio::task::spawn_blocking(move || {
        let count = match format {
            BatchFormat::JsonArray => limits::count_array_items(&bytes, max_jobs),
            BatchFormat::Lines => limits::count_lines(&bytes, max_jobs),
        };
        if count > max_jobs {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the batch is over the limit of {max_jobs} jobs (api.max_batch_jobs); nothing was submitted: split it"
                ),
            ));
        }
        let parse = match format {
            BatchFormat::JsonArray => parse_batch_array,
            BatchFormat::Lines => parse_batch,
        };
        parse(&bytes, &agent, &limits).map_err(|e| {
            ApiError::bad_request(format!("invalid batch (nothing was submitted): {e}"))
        })
    })
    .await
    .context("parsing the batch")??;
    let queue = s.queues().await?.research.clone();
    // Refuse at once, rather than after the queue's retries, while Redis is away.
    s.redis(async {
        let mut conn = queue.connection();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| Fail::unavailable(format!("Redis does not answer PING: {e}")).into())
    })
    .await?;
    // The enqueue runs in a task of its own, which the request only awaits: a client
    // that goes away (timeout, closed connection), or SIGTERM, does not cut the batch
    // in two (`serve` waits for these tasks before it exits).
    let count = specs.len();
    let redis = s.ctx.settings.redis.clone();
    let submitted = s
        .batches
        .spawn(async move {
            let submitted = enqueue_batch(&queue, &redis, specs).await;
            match &submitted {
                Ok(b) => tracing::info!(batch = %b.batch_id, count, "batch submitted"),
                Err(e) => tracing::warn!(count, error = %crate::exit::render(e), "batch failed"),
            }
            submitted
        })
        .await
        .context("enqueueing the batch")??;
    Ok((
        StatusCode::CREATED,
        [(LOCATION, format!("/v1/batches/{}", submitted.batch_id))],
        Json(json!({
            "batch_id": submitted.batch_id,
            "count": submitted.ids.len(),
            "job_ids": submitted.ids,
        })),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "job ID")),
    responses((status = 200, description = "the record, as `fleet --json status` prints it", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// `GET /v1/jobs/{id}`: the record, as `fleet status --json` prints it.
pub async fn status(
    State(s): State<Shared>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = job_id(path)?;
    let queues = s.queues().await?;
    let (kind, record) = s
        .redis(queues.lookup(&id))
        .await?
        .ok_or_else(|| ApiError::not_found(unknown_job(&id)))?;
    Ok(Json(record_json(kind, &record)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultQuery {
    /// Seconds to wait for the job to end (capped at `api.result_wait_max_secs`).
    wait: Option<u64>,
}

#[utoipa::path(get, path = "/v1/jobs/{id}/result", tag = "jobs",
    params(("id" = String, Path, description = "job ID"), ("wait" = Option<u64>, Query, description = "seconds to wait for the job to end (at most api.result_wait_max_secs)")),
    responses((status = 200, description = "`{id, query, status: succeeded, answer, output, error: null}`", body = Object), (status = 202, description = "not ended: `{id, status, attempts, max_attempts}`", body = Object), (status = 409, description = "ended without an answer: `{error, id, status, detail}`", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// `GET /v1/jobs/{id}/result[?wait=SECONDS]`.
pub async fn result(
    State(s): State<Shared>,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<ResultQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = job_id(path)?;
    let wait = query(q)?
        .wait
        .map(Duration::from_secs)
        .unwrap_or_default()
        .min(s.max_wait);
    let queues = s.queues().await?;
    let (kind, mut record) = s
        .redis(queues.lookup(&id))
        .await?
        .ok_or_else(|| ApiError::not_found(unknown_job(&id)))?;
    if !record.status.is_final() && !wait.is_zero() {
        let key = id.to_string();
        let deadline = tokio::time::Instant::now() + wait;
        let waiting = s.waiters.register(queues, &key).map_err(|full| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{} result waits are in flight already (api.max_waits); try again, or ask without ?wait",
                    full.max
                ),
            )
            .retry_after(1)
        })?;
        tracing::debug!(job = %id, wait_secs = wait.as_secs(), "waiting for the job to end");
        let queue = queues.get(kind);
        // Registered first, then read: an end between the two is not missed.
        loop {
            record = s
                .redis(async {
                    queue
                        .job_record(&key)
                        .await
                        .with_context(|| format!("waiting for job {key}"))
                })
                .await?
                .ok_or_else(|| ApiError::not_found(unknown_job(&id)))?;
            if record.status.is_final() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                _ = waiting.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                // Shutting down: answer with where the job is now.
                _ = s.shutdown.cancelled() => {}
            }
            if s.shutdown.is_cancelled() {
                record = s
                    .redis(async { Ok(queue.job_record(&key).await?) })
                    .await?
                    .ok_or_else(|| ApiError::not_found(unknown_job(&id)))?;
                break;
            }
        }
    }
    // A large answer stored in chunks is streamed (answer_stream.rs).
    if let Some(streamed) = super::answer_stream::stored_answer_response(queues.get(kind), &record)
    {
        return Ok(streamed);
    }
    Ok(result_response(&record))
}

/// How a job's result reads over HTTP: 200 and the answer (what `fleet batch --wait
/// --json` prints per job) when it succeeded; 409 and the error when it ended without
/// one (dead, cancelled, failed); 202 and its status while it has not ended.
pub fn result_response(record: &JobRecord) -> Response {
    match ending(record.status) {
        SUCCESS => (
            StatusCode::OK,
            Json(BatchItem::new(record.id.clone(), Some(record)).to_json()),
        )
            .into_response(),
        FAILED => (
            StatusCode::CONFLICT,
            Json(json!({
                "error": format!("job {} ended {}", record.id, error_text(record)),
                "id": record.id,
                "status": record.status,
                "detail": record.error,
            })),
        )
            .into_response(),
        _ => (
            StatusCode::ACCEPTED,
            Json(json!({
                "id": record.id,
                "status": record.status,
                "attempts": record.attempts,
                "max_attempts": record.max_attempts,
            })),
        )
            .into_response(),
    }
}

#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path, description = "job ID")),
    responses((status = 200, description = "`{id, queue, outcome, status}` as `fleet --json cancel`", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// `POST /v1/jobs/{id}/cancel`: what `fleet cancel --json` prints.
pub async fn cancel(
    State(s): State<Shared>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = job_id(path)?;
    let queues = s.queues().await?;
    // One script: on a timeout the job was cancelled or not; asking again is harmless.
    let (kind, outcome) = s
        .redis(cancel_job(queues, &id))
        .await?
        .ok_or_else(|| ApiError::not_found(unknown_job(&id)))?;
    Ok(Json(cancel_json(&id, kind, &outcome)))
}

#[utoipa::path(get, path = "/v1/batches/{id}", tag = "batches", params(("id" = String, Path, description = "batch ID")),
    responses((status = 200, description = "`{batch_id, total, finished, counts}`", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// `GET /v1/batches/{id}`: how many of its jobs are in each status.
pub async fn batch_status(
    State(s): State<Shared>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let id = uuid::Uuid::parse_str(raw.trim())
        .map_err(|_| ApiError::bad_request(format!("not a batch ID (expected a UUID): {raw:?}")))?;
    let queue = &s.queues().await?.research;
    let record = s
        .redis(async {
            queue
                .batch_record(&id.to_string())
                .await
                .context("reading the batch record")
        })
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no batch with ID {id} (never submitted here, or its record expired after queue.result_ttl_secs)"
            ))
        })?;
    Ok(Json(batch_json(&record)))
}

#[utoipa::path(get, path = "/healthz", tag = "meta", security(()), responses((status = 200, description = "`{status: ok}`", body = Object)))]
/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "meta", security(()), responses((status = 200, description = "`{status: ready}`", body = Object), (status = 503, body = ErrorBody)))]
/// `GET /readyz`: Redis answers PING (and the server is not shutting down).
pub async fn readyz(State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    let unavailable = |m: String| ApiError::unavailable(m);
    if s.shutdown.is_cancelled() {
        return Err(unavailable("shutting down".into()));
    }
    let ping = async {
        let queues = s.ctx.queues().await?;
        let mut conn = queues.research.connection();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .context("PING")?;
        anyhow::Ok(())
    };
    // The details name the Redis host: the log gets them, the answer does not.
    match tokio::time::timeout(READY_TIMEOUT, ping).await {
        Ok(Ok(())) => Ok(Json(json!({"status": "ready"}))),
        Ok(Err(e)) => {
            tracing::warn!(error = %crate::exit::render(&e), "/readyz: Redis does not answer");
            Err(unavailable("Redis does not answer".into()))
        }
        Err(_) => Err(unavailable(format!(
            "Redis did not answer PING within {}s",
            READY_TIMEOUT.as_secs()
        ))),
    }
}
