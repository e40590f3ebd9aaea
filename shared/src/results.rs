//! The result store: a job's record, keyed by its job ID, and batch records.
//!
//! A job's hash (`…:job:<id>`) holds its status, attempt count, timings, last error
//! and, once it succeeded, its result (the agent's output plus metadata: timings,
//! attempts, worker, agent and sandbox IDs). Its attempt history is a list beside it
//! (`…:attempts:<id>`). Both expire `queue.result_ttl_secs` after the job ends; a
//! dead-lettered job is kept until it is retried or purged.
//!
//! - [`store`]: an answer longer than `results.inline_bytes` is kept apart from the
//!   hash, in chunks (`…:answer:<id>`), and read back as a stream, so the hash stays
//!   small whatever the agent printed.
//! - [`cache`]: the result cache, which answers an identical query from an earlier
//!   job's result without running an agent.

pub mod cache;
pub mod store;

use std::collections::BTreeMap;
use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::job::{JobId, JobSpec};
use crate::queue::{AttemptRecord, QueueError, RedisQueue};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Retrying,
    Succeeded,
    /// Dead-lettered: out of attempts, or a permanent error. Can be retried.
    Dead,
    /// Dead-lettered and then purged: final.
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn parse(s: &str) -> Option<JobStatus> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Retrying => "retrying",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Dead => "dead",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
    /// No further change will happen without someone acting (retrying a dead job).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Dead | JobStatus::Failed | JobStatus::Cancelled
        )
    }
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Retrying,
        JobStatus::Succeeded,
        JobStatus::Dead,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything stored about one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub status: JobStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spec: Option<JobSpec>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// When a retrying job runs next (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The last error: `{class, message, attempt}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
    /// The result of the successful attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    pub history: Vec<AttemptRecord>,
}

/// A batch: how many of its jobs are in each status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub id: String,
    pub total: u64,
    pub counts: BTreeMap<String, u64>,
}

impl BatchRecord {
    pub fn count(&self, status: JobStatus) -> u64 {
        self.counts.get(status.as_str()).copied().unwrap_or(0)
    }
    /// Jobs that reached an end state.
    pub fn finished(&self) -> u64 {
        JobStatus::ALL
            .iter()
            .filter(|s| s.is_final())
            .map(|s| self.count(*s))
            .sum()
    }
}

fn num(map: &BTreeMap<String, String>, key: &str) -> Option<u64> {
    map.get(key).and_then(|v| v.parse().ok())
}

/// Field `i` of the job's `meta` (max_attempts, deadline_at, created_at; enqueue-n.lua),
/// or the separate field `old` of a record written before `meta` existed.
fn meta(map: &BTreeMap<String, String>, i: usize, old: &str) -> Option<u64> {
    match map.get("meta") {
        Some(m) => m.split('\t').nth(i).and_then(|v| v.parse().ok()),
        None => num(map, old),
    }
}

impl RedisQueue {
    /// A job's record, or `None` when no such job exists (or its record expired).
    pub async fn job_record(&self, id: &str) -> Result<Option<JobRecord>, QueueError> {
        if self.routes() {
            // The shard the ID names, else shard 0 (queue/shards.rs).
            return self
                .on_owner(id, Option::is_some, |q| {
                    Box::pin(async move { q.job_record_here(id).await })
                })
                .await;
        }
        self.job_record_here(id).await
    }

