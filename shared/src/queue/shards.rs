//! Sharded queues (issue 14): one logical queue spread over `queue.shards` whole
//! queues, each under its own hash tag (`Keys::for_shard`: `{research}`,
//! `{research:1}`, …), so that on a Redis Cluster its shards live in different slots —
//! on different primaries — and its throughput is not capped by one of them.
//!
//! Each shard is a complete queue: the same scripts, keys and state machine as an
//! unsharded one, every script touching one shard's slot only. This layer routes:
//!
//! - **Enqueue** spreads jobs round-robin (a batch's jobs evenly, one script call per
//!   shard per chunk); a job with an idempotency key or a result-cache identity goes to
//!   the shard that key hashes to, so those scripts stay atomic. The chosen shard is
//!   written into the job's ID ([`JobId::for_shard`]).
//! - **By ID** (status, result, cancel, answers, waiting): the shard the ID names, no
//!   scan. An ID that names a shard where no such job is (made before sharding, or by
//!   hand) is looked up on shard 0, where every job made before sharding lives: at
//!   most two reads, whatever `queue.shards` is or was.
//! - **Whole-queue reads** (depths, dead letters, batch counters) ask every shard and
//!   add up or merge (dead letters by when they died).
//! - **Workers** fetch from every shard (`apalis_backend::RedisBackend::start_sharded`):
//!   one fetcher per shard, each blocking on its own shard's marker when idle, all
//!   sharing the worker's slots, which a FIFO semaphore hands out in turn.
//!
//! A handle from [`RedisQueue::open`] routes; a handle from [`RedisQueue::shard`] is
//! one shard and does not (the scripts' wrappers in `mod.rs` act on its keys).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use futures::future::BoxFuture;

use super::listing::{JobFilter, JobPage, JobSummary, Order};
use super::{CancelOutcome, QueueCounts, QueueError, RedisQueue};
use crate::job::{Job, JobId, JobSpec};
use crate::results::BatchRecord;

/// The most shards `queue.shards` accepts: a job ID's last byte names its shard, and
/// more shards than a cluster has primaries only adds calls.
pub const MAX_SHARDS: u16 = 64;

