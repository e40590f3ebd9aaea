//! `GET /v1/stats/history`: per-minute counters of both queues (enqueued, succeeded,
//! failed, dead, retried, cost), kept by the queue scripts in Redis for 8 days
//! (`queue/index.rs`). The dashboard's overview chart draws from it.

use anyhow::Context as _;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use fleet_shared::job::QueueKind;
use fleet_shared::queue::index::HistoryMinute;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::openapi::ErrorBody;
use super::routes::query;
use super::{ApiError, Shared};

/// The longest range one request may ask for: the 7 days the history promises.
const MAX_RANGE_MS: u64 = 7 * 24 * 3600 * 1000;
/// The range when none is given: the last hour.
const DEFAULT_RANGE_MS: u64 = 3600 * 1000;

/// `GET /v1/stats/history` parameters.
#[derive(Debug, serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Minutes starting at or after (Unix ms; default: an hour before `to`).
    from: Option<u64>,
    /// Minutes starting at or before (Unix ms; default: now). At most 7 days after `from`.
    to: Option<u64>,
}

/// One minute of history, both queues together.
#[derive(Serialize, ToSchema)]
pub struct HistoryPoint {
    /// Start of the minute (Unix ms, Redis' clock).
    pub minute: u64,
    /// Jobs enqueued.
    pub enqueued: u64,
    /// Jobs that succeeded (served from the result cache too).
    pub succeeded: u64,
    /// Attempts that failed (retried or dead-lettered after, or their lease was lost).
    pub failed: u64,
    /// Jobs dead-lettered.
    pub dead: u64,
    /// Attempts put back to run again (retries, lost leases, dead letters retried).
    pub retried: u64,
    /// What the jobs that succeeded this minute cost, all their attempts (USD, where known).
    pub cost_usd: f64,
}

/// The history of a time range.
#[derive(Serialize, ToSchema)]
pub struct History {
    pub from: u64,
    pub to: u64,
    /// Minutes that counted anything, oldest first (a minute absent counted nothing).
    pub minutes: Vec<HistoryPoint>,
}

#[utoipa::path(get, path = "/v1/stats/history", tag = "meta", params(HistoryQuery),
    responses((status = 200, description = "per-minute counters, oldest first", body = History),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// `GET /v1/stats/history`: throughput, failures and cost per minute.
pub async fn history(
    State(s): State<Shared>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<History>, ApiError> {
    let HistoryQuery { from, to } = query(q)?;
    let to = to.unwrap_or_else(fleet_shared::time::redis_now_ms);
    let from = from.unwrap_or(to.saturating_sub(DEFAULT_RANGE_MS));
    if from > to {
        return Err(ApiError::bad_request(format!(
            "from ({from}) is after to ({to})"
        )));
    }
    if to - from > MAX_RANGE_MS {
        return Err(ApiError::bad_request(format!(
            "from..to spans more than 7 days ({} ms); ask for less",
            to - from
        )));
    }
    let queues = s.queues().await?;
    let mut sum: std::collections::BTreeMap<u64, HistoryMinute> = Default::default();
    // Every shard of every queue keeps its own counters (its scripts write them).
    for (kind, shard) in QueueKind::ALL.into_iter().flat_map(|kind| {
        queues
            .get(kind)
            .shards()
            .into_iter()
            .map(move |q| (kind, q))
    }) {
        let minutes = s
            .redis(async {
                shard
                    .history(from, to)
                    .await
                    .with_context(|| format!("reading the {kind} queue's history"))
            })
            .await?;
        for m in minutes {
            sum.entry(m.minute).or_insert(HistoryMinute {
                minute: m.minute,
                ..Default::default()
            });
            sum.get_mut(&m.minute).expect("inserted").add(&m);
        }
    }
    Ok(Json(History {
        from,
        to,
        minutes: sum
            .into_values()
            .map(|m| HistoryPoint {
                minute: m.minute,
                enqueued: m.enqueued,
                succeeded: m.succeeded,
                failed: m.failed,
                dead: m.dead,
                retried: m.retried,
                cost_usd: (m.cost_usd * 1e6).round() / 1e6,
            })
            .collect(),
    }))
}