    /// [`RedisQueue::job_record`] on this handle's own keys.
    pub(crate) async fn job_record_here(&self, id: &str) -> Result<Option<JobRecord>, QueueError> {
        let (fields, history): (BTreeMap<String, String>, Vec<String>) = self
            .retrying("job_record", || {
                let mut conn = self.connection();
                let mut pipe = redis::pipe();
                pipe.hgetall(self.keys().job(id))
                    .lrange(self.keys().attempts(id), 0, -1);
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        let Some(status) = fields.get("status").and_then(|s| JobStatus::parse(s)) else {
            return Ok(None);
        };
        let json = |k: &str| fields.get(k).and_then(|v| serde_json::from_str(v).ok());
        let mut result: Option<serde_json::Value> = json("result");
        // Long agent metadata is kept with the stored answer (results/store.rs).
        if let Some(output) = result.as_mut().and_then(|r| r.get_mut("output"))
            && output.get("metadata_stored").is_some()
            && let Some(metadata) = self.stored_metadata(id).await?
        {
            output["metadata"] = metadata;
        }
        Ok(Some(JobRecord {
            id: id.to_string(),
            status,
            spec: fields
                .get("spec")
                .and_then(|v| serde_json::from_str(v).ok()),
            attempts: num(&fields, "attempts").unwrap_or(0) as u32,
            max_attempts: meta(&fields, 0, "max_attempts").unwrap_or(0) as u32,
            created_at: meta(&fields, 2, "created_at").unwrap_or(0),
            // `first_started_at` is written once an attempt ended without success;
            // until then the (only) start is `started_at` (see _lib.lua).
            started_at: num(&fields, "first_started_at").or_else(|| num(&fields, "started_at")),
            finished_at: num(&fields, "finished_at"),
            run_at: num(&fields, "run_at"),
            worker: fields.get("worker").cloned(),
            // An earlier attempt's error is left in the hash when a later one succeeds
            // (complete-n.lua); it belongs to that attempt's history entry only.
            error: (status != JobStatus::Succeeded)
                .then(|| json("error"))
                .flatten(),
            result,
            batch: fields.get("batch").filter(|b| !b.is_empty()).cloned(),
            // Earlier attempts are in the list; a succeeded job's final attempt is
            // described by its result.
            history: history
                .iter()
                .filter_map(|h| serde_json::from_str(h).ok())
                .chain(
                    (status == JobStatus::Succeeded)
                        .then(|| json("result").map(|r| crate::queue::success_record(&r)))
                        .flatten(),
                )
                .collect(),
        }))
    }

    /// Statuses of many jobs in one round trip (`None` where unknown).
    pub async fn job_statuses(&self, ids: &[JobId]) -> Result<Vec<Option<JobStatus>>, QueueError> {
        if self.routes() {
            return self.job_statuses_routed(ids).await;
        }
        self.job_statuses_here(ids).await
    }

    /// [`RedisQueue::job_statuses`] on this handle's own keys.
    pub(crate) async fn job_statuses_here(
        &self,
        ids: &[JobId],
    ) -> Result<Vec<Option<JobStatus>>, QueueError> {
        let raw: Vec<Option<String>> = self
            .retrying("job_statuses", || {
                let mut conn = self.connection();
                let mut pipe = redis::pipe();
                for id in ids {
                    pipe.hget(self.keys().job(&id.to_string()), "status");
                }
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        Ok(raw
            .into_iter()
            .map(|s| s.and_then(|s| JobStatus::parse(&s)))
            .collect())
    }

    /// A batch's counters, or `None` if unknown.
    pub async fn batch_record(&self, id: &str) -> Result<Option<BatchRecord>, QueueError> {
        if self.routes_all() {
            return self.batch_record_routed(id).await;
        }
        self.batch_record_here(id).await
    }

    /// [`RedisQueue::batch_record`] on this handle's own keys.
    pub(crate) async fn batch_record_here(
        &self,
        id: &str,
    ) -> Result<Option<BatchRecord>, QueueError> {
        let fields: BTreeMap<String, i64> = self
            .retrying("batch_record", || {
                let mut conn = self.connection();
                let key = self.keys().batch(id);
                async move { conn.hgetall(key).await }
            })
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let total = fields.get("total").copied().unwrap_or(0).max(0) as u64;
        let counts = fields
            .into_iter()
            .filter(|(k, _)| k != "total")
            .map(|(k, v)| (k, v.max(0) as u64))
            .collect();
        Ok(Some(BatchRecord {
            id: id.to_string(),
            total,
            counts,
        }))
    }

    /// Wait until a job reaches a final status (or `timeout` passes); returns its record.
    /// Listens on the queue's `done` channel, re-reading the record on each message and
    /// at least every second (a message can be missed across a reconnect).
    pub async fn wait_for_final(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<Option<JobRecord>, QueueError> {
        use futures::StreamExt;
        // A wait too long for an Instant (`fleet result --timeout` takes any u64) is no limit.
        let deadline = timeout.and_then(|t| tokio::time::Instant::now().checked_add(t));
        let mut pubsub = crate::connection::pubsub(self.redis_settings()).await.ok();
        if let Some(p) = pubsub.as_mut() {
            // A job ends on its own shard's channel (queue/shards.rs).
            for channel in self.done_channels() {
                let _ = p.subscribe(&channel).await;
            }
        }
        let mut messages = pubsub.as_mut().map(|p| p.on_message());
        loop {
            let record = self.job_record(id).await?;
            match &record {
                None => return Ok(None),
                Some(r) if r.status.is_final() => return Ok(record),
                _ => {}
            }
            if let Some(d) = deadline
                && tokio::time::Instant::now() >= d
            {
                return Ok(record);
            }
            let tick = tokio::time::sleep(Duration::from_secs(1));
            match messages.as_mut() {
                Some(stream) => {
                    tokio::select! {
                        _ = tick => {}
                        msg = stream.next() => {
                            if msg.is_none() { messages = None; }
                        }
                    }
                }
                None => tick.await,
            }
        }
    }
}