/// A stable 64-bit FNV-1a hash: the shard of an idempotency key or a cache identity
/// must be the same in every producer process and version.
fn stable_hash(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The shard a job ID (as stored) names; 0 for a string that is not a UUID.
pub fn named_shard(id: &str) -> u16 {
    id.parse::<JobId>().map(|id| id.named_shard()).unwrap_or(0)
}

impl RedisQueue {
    /// How many shards this queue has (`queue.shards`; 1 for the lifecycle queue).
    pub fn shard_count(&self) -> u16 {
        self.config.shards.max(1)
    }

    /// Which shard this handle's keys are.
    pub fn shard_index(&self) -> u16 {
        self.config.shard
    }

    /// Whether this handle routes (opened on the queue) rather than being one shard.
    pub(crate) fn routes(&self) -> bool {
        self.routing
    }

    /// Whether whole-queue reads must visit several shards.
    pub(crate) fn routes_all(&self) -> bool {
        self.routing && self.shard_count() > 1
    }

    /// A handle on shard `k` alone (same connection; its keys, no routing).
    pub fn shard(&self, k: u16) -> RedisQueue {
        let mut config = (*self.config).clone();
        config.shard = k;
        RedisQueue {
            conn: self.conn.clone(),
            redis: self.redis.clone(),
            keys: std::sync::Arc::new(
                super::Keys::for_shard(&self.redis.key_prefix, config.kind, k)
                    .with_indexes(config.listing_indexes),
            ),
            config: std::sync::Arc::new(config),
            routing: false,
            spread: self.spread.clone(),
            // job IDs are unique over the shards: one set of notes serves them all
            hints: self.hints.clone(),
        }
    }

    /// One handle per configured shard, shard 0 first.
    pub fn shards(&self) -> Vec<RedisQueue> {
        (0..self.shard_count()).map(|k| self.shard(k)).collect()
    }

    /// Every shard's `done` channel (a job ends on its own shard's).
    pub fn done_channels(&self) -> Vec<String> {
        if !self.routes() {
            return vec![self.keys.done_channel.clone()];
        }
        self.shards()
            .into_iter()
            .map(|s| s.keys.done_channel.clone())
            .collect()
    }

    /// The shard that must hold `job`, if it has to be one: that of its idempotency
    /// key, else that of its result-cache identity (those scripts find the key's
    /// record in their own slot).
    fn home_shard(&self, job: &Job) -> Option<u16> {
        let n = u64::from(self.shard_count());
        if let Some(key) = job.spec.options.idempotency_key.as_deref() {
            return Some((stable_hash(key) % n) as u16);
        }
        self.config
            .cache
            .identity(job)
            .map(|digest| (stable_hash(&digest) % n) as u16)
    }

    /// New jobs for `specs`, each with an ID naming the shard it goes to: its home
    /// shard if it has one, else the next in turn (so a batch splits evenly).
    pub(crate) fn new_jobs(&self, specs: Vec<JobSpec>) -> Vec<Job> {
        let n = usize::from(self.shard_count());
        if n == 1 {
            // One shard: no home to look up (it would cost a digest per job).
            return specs
                .into_iter()
                .map(|spec| Job {
                    id: JobId::for_shard(0),
                    ..Job::new(spec)
                })
                .collect();
        }
        let start = self.spread.fetch_add(specs.len(), Ordering::Relaxed);
        specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                let mut job = Job::new(spec);
                let shard = self.home_shard(&job).unwrap_or(((start + i) % n) as u16);
                job.id = JobId::for_shard(shard);
                job
            })
            .collect()
    }

    /// The shard a job with a chosen ID is written to: the one its ID names when that
    /// is a shard of this queue, else shard 0 (where lookups fall back to). A job that
    /// must be on its key's shard but whose ID names another is refused.
    fn shard_for(&self, job: &Job) -> Result<u16, QueueError> {
        let named = job.id.named_shard();
        let shard = if named < self.shard_count() { named } else { 0 };
        match self.home_shard(job) {
            Some(home) if home != shard && home != 0 => Err(QueueError::Corrupt(format!(
                "job {} names shard {named}, but its idempotency key or cache identity belongs \
                 on shard {home}: make its ID with JobId::for_shard({home}) or let the queue \
                 choose it",
                job.id
            ))),
            Some(home) => Ok(home),
            None => Ok(shard),
        }
    }

    /// [`RedisQueue::enqueue_jobs`] over the shards: each shard's part in calls of its
    /// own (chunked as usual), the shards at the same time (on a cluster, different
    /// primaries work in parallel); IDs back in `jobs`' order. Should one shard's part
    /// fail, the call fails; the parts written stay (the caller retries with the same
    /// IDs, and nothing is written twice).
    pub(crate) async fn enqueue_sharded(
        &self,
        jobs: &[Job],
        batch_id: Option<&str>,
    ) -> Result<Vec<JobId>, QueueError> {
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, job) in jobs.iter().enumerate() {
            groups.entry(self.shard_for(job)?).or_default().push(i);
        }
        let parts = groups.into_iter().map(|(shard, members)| async move {
            let part: Vec<Job> = members.iter().map(|&i| jobs[i].clone()).collect();
            let ids = self.shard(shard).enqueue_jobs_here(&part, batch_id).await?;
            Ok::<_, QueueError>((members, ids))
        });
        let mut out: Vec<Option<JobId>> = vec![None; jobs.len()];
        for (members, ids) in futures::future::try_join_all(parts).await? {
            for (i, id) in members.into_iter().zip(ids) {
                out[i] = Some(id);
            }
        }
        Ok(out
            .into_iter()
            .map(|id| id.expect("every job enqueued"))
            .collect())
    }

    /// Run `op` on the shard job `id` names; if it finds nothing there (`found` says
    /// no) and that is not shard 0, on shard 0 (jobs made before sharding).
    pub(crate) async fn on_owner<'a, T>(
        &'a self,
        id: &'a str,
        found: impl Fn(&T) -> bool,
        op: impl Fn(RedisQueue) -> BoxFuture<'a, Result<T, QueueError>>,
    ) -> Result<T, QueueError> {
        let named = named_shard(id);
        let first = op(self.shard(named)).await?;
        if named == 0 || found(&first) {
            return Ok(first);
        }
        op(self.shard(0)).await
    }

    /// The shard handle that holds job `id` (one `EXISTS` when its ID names a shard
    /// other than 0); on a handle that does not route, itself.
    pub async fn owner_of(&self, id: &str) -> Result<RedisQueue, QueueError> {
        if !self.routes() {
            return Ok(self.clone());
        }
        let named = named_shard(id);
        if named == 0 {
            return Ok(self.shard(0));
        }
        let shard = self.shard(named);
        let key = shard.keys.job(id);
        let exists: bool = self
            .retrying("owner_of", || {
                let mut conn = self.conn.clone();
                let key = key.clone();
                async move { redis::AsyncCommands::exists(&mut conn, key).await }
            })
            .await?;
        Ok(if exists { shard } else { self.shard(0) })
    }

    pub(crate) async fn cancel_routed(&self, id: &JobId) -> Result<CancelOutcome, QueueError> {
        let text = id.to_string();
        self.on_owner(
            &text,
            |o| *o != CancelOutcome::NotFound,
            |q| Box::pin(async move { q.cancel_here(id).await }),
        )
        .await
    }

    /// Depths of all shards added up.
    pub(crate) async fn counts_routed(&self) -> Result<QueueCounts, QueueError> {
        let mut total = QueueCounts::default();
        for shard in self.shards() {
            let c = shard.counts_here().await?;
            total.ready += c.ready;
            total.running += c.running;
            total.delayed += c.delayed;
            total.dead += c.dead;
        }
        Ok(total)
    }

    /// Depths of each shard, shard 0 first (the local spread: tests, `fleet jobs`).
    pub async fn shard_counts(&self) -> Result<Vec<QueueCounts>, QueueError> {
        let mut out = Vec::new();
        for shard in self.shards() {
            out.push(shard.counts_here().await?);
        }
        Ok(out)
    }

    /// The dead letters of every shard, oldest first, with the shard of each.
    async fn dead_merged(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<(u16, String, u64)>, QueueError> {
        let mut all = Vec::new();
        for shard in self.shards() {
            let k = shard.shard_index();
            for (id, at) in shard.dead_list_here(0, offset + limit).await? {
                all.push((k, id, at));
            }
        }
        all.sort_by(|a, b| (a.2, &a.1).cmp(&(b.2, &b.1)));
        Ok(all.into_iter().skip(offset).take(limit).collect())
    }

    pub(crate) async fn dead_list_routed(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, QueueError> {
        Ok(self
            .dead_merged(offset, limit)
            .await?
            .into_iter()
            .map(|(_, id, at)| (id, at))
            .collect())
    }

    pub(crate) async fn dead_count_routed(&self) -> Result<u64, QueueError> {
        let mut n = 0;
        for shard in self.shards() {
            n += shard.dead_count_here().await?;
        }
        Ok(n)
    }

    /// A dead-letter command (retry or purge) over the shards: the given IDs on the
    /// shard each names and, for IDs naming another, on shard 0 too (each script skips
    /// an ID not in its dead set, and an ID is in one set at most: the sum is exact);
    /// none given: the `max` oldest of all shards.
    pub(crate) async fn dead_command_routed(
        &self,
        ids: &[String],
        max: usize,
        purge: bool,
    ) -> Result<u64, QueueError> {
        let mut groups: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        if ids.is_empty() {
            for (k, id, _) in self.dead_merged(0, max).await? {
                groups.entry(k).or_default().push(id);
            }
        } else {
            for id in ids {
                let named = named_shard(id);
                groups.entry(named).or_default().push(id.clone());
                if named != 0 {
                    groups.entry(0).or_default().push(id.clone());
                }
            }
        }
        let mut n = 0;
        for (k, ids) in groups {
            let shard = self.shard(k);
            n += if purge {
                shard.purge_dead_here(&ids, 0).await?
            } else {
                shard.retry_dead_here(&ids, 0).await?
            };
        }
        Ok(n)
    }

    /// A batch's counters summed over the shards its jobs were spread on (each shard
    /// keeps an exact record of its own part, written by the same scripts).
    pub(crate) async fn batch_record_routed(
        &self,
        id: &str,
    ) -> Result<Option<BatchRecord>, QueueError> {
        let mut sum: Option<BatchRecord> = None;
        for shard in self.shards() {
            let Some(part) = shard.batch_record_here(id).await? else {
                continue;
            };
            let total = sum.get_or_insert_with(|| BatchRecord {
                id: id.to_string(),
                total: 0,
                counts: Default::default(),
            });
            total.total += part.total;
            for (status, n) in part.counts {
                *total.counts.entry(status).or_default() += n;
            }
        }
        Ok(sum)
    }

    /// Statuses of many jobs: one pipeline per shard named, then shard 0 for those
    /// not found where their ID points.
    pub(crate) async fn job_statuses_routed(
        &self,
        ids: &[JobId],
    ) -> Result<Vec<Option<crate::results::JobStatus>>, QueueError> {
        let mut out = vec![None; ids.len()];
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, id) in ids.iter().enumerate() {
            groups.entry(id.named_shard()).or_default().push(i);
        }
        let mut retry_on_zero = Vec::new();
        for (k, members) in groups {
            let part: Vec<JobId> = members.iter().map(|&i| ids[i]).collect();
            let got = self.shard(k).job_statuses_here(&part).await?;
            for (i, status) in members.into_iter().zip(got) {
                if status.is_none() && k != 0 {
                    retry_on_zero.push(i);
                }
                out[i] = status;
            }
        }
        if !retry_on_zero.is_empty() {
            let part: Vec<JobId> = retry_on_zero.iter().map(|&i| ids[i]).collect();
            let got = self.shard(0).job_statuses_here(&part).await?;
            for (i, status) in retry_on_zero.into_iter().zip(got) {
                out[i] = status;
            }
        }
        Ok(out)
    }
}

