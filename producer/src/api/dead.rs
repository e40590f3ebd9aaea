//! Dead letters over HTTP, as `fleet dead list|show|retry|purge` handle them: the list
//! a page at a time from each queue's `dead` set (in the order they died; a cursor
//! carries on where the last page ended), filtered by queue, time of death and error
//! class; one record; retry or purge by IDs (each checked first: malformed 400,
//! unknown 404, nothing done) or by the same filter (`{}`: every dead job).

use std::collections::BTreeSet;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use fleet_shared::job::{JobId, QueueKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::openapi::ErrorBody;
use super::routes::query;
use super::{ApiError, Shared};
use crate::commands::dead::{Action, DeadOutcome, act_on_all, act_on_ids};
use crate::context::{parse_id, unknown_job};
use crate::output::DeadRow;

/// Most dead letters per page.
const MAX_PAGE: usize = 1000;

/// Which dead letters: `GET /v1/dead` parameters, and the `filter` of retry and purge.
#[derive(Debug, Default, Clone, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadFilter {
    /// `research` or `lifecycle` (default: both).
    pub queue: Option<String>,
    /// Died at or after (Unix ms).
    pub died_since: Option<u64>,
    /// Died before (Unix ms).
    pub died_until: Option<u64>,
    /// The last error's class (`permanent`, `transient`, `timeout`, …): read from each
    /// record, at most `api.list_scan_max` of them.
    pub class: Option<String>,
}

/// `GET /v1/dead` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadListQuery {
    /// `research` or `lifecycle` (default: both).
    queue: Option<String>,
    /// Died at or after (Unix ms).
    died_since: Option<u64>,
    /// Died before (Unix ms).
    died_until: Option<u64>,
    /// The last error's class.
    class: Option<String>,
    /// At most this many (1–1000, default 50).
    limit: Option<usize>,
    /// `next_cursor` of the page before.
    cursor: Option<String>,
}

/// One dead letter, as a row of `fleet --json dead list`.
#[derive(Serialize, ToSchema)]
pub struct DeadRowDoc {
    pub id: String,
    pub queue: String,
    /// When it was dead-lettered (Unix ms).
    pub died_at: u64,
    pub attempts: Option<u32>,
    pub max_attempts: Option<u32>,
    /// The last error's message.
    pub reason: Option<String>,
}

/// A page of dead letters.
#[derive(Serialize, ToSchema)]
pub struct DeadPage {
    /// Dead letters in both queues (or the one asked for), whatever the filter.
    pub total: u64,
    /// In the order they died, oldest first.
    #[schema(value_type = Vec<DeadRowDoc>)]
    pub jobs: Vec<Value>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
    /// Dead letters looked at (more than `jobs` with a `class` filter).
    pub scanned: u64,
    /// A `class` filter stopped at `api.list_scan_max` records: ask again with the cursor.
    pub truncated: bool,
}

/// `POST /v1/dead/retry` and `/purge`: either `ids` or `filter` (`{}`: all).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadSelection {
    /// These jobs (each must exist; those that are not dead are left alone and named).
    pub ids: Option<Vec<String>>,
    /// Every dead job that matches; at most `api.list_scan_max` per request.
    pub filter: Option<DeadFilter>,
}

/// What `retry` did, as `fleet --json dead retry` prints it.
#[derive(Serialize, ToSchema)]
pub struct RetryOutcome {
    pub requeued: u64,
    /// `{id, status}` of the IDs that were not dead letters.
    #[schema(value_type = Vec<Object>)]
    pub not_dead: Vec<Value>,
    /// A filter matched more than `api.list_scan_max`: ask again for the rest.
    pub truncated: bool,
}

/// What `purge` did, as `fleet --json dead purge` prints it.
#[derive(Serialize, ToSchema)]
pub struct PurgeOutcome {
    pub purged: u64,
    #[schema(value_type = Vec<Object>)]
    pub not_dead: Vec<Value>,
    pub truncated: bool,
}

fn kinds(queue: Option<&str>) -> Result<Vec<QueueKind>, ApiError> {
    match queue {
        None => Ok(QueueKind::ALL.to_vec()),
        Some("research") => Ok(vec![QueueKind::Research]),
        Some("lifecycle") => Ok(vec![QueueKind::Lifecycle]),
        Some(other) => Err(ApiError::bad_request(format!(
            "queue: must be research or lifecycle, got {other:?}"
        ))),
    }
}

