//! Reading many jobs at once, for the HTTP API's listings: job records by filter,
//! dead letters a page at a time, the leases running now.
//!
//! Job filters read the listing indexes the scripts keep (index.rs): one ZSET per
//! status, per agent and per batch, each ordered by job ID (UUID v7: creation order);
//! `running` is read from `active`, the leases, whole (as many as the fleet runs at
//! once) and cut to the same range here ([`lex_page`]).
//! A page is a `ZRANGEBYLEX` of the index the filter names (the union of several for
//! more than one status, or of all seven for none), from the cursor on, within the
//! time range (an ID's first 48 bits are its creation time, so a time range is a range
//! of IDs); then the records of those IDs. A filter on status, batch, agent or time
//! range alone is exact, whatever the queue's size. Conditions beyond the one index a
//! page is read from (a second of status/batch/agent, metadata) are checked on the
//! records, looking at no more than `scan_max` index entries per page: a page cut
//! short by that bound says so (`truncated`) and its `next_cursor` goes on from the
//! last entry looked at. An entry whose record is gone (expired before the trim took
//! it out) is skipped.
//!
//! Cursors are job IDs, passed as opaque strings: a page after cursor `c` holds jobs
//! after `c` in the order asked for, so pages of several queues merge by ID.
//!
//! Nothing here writes.

use std::collections::BTreeMap;

use crate::job::{JobPayload, JobSpec};
use crate::queue::keys::{INDEXED_STATUSES, Keys};
use crate::queue::{QueueError, RedisQueue};
use crate::results::JobStatus;

/// Index entries read per index and round while a condition on the records may reject
/// some, and records read per round trip.
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
    /// Index entries looked at.
    pub scanned: u64,
    /// The page stopped at the `scan_max` bound before it was full: more jobs may
    /// match after `next_cursor`.
    pub truncated: bool,
    /// More matching jobs follow the last one of this page.
    pub more: bool,
    /// Where the next page starts (after this ID), when `more` or `truncated`.
    pub next_cursor: Option<String>,
}

/// Merge pages that several queues (or shards) gave for one request into one page of
/// at most `limit`, in `order` by job ID. Each part is its items and its `next_cursor`.
/// A part that ended early (it has a next cursor) sets a frontier: the merged page may
/// not pass the nearest one, or the next page (which starts after the merged page's
/// cursor in every part) would skip that part's items before it. Returns the items and
/// the merged page's next cursor.
pub fn merge_pages<T>(
    parts: Vec<(Vec<T>, Option<String>)>,
    id: impl Fn(&T) -> &str,
    order: Order,
    limit: usize,
) -> (Vec<T>, Option<String>) {
    let before = |a: &str, b: &str| match order {
        Order::OldestFirst => a < b,
        Order::NewestFirst => a > b,
    };
    let mut frontier: Option<String> = None;
    let mut all = Vec::new();
    for (items, next) in parts {
        if let Some(next) = next
            && frontier.as_deref().is_none_or(|f| before(&next, f))
        {
            frontier = Some(next);
        }
        all.extend(items);
    }
    all.sort_by(|a, b| id(a).cmp(id(b)));
    if order == Order::NewestFirst {
        all.reverse();
    }
    if let Some(f) = &frontier {
        all.retain(|j| !before(f, id(j)));
    }
    if all.len() > limit {
        all.truncate(limit);
        let next = all.last().map(|j| id(j).to_string());
        (all, next)
    } else {
        (all, frontier)
    }
}

/// What `ZRANGEBYLEX` (or `ZREVRANGEBYLEX` for [`Order::NewestFirst`]) with these
/// bounds and `LIMIT 0 limit` would give of `ids`: for a set not ordered by ID.
fn lex_page(ids: &[String], min: &str, max: &str, order: Order, limit: usize) -> Vec<String> {
    let above = |id: &str| match min.split_at_checked(1) {
        Some(("[", b)) => id >= b,
        Some(("(", b)) => id > b,
        _ => true,
    };
    let below = |id: &str| match max.split_at_checked(1) {
        Some(("[", b)) => id <= b,
        Some(("(", b)) => id < b,
        _ => true,
    };
    let mut ids: Vec<String> = ids
        .iter()
        .filter(|id| above(id) && below(id))
        .cloned()
        .collect();
    ids.sort_unstable();
    if order == Order::NewestFirst {
        ids.reverse();
    }
    ids.truncate(limit);
    ids
}