/// Listings over the shards (`listing.rs` answers for one shard; these merge). Pages
/// follow one another by job ID (UUID v7: creation order) or, for dead letters, by
/// (when died, ID): a cursor of that shape means the same on every shard, so each
/// shard's page after it is read and the pages merged; no per-shard state is needed
/// in the cursor.
impl RedisQueue {
    /// [`RedisQueue::list_jobs`] over every shard: each looks at its share of
    /// `scan_max` records.
    pub async fn list_jobs_all(
        &self,
        filter: &JobFilter,
        order: Order,
        cursor: Option<&str>,
        limit: usize,
        scan_max: usize,
    ) -> Result<JobPage, QueueError> {
        if !self.routes_all() {
            return self.list_jobs(filter, order, cursor, limit, scan_max).await;
        }
        let shards = self.shards();
        let share = scan_max.div_ceil(shards.len()).max(1);
        let mut page = JobPage::default();
        let mut parts = Vec::with_capacity(shards.len());
        for shard in shards {
            let part = shard.list_jobs(filter, order, cursor, limit, share).await?;
            page.scanned += part.scanned;
            page.truncated |= part.truncated;
            parts.push((part.jobs, part.next_cursor));
        }
        (page.jobs, page.next_cursor) =
            super::listing::merge_pages(parts, |j: &JobSummary| &j.id, order, limit);
        page.more = page.next_cursor.is_some();
        Ok(page)
    }