/// A dead-list cursor: `<died_at>:<job ID>` of the last row of the page before.
fn parse_cursor(raw: &str) -> Result<(u64, String), ApiError> {
    raw.split_once(':')
        .and_then(|(at, id)| Some((at.parse().ok()?, parse_id(id).ok()?.to_string())))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "cursor: not a cursor of this listing (pass next_cursor as it came): {raw:?}"
            ))
        })
}

/// What [`dead_matches`] found.
struct DeadMatches {
    /// (died at, queue, job ID), in death order.
    found: Vec<(u64, QueueKind, String)>,
    scanned: u64,
    /// A class filter stopped at `api.list_scan_max` records.
    truncated: bool,
    /// Where the next page starts, if there is one.
    next: Option<(u64, String)>,
}

/// Up to `limit` dead letters matching `filter` after `after`, in death order, from
/// `kinds`, reading at most `api.list_scan_max` records per queue for a class filter.
async fn dead_matches(
    s: &Shared,
    kinds: &[QueueKind],
    filter: &DeadFilter,
    after: Option<(u64, String)>,
    limit: usize,
) -> Result<DeadMatches, ApiError> {
    let queues = s.queues().await?;
    let scan_max = s.ctx.settings.api.list_scan_max;
    let mut found: Vec<(u64, QueueKind, String)> = Vec::new();
    let (mut scanned, mut truncated, mut more) = (0u64, false, false);
    // The earliest entry a truncated scan reached: nothing after it is known.
    let mut stop: Option<(u64, String)> = None;
    for kind in kinds {
        let q = queues.get(*kind);
        let mut cursor = after.clone();
        let (mut mine, mut mine_scanned) = (0, 0u64);
        // Pages of the dead set; with a class filter, each page's records are read.
        loop {
            let step = if filter.class.is_some() {
                200.min(scan_max.saturating_sub(mine_scanned as usize))
                    .max(1)
            } else {
                limit + 1
            };
            let rows = s
                .redis(async {
                    Ok(q.dead_page_all(
                        filter.died_since,
                        filter.died_until,
                        cursor.as_ref().map(|(a, i)| (*a, i.as_str())),
                        step,
                    )
                    .await?)
                })
                .await?;
            let Some((id, at)) = rows.last().cloned() else {
                break;
            };
            cursor = Some((at, id));
            scanned += rows.len() as u64;
            mine_scanned += rows.len() as u64;
            let keep: Vec<bool> = match &filter.class {
                None => vec![true; rows.len()],
                Some(class) => {
                    let ids: Vec<String> = rows.iter().map(|(id, _)| id.clone()).collect();
                    let summaries = s
                        .redis(async { Ok(q.job_summaries_all(&ids).await?) })
                        .await?;
                    summaries
                        .iter()
                        .map(|j| {
                            j.as_ref()
                                .and_then(|j| j.error.as_ref())
                                .and_then(|e| e.get("class"))
                                .and_then(Value::as_str)
                                == Some(class.as_str())
                        })
                        .collect()
                }
            };
            for ((id, at), keep) in rows.iter().zip(keep) {
                if keep {
                    found.push((*at, *kind, id.clone()));
                    mine += 1;
                }
            }
            if mine > limit {
                more = true;
                break;
            }
            if rows.len() < step {
                break;
            }
            if mine_scanned >= scan_max as u64 {
                truncated = true;
                if let Some(c) = &cursor
                    && stop.as_ref().is_none_or(|st| c < st)
                {
                    stop = Some(c.clone());
                }
                break;
            }
        }
    }
    found.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
    if let Some((at, id)) = &stop {
        found.retain(|(a, _, i)| (a, i) <= (at, id));
    }
    if found.len() > limit {
        found.truncate(limit);
        more = true;
    }
    let next = if more {
        found.last().map(|(at, _, id)| (*at, id.clone()))
    } else {
        stop
    };
    Ok(DeadMatches {
        found,
        scanned,
        truncated,
        next,
    })
}

