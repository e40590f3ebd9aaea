//! Reading many jobs at once, for the HTTP API's listings: job records by filter,
//! dead letters a page at a time, the leases running now.
//!
//! The queue keeps indexes for what workers need (the `wait` list, the `active`,
//! `delayed` and `dead` sets), not for every question a person may ask. Dead letters
//! have their index (the `dead` set, by when they died), and so do running jobs (the
//! `active` set). A filter on status, batch, agent or metadata has none yet: it is
//! answered by a bounded scan of the queue's job records (`SCAN … MATCH job:*`), which
//! says how many records it looked at and whether its bound cut it short. Job IDs are
//! UUID v7, so the records found are put in creation order and pages follow one
//! another by ID, whatever order SCAN visits them in. (Per-status, per-batch and
//! per-agent indexes kept by the scripts would make these exact at any size.)
//!
//! Nothing here writes.

use std::collections::BTreeMap;

use crate::job::{JobId, JobPayload, JobSpec};
use crate::queue::{QueueError, RedisQueue};
use crate::results::JobStatus;

/// Keys asked for per SCAN call.
const SCAN_COUNT: usize = 1000;
/// Records read per round trip while filtering.
const READ_CHUNK: usize = 200;

/// One job as a listing shows it: its record's fields, without the attempt history
/// or the result (which `GET /v1/jobs/{id}` and `/result` give).
#[derive(Debug, Clone, PartialEq)]
pub struct JobSummary {
    pub id: String,
    pub status: JobStatus,
    pub spec: Option<JobSpec>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub worker: Option<String>,
    pub batch: Option<String>,
    /// The last error, `{class, message, attempt}`, unless the job succeeded.
    pub error: Option<serde_json::Value>,
}

impl JobSummary {
    /// The agent profile (research jobs, and lifecycle jobs that name one) and the
    /// persistent agent a research job is addressed to.
    pub fn agent(&self) -> (Option<&str>, Option<&str>) {
        use crate::job::LifecycleJob as L;
        match self.spec.as_ref().map(|s| &s.payload) {
            Some(JobPayload::Research(r)) => (Some(&r.agent), r.agent_id.as_deref()),
            Some(JobPayload::Lifecycle(
                L::Launch { agent, .. } | L::Refresh { agent, .. } | L::Scale { agent, .. },
            )) => (Some(agent), None),
            Some(JobPayload::Lifecycle(
                L::Pause { agent_id } | L::Resume { agent_id } | L::Terminate { agent_id },
            )) => (None, Some(agent_id)),
            _ => (None, None),
        }
    }

    fn from_fields(id: &str, f: &BTreeMap<String, String>) -> Option<JobSummary> {
        let status = JobStatus::parse(f.get("status")?)?;
        let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
        // `meta` is "max_attempts<TAB>deadline_at<TAB>created_at" (enqueue-3.lua).
        let meta = |i: usize, old: &str| match f.get("meta") {
            Some(m) => m.split('\t').nth(i).and_then(|v| v.parse().ok()),
            None => num(old),
        };
        Some(JobSummary {
            id: id.to_string(),
            status,
            spec: f.get("spec").and_then(|v| serde_json::from_str(v).ok()),
            attempts: num("attempts").unwrap_or(0) as u32,
            max_attempts: meta(0, "max_attempts").unwrap_or(0) as u32,
            created_at: meta(2, "created_at").unwrap_or(0),
            started_at: num("first_started_at").or_else(|| num("started_at")),
            finished_at: num("finished_at"),
            worker: f.get("worker").cloned(),
            batch: f.get("batch").filter(|b| !b.is_empty()).cloned(),
            error: (status != JobStatus::Succeeded)
                .then(|| f.get("error").and_then(|v| serde_json::from_str(v).ok()))
                .flatten(),
        })
    }
}

/// Which jobs a listing wants; every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Any of these statuses (empty: any).
    pub statuses: Vec<JobStatus>,
    pub batch: Option<String>,
    /// The agent profile, or the agent ID a job is addressed to.
    pub agent: Option<String>,
    /// Created at or after (ms).
    pub since_ms: Option<u64>,
    /// Created before (ms).
    pub until_ms: Option<u64>,
    /// Metadata entries the job must carry, key and value.
    pub metadata: Vec<(String, String)>,
}

impl JobFilter {
    /// Whether a job created at `created_ms` (from its ID) can match: checked before
    /// its record is read.
    fn created_in_range(&self, created_ms: u64) -> bool {
        self.since_ms.is_none_or(|s| created_ms >= s)
            && self.until_ms.is_none_or(|u| created_ms < u)
    }