/// The first 13 characters of every UUID v7 created in millisecond `ms`
/// (`xxxxxxxx-xxxx`): a bound of a range of IDs by creation time.
fn id_prefix(ms: u64) -> String {
    let h = format!("{:012x}", ms.min(0xffff_ffff_ffff));
    format!("{}-{}", &h[..8], &h[8..])
}

impl JobFilter {
    /// The indexes a page is read from: the one the filter names (batch, else agent),
    /// else its statuses', else every status index. And whether that index decides
    /// the filter alone (nothing else to check on the records).
    fn driver(&self, keys: &Keys) -> (Vec<String>, bool) {
        let only_time = self.metadata.is_empty();
        if let Some(b) = &self.batch {
            let alone = only_time && self.statuses.is_empty() && self.agent.is_none();
            (vec![keys.index(&format!("batch:{b}"))], alone)
        } else if let Some(a) = &self.agent {
            let alone = only_time && self.statuses.is_empty();
            (vec![keys.index(&format!("agent:{a}"))], alone)
        } else if !self.statuses.is_empty() {
            let mut statuses: Vec<&str> = self.statuses.iter().map(|s| s.as_str()).collect();
            statuses.sort_unstable();
            statuses.dedup();
            let ix = statuses.iter().map(|s| keys.status_index(s)).collect();
            (ix, only_time)
        } else {
            let ix = INDEXED_STATUSES
                .iter()
                .map(|s| keys.status_index(s))
                .collect();
            (ix, only_time)
        }
    }

    /// The `ZRANGEBYLEX` bounds (min, max) of the IDs after `after` in `order`, within
    /// the filter's time range.
    fn lex_range(&self, order: Order, after: Option<&str>) -> (String, String) {
        let since = self.since_ms.map(id_prefix);
        let until = self.until_ms.map(id_prefix);
        match order {
            Order::OldestFirst => {
                let min = match (after, since) {
                    (Some(a), Some(s)) if s.as_str() > a => format!("[{s}"),
                    (Some(a), _) => format!("({a}"),
                    (None, Some(s)) => format!("[{s}"),
                    (None, None) => "-".into(),
                };
                (min, until.map_or("+".into(), |u| format!("({u}")))
            }
            Order::NewestFirst => {
                let max = match (after, until) {
                    (Some(a), Some(u)) => format!("({}", a.min(u.as_str())),
                    (Some(a), None) => format!("({a}"),
                    (None, Some(u)) => format!("({u}"),
                    (None, None) => "+".into(),
                };
                (since.map_or("-".into(), |s| format!("[{s}")), max)
            }
        }
    }
}

impl RedisQueue {
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