    /// [`RedisQueue::dead_page`] over every shard, merged by (when died, ID).
    pub async fn dead_page_all(
        &self,
        since_ms: Option<u64>,
        until_ms: Option<u64>,
        after: Option<(u64, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, QueueError> {
        if !self.routes_all() {
            return self.dead_page(since_ms, until_ms, after, limit).await;
        }
        let mut rows = Vec::new();
        for shard in self.shards() {
            rows.extend(shard.dead_page(since_ms, until_ms, after, limit).await?);
        }
        rows.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        rows.truncate(limit);
        Ok(rows)
    }

    /// [`RedisQueue::active_leases`] over every shard, soonest expiry first.
    pub async fn active_leases_all(&self, max: usize) -> Result<Vec<(String, u64)>, QueueError> {
        if !self.routes_all() {
            return self.active_leases(max).await;
        }
        let mut rows = Vec::new();
        for shard in self.shards() {
            rows.extend(shard.active_leases(max).await?);
        }
        rows.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        rows.truncate(max);
        Ok(rows)
    }

    /// [`RedisQueue::job_summaries`] of jobs on any shard: each read where its ID
    /// points, then on shard 0 where not found there.
    pub async fn job_summaries_all(
        &self,
        ids: &[String],
    ) -> Result<Vec<Option<JobSummary>>, QueueError> {
        if !self.routes() {
            return self.job_summaries(ids).await;
        }
        let mut out = vec![None; ids.len()];
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, id) in ids.iter().enumerate() {
            groups.entry(named_shard(id)).or_default().push(i);
        }
        let mut on_zero = Vec::new();
        for (k, members) in groups {
            let part: Vec<String> = members.iter().map(|&i| ids[i].clone()).collect();
            for (i, found) in members
                .into_iter()
                .zip(self.shard(k).job_summaries(&part).await?)
            {
                if found.is_none() && k != 0 {
                    on_zero.push(i);
                }
                out[i] = found;
            }
        }
        if !on_zero.is_empty() {
            let part: Vec<String> = on_zero.iter().map(|&i| ids[i].clone()).collect();
            for (i, found) in on_zero
                .into_iter()
                .zip(self.shard(0).job_summaries(&part).await?)
            {
                out[i] = found;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stable_hash_does_not_change() {
        // FNV-1a 64 test vectors: producers of every version must agree.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn an_id_names_its_shard_and_other_strings_shard_zero() {
        assert_eq!(named_shard(&JobId::for_shard(5).to_string()), 5);
        assert_eq!(named_shard("refresh-abc"), 0);
    }
}