    pub fn matches(&self, job: &JobSummary) -> bool {
        if !self.statuses.is_empty() && !self.statuses.contains(&job.status) {
            return false;
        }
        if let Some(b) = &self.batch
            && job.batch.as_deref() != Some(b.as_str())
        {
            return false;
        }
        if let Some(a) = &self.agent {
            let (profile, agent_id) = job.agent();
            if profile != Some(a.as_str()) && agent_id != Some(a.as_str()) {
                return false;
            }
        }
        if !self.metadata.is_empty() {
            let Some(spec) = &job.spec else { return false };
            let meta = &spec.options.metadata;
            if !self
                .metadata
                .iter()
                .all(|(k, v)| meta.get(k).is_some_and(|have| have == v))
            {
                return false;
            }
        }
        self.created_in_range(job.created_at)
    }
}

/// Which end a listing starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    NewestFirst,
    OldestFirst,
}

/// One page of a filtered listing.
#[derive(Debug, Clone, Default)]
pub struct JobPage {
    /// At most the limit asked for, in the order asked for.
    pub jobs: Vec<JobSummary>,
    /// Job records the scan looked at.
    pub scanned: u64,
    /// The scan stopped at its bound: jobs beyond it were not looked at.
    pub truncated: bool,
    /// More matching jobs follow the last one of this page (among those scanned).
    pub more: bool,
}

