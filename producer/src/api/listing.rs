//! Listings over HTTP: jobs by filter (`GET /v1/jobs`), a batch's results a page at
//! a time (`GET /v1/batches/{id}/results`), and the workers with the leases they hold
//! (`GET /v1/workers`).
//!
//! Jobs and batch members are read from the listing indexes the queue scripts keep
//! (`queue/index.rs`, `queue/listing.rs`): a filter on status, batch, agent or
//! creation time alone is exact at any size. Conditions on top of the index a page is
//! read from (a second of those, `meta`) are checked on the records, at most
//! `api.list_scan_max` index entries per queue and page; every answer says how many
//! entries it `scanned` and whether the bound cut the page short (`truncated`; its
//! `next_cursor` goes on from there). Pages follow one another by job ID (UUID v7:
//! creation order), so a cursor stays good while jobs come and go.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use fleet_shared::job::{JobId, JobPayload, QueueKind};
use fleet_shared::queue::listing::{JobFilter, JobPage, JobSummary, Order, merge_pages};
use fleet_shared::results::JobStatus;
use serde::Serialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::openapi::ErrorBody;
use super::routes::query;
use super::{ApiError, Shared};
use crate::context::parse_id;
use crate::output::describe_lifecycle;

/// Most jobs per page.
const MAX_PAGE: usize = 1000;

/// `GET /v1/jobs` parameters (all optional; every one given must hold). Unknown ones
/// are refused. `status`, `batch`, `agent` and `since`/`until` are answered from
/// indexes (exact); with two of status/batch/agent, or `meta`, the others are checked
/// on the records of the index's entries, at most `api.list_scan_max` per page.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the parameters; they are read as pairs (`meta` repeats).
pub struct JobListQuery {
    /// Statuses, comma-separated: `queued,running,retrying,succeeded,dead,failed,cancelled`.
    status: Option<String>,
    /// `research` or `lifecycle` (default: both).
    queue: Option<String>,
    /// Jobs of this batch.
    batch: Option<String>,
    /// Jobs for this agent profile, or addressed to this agent ID.
    agent: Option<String>,
    /// Created at or after (Unix ms).
    since: Option<u64>,
    /// Created before (Unix ms).
    until: Option<u64>,
    /// `KEY=VALUE` the job's metadata must hold; repeat for more (checked on the records
    /// of an index page: bounded by `api.list_scan_max`, see `truncated`).
    meta: Option<String>,
    /// `newest` (default) or `oldest` first.
    order: Option<String>,
    /// At most this many (1–1000, default 50).
    limit: Option<usize>,
    /// `next_cursor` of the page before.
    cursor: Option<String>,
}

/// One job in a listing: its record without attempt history or result.
#[derive(Serialize, ToSchema)]
pub struct JobItem {
    pub id: String,
    pub queue: String,
    pub status: String,
    pub attempts: u32,
    pub max_attempts: u32,
    /// Unix ms.
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub worker: Option<String>,
    pub batch: Option<String>,
    /// The agent profile (research jobs; lifecycle jobs that name one).
    pub agent: Option<String>,
    /// The persistent agent a job is addressed to.
    pub agent_id: Option<String>,
    /// A research job's query.
    pub query: Option<String>,
    /// A lifecycle job's operation in words.
    pub operation: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// The last error `{class, message, attempt}`, unless it succeeded.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
}

impl JobItem {
    fn new(kind: QueueKind, j: JobSummary) -> JobItem {
        let (agent, agent_id) = j.agent();
        let (agent, agent_id) = (agent.map(str::to_string), agent_id.map(str::to_string));
        let (query, operation) = match j.spec.as_ref().map(|s| &s.payload) {
            Some(JobPayload::Research(r)) => (Some(r.query.clone()), None),
            Some(JobPayload::Lifecycle(l)) => (None, Some(describe_lifecycle(l))),
            None => (None, None),
        };
        JobItem {
            queue: kind.as_str().into(),
            status: j.status.as_str().into(),
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            worker: j.worker,
            batch: j.batch,
            metadata: j.spec.map(|s| s.options.metadata).unwrap_or_default(),
            error: j.error,
            agent,
            agent_id,
            query,
            operation,
            id: j.id,
        }
    }
}