#[utoipa::path(get, path = "/v1/dead", tag = "dead letters", params(DeadListQuery),
    responses((status = 200, description = "a page of dead letters", body = DeadPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
/// `GET /v1/dead`: dead letters in the order they died, a page at a time.
pub async fn list(
    State(s): State<Shared>,
    q: Result<Query<DeadListQuery>, QueryRejection>,
) -> Result<Json<DeadPage>, ApiError> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be 1 to {MAX_PAGE}, got {limit}"
        )));
    }
    let kinds = kinds(q.queue.as_deref())?;
    let after = q.cursor.as_deref().map(parse_cursor).transpose()?;
    let filter = DeadFilter {
        queue: q.queue,
        died_since: q.died_since,
        died_until: q.died_until,
        class: q.class,
    };
    let DeadMatches {
        found,
        scanned,
        truncated,
        next,
    } = dead_matches(&s, &kinds, &filter, after, limit).await?;
    let queues = s.queues().await?;
    let mut total = 0;
    for kind in &kinds {
        total += s
            .redis(async { Ok(queues.get(*kind).dead_count().await?) })
            .await?;
    }
    let mut jobs = Vec::with_capacity(found.len());
    for (at, kind, id) in &found {
        let record = s
            .redis(async { Ok(queues.get(*kind).job_record(id).await?) })
            .await?;
        jobs.push(DeadRow::new(id.clone(), *kind, *at, record.as_ref()).to_json());
    }
    let next_cursor = next.map(|(at, id)| format!("{at}:{id}"));
    Ok(Json(DeadPage {
        total,
        jobs,
        next_cursor,
        scanned,
        truncated,
    }))
}

#[utoipa::path(get, path = "/v1/dead/{id}", tag = "dead letters",
    params(("id" = String, Path, description = "job ID")),
    responses((status = 200, description = "the record with every attempt, as `fleet --json dead show`", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// `GET /v1/dead/{id}`: the whole record, every attempt in full (a job that is not
/// dead is shown too: its `status` says where it is) — the record `GET /v1/jobs/{id}`
/// gives.
pub async fn show(
    state: State<Shared>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    super::routes::status(state, path).await
}

async fn act(
    s: &Shared,
    body: Result<Bytes, BytesRejection>,
    action: Action,
) -> Result<Json<Value>, ApiError> {
    let bytes = s.body(body)?;
    let sel: DeadSelection = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid body: {e}; send {{\"ids\": [...]}} or {{\"filter\": {{...}}}}"
        ))
    })?;
    let (outcome, truncated) = match (sel.ids, sel.filter) {
        (Some(ids), None) => {
            if ids.is_empty() {
                return Err(ApiError::bad_request("ids: empty; name at least one job"));
            }
            let ids: Vec<JobId> = ids
                .iter()
                .map(|raw| parse_id(raw).map_err(|e| ApiError::bad_request(e.message)))
                .collect::<Result<BTreeSet<_>, _>>()?
                .into_iter()
                .collect();
            let queues = s.queues().await?;
            let outcome = s
                .redis(act_on_ids(queues, &ids, action))
                .await?
                .map_err(|id| {
                    ApiError::not_found(format!("{}; nothing was done", unknown_job(&id)))
                })?;
            (outcome, false)
        }
        (None, Some(filter)) => {
            let kinds = kinds(filter.queue.as_deref())?;
            let queues = s.queues().await?;
            let everything = filter.died_since.is_none()
                && filter.died_until.is_none()
                && filter.class.is_none();
            if everything {
                let done = s.redis(act_on_all(queues, &kinds, action)).await?;
                (
                    DeadOutcome {
                        done,
                        not_dead: Vec::new(),
                    },
                    false,
                )
            } else {
                let bound = s.ctx.settings.api.list_scan_max;
                let DeadMatches {
                    found,
                    truncated,
                    next,
                    ..
                } = dead_matches(s, &kinds, &filter, None, bound).await?;
                let more = next.is_some();
                let ids: Vec<JobId> = found
                    .iter()
                    .filter_map(|(_, _, id)| id.parse().ok())
                    .collect();
                let outcome = s
                    .redis(act_on_ids(queues, &ids, action))
                    .await?
                    // A job that expired meanwhile: nothing to act on.
                    .unwrap_or_default();
                (outcome, truncated || more)
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "send exactly one of ids (job IDs) and filter ({} for every dead job)",
            ));
        }
    };
    let mut doc = outcome.to_json(action);
    doc["truncated"] = truncated.into();
    Ok(Json(doc))
}

#[utoipa::path(post, path = "/v1/dead/retry", tag = "dead letters", request_body = DeadSelection,
    responses((status = 200, description = "as `fleet --json dead retry`", body = RetryOutcome),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// `POST /v1/dead/retry`: requeue dead jobs with a fresh set of attempts.
pub async fn retry(
    State(s): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    act(&s, body, Action::Retry).await
}

#[utoipa::path(post, path = "/v1/dead/purge", tag = "dead letters", request_body = DeadSelection,
    responses((status = 200, description = "as `fleet --json dead purge`", body = PurgeOutcome),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// `POST /v1/dead/purge`: remove dead jobs for good (they end `failed`).
pub async fn purge(
    State(s): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    act(&s, body, Action::Purge).await
}