    /// One page of this queue's jobs that match `filter`, in `order`, after `cursor`
    /// (the `next_cursor` of the page before), at most `limit`, looking at no more than
    /// `scan_max` index entries (see the module's comment).
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        order: Order,
        cursor: Option<&str>,
        limit: usize,
        scan_max: usize,
    ) -> Result<JobPage, QueueError> {
        let (drivers, alone) = filter.driver(self.keys());
        // The index range applies the time range by ID; the records are not asked again
        // (a record's `created_at` is Redis' clock, its ID the submitter's).
        let on_records = JobFilter {
            since_ms: None,
            until_ms: None,
            ..filter.clone()
        };
        let chunk = if alone {
            limit + 1
        } else {
            (limit + 1).max(READ_CHUNK).min(scan_max.max(1))
        };
        let mut pos: Option<String> = cursor.map(str::to_string);
        let mut page = JobPage::default();
        // The running jobs' index is the lease set, scored by expiry: read whole (the
        // fleet's concurrency) once per page, and cut to each round's range here.
        let active = &self.keys().active;
        let (drivers, running): (Vec<String>, Vec<String>) =
            drivers.into_iter().partition(|k| k != active);
        let running: Option<Vec<String>> = match running.is_empty() {
            true => None,
            false => Some(
                self.retrying("list_jobs_running", || {
                    let mut conn = self.connection();
                    let key = active.clone();
                    async move { redis::AsyncCommands::zrange(&mut conn, key, 0, -1).await }
                })
                .await?,
            ),
        };
        loop {
            let (min, max) = filter.lex_range(order, pos.as_deref());
            let mut lists: Vec<Vec<String>> = if drivers.is_empty() {
                Vec::new()
            } else {
                self.retrying("list_jobs", || {
                    let mut conn = self.connection();
                    let mut pipe = redis::pipe();
                    for key in &drivers {
                        match order {
                            Order::OldestFirst => {
                                pipe.cmd("ZRANGEBYLEX").arg(key).arg(&min).arg(&max)
                            }
                            Order::NewestFirst => {
                                pipe.cmd("ZREVRANGEBYLEX").arg(key).arg(&max).arg(&min)
                            }
                        };
                        pipe.arg("LIMIT").arg(0).arg(chunk);
                    }
                    async move { pipe.query_async(&mut conn).await }
                })
                .await?
            };
            if let Some(running) = &running {
                lists.push(lex_page(running, &min, &max, order, chunk));
            }
            let exhausted = lists.iter().all(|l| l.len() < chunk);
            let mut ids: Vec<String> = lists.concat();
            ids.sort_unstable();
            ids.dedup();
            if order == Order::NewestFirst {
                ids.reverse();
            }
            // The first `chunk` of the union are certain: an index that gave a full chunk
            // holds nothing before its last one that it did not give.
            ids.truncate(chunk);
            for part in ids.chunks(READ_CHUNK) {
                let jobs = self.job_summaries(part).await?;
                for (id, job) in part.iter().zip(jobs) {
                    page.scanned += 1;
                    let Some(job) = job.filter(|j| on_records.matches(j)) else {
                        pos = Some(id.clone());
                        continue;
                    };
                    if page.jobs.len() == limit {
                        page.more = true;
                        page.next_cursor = page.jobs.last().map(|j| j.id.clone());
                        return Ok(page);
                    }
                    pos = Some(id.clone());
                    page.jobs.push(job);
                }
            }
            if exhausted || ids.is_empty() {
                return Ok(page);
            }
            if page.scanned >= scan_max as u64 {
                page.truncated = true;
                page.next_cursor = pos;
                return Ok(page);
            }
        }
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

    #[test]
    fn a_set_not_ordered_by_id_pages_as_zrangebylex_would() {
        let set = ["d", "a", "e", "b", "c"].map(String::from);
        let ids = || &set[..];
        let old = Order::OldestFirst;
        let new = Order::NewestFirst;
        assert_eq!(lex_page(ids(), "-", "+", old, 3), ["a", "b", "c"]);
        assert_eq!(lex_page(ids(), "(b", "+", old, 10), ["c", "d", "e"]);
        assert_eq!(lex_page(ids(), "[b", "(d", old, 10), ["b", "c"]);
        assert_eq!(lex_page(ids(), "-", "(d", new, 2), ["c", "b"]);
        assert_eq!(lex_page(ids(), "[c", "+", new, 10), ["e", "d", "c"]);
        assert!(lex_page(ids(), "(e", "+", old, 10).is_empty());
    }

    #[test]
    fn merged_pages_stop_at_the_nearest_part_that_ended_early() {
        let part = |ids: &[&str], next: Option<&str>| {
            (
                ids.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                next.map(str::to_string),
            )
        };
        // Part one gave its page up to "c" and has more after it; part two is done.
        // "d" and "e" may not be shown yet: part one may hold jobs between "c" and "d".
        let (items, next) = merge_pages(
            vec![part(&["a", "c"], Some("c")), part(&["b", "d", "e"], None)],
            |s: &String| s.as_str(),
            Order::OldestFirst,
            10,
        );
        assert_eq!(items, ["a", "b", "c"]);
        assert_eq!(next.as_deref(), Some("c"));
        // Newest first, over the limit: the last shown is the cursor.
        let (items, next) = merge_pages(
            vec![part(&["e", "c"], None), part(&["d", "b"], None)],
            |s: &String| s.as_str(),
            Order::NewestFirst,
            3,
        );
        assert_eq!(items, ["e", "d", "c"]);
        assert_eq!(next.as_deref(), Some("c"));
        // Everything fits and nothing ended early: no next page.
        let (items, next) = merge_pages(
            vec![part(&["a"], None), part(&["b"], None)],
            |s: &String| s.as_str(),
            Order::OldestFirst,
            3,
        );
        assert_eq!((items.len(), next), (2, None));
    }

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
}
