//! `GET /v1/jobs/{id}/events`: a job's live events as Server-Sent Events, until the
//! job has ended.
//!
//! Each stream entry is one SSE event: `id:` the entry ID, `event:` its kind
//! (`attempt_started`, `stdout`, `stderr`, `agent`, `dropped`, `attempt_ended`),
//! `data:` the event as JSON (what `fleet watch --json` prints). A client that
//! reconnects with `Last-Event-ID` gets the events after that one: none lost, none
//! repeated. After the job's final status and every event before it, one `end` event
//! (`data: {"status": …}`, no ID) and the response ends. While nothing happens, a
//! comment every `events.keepalive_secs` keeps proxies from closing the connection.
//!
//! Each open stream holds one of the `api.max_waits` waits (it learns of the job's end
//! from the shared `done` subscriber, `waiters.rs`) and one Redis connection of its own
//! for `XREAD BLOCK`; past the cap, 503 with `Retry-After`. A Redis failure mid-stream
//! ends the response (the client resumes with `Last-Event-ID`); so does SIGTERM.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use fleet_shared::events::reader::{Follow, Step};
use fleet_shared::events::{Event, is_entry_id};
use fleet_shared::results::JobStatus;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::waiters::Wait;
use super::{ApiError, Shared, routes};
use crate::context::unknown_job;

#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path, description = "job ID"), ("Last-Event-ID" = Option<String>, Header, description = "resume after this event")),
    responses((status = 200, description = "Server-Sent Events until the job ends, then `event: end`", content_type = "text/event-stream", body = String),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody), (status = 503, body = super::openapi::ErrorBody)))]
/// `GET /v1/jobs/{id}/events` (see the module comment).
pub async fn events(
    State(s): State<Shared>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = routes::job_id(path)?;
    let after = match headers.get("last-event-id") {
        None => None,
        Some(value) => {
            let value = value.to_str().unwrap_or_default().trim();
            if !is_entry_id(value) {
                return Err(ApiError::bad_request(
                    "Last-Event-ID is not an event ID (expected <milliseconds>-<sequence>, as sent in `id:`)",
                ));
            }
            Some(value.to_string())
        }
    };
    let queues = s.queues().await?;
    let (kind, _) = s
        .redis(queues.lookup(&id))
        .await?
        .ok_or_else(|| ApiError::not_found(unknown_job(&id)))?;
    let key = id.to_string();
    // Registered before `Follow::start` reads the status: an end between is not missed.
    let wait = s.waiters.register(queues, &key).map_err(|full| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} result waits and event streams are open already (api.max_waits); try again",
                full.max
            ),
        )
        .retry_after(1)
    })?;
    let block = Duration::from_secs(s.ctx.settings.events.keepalive_secs);
    let queue = queues.get(kind).clone();
    let follow = s
        .redis(async { Ok(Follow::start(queue, &key, after, block).await?) })
        .await?;
    tracing::debug!(job = %key, "streaming events");
    let stream = futures::stream::unfold(
        Streaming {
            follow,
            wait,
            shutdown: s.shutdown.clone(),
            pending: VecDeque::new(),
            finished: false,
        },
        Streaming::next,
    );
    Ok(Sse::new(stream).into_response())
}

/// The state of one response.
struct Streaming {
    follow: Follow,
    wait: Wait,
    shutdown: CancellationToken,
    pending: VecDeque<SseEvent>,
    finished: bool,
}

impl Streaming {
    async fn next(mut self) -> Option<(Result<SseEvent, Infallible>, Streaming)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.finished {
                return None;
            }
            let step = tokio::select! {
                step = self.follow.next(self.wait.changed()) => step,
                _ = self.shutdown.cancelled() => {
                    self.finished = true;
                    continue;
                }
            };
            match step {
                Ok(Step::Events(events)) => self.pending.extend(events.iter().map(sse_event)),
                Ok(Step::Idle) => {
                    return Some((Ok(SseEvent::default().comment("keep-alive")), self));
                }
                Ok(Step::End(status)) => {
                    self.pending.push_back(end_event(status));
                    self.finished = true;
                }
                Err(e) => {
                    // The client reconnects with Last-Event-ID and loses nothing.
                    tracing::warn!(error = %e, after = self.follow.last_id(), "event stream: Redis failed; ending the response");
                    self.finished = true;
                }
            }
        }
    }
}

/// One stream entry as an SSE event (pure).
pub fn sse_event(event: &Event) -> SseEvent {
    // `event:` must be one line: a kind that is not a plain name is sent as "message".
    let kind = if !event.kind.is_empty()
        && event
            .kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        event.kind.as_str()
    } else {
        "message"
    };
    SseEvent::default()
        .id(event.id.clone())
        .event(kind)
        .data(serde_json::to_string(event).unwrap_or_default())
}

/// The last event of a response: how the job ended.
fn end_event(status: Option<JobStatus>) -> SseEvent {
    SseEvent::default()
        .event("end")
        .data(json!({"status": status}).to_string())
}