/// A page of jobs.
#[derive(Serialize, ToSchema)]
pub struct JobListPage {
    pub jobs: Vec<JobItem>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
    /// Index entries looked at, both queues together.
    pub scanned: u64,
    /// A condition checked on the records (a second of status/batch/agent, or `meta`)
    /// looked at `api.list_scan_max` entries before the page was full: more jobs may
    /// match; `next_cursor` goes on from the last entry looked at.
    pub truncated: bool,
    /// The bound: `api.list_scan_max`, per queue and page.
    pub scan_max: usize,
}

/// A listing request, read from its query string.
struct ListRequest {
    filter: JobFilter,
    kinds: Vec<QueueKind>,
    order: Order,
    limit: usize,
    cursor: Option<JobId>,
}

/// Read the pairs of a query string into a filter, order, limit and cursor.
fn parse_list_query(
    pairs: Vec<(String, String)>,
    batch_only: bool,
) -> Result<ListRequest, ApiError> {
    let mut filter = JobFilter::default();
    let mut kinds = QueueKind::ALL.to_vec();
    let mut order = if batch_only {
        Order::OldestFirst
    } else {
        Order::NewestFirst
    };
    let (mut limit, mut cursor) = (50, None);
    let ms = |k: &str, v: &str| {
        v.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("{k}: not a time in Unix milliseconds: {v:?}"))
        })
    };
    for (k, v) in pairs {
        match (k.as_str(), batch_only) {
            ("limit", _) => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("limit: must be 1 to {MAX_PAGE}, got {v:?}"))
                    })?
            }
            ("cursor", _) => {
                cursor = Some(parse_id(&v).map_err(|_| {
                    ApiError::bad_request(format!(
                        "cursor: not a cursor of this listing (pass next_cursor as it came): {v:?}"
                    ))
                })?)
            }
            ("status", false) => {
                for s in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    filter.statuses.push(JobStatus::parse(s).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "status: not a job status: {s:?} (queued, running, retrying, succeeded, dead, failed, cancelled)"
                        ))
                    })?);
                }
            }
            ("queue", false) => {
                kinds = match v.as_str() {
                    "research" => vec![QueueKind::Research],
                    "lifecycle" => vec![QueueKind::Lifecycle],
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "queue: must be research or lifecycle, got {v:?}"
                        )));
                    }
                }
            }
            ("batch", false) => filter.batch = Some(v),
            ("agent", false) => filter.agent = Some(v),
            ("since", false) => filter.since_ms = Some(ms("since", &v)?),
            ("until", false) => filter.until_ms = Some(ms("until", &v)?),
            ("meta", false) => {
                let (key, value) = v.split_once('=').ok_or_else(|| {
                    ApiError::bad_request(format!("meta: must be KEY=VALUE, got {v:?}"))
                })?;
                filter.metadata.push((key.to_string(), value.to_string()));
            }
            ("order", false) => {
                order = match v.as_str() {
                    "newest" => Order::NewestFirst,
                    "oldest" => Order::OldestFirst,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "order: must be newest or oldest, got {v:?}"
                        )));
                    }
                }
            }
            (other, _) => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{other}`"
                )));
            }
        }
    }
    Ok(ListRequest {
        filter,
        kinds,
        order,
        limit,
        cursor,
    })
}

/// A listing needs the listing indexes (`queue.listing_indexes`): 409 without them,
/// before anything else is asked.
fn indexes_on(s: &Shared) -> Result<(), ApiError> {
    if s.ctx.settings.queue.listing_indexes {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "listing jobs needs the listing indexes, and this deployment runs without them \
         (queue.listing_indexes = false); a job is still found by its ID: GET /v1/jobs/{id}",
    ))
}

/// One page over `kinds` together: each queue's page, merged in `order`.
async fn page(
    s: &Shared,
    filter: &JobFilter,
    kinds: &[QueueKind],
    order: Order,
    limit: usize,
    cursor: Option<JobId>,
) -> Result<(Vec<(QueueKind, JobSummary)>, JobPage), ApiError> {
    let queues = s.queues().await?;
    let scan_max = s.ctx.settings.api.list_scan_max;
    let cursor = cursor.map(|c| c.to_string());
    let mut total = JobPage::default();
    let mut parts = Vec::with_capacity(kinds.len());
    for kind in kinds {
        let q = queues.get(*kind);
        let p = s
            .redis(async {
                Ok(
                    q.list_jobs_all(filter, order, cursor.as_deref(), limit, scan_max)
                        .await?,
                )
            })
            .await?;
        total.scanned += p.scanned;
        total.truncated |= p.truncated;
        let jobs: Vec<(QueueKind, JobSummary)> = p.jobs.into_iter().map(|j| (*kind, j)).collect();
        parts.push((jobs, p.next_cursor));
    }
    let (all, next_cursor) = merge_pages(parts, |(_, j)| &j.id, order, limit);
    total.next_cursor = next_cursor;
    total.more = total.next_cursor.is_some();
    Ok((all, total))
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(JobListQuery),
    responses((status = 200, description = "a page of jobs, newest first unless order=oldest", body = JobListPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, description = "the listing indexes are off (queue.listing_indexes)", body = ErrorBody),
        (status = 429, body = ErrorBody)))]
/// `GET /v1/jobs`: jobs by status, queue, batch, agent, creation time and metadata.
pub async fn list(
    State(s): State<Shared>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<JobListPage>, ApiError> {
    indexes_on(&s)?;
    let ListRequest {
        filter,
        kinds,
        order,
        limit,
        cursor,
    } = parse_list_query(query(q)?, false)?;
    let (jobs, p) = page(&s, &filter, &kinds, order, limit, cursor).await?;
    let next_cursor = p.next_cursor;
    Ok(Json(JobListPage {
        jobs: jobs.into_iter().map(|(k, j)| JobItem::new(k, j)).collect(),
        next_cursor,
        scanned: p.scanned,
        truncated: p.truncated,
        scan_max: s.ctx.settings.api.list_scan_max,
    }))
}

/// `GET /v1/batches/{id}/results` parameters.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the parameters; they are read as pairs.
pub struct BatchResultsQuery {
    /// At most this many (1–1000, default 50).
    limit: Option<usize>,
    /// `next_cursor` of the page before.
    cursor: Option<String>,
}

/// A page of a batch's results.
#[derive(Serialize, ToSchema)]
pub struct BatchResultsPage {
    pub batch_id: String,
    /// In submission order: `{id, query, status, answer, output, error}` per job, as
    /// `fleet --json batch --wait` prints them (`answer` null until it succeeded).
    #[schema(value_type = Vec<Object>)]
    pub jobs: Vec<Value>,
    pub next_cursor: Option<String>,
    pub scanned: u64,
    pub truncated: bool,
    pub scan_max: usize,
}

#[utoipa::path(get, path = "/v1/batches/{id}/results", tag = "batches",
    params(("id" = String, Path, description = "batch ID"), BatchResultsQuery),
    responses((status = 200, description = "a page of the batch's answers and errors", body = BatchResultsPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the listing indexes are off (queue.listing_indexes)", body = ErrorBody)))]
/// `GET /v1/batches/{id}/results`: each job's answer or error, in submission order.
pub async fn batch_results(
    State(s): State<Shared>,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<BatchResultsPage>, ApiError> {
    indexes_on(&s)?;
    let Path(raw) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let id = uuid::Uuid::parse_str(raw.trim())
        .map_err(|_| ApiError::bad_request(format!("not a batch ID (expected a UUID): {raw:?}")))?
        .to_string();
    let ListRequest {
        mut filter,
        limit,
        cursor,
        ..
    } = parse_list_query(query(q)?, true)?;
    let queue = &s.queues().await?.research;
    let known = s
        .redis(async { Ok(queue.batch_record(&id).await?) })
        .await?
        .is_some();
    if !known {
        return Err(ApiError::not_found(format!(
            "no batch with ID {id} (never submitted here, or its record expired after queue.result_ttl_secs)"
        )));
    }
    filter.batch = Some(id.clone());
    let (jobs, p) = page(
        &s,
        &filter,
        &[QueueKind::Research],
        Order::OldestFirst,
        limit,
        cursor,
    )
    .await?;
    let ids: Vec<JobId> = jobs.iter().filter_map(|(_, j)| j.id.parse().ok()).collect();
    let mut items = Vec::with_capacity(ids.len());
    for id in &ids {
        let key = id.to_string();
        let record = s.redis(async { Ok(queue.job_record(&key).await?) }).await?;
        items.push(crate::output::BatchItem::new(key, record.as_ref()));
    }
    let next_cursor = p.next_cursor;
    Ok(Json(BatchResultsPage {
        batch_id: id,
        jobs: items
            .iter()
            .map(crate::output::BatchItem::to_json)
            .collect(),
        next_cursor,
        scanned: p.scanned,
        truncated: p.truncated,
        scan_max: s.ctx.settings.api.list_scan_max,
    }))
}

/// A route that takes no query parameters refuses any (400), as the others refuse
/// unknown ones.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// A lease a worker holds.
#[derive(Serialize, ToSchema)]
pub struct LeaseItem {
    pub job: String,
    pub queue: String,
    /// Until when the lease lasts unless renewed (Unix ms, Redis clock).
    pub lease_until: u64,
}

/// A worker, and the leases it holds.
#[derive(Serialize, ToSchema)]
pub struct WorkerItem {
    pub name: String,
    /// Its announcement has not expired (it beat within a lease TTL).
    pub live: bool,
    pub leases: Vec<LeaseItem>,
}

/// The workers.
#[derive(Serialize, ToSchema)]
pub struct WorkerList {
    /// Live workers, then those whose death has not been dealt with yet; by name.
    pub workers: Vec<WorkerItem>,
    /// Running jobs looked at (the `active` sets).
    pub scanned: u64,
    /// More jobs were running than `api.list_scan_max`: some leases are not shown.
    pub truncated: bool,
}

#[utoipa::path(get, path = "/v1/workers", tag = "workers",
    responses((status = 200, description = "workers and their leases", body = WorkerList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
/// `GET /v1/workers`: the workers that announced themselves, whether each is live,
/// and the leases (running jobs) each holds.
pub async fn workers(
    State(s): State<Shared>,
    q: Result<Query<NoParams>, QueryRejection>,
) -> Result<Json<WorkerList>, ApiError> {
    query(q)?;
    let queues = s.queues().await?;
    let scan_max = s.ctx.settings.api.list_scan_max;
    let mut by_name: BTreeMap<String, WorkerItem> = BTreeMap::new();
    let (mut scanned, mut truncated) = (0u64, false);
    for kind in QueueKind::ALL {
        let q = queues.get(kind);
        let names = s.redis(async { Ok(q.known_workers().await?) }).await?;
        let live = s.redis(async { Ok(q.live_workers(&names).await?) }).await?;
        for (name, live) in names.into_iter().zip(live) {
            let w = by_name.entry(name.clone()).or_insert_with(|| WorkerItem {
                name,
                live: false,
                leases: Vec::new(),
            });
            w.live |= live;
        }
        let leases = s
            .redis(async { Ok(q.active_leases_all(scan_max + 1).await?) })
            .await?;
        truncated |= leases.len() > scan_max;
        let leases = &leases[..leases.len().min(scan_max)];
        scanned += leases.len() as u64;
        let ids: Vec<String> = leases.iter().map(|(id, _)| id.clone()).collect();
        let jobs = s
            .redis(async { Ok(q.job_summaries_all(&ids).await?) })
            .await?;
        for ((id, until), job) in leases.iter().zip(jobs) {
            // The job's `worker` is `<worker name>` as announced (fetch-6.lua).
            let Some(worker) = job.and_then(|j| j.worker) else {
                continue;
            };
            let w = by_name.entry(worker.clone()).or_insert_with(|| WorkerItem {
                name: worker,
                live: false,
                leases: Vec::new(),
            });
            w.leases.push(LeaseItem {
                job: id.clone(),
                queue: kind.as_str().into(),
                lease_until: *until,
            });
        }
    }
    let mut workers: Vec<WorkerItem> = by_name.into_values().collect();
    workers.sort_by(|a, b| (!a.live, &a.name).cmp(&(!b.live, &b.name)));
    Ok(Json(WorkerList {
        workers,
        scanned,
        truncated,
    }))
}