/// `s` with glob characters escaped, for a SCAN pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisQueue {
    /// The IDs of this queue's job records, looking at no more than `max` of them:
    /// (IDs, how many looked at, whether the bound stopped the scan). Keys whose ID is
    /// not a UUID are skipped.
    pub async fn scan_job_ids(&self, max: usize) -> Result<(Vec<JobId>, u64, bool), QueueError> {
        let pattern = format!("{}job:*", glob_escape(&self.keys().prefix));
        let strip = self.keys().job("");
        let mut cursor: u64 = 0;
        let mut ids = Vec::new();
        let mut scanned = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .retrying("scan_jobs", || {
                    let mut conn = self.connection();
                    let mut cmd = redis::cmd("SCAN");
                    // Near the bound, small steps: SCAN may return more than COUNT.
                    let count = SCAN_COUNT.min(max.saturating_sub(scanned as usize)).max(1);
                    cmd.arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(count);
                    async move { cmd.query_async(&mut conn).await }
                })
                .await?;
            // Never more than the bound, even when one step returned more.
            let room = (max as u64).saturating_sub(scanned) as usize;
            let cut = keys.len() > room;
            scanned += keys.len().min(room) as u64;
            ids.extend(
                keys.iter()
                    .take(room)
                    .filter_map(|k| k.strip_prefix(&strip))
                    .filter_map(|id| id.parse::<JobId>().ok()),
            );
            cursor = next;
            if cursor == 0 && !cut {
                return Ok((ids, scanned, false));
            }
            if scanned >= max as u64 {
                return Ok((ids, scanned, true));
            }
        }
    }

    /// The listing view of these jobs, in one round trip (`None` where unknown).
    pub async fn job_summaries(
        &self,
        ids: &[String],
    ) -> Result<Vec<Option<JobSummary>>, QueueError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        const FIELDS: [&str; 10] = [
            "status",
            "spec",
            "attempts",
            "meta",
            "first_started_at",
            "started_at",
            "finished_at",
            "worker",
            "batch",
            "error",
        ];
        let rows: Vec<Vec<Option<String>>> = self
            .retrying("job_summaries", || {
                let mut conn = self.connection();
                let mut pipe = redis::pipe();
                for id in ids {
                    pipe.cmd("HMGET").arg(self.keys().job(id)).arg(&FIELDS[..]);
                }
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        Ok(ids
            .iter()
            .zip(rows)
            .map(|(id, row)| {
                let fields: BTreeMap<String, String> = FIELDS
                    .iter()
                    .zip(row)
                    .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
                    .collect();
                JobSummary::from_fields(id, &fields)
            })
            .collect())
    }

    /// One page of this queue's jobs that match `filter`, in `order`, after the job
    /// `after` (a cursor: the last job of the page before), at most `limit`, looking at
    /// no more than `scan_max` records.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        order: Order,
        after: Option<JobId>,
        limit: usize,
        scan_max: usize,
    ) -> Result<JobPage, QueueError> {
        let (mut ids, scanned, truncated) = self.scan_job_ids(scan_max).await?;
        // Creation order from the IDs themselves; the time range needs no read.
        ids.retain(|id| {
            filter.created_in_range(id.submitted_ms())
                && match (after, order) {
                    (None, _) => true,
                    (Some(a), Order::NewestFirst) => *id < a,
                    (Some(a), Order::OldestFirst) => *id > a,
                }
        });
        ids.sort_unstable();
        ids.dedup();
        if order == Order::NewestFirst {
            ids.reverse();
        }
        let mut page = JobPage {
            scanned,
            truncated,
            ..Default::default()
        };
        for chunk in ids.chunks(READ_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(JobId::to_string).collect();
            for job in self.job_summaries(&keys).await?.into_iter().flatten() {
                if !filter.matches(&job) {
                    continue;
                }
                if page.jobs.len() == limit {
                    page.more = true;
                    return Ok(page);
                }
                page.jobs.push(job);
            }
        }
        Ok(page)
    }

    /// Dead letters in the order they died, with when (ms): those that died within
    /// `[since, until)` after the entry `after` (a cursor: the last entry of the page
    /// before), at most `limit`.
    pub async fn dead_page(
        &self,
        since_ms: Option<u64>,
        until_ms: Option<u64>,
        after: Option<(u64, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, QueueError> {
        let min = after
            .map(|(at, _)| at)
            .max(since_ms)
            .map_or("-inf".to_string(), |m| m.to_string());
        let max = until_ms.map_or("+inf".to_string(), |u| format!("({u}"));
        // Entries that died in the same millisecond as the cursor's are ordered by ID;
        // those up to the cursor's are skipped, so fetch that many more.
        let ties: u64 = match after {
            Some((at, _)) => {
                self.retrying("dead_ties", || {
                    let mut conn = self.connection();
                    let key = self.keys().dead.clone();
                    async move {
                        redis::cmd("ZCOUNT")
                            .arg(key)
                            .arg(at)
                            .arg(at)
                            .query_async(&mut conn)
                            .await
                    }
                })
                .await?
            }
            None => 0,
        };
        let rows: Vec<(String, f64)> = self
            .retrying("dead_page", || {
                let mut conn = self.connection();
                let mut cmd = redis::cmd("ZRANGEBYSCORE");
                cmd.arg(&self.keys().dead)
                    .arg(&min)
                    .arg(&max)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(ties as usize + limit);
                async move { cmd.query_async(&mut conn).await }
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, at)| (id, at as u64))
            .filter(|(id, at)| match after {
                Some((a, last)) => *at > a || (*at == a && id.as_str() > last),
                None => true,
            })
            .take(limit)
            .collect())
    }

    /// Running jobs and until when their leases last (ms), soonest first, at most `max`.
    pub async fn active_leases(&self, max: usize) -> Result<Vec<(String, u64)>, QueueError> {
        let rows: Vec<(String, f64)> = self
            .retrying("active_leases", || {
                let mut conn = self.connection();
                let key = self.keys().active.clone();
                async move {
                    redis::cmd("ZRANGE")
                        .arg(key)
                        .arg(0)
                        .arg(max.max(1) as isize - 1)
                        .arg("WITHSCORES")
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        Ok(rows.into_iter().map(|(id, at)| (id, at as u64)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(status: JobStatus) -> JobSummary {
        let mut spec = JobSpec::research("q", "demo");
        spec.options.metadata.insert("team".into(), "red".into());
        JobSummary {
            id: "x".into(),
            status,
            spec: Some(spec),
            attempts: 0,
            max_attempts: 3,
            created_at: 1_000,
            started_at: None,
            finished_at: None,
            worker: None,
            batch: Some("b1".into()),
            error: None,
        }
    }

    #[test]
    fn every_condition_of_a_filter_must_hold() {
        let job = summary(JobStatus::Queued);
        assert!(JobFilter::default().matches(&job));
        let f = |f: JobFilter| f.matches(&job);
        assert!(f(JobFilter {
            statuses: vec![JobStatus::Running, JobStatus::Queued],
            batch: Some("b1".into()),
            agent: Some("demo".into()),
            metadata: vec![("team".into(), "red".into())],
            since_ms: Some(1_000),
            until_ms: Some(1_001),
        }));
        assert!(!f(JobFilter {
            statuses: vec![JobStatus::Dead],
            ..Default::default()
        }));
        assert!(!f(JobFilter {
            batch: Some("b2".into()),
            ..Default::default()
        }));
        assert!(!f(JobFilter {
            agent: Some("other".into()),
            ..Default::default()
        }));
        assert!(!f(JobFilter {
            metadata: vec![("team".into(), "blue".into())],
            ..Default::default()
        }));
        assert!(!f(JobFilter {
            until_ms: Some(1_000),
            ..Default::default()
        }));
    }

    #[test]
    fn scan_patterns_escape_glob_characters() {
        assert_eq!(glob_escape("fleet:{research}:"), "fleet:{research}:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
