//! The project's own Redis queue backend (DESIGN §4): what apalis-redis 1.0.0 could
//! not promise, built around leases with fencing tokens.
//!
//! The life of a job, one Lua script per transition (`lua/`):
//!
//! ```text
//!  enqueue ─► queued ──fetch──► running ──complete──► succeeded
//!               ▲  ▲               │  │
//!   promote     │  │  release      │  ├─fail(retry)──► retrying ──(due: fetch promotes)──► queued
//!   (in fetch)  │  └───────────────┘  ├─fail(dead)───► dead ──retry_dead──► queued
//!               │                     │                     └──purge_dead──► failed
//!               └──reclaim_expired────┤ (lease expired; attempts left)
//!                                     └─fail(cancelled) / cancel ──► cancelled
//! ```
//!
//! - **Leases and fencing.** `fetch` (claim, read, lease: every key a script touches
//!   is declared) gives each attempt a lease (an expiry in the
//!   `active` set, by Redis' clock) and a fencing token (a counter and a nonce, so a
//!   failover that loses the counter's last steps cannot issue one twice). The worker renews its leases from a
//!   thread of its own (`lease_keeper`). Any worker reclaims expired leases. A result,
//!   an ack or any state change is accepted only with the current token, so a stale
//!   attempt can never overwrite the outcome: at-least-once execution, exactly-once result.
//! - **No sleep-polling.** An idle worker blocks in `BZPOPMIN` on the `marker` key,
//!   which every enqueue (and every transition that makes work ready) sets, with a
//!   timeout reaching to the next delayed job.
//! - **No backlog breaks it.** Promotion of due jobs moves a bounded chunk per call,
//!   and no script unpacks a list into arguments.
//! - **Weather is retried.** Every operation retries passing Redis faults with backoff
//!   (`backoff::redis_backoff`); the calls are idempotent (client-chosen job IDs; a
//!   settle retried after a lost reply is recognised by its token; a fetch retried
//!   after a lost reply, under its client-chosen fetch ID, returns the same leases).

pub mod apalis_backend;
pub mod attempt;
pub mod backoff;
pub mod index;
pub mod keys;
pub mod lease_keeper;
pub mod listing;
mod scripts;
pub mod shards;

use std::sync::Arc;
use std::time::Duration;

use crate::connection::RedisConn;
use backon::Retryable;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

pub use keys::Keys;
use scripts::SCRIPTS;

use crate::job::{Job, JobId, JobSpec, QueueKind};
use crate::settings::{Durability, RedisSettings, RetryPolicy, Settings};
use crate::time::redis_now_ms;

/// Errors of queue operations that survived their retries.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot reach Redis at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error(
        "Redis at {url} refused the credentials (redis.username and redis.password_env, or user:password in the URL): {source}"
    )]
    Credentials {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error(
        "TLS with Redis at {url} failed (is redis.tls_ca_file the CA that signed the server's certificate, and are redis.tls_cert_file/tls_key_file the client's?): {source}"
    )]
    Tls {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("bad data in Redis: {0}")]
    Corrupt(String),
    /// A batched call failed; every caller in the batch gets its message.
    #[error("{0}")]
    Batch(String),
    /// The write happened but `queue.durability` was not confirmed: retry it (with the
    /// same job IDs or idempotency key nothing is written twice).
    #[error("not confirmed durable, retry: {0}")]
    NotDurable(String),
}

/// How one queue behaves; built from the settings for one [`QueueKind`].
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub kind: QueueKind,
    pub lease_ttl: Duration,
    /// How often each worker reclaims expired leases; a longer pause between reclaims
    /// than about this (and a third of the TTL) is taken as a stall of the whole queue.
    pub reclaim_interval: Duration,
    pub promote_chunk: u32,
    pub result_ttl: Duration,
    pub idempotency_ttl: Duration,
    pub policy: RetryPolicy,
    /// Redis operations retry passing faults for this long, then fail; `None`: forever.
    pub give_up_after: Option<Duration>,
    /// Where large answers go (`[results]`, results/store.rs).
    pub results: crate::settings::ResultsSettings,
    /// The result cache (results/cache.rs).
    pub cache: crate::results::cache::CacheConfig,
    /// What enqueues and settles wait for (`queue.durability`), and for how long.
    pub durability: Durability,
    pub durability_timeout: Duration,
    /// How many shards the queue has (`queue.shards` for research, 1 for lifecycle).
    pub shards: u16,
    /// Which shard a handle opened with this config is (0 for the queue itself).
    pub shard: u16,
    /// Whether the scripts keep the listing indexes (`queue.listing_indexes`).
    pub listing_indexes: bool,
}

impl QueueConfig {
    pub fn from_settings(settings: &Settings, kind: QueueKind) -> QueueConfig {
        let q = &settings.queue;
        QueueConfig {
            kind,
            lease_ttl: Duration::from_secs(q.lease_ttl_secs),
            reclaim_interval: Duration::from_millis(q.reclaim_interval_ms),
            promote_chunk: q.promote_chunk,
            result_ttl: Duration::from_secs(q.result_ttl_secs),
            idempotency_ttl: Duration::from_secs(q.idempotency_ttl_secs),
            policy: q.policy(kind).clone(),
            give_up_after: Some(Duration::from_secs(30)),
            results: settings.results.clone(),
            cache: crate::results::cache::CacheConfig::from_settings(settings),
            durability: q.durability,
            durability_timeout: Duration::from_millis(q.durability_timeout_ms),
            // The lifecycle queue carries few jobs: one shard (README "When to shard").
            shards: match kind {
                QueueKind::Research => q.shards.max(1),
                QueueKind::Lifecycle => 1,
            },
            shard: 0,
            listing_indexes: q.listing_indexes,
        }
    }
}

/// Open a self-healing Redis connection in the settings' topology (it reconnects
/// after drops and restarts, and follows a moved primary).
pub async fn connect(redis: &RedisSettings) -> Result<RedisConn, QueueError> {
    connect_with_timeout(redis, Duration::from_millis(redis.response_timeout_ms)).await
}

async fn connect_with_timeout(
    redis: &RedisSettings,
    response_timeout: Duration,
) -> Result<RedisConn, QueueError> {
    let timeouts = crate::connection::Timeouts {
        response: response_timeout,
        connect: Duration::from_millis(redis.connect_timeout_ms),
    };
    crate::connection::connect_with(redis, timeouts)
        .await
        .map_err(|source| connect_error(redis, source))
}

/// A failed connection, told apart: bad credentials and a failed TLS handshake are
/// settings to fix, not weather to wait out.
fn connect_error(redis: &RedisSettings, source: redis::RedisError) -> QueueError {
    let url = redacted_url(&redis.url);
    let text = source.to_string();
    if source.kind() == redis::ErrorKind::AuthenticationFailed
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
    {
        QueueError::Credentials { url, source }
    } else if text.contains("certificate")
        || text.contains("Certificate")
        || text.contains("UnknownIssuer")
        || text.contains("TLS")
    {
        QueueError::Tls { url, source }
    } else {
        QueueError::Unreachable { url, source }
    }
}

pub use crate::connection::redacted_url;

/// One job leased to a worker: what `fetch` returns.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The job ID as stored (normally a UUID; kept raw so a bad one can be dead-lettered).
    pub id: String,
    /// The fencing token of this attempt.
    pub token: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub max_attempts: u32,
    /// 0 = no deadline.
    pub deadline_at_ms: u64,
    pub created_at_ms: u64,
    pub spec_json: String,
    pub leased_at_ms: u64,
}

impl Lease {
    /// The job, or why it cannot be decoded (then it is dead-lettered with that reason).
    pub fn decode(&self) -> Result<Job, String> {
        let id: JobId = self
            .id
            .parse()
            .map_err(|_| format!("undecodable job: its ID {:?} is not a UUID", self.id))?;
        let spec: JobSpec = serde_json::from_str(&self.spec_json)
            .map_err(|e| format!("undecodable job payload: {e}"))?;
        Ok(Job {
            id,
            spec,
            created_at_ms: self.created_at_ms,
        })
    }
}

/// What `fetch` found.
#[derive(Debug, Default)]
pub struct Fetched {
    pub leases: Vec<Lease>,
    /// When the earliest delayed job falls due (ms, Redis' clock), if any.
    pub next_due_ms: Option<u64>,
    /// Redis' clock when the fetch ran (ms): how long until `next_due_ms`.
    pub redis_now_ms: u64,
}

/// One successful attempt's result, for [`RedisQueue::complete_many`]. The result
/// describes the attempt too (see [`success_record`]): no separate record is stored.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: String,
    pub token: String,
    pub result_json: String,
    /// The attempt staged its answer under `staged:<id>:<token>` (results/store.rs);
    /// the complete makes it the job's answer.
    pub staged: bool,
    /// What the job cost (USD, all its attempts; 0 when unknown): the history's `cost`.
    pub cost_usd: f64,
}

/// The history entry of a succeeded job's final attempt, read back from its result.
pub fn success_record(result: &serde_json::Value) -> AttemptRecord {
    let num = |k: &str| result.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
    AttemptRecord {
        attempt: num("attempts") as u32,
        worker: text(result.get("worker")).unwrap_or_default(),
        started_at: num("started_at"),
        ended_at: num("finished_at"),
        outcome: "succeeded".into(),
        agent_id: text(result.pointer("/output/agent_id")),
        sandbox_id: text(result.pointer("/output/sandbox_id")),
        ..Default::default()
    }
}

/// How a failed attempt is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Run again after `delay`.
    Retry { delay: Duration },
    /// Dead-letter with the reason.
    Dead,
    /// End `cancelled`.
    Cancelled,
    /// Hand back to the queue at once; the attempt does not count (graceful shutdown).
    Release,
}

impl Settlement {
    fn as_str(&self) -> &'static str {
        match self {
            Settlement::Retry { .. } => "retry",
            Settlement::Dead => "dead",
            Settlement::Cancelled => "cancelled",
            Settlement::Release => "release",
        }
    }
}

/// Whether a fenced write was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    Accepted,
    /// The lease was lost (reclaimed): the write was refused.
    Stale,
}

/// What lease renewal found for one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    CancelRequested,
    Lost,
}

/// The outcome of `cancel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It had not run (or was waiting for a retry): now `cancelled`.
    Cancelled,
    /// It is running: its worker was told to kill it.
    Cancelling,
    NotFound,
    /// It had already ended with this status.
    AlreadyEnded(String),
}

/// The record of one attempt, kept in the job's attempt history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    #[serde(default)]
    pub worker: String,
    #[serde(default)]
    pub started_at: u64,
    #[serde(default)]
    pub ended_at: u64,
    /// `succeeded`, or the error class (`transient`, `timeout`, `lease_lost`, ...).
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// The delay before the next attempt, when one was scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    /// What the agent reported about the failed run (cost, turns, session, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl AttemptRecord {
    /// The record of `lease`'s attempt by `worker`, from `started_at` until now.
    pub fn ended(
        lease: &Lease,
        worker: &str,
        started_at: u64,
        outcome: &str,
        error: Option<String>,
    ) -> AttemptRecord {
        AttemptRecord {
            attempt: lease.attempt,
            worker: worker.to_string(),
            started_at,
            ended_at: redis_now_ms(),
            outcome: outcome.to_string(),
            error,
            ..Default::default()
        }
    }
}

/// One queue (research or lifecycle) in Redis. Cheap to clone. A handle from
/// [`RedisQueue::open`] routes over the queue's shards (`shards.rs`: enqueue, lookups by
/// ID, whole-queue reads); the per-shard calls (`fetch`, `renew`, `complete`, `fail`,
/// `reclaim_expired`, `wait_for_work`) act on the handle's own shard, 0 for an opened
/// handle: workers take one handle per shard from [`RedisQueue::shards`].
#[derive(Clone)]
pub struct RedisQueue {
    conn: RedisConn,
    redis: Arc<RedisSettings>,
    config: Arc<QueueConfig>,
    keys: Arc<Keys>,
    /// Opened on the queue (routes over its shards, `shards.rs`), not one shard.
    routing: bool,
    /// The round-robin turn of the next job enqueued without a home shard.
    spread: Arc<std::sync::atomic::AtomicUsize>,
    /// Per job leased through this handle and not yet settled, in a batch or in the
    /// result cache: its batch ID as the fetch read it (its settle declares the batch
    /// record without reading it again), or `None` for a job in the cache (its settle
    /// reads its entry's followers first).
    hints: Arc<std::sync::Mutex<std::collections::HashMap<String, Option<String>>>>,
}

/// Notes kept in [`RedisQueue`]'s `hints` at most (a few MB).
const HINTS_MAX: usize = 50_000;

/// How many times a settle reads its keys again when the script found one undeclared
/// (a follower joined a cache entry in between) before it gives up for this try.
pub(crate) const REREADS: usize = 5;

/// A settle whose keys changed under it [`REREADS`] times: passing (TRYAGAIN), the
/// retry loop tries again.
pub(crate) fn keys_kept_changing() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain),
        "the job's keys kept changing between their read and the script",
    ))
}

/// The fetch script's reply: `[now<TAB>next_due, meta, spec, meta, spec, …]`
/// (lease-n.lua), Redis' clock.
fn parse_fetched(reply: Vec<Vec<u8>>) -> Result<Fetched, QueueError> {
    let mut items = reply.into_iter();
    let clock = items
        .next()
        .ok_or_else(|| QueueError::Corrupt("empty fetch reply".into()))?;
    let clock = String::from_utf8_lossy(&clock);
    let (now, next_due) = clock.split_once('\t').unwrap_or(("", &clock));
    let next_due_ms = next_due.parse::<f64>().ok().map(|v| v as u64);
    let clock_now = now.parse::<u64>().ok();
    if let Some(now) = clock_now {
        crate::time::observe_redis_clock(now);
    }
    // Leased when the script ran, by Redis' clock (as the job's created_at is).
    let leased_at_ms = clock_now.unwrap_or_else(redis_now_ms);
    let mut leases = Vec::with_capacity(items.len() / 2);
    while let Some(meta) = items.next() {
        let spec = items
            .next()
            .ok_or_else(|| QueueError::Corrupt("fetch reply: a lease without its spec".into()))?;
        let meta = String::from_utf8_lossy(&meta);
        let mut f = meta.splitn(6, '\t');
        let mut field = || f.next().unwrap_or_default();
        let token = field().to_string();
        let attempt = field().parse().unwrap_or(1);
        let max_attempts = field().parse().unwrap_or(1);
        let deadline_at_ms = field().parse().unwrap_or(0);
        let created_at_ms = field().parse().unwrap_or(0);
        let id = field().to_string();
        leases.push(Lease {
            id,
            token,
            attempt,
            max_attempts,
            deadline_at_ms,
            created_at_ms,
            // Our producer writes UTF-8 JSON; anything else fails to decode and is
            // dead-lettered with the reason.
            spec_json: String::from_utf8(spec)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            leased_at_ms,
        });
    }
    Ok(Fetched {
        leases,
        next_due_ms,
        redis_now_ms: leased_at_ms,
    })
}

/// The complete script's codes: 0 refused (stale), else accepted.
fn fenced_codes(codes: Vec<i64>) -> Vec<Fenced> {
    codes
        .into_iter()
        .map(|c| {
            // 3: the staged answer is gone; the attempt's result cannot be written.
            if c == 0 || c == 3 {
                Fenced::Stale
            } else {
                Fenced::Accepted
            }
        })
        .collect()
}

/// What a job's record names beyond its own keys (read by [`RedisQueue::job_refs`]).
#[derive(Debug, Clone, Default)]
struct JobRefs {
    batch: Option<String>,
    cache: Option<String>,
    /// Its cancellation was requested (the `cancel` flag), or it was cancelled while
    /// queued (`in_wait`): a fetch that pops it ends it.
    ends: bool,
}

/// The queue scripts by name and SHA1 digest (see `Scripts::digests`).
pub fn script_digests() -> Vec<(&'static str, String)> {
    SCRIPTS.digests()
}

/// A new fetch ID: names one fetch across its retries (claim-5.lua, lease-n.lua).
pub fn new_fetch_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// One job's arguments to the enqueue script.
pub(crate) struct EnqueueRow {
    pub(crate) id: String,
    pub(crate) spec_json: String,
    /// `max_attempts<TAB>deadline_at<TAB>created_at`, stored and fetched as one field.
    pub(crate) meta: String,
    pub(crate) batch: String,
    pub(crate) idempotency_key: String,
    /// Its membership index suffixes (index.rs), tab-separated: the job's `ix` field.
    pub(crate) ix: String,
}

/// The distinct membership indexes of `rows`, each once, as enqueue declares them.
pub(crate) fn row_indexes<'a>(rows: impl Iterator<Item = &'a EnqueueRow>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for row in rows {
        for s in row.ix.split('\t').filter(|s| !s.is_empty()) {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}

/// The enqueue_cached script (results/cache.rs).
pub(crate) fn scripts_enqueue_cached() -> &'static redis::Script {
    &SCRIPTS.enqueue_cached
}

impl EnqueueRow {
    fn is_plain(&self) -> bool {
        self.batch.is_empty() && self.idempotency_key.is_empty()
    }
}

/// Jobs per enqueue script call: big enough to amortise the round trip, small enough
/// that one call holds Redis for about a millisecond.
const ENQUEUE_CHUNK: usize = 500;

impl RedisQueue {
    pub async fn open(
        redis: &RedisSettings,
        config: QueueConfig,
    ) -> Result<RedisQueue, QueueError> {
        let conn = connect(redis).await?;
        Ok(Self::with_connection(conn, redis, config))
    }

    pub fn with_connection(
        conn: RedisConn,
        redis: &RedisSettings,
        config: QueueConfig,
    ) -> RedisQueue {
        RedisQueue {
            conn,
            keys: Arc::new(
                Keys::for_shard(&redis.key_prefix, config.kind, config.shard)
                    .with_indexes(config.listing_indexes),
            ),
            redis: Arc::new(redis.clone()),
            // A handle opened on one shard (a lease keeper's) acts on that shard.
            routing: config.shard == 0,
            config: Arc::new(config),
            // A random first turn: producers that enqueue one job each (a CLI
            // `submit`) spread too, not all on shard 0.
            spread: Arc::new(std::sync::atomic::AtomicUsize::new(
                rand::random::<u16>().into(),
            )),
            hints: Default::default(),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    pub fn redis_settings(&self) -> &RedisSettings {
        &self.redis
    }

    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    /// Run `op` again on passing Redis faults, with backoff.
    pub(crate) async fn retrying<T, F, Fut>(
        &self,
        what: &'static str,
        op: F,
    ) -> Result<T, QueueError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let url = &self.redis.url;
        op.retry(backoff::redis_backoff(self.config.give_up_after))
            .when(backoff::is_transient)
            .notify(|err, delay| {
                tracing::warn!(operation = what, error = %err, retry_in_ms = delay.as_millis() as u64, "Redis unavailable; retrying");
            })
            .await
            .map_err(|source| {
                if backoff::is_transient(&source) {
                    QueueError::Unreachable {
                        url: redacted_url(url),
                        source,
                    }
                } else {
                    QueueError::Redis(source)
                }
            })
    }

    fn resolved_max_attempts(&self, spec: &JobSpec) -> u32 {
        spec.options
            .max_attempts
            .unwrap_or(self.config.policy.max_attempts)
    }

    /// The job's deadline in ms from its enqueue (0 = none); the script adds Redis'
    /// clock. Saturating: a deadline past u64 milliseconds is "never", not a wrap.
    fn deadline_ms(&self, spec: &JobSpec) -> u64 {
        let secs = spec
            .options
            .deadline_secs
            .unwrap_or(self.config.policy.deadline_secs);
        secs.saturating_mul(1000)
    }

    /// Enqueue one job. With an idempotency key already used within its TTL, returns
    /// the existing job's ID and `existing = true`, and writes nothing.
    pub async fn enqueue(&self, spec: JobSpec) -> Result<(JobId, bool), QueueError> {
        let job = self.new_jobs(vec![spec]).remove(0);
        let id = job.id;
        let ids = self.enqueue_jobs(&[job], None).await?;
        let got = ids[0];
        Ok((got, got != id))
    }

    /// Enqueue many jobs (e.g. a batch), in chunks; returns each job's ID in order.
    pub async fn enqueue_many(
        &self,
        specs: Vec<JobSpec>,
        batch_id: Option<&str>,
    ) -> Result<Vec<JobId>, QueueError> {
        let jobs = self.new_jobs(specs);
        self.enqueue_jobs(&jobs, batch_id).await
    }

    /// Enqueue jobs whose IDs were chosen already (retries of this call are harmless).
    /// Jobs that use the result cache are looked up in it as they are written
    /// (results/cache.rs).
    pub async fn enqueue_jobs(
        &self,
        jobs: &[Job],
        batch_id: Option<&str>,
    ) -> Result<Vec<JobId>, QueueError> {
        if self.routes_all() {
            return self.enqueue_sharded(jobs, batch_id).await;
        }
        self.enqueue_jobs_here(jobs, batch_id).await
    }

    /// [`RedisQueue::enqueue_jobs`] on this handle's own keys.
    pub(crate) async fn enqueue_jobs_here(
        &self,
        jobs: &[Job],
        batch_id: Option<&str>,
    ) -> Result<Vec<JobId>, QueueError> {
        let ids = if self.any_cached(jobs) {
            self.enqueue_with_cache(jobs, batch_id).await?
        } else {
            self.enqueue_uncached(jobs, batch_id).await?
        };
        self.confirm_durable().await?;
        Ok(ids)
    }

    /// Wait until the writes sent so far on this queue's connection are durable as
    /// `queue.durability` asks (`connection::durability`). The caller retries an error.
    pub async fn confirm_durable(&self) -> Result<(), QueueError> {
        if self.config.durability == Durability::None {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let confirmed = crate::connection::durability::confirm(
            &mut conn,
            self.config.durability,
            self.config.durability_timeout,
            &self.keys.wait,
        )
        .await;
        match confirmed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(unconfirmed)) => Err(QueueError::NotDurable(unconfirmed.to_string())),
            Err(source) if backoff::is_transient(&source) => Err(QueueError::NotDurable(format!(
                "Redis did not answer the confirmation: {source}"
            ))),
            Err(source) => Err(QueueError::Redis(source)),
        }
    }

    /// [`RedisQueue::confirm_durable`] after a settle: the outcome stands (it is
    /// fenced and already applied), so a missing confirmation is a warning.
    async fn confirm_settled(&self, what: &'static str) {
        if let Err(e) = self.confirm_durable().await {
            tracing::warn!(operation = what, error = %e, "settled, but the write was not confirmed durable");
        }
    }

    /// [`RedisQueue::enqueue_jobs`] for jobs that do not use the result cache.
    pub(crate) async fn enqueue_uncached(
        &self,
        jobs: &[Job],
        batch_id: Option<&str>,
    ) -> Result<Vec<JobId>, QueueError> {
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(ENQUEUE_CHUNK) {
            let rows: Vec<EnqueueRow> = chunk
                .iter()
                .map(|job| self.enqueue_row(job, batch_id))
                .collect();
            // Four arguments per job unless some job of this call has a batch or an
            // idempotency key (enqueue-n.lua).
            let per = if rows.iter().all(EnqueueRow::is_plain) {
                4
            } else {
                7
            };
            let indexes: Vec<String> = row_indexes(rows.iter())
                .into_iter()
                .map(|i| self.keys.index(i))
                .collect();
            // Keys: the three lists, then per job its record (and idempotency key), then
            // each batch record once (enqueue-n.lua).
            let mut keys: Vec<String> = Vec::with_capacity(3 + chunk.len() * 2);
            keys.extend([
                self.keys.wait.clone(),
                self.keys.delayed.clone(),
                self.keys.marker.clone(),
            ]);
            let mut batches: Vec<&str> = Vec::new();
            for row in &rows {
                keys.push(self.keys.job(&row.id));
                if per == 7 {
                    keys.push(self.keys.idem(&row.idempotency_key));
                }
                if !row.batch.is_empty() && !batches.contains(&row.batch.as_str()) {
                    batches.push(&row.batch);
                }
            }
            keys.extend(batches.iter().map(|b| self.keys.batch(b)));
            let n_indexes = indexes.len();
            keys.extend(indexes);
            keys.extend(self.keys.index_tail.iter().cloned());
            let mut args: Vec<String> = Vec::with_capacity(4 + chunk.len() * per);
            args.push(self.keys.prefix.clone());
            args.push(self.config.idempotency_ttl.as_millis().to_string());
            args.push(per.to_string());
            args.push(n_indexes.to_string());
            for row in rows {
                args.push(row.id);
                args.push(row.spec_json);
                args.push(row.meta);
                args.push(row.ix);
                if per == 7 {
                    args.push(row.batch);
                    args.push(row.idempotency_key);
                    args.push("0".into());
                }
            }
            let ids: Vec<String> = self
                .retrying("enqueue", || {
                    let mut conn = self.conn.clone();
                    let mut inv = SCRIPTS.enqueue.prepare_invoke();
                    for k in &keys {
                        inv.key(k);
                    }
                    for a in &args {
                        inv.arg(a);
                    }
                    async move { inv.invoke_async(&mut conn).await }
                })
                .await?;
            for id in ids {
                out.push(
                    id.parse()
                        .map_err(|_| QueueError::Corrupt(format!("job ID {id:?}")))?,
                );
            }
        }
        Ok(out)
    }

    pub(crate) fn enqueue_row(&self, job: &Job, batch_id: Option<&str>) -> EnqueueRow {
        let batch = batch_id
            .map(str::to_string)
            .or_else(|| job.spec.options.batch_id.clone())
            .unwrap_or_default();
        let mut spec = job.spec.clone();
        spec.options.batch_id = (!batch.is_empty()).then(|| batch.clone());
        EnqueueRow {
            id: job.id.to_string(),
            spec_json: serde_json::to_string(&spec).expect("a job spec serialises"),
            meta: format!(
                "{}\t{}",
                self.resolved_max_attempts(&spec),
                self.deadline_ms(&spec)
            ),
            idempotency_key: spec.options.idempotency_key.clone().unwrap_or_default(),
            // no memberships when the indexes are off: the job joins no index
            ix: if self.config.listing_indexes {
                index::memberships(&spec, &batch).join("\t")
            } else {
                String::new()
            },
            batch,
        }
    }

    /// Lease up to `max` ready jobs to `worker` (promoting due delayed jobs first).
    /// Passing Redis faults are retried as one fetch (one fetch ID): a retry after a
    /// lost reply returns the jobs the first try leased, never leases more.
    pub async fn fetch(&self, worker: &str, max: usize) -> Result<Fetched, QueueError> {
        let fetch_id = new_fetch_id();
        let reply = self
            .retrying("fetch", || self.fetch_promoting(worker, max, &fetch_id))
            .await?;
        parse_fetched(reply)
    }

    /// One try of fetch `fetch_id` (from [`new_fetch_id`]), without retries: the caller
    /// tries again with the same ID after an error (the fetch loop, which checks for a
    /// stop between tries). The same ID returns the same leases for a lease TTL.
    pub async fn fetch_once(
        &self,
        worker: &str,
        max: usize,
        fetch_id: &str,
    ) -> Result<Fetched, QueueError> {
        let reply = self.fetch_promoting(worker, max, fetch_id).await?;
        parse_fetched(reply)
    }

    /// One try of fetch `fetch_id`, promoting due delayed jobs when its reply says one
    /// is due: then, if the fetch leased nothing, it is tried again (same fetch ID) to
    /// lease what was promoted. Promotion is its own two steps (`promote_due`) so that
    /// every key it touches is declared; a drain with nothing delayed never runs it.
    async fn fetch_promoting(
        &self,
        worker: &str,
        max: usize,
        fetch_id: &str,
    ) -> redis::RedisResult<Vec<Vec<u8>>> {
        let reply = self.invoke_fetch(worker, max, fetch_id).await?;
        let due = reply.first().is_some_and(|clock| {
            let clock = String::from_utf8_lossy(clock);
            let (now, next) = clock.split_once('\t').unwrap_or(("", ""));
            matches!(
                (now.parse::<u64>(), next.parse::<f64>()),
                (Ok(now), Ok(next)) if next as u64 <= now
            )
        });
        if !due {
            return Ok(reply);
        }
        let promoted = self.promote_due().await?;
        if promoted > 0 && reply.len() == 1 {
            return self.invoke_fetch(worker, max, fetch_id).await;
        }
        Ok(reply)
    }

    /// Move due delayed jobs (at most `queue.promote_chunk`) to `wait`: `due_delayed`
    /// names them, their batch fields are read, and `promote_delayed` moves them with
    /// every key declared, checking each again. Returns how many were made ready.
    async fn promote_due(&self) -> redis::RedisResult<u64> {
        let mut conn = self.conn.clone();
        let due: Vec<String> = SCRIPTS
            .due_delayed
            .key(&self.keys.delayed)
            .arg(self.config.promote_chunk)
            .invoke_async(&mut conn)
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let job_keys = self.keys_of_jobs(&due).await?;
        let mut inv = SCRIPTS.promote_delayed.prepare_invoke();
        inv.key(&self.keys.wait)
            .key(&self.keys.delayed)
            .key(&self.keys.marker);
        for k in &job_keys {
            inv.key(k);
        }
        for k in &self.keys.index_tail {
            inv.key(k);
        }
        inv.arg(&self.keys.prefix);
        for id in &due {
            inv.arg(id);
        }
        inv.invoke_async(&mut conn).await
    }

    /// One try of a fetch in its steps: `claim` takes ready IDs off `wait` for this
    /// fetch (no job record touched), their records' `batch`, `cache`, `cancel` and
    /// `in_wait` fields are read, and `lease` leases them with every key declared,
    /// checking each again (lease-n.lua). The read travels with a first lease that
    /// declares the records only, so a fetch of jobs in no batch is one round trip
    /// more than one script would take, of jobs in a batch two: the price of naming
    /// every key in KEYS (docs/ARCHITECTURE.md, "Keys and Redis Cluster"); an empty
    /// fetch is still one. Each step is idempotent under the fetch ID, so a retry of
    /// the whole returns the same leases.
    async fn invoke_fetch(
        &self,
        worker: &str,
        max: usize,
        fetch_id: &str,
    ) -> redis::RedisResult<Vec<Vec<u8>>> {
        let mut conn = self.conn.clone();
        let fetch_key = self.keys.fetch(worker, fetch_id);
        let mut claimed: Vec<Vec<u8>> = SCRIPTS
            .claim
            .key(&self.keys.wait)
            .key(&self.keys.active)
            .key(&self.keys.delayed)
            .key(&self.keys.marker)
            .key(&fetch_key)
            .arg(self.config.lease_ttl.as_millis() as u64)
            .arg(max)
            .invoke_async(&mut conn)
            .await?;
        if claimed.len() <= 1 {
            return Ok(claimed);
        }
        let ids: Vec<String> = claimed
            .drain(1..)
            .map(|id| String::from_utf8_lossy(&id).into_owned())
            .collect();
        // The read and a first lease that declares the records only, sent together:
        // one round trip leases every job in no batch and not ending here. What the
        // read names (batch records; for a job cancelled while queued its attempts,
        // cache entry and followers, which a lease otherwise never touches) is declared
        // in a second call, only if the first left jobs claimed.
        let records: Vec<String> = ids.iter().map(|id| self.keys.job(id)).collect();
        let (refs, first) = tokio::join!(
            self.job_refs(&ids),
            self.invoke_lease(worker, fetch_id, &fetch_key, &records, true)
        );
        let refs = refs?;
        let mut reply = first?;
        let claimed_left = reply
            .first()
            .and_then(|head| {
                head.iter()
                    .position(|b| *b == b'\t')
                    .map(|t| &head[t + 1..])
            })
            .is_some_and(|left| left != b"0");
        if claimed_left {
            let job_keys = self.keys_of(&ids, &refs, |r| r.ends).await?;
            reply = self
                .invoke_lease(worker, fetch_id, &fetch_key, &job_keys, false)
                .await?;
        }
        self.remember_leased(&ids, &refs);
        // The clock line: the lease's time, the claim's earliest delayed job.
        if let (Some(head), Some(clock)) = (reply.first_mut(), claimed.first()) {
            if let Some(tab) = head.iter().position(|b| *b == b'\t') {
                head.truncate(tab);
            }
            if let Some(tab) = clock.iter().position(|b| *b == b'\t') {
                head.extend_from_slice(&clock[tab..]);
            }
        }
        Ok(reply)
    }

    /// One call of the lease script (lease-n.lua) with these job keys declared;
    /// `more`: another call of this fetch follows (jobs whose keys were not declared
    /// stay claimed for it), else they go back to `wait`.
    fn invoke_lease(
        &self,
        worker: &str,
        fetch_id: &str,
        fetch_key: &str,
        job_keys: &[String],
        more: bool,
    ) -> impl Future<Output = redis::RedisResult<Vec<Vec<u8>>>> + use<> {
        let mut conn = self.conn.clone();
        let mut inv = SCRIPTS.lease.prepare_invoke();
        inv.key(&self.keys.wait)
            .key(&self.keys.active)
            .key(&self.keys.marker)
            .key(&self.keys.token)
            .key(&self.keys.dead)
            .key(fetch_key);
        for k in job_keys.iter().chain(&self.keys.index_tail) {
            inv.key(k);
        }
        inv.arg(&self.keys.prefix)
            .arg(self.config.lease_ttl.as_millis() as u64)
            .arg(worker)
            .arg(self.config.result_ttl.as_millis() as u64)
            .arg(fetch_id)
            .arg(if more { "more" } else { "last" });
        async move { inv.invoke_async(&mut conn).await }
    }

    /// Renew leases held by this worker; one code per lease, in order.
    pub async fn renew(&self, leases: &[(String, String)]) -> Result<Vec<Renewal>, QueueError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let codes: Vec<i64> = self
            .retrying("renew_leases", || {
                let mut conn = self.conn.clone();
                let mut inv = SCRIPTS.renew_leases.prepare_invoke();
                inv.key(&self.keys.active)
                    .arg(self.config.lease_ttl.as_millis() as u64);
                for (id, token) in leases {
                    inv.key(self.keys.job(id)).arg(id).arg(token);
                }
                async move { inv.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(codes
            .into_iter()
            .map(|c| match c {
                1 => Renewal::Renewed,
                2 => Renewal::CancelRequested,
                _ => Renewal::Lost,
            })
            .collect())
    }

    /// Write the result of a successful attempt (fenced).
    pub async fn complete(&self, lease: &Lease, result_json: &str) -> Result<Fenced, QueueError> {
        let done = self
            .complete_many(&[Completion {
                id: lease.id.clone(),
                token: lease.token.clone(),
                result_json: result_json.to_string(),
                staged: false,
                cost_usd: 0.0,
            }])
            .await?;
        Ok(done[0])
    }

    /// Write several results in one call (fenced one by one); one outcome each, in order.
    pub async fn complete_many(
        &self,
        completions: &[Completion],
    ) -> Result<Vec<Fenced>, QueueError> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        let codes = self
            .retrying("complete", || self.complete_declared(completions))
            .await?;
        self.confirm_settled("complete").await;
        Ok(fenced_codes(codes))
    }

    /// One try of [`RedisQueue::complete_many`], without retries (the completion
    /// batcher splits a batch that fails, and the attempt retries what still fails).
    pub async fn complete_many_once(
        &self,
        completions: &[Completion],
    ) -> redis::RedisResult<Vec<Fenced>> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        let codes = self.complete_declared(completions).await?;
        self.confirm_settled("complete").await;
        Ok(fenced_codes(codes))
    }

    /// One try of the complete script with every key it may touch declared: the
    /// further keys (batch records; for a cache leader its entry and followers) come
    /// from what the fetch read ([`RedisQueue::settle_keys`]), or are read now; a
    /// completion the script sends back (code 4: a follower joined in between) is read
    /// again and sent again, a bounded number of times.
    async fn complete_declared(&self, completions: &[Completion]) -> redis::RedisResult<Vec<i64>> {
        let ids: Vec<String> = completions.iter().map(|c| c.id.clone()).collect();
        let extra = self.settle_keys(&ids, true).await?;
        let mut codes = self.invoke_complete(completions, &extra).await?;
        for _ in 0..REREADS {
            let again: Vec<usize> = (0..codes.len()).filter(|&i| codes[i] == 4).collect();
            if again.is_empty() {
                break;
            }
            let subset: Vec<Completion> = again.iter().map(|&i| completions[i].clone()).collect();
            let ids: Vec<String> = subset.iter().map(|c| c.id.clone()).collect();
            let extra = self.settle_keys(&ids, false).await?;
            let redo = self.invoke_complete(&subset, &extra).await?;
            for (&i, code) in again.iter().zip(redo) {
                codes[i] = code;
            }
        }
        if codes.contains(&4) {
            return Err(keys_kept_changing());
        }
        self.forget_settled(&ids);
        Ok(codes)
    }

    fn invoke_complete(
        &self,
        completions: &[Completion],
        extra: &[String],
    ) -> impl Future<Output = redis::RedisResult<Vec<i64>>> + use<> {
        let mut conn = self.conn.clone();
        let mut inv = SCRIPTS.complete.prepare_invoke();
        // Four arguments per completion only when one staged its answer (complete-n.lua).
        let staged = completions.iter().any(|c| c.staged);
        inv.key(&self.keys.active)
            .arg(&self.keys.prefix)
            .arg(self.config.result_ttl.as_millis() as u64)
            .arg(if staged { 5 } else { 4 });
        for c in completions {
            inv.key(self.keys.job(&c.id)).key(self.keys.attempts(&c.id));
            inv.arg(&c.id)
                .arg(&c.token)
                .arg(&c.result_json)
                .arg(index::micro_usd(c.cost_usd));
            if staged {
                inv.key(self.keys.answer(&c.id))
                    .key(self.keys.staged_answer(&c.id, &c.token));
                inv.arg(if c.staged { "1" } else { "" });
            }
        }
        for k in extra {
            inv.key(k);
        }
        for k in &self.keys.index_tail {
            inv.key(k);
        }
        async move { inv.invoke_async(&mut conn).await }
    }

    /// Settle an attempt that did not succeed (fenced).
    pub async fn fail(
        &self,
        lease: &Lease,
        settlement: Settlement,
        error: &serde_json::Value,
        record: &AttemptRecord,
    ) -> Result<Fenced, QueueError> {
        let delay = match settlement {
            Settlement::Retry { delay } => delay.as_millis() as u64,
            _ => 0,
        };
        let error = error.to_string();
        let record = serde_json::to_string(record).expect("attempt record serialises");
        let ids = [lease.id.clone()];
        let code: i64 = self
            .retrying("fail", || async {
                // Every key declared (fail-n.lua): what the fetch read, or read now;
                // code 4 (a follower joined the job's cache entry in between): again.
                let mut hinted = true;
                for _ in 0..=REREADS {
                    let extra = self.settle_keys(&ids, hinted).await?;
                    hinted = false;
                    let mut conn = self.conn.clone();
                    let mut inv = SCRIPTS.fail.prepare_invoke();
                    inv.key(&self.keys.active)
                        .key(&self.keys.wait)
                        .key(&self.keys.delayed)
                        .key(&self.keys.marker)
                        .key(&self.keys.dead)
                        .key(self.keys.job(&lease.id))
                        .key(self.keys.attempts(&lease.id));
                    for k in extra.iter().chain(&self.keys.index_tail) {
                        inv.key(k);
                    }
                    inv.arg(&self.keys.prefix)
                        .arg(&lease.id)
                        .arg(&lease.token)
                        .arg(settlement.as_str())
                        .arg(delay)
                        .arg(&error)
                        .arg(&record)
                        .arg(self.config.result_ttl.as_millis() as u64);
                    let code: i64 = inv.invoke_async(&mut conn).await?;
                    if code != 4 {
                        return Ok(code);
                    }
                }
                Err(keys_kept_changing())
            })
            .await?;
        self.forget_settled(&ids);
        self.confirm_settled("fail").await;
        Ok(if code == 0 {
            Fenced::Stale
        } else {
            Fenced::Accepted
        })
    }

    /// Take back jobs whose lease expired; returns how many.
    ///
    /// Time in which no reclaim ran at all (Redis frozen or out of every worker's
    /// reach) is not held against the leases: after such a gap, longer than twice the
    /// reclaim interval and a third of the lease TTL, every lease is extended by it and
    /// nothing is reclaimed for one lease TTL, so their holders get the chance to
    /// renew (see reclaim_clock-2.lua).
    ///
    /// Three steps, so that every script touches only keys it was given: the clock
    /// script names the expired leases, a read learns the keys reclaiming them touches
    /// (batch and cache records, the jobs waiting on a cache entry), and
    /// `reclaim_expired` takes them back, checking each again. Nothing changes before
    /// the last step, so a crash in between loses nothing. Off the hot path: a pass
    /// that finds no expired lease is one call, as before.
    pub async fn reclaim_expired(&self, max: usize) -> Result<u64, QueueError> {
        let stall_ms = (self.config.reclaim_interval * 2)
            .max(self.config.lease_ttl / 3)
            .as_millis() as u64;
        let grace_ms = self.config.lease_ttl.as_millis() as u64;
        let expired: Vec<String> = self
            .retrying("reclaim_expired", || {
                let mut conn = self.conn.clone();
                let mut inv = SCRIPTS.reclaim_clock.prepare_invoke();
                inv.key(&self.keys.active)
                    .key(&self.keys.reclaim_clock)
                    .arg(max)
                    .arg(stall_ms)
                    .arg(grace_ms);
                async move { inv.invoke_async(&mut conn).await }
            })
            .await?;
        if expired.is_empty() {
            return Ok(0);
        }
        let job_keys = self
            .retrying("reclaim_expired", || self.keys_of_jobs(&expired))
            .await?;
        self.retrying("reclaim_expired", || {
            let mut conn = self.conn.clone();
            let mut inv = SCRIPTS.reclaim_expired.prepare_invoke();
            inv.key(&self.keys.active)
                .key(&self.keys.wait)
                .key(&self.keys.marker)
                .key(&self.keys.dead);
            for k in &job_keys {
                inv.key(k);
            }
            for k in &self.keys.index_tail {
                inv.key(k);
            }
            inv.arg(&self.keys.prefix)
                .arg(self.config.result_ttl.as_millis() as u64);
            for id in &expired {
                inv.arg(id);
            }
            async move { inv.invoke_async(&mut conn).await }
        })
        .await
    }

    /// Every key a transition that ends or requeues these jobs may touch: each job's
    /// record and attempts, its batch record and result cache entry (named in the
    /// record), and the records of the jobs waiting on that entry (named in it).
    /// Read with two pipelined round trips (the second only for jobs in the cache).
    async fn keys_of_jobs(&self, ids: &[String]) -> redis::RedisResult<Vec<String>> {
        let refs = self.job_refs(ids).await?;
        self.keys_of(ids, &refs, |_| true).await
    }

    /// What names the keys of these jobs beyond their own: each record's `batch`,
    /// `cache`, `cancel` and `in_wait` fields, in one pipelined round trip.
    async fn job_refs(&self, ids: &[String]) -> redis::RedisResult<Vec<JobRefs>> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(self.keys.job(id))
                .arg("batch")
                .arg("cache")
                .arg("cancel")
                .arg("in_wait");
        }
        type Fields = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let fields: Vec<Fields> = pipe.query_async(&mut conn).await?;
        Ok(fields
            .into_iter()
            .map(|(batch, cache, cancel, in_wait)| JobRefs {
                batch: batch.filter(|b| !b.is_empty()),
                cache,
                ends: cancel.as_deref() == Some("1") || in_wait.as_deref() == Some("1"),
            })
            .collect())
    }

    /// The keys of `ids` from what [`RedisQueue::job_refs`] read: record and batch
    /// record, and for the jobs `ending` picks, the attempts, the cache entry and the
    /// records of the jobs waiting on it (one more round trip, only if there are any).
    /// Sorted, each once.
    async fn keys_of(
        &self,
        ids: &[String],
        refs: &[JobRefs],
        ending: impl Fn(&JobRefs) -> bool,
    ) -> redis::RedisResult<Vec<String>> {
        let mut keys: Vec<String> = Vec::with_capacity(ids.len() * 2);
        let mut caches: Vec<String> = Vec::new();
        for (id, r) in ids.iter().zip(refs) {
            keys.push(self.keys.job(id));
            if let Some(batch) = &r.batch {
                keys.push(self.keys.batch(batch));
            }
            if ending(r) {
                keys.push(self.keys.attempts(id));
                if let Some(cache) = &r.cache {
                    caches.push(cache.clone());
                }
            }
        }
        for followers in self.cache_followers(&caches).await? {
            keys.extend(followers.iter().map(|f| self.keys.job(f)));
        }
        keys.extend(caches);
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// The keys beyond a job's record and attempts that settling, cancelling or
    /// requeuing these jobs may touch (complete-n.lua, fail-n.lua, cancel-n.lua, the
    /// dead-letter scripts): each one's batch record, and for a job in the result
    /// cache, its entry, its answer, and each follower's record, answer and batch
    /// record. With `hinted`, what the fetch that leased a job read stands in for a
    /// read: its batch (a job's batch never changes); a job in the cache is read (its
    /// followers change); a job the fetch found in neither, or that this handle did
    /// not fetch, declares nothing more, and the script says (code 4) if it needed
    /// more. A read is one pipelined round trip, one more for jobs in the cache, one
    /// more when their entries have followers. Sorted, each once.
    async fn settle_keys(&self, ids: &[String], hinted: bool) -> redis::RedisResult<Vec<String>> {
        let mut keys: Vec<String> = Vec::new();
        let mut unknown: Vec<String> = Vec::new();
        if hinted {
            let hints = self.hints.lock().unwrap_or_else(|e| e.into_inner());
            for id in ids {
                match hints.get(id) {
                    Some(Some(batch)) => keys.push(self.keys.batch(batch)),
                    Some(None) => unknown.push(id.clone()),
                    None => {}
                }
            }
        } else {
            unknown = ids.to_vec();
        }
        if unknown.is_empty() {
            return Ok(keys);
        }
        let refs = self.job_refs(&unknown).await?;
        let mut caches: Vec<String> = Vec::new();
        for (id, r) in unknown.iter().zip(&refs) {
            if let Some(batch) = &r.batch {
                keys.push(self.keys.batch(batch));
            }
            if let Some(cache) = &r.cache {
                caches.push(cache.clone());
                keys.push(self.keys.answer(id));
            }
        }
        let followers: Vec<String> = self
            .cache_followers(&caches)
            .await?
            .into_iter()
            .flatten()
            .collect();
        if !followers.is_empty() {
            for (f, r) in followers.iter().zip(self.job_refs(&followers).await?) {
                keys.extend([self.keys.job(f), self.keys.answer(f)]);
                if let Some(batch) = r.batch {
                    keys.push(self.keys.batch(&batch));
                }
            }
        }
        keys.extend(caches);
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Note what the fetch read of the jobs it leased, for their settles
    /// ([`RedisQueue::settle_keys`]): the batch of a job in one, and that a job in
    /// the result cache must be read. A job in neither is not noted.
    fn remember_leased(&self, ids: &[String], refs: &[JobRefs]) {
        if refs.iter().all(|r| r.batch.is_none() && r.cache.is_none()) {
            return;
        }
        let mut hints = self.hints.lock().unwrap_or_else(|e| e.into_inner());
        // Leases that are never settled here (lost, or settled by another process)
        // leave their note behind: past a bound, all are dropped (settles read instead).
        if hints.len() > HINTS_MAX {
            hints.clear();
        }
        for (id, r) in ids.iter().zip(refs) {
            if r.cache.is_some() {
                hints.insert(id.clone(), None);
            } else if let Some(batch) = &r.batch {
                hints.insert(id.clone(), Some(batch.clone()));
            }
        }
    }

    /// The jobs were settled: their notes go.
    fn forget_settled(&self, ids: &[String]) {
        let mut hints = self.hints.lock().unwrap_or_else(|e| e.into_inner());
        if hints.is_empty() {
            return;
        }
        for id in ids {
            hints.remove(id);
        }
    }

    /// The IDs of the jobs waiting on each of these cache entries (fields `f:<id>`),
    /// in one pipelined round trip (none for no entries).
    async fn cache_followers(&self, caches: &[String]) -> redis::RedisResult<Vec<Vec<String>>> {
        if caches.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for cache in caches {
            pipe.hkeys(cache);
        }
        let fields: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
        Ok(fields
            .into_iter()
            .map(|f| {
                f.into_iter()
                    .filter_map(|f| f.strip_prefix("f:").map(str::to_string))
                    .collect()
            })
            .collect())
    }

    /// Cancel a job: at once if it has not started, else by telling its worker.
    pub async fn cancel(&self, id: &JobId) -> Result<CancelOutcome, QueueError> {
        if self.routes() {
            return self.cancel_routed(id).await;
        }
        self.cancel_here(id).await
    }

    /// [`RedisQueue::cancel`] on this handle's own keys.
    pub(crate) async fn cancel_here(&self, id: &JobId) -> Result<CancelOutcome, QueueError> {
        let ids = [id.to_string()];
        let out: String = self
            .retrying("cancel", || async {
                // Every key declared (cancel-n.lua), read first; 'reread' (the job's
                // cache entry changed in between): again.
                for _ in 0..=REREADS {
                    let extra = self.settle_keys(&ids, false).await?;
                    let mut conn = self.conn.clone();
                    let mut inv = SCRIPTS.cancel.prepare_invoke();
                    inv.key(&self.keys.wait)
                        .key(&self.keys.delayed)
                        .key(self.keys.job(&ids[0]))
                        .key(self.keys.attempts(&ids[0]));
                    for k in extra.iter().chain(&self.keys.index_tail) {
                        inv.key(k);
                    }
                    inv.arg(&self.keys.prefix)
                        .arg(&ids[0])
                        .arg(self.config.result_ttl.as_millis() as u64);
                    let out: String = inv.invoke_async(&mut conn).await?;
                    if out != "reread" {
                        return Ok(out);
                    }
                }
                Err(keys_kept_changing())
            })
            .await?;
        Ok(match out.as_str() {
            "cancelled" => CancelOutcome::Cancelled,
            "cancelling" => CancelOutcome::Cancelling,
            "missing" => CancelOutcome::NotFound,
            other => CancelOutcome::AlreadyEnded(
                other.strip_prefix("ended:").unwrap_or(other).to_string(),
            ),
        })
    }

    /// Dead-lettered job IDs, oldest first, with when they died (ms).
    pub async fn dead_list(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, QueueError> {
        if self.routes_all() {
            return self.dead_list_routed(offset, limit).await;
        }
        self.dead_list_here(offset, limit).await
    }

    /// [`RedisQueue::dead_list`] on this handle's own keys.
    pub(crate) async fn dead_list_here(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, QueueError> {
        let rows: Vec<(String, f64)> = self
            .retrying("dead_list", || {
                let mut conn = self.conn.clone();
                let key = self.keys.dead.clone();
                async move {
                    conn.zrange_withscores(key, offset as isize, (offset + limit) as isize - 1)
                        .await
                }
            })
            .await?;
        Ok(rows.into_iter().map(|(id, t)| (id, t as u64)).collect())
    }

    pub async fn dead_count(&self) -> Result<u64, QueueError> {
        if self.routes_all() {
            return self.dead_count_routed().await;
        }
        self.dead_count_here().await
    }

    /// [`RedisQueue::dead_count`] on this handle's own keys.
    pub(crate) async fn dead_count_here(&self) -> Result<u64, QueueError> {
        self.retrying("dead_count", || {
            let mut conn = self.conn.clone();
            let key = self.keys.dead.clone();
            async move { conn.zcard(key).await }
        })
        .await
    }

    /// Requeue dead jobs: the given IDs, or (none given) up to `max` of the oldest.
    /// A dead record without a spec cannot run: it ends `failed` instead (not counted).
    pub async fn retry_dead(&self, ids: &[String], max: usize) -> Result<u64, QueueError> {
        if self.routes_all() {
            return self.dead_command_routed(ids, max, false).await;
        }
        self.retry_dead_here(ids, max).await
    }

    /// [`RedisQueue::retry_dead`] on this handle's own keys.
    pub(crate) async fn retry_dead_here(
        &self,
        ids: &[String],
        max: usize,
    ) -> Result<u64, QueueError> {
        let ids = self.dead_ids(ids, max).await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let extra = self
            .retrying("retry_dead", || self.settle_keys(&ids, false))
            .await?;
        self.retrying("retry_dead", || {
            let mut conn = self.conn.clone();
            let mut inv = SCRIPTS.retry_dead.prepare_invoke();
            inv.key(&self.keys.dead)
                .key(&self.keys.wait)
                .key(&self.keys.marker)
                .arg(&self.keys.prefix)
                .arg(self.config.result_ttl.as_millis() as u64);
            for id in &ids {
                inv.key(self.keys.job(id))
                    .key(self.keys.attempts(id))
                    .arg(id);
            }
            for k in extra.iter().chain(&self.keys.index_tail) {
                inv.key(k);
            }
            async move { inv.invoke_async(&mut conn).await }
        })
        .await
    }

    /// The dead jobs a dead-letter command acts on: `ids`, or (none given) up to `max`
    /// of the oldest. Read before the script runs, so that the script is given every
    /// key it touches; a job that left the dead set in between is skipped by it.
    async fn dead_ids(&self, ids: &[String], max: usize) -> Result<Vec<String>, QueueError> {
        if !ids.is_empty() {
            return Ok(ids.to_vec());
        }
        if max == 0 {
            return Ok(Vec::new());
        }
        Ok(self
            .dead_list(0, max)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Remove dead jobs for good (they end `failed`): the given IDs, or up to `max`.
    pub async fn purge_dead(&self, ids: &[String], max: usize) -> Result<u64, QueueError> {
        if self.routes_all() {
            return self.dead_command_routed(ids, max, true).await;
        }
        self.purge_dead_here(ids, max).await
    }

    /// [`RedisQueue::purge_dead`] on this handle's own keys.
    pub(crate) async fn purge_dead_here(
        &self,
        ids: &[String],
        max: usize,
    ) -> Result<u64, QueueError> {
        let ids = self.dead_ids(ids, max).await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let extra = self
            .retrying("purge_dead", || self.settle_keys(&ids, false))
            .await?;
        self.retrying("purge_dead", || {
            let mut conn = self.conn.clone();
            let mut inv = SCRIPTS.purge_dead.prepare_invoke();
            inv.key(&self.keys.dead)
                .arg(&self.keys.prefix)
                .arg(self.config.result_ttl.as_millis() as u64);
            for id in &ids {
                inv.key(self.keys.job(id))
                    .key(self.keys.attempts(id))
                    .key(self.keys.answer(id))
                    .arg(id);
            }
            for k in extra.iter().chain(&self.keys.index_tail) {
                inv.key(k);
            }
            async move { inv.invoke_async(&mut conn).await }
        })
        .await
    }

    /// Queue depths: (ready, running, delayed, dead).
    pub async fn counts(&self) -> Result<QueueCounts, QueueError> {
        if self.routes_all() {
            return self.counts_routed().await;
        }
        self.counts_here().await
    }

    /// [`RedisQueue::counts`] on this handle's own keys.
    pub(crate) async fn counts_here(&self) -> Result<QueueCounts, QueueError> {
        let (wait, active, delayed, dead): (u64, u64, u64, u64) = self
            .retrying("counts", || {
                let mut conn = self.conn.clone();
                let k = self.keys.clone();
                async move {
                    redis::pipe()
                        .llen(&k.wait)
                        .zcard(&k.active)
                        .zcard(&k.delayed)
                        .zcard(&k.dead)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        Ok(QueueCounts {
            ready: wait,
            running: active,
            delayed,
            dead,
        })
    }

    /// Announce that worker `name` is alive for `ttl` (refreshed by its lease keeper),
    /// and list it among the known workers (see [`RedisQueue::known_workers`]).
    pub async fn announce_worker(&self, name: &str, ttl: Duration) -> Result<(), QueueError> {
        self.retrying("announce_worker", || {
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            pipe.set_options(
                self.keys.worker(name),
                crate::time::now_ms(),
                redis::SetOptions::default()
                    .with_expiration(redis::SetExpiry::PX(ttl.as_millis() as u64)),
            )
            .ignore()
            .sadd(self.keys.workers(), name)
            .ignore();
            async move { pipe.query_async::<()>(&mut conn).await }
        })
        .await
    }

    /// Every worker that announced itself and was not forgotten since: the live
    /// ones and those whose death has not been dealt with yet.
    pub async fn known_workers(&self) -> Result<Vec<String>, QueueError> {
        self.retrying("known_workers", || {
            let mut conn = self.conn.clone();
            let key = self.keys.workers();
            async move { conn.smembers(key).await }
        })
        .await
    }

    /// Drop dead workers from the known workers (their sandboxes were reconciled).
    /// A worker that was only late re-adds itself with its next announcement.
    pub async fn forget_workers(&self, names: &[String]) -> Result<(), QueueError> {
        if names.is_empty() {
            return Ok(());
        }
        self.retrying("forget_workers", || {
            let mut conn = self.conn.clone();
            let key = self.keys.workers();
            let names = names.to_vec();
            async move { conn.srem(key, names).await }
        })
        .await
    }

    /// A worker that stops: its announcement goes now, not one TTL later, so the
    /// others (and its own last-one-out check) see it gone.
    pub async fn withdraw_worker(&self, name: &str) -> Result<(), QueueError> {
        self.retrying("withdraw_worker", || {
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            pipe.del(self.keys.worker(name))
                .ignore()
                .srem(self.keys.workers(), name)
                .ignore();
            async move { pipe.query_async::<()>(&mut conn).await }
        })
        .await
    }

    /// Workers whose announcement has not expired, among `names`.
    pub async fn live_workers(&self, names: &[String]) -> Result<Vec<bool>, QueueError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        self.retrying("live_workers", || {
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            for n in names {
                pipe.exists(self.keys.worker(n));
            }
            async move { pipe.query_async(&mut conn).await }
        })
        .await
    }

    /// Block until work may be ready (the marker is set), at most `timeout`, on a
    /// dedicated connection (a blocking command would stall a shared one).
    pub async fn wait_for_work(
        &self,
        blocking: &mut RedisConn,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        let secs = timeout.as_secs_f64().max(0.001);
        let _: Option<(String, String, f64)> = redis::cmd("BZPOPMIN")
            .arg(&self.keys.marker)
            .arg(format!("{secs:.3}"))
            .query_async(blocking)
            .await?;
        Ok(())
    }

    /// A connection for [`RedisQueue::wait_for_work`], whose response timeout allows
    /// for the longest block.
    pub async fn blocking_connection(
        &self,
        longest_block: Duration,
    ) -> Result<RedisConn, QueueError> {
        connect_with_timeout(&self.redis, longest_block + Duration::from_secs(5)).await
    }
}

/// Queue depths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounts {
    pub ready: u64,
    pub running: u64,
    pub delayed: u64,
    pub dead: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn fetch_reply_is_parsed_lease_by_lease() {
        let reply = vec![
            b("1750000000077\t1750000000123"),
            b("41\t1\t3\t0\t1700000000000\t0190-a"),
            b(r#"{"kind":"research"}"#),
            b("41\t2\t5\t1700000009000\t1700000000001\tid\twith\ttabs"),
            b("{not json"),
        ];
        let f = parse_fetched(reply).unwrap();
        assert_eq!(f.next_due_ms, Some(1_750_000_000_123));
        assert_eq!(f.redis_now_ms, 1_750_000_000_077);
        assert_eq!(f.leases.len(), 2);
        let a = &f.leases[0];
        assert_eq!(
            (a.id.as_str(), a.token.as_str(), a.attempt, a.max_attempts),
            ("0190-a", "41", 1, 3)
        );
        assert_eq!((a.deadline_at_ms, a.created_at_ms), (0, 1_700_000_000_000));
        assert_eq!(
            (a.spec_json.as_str(), a.leased_at_ms),
            (r#"{"kind":"research"}"#, 1_750_000_000_077)
        );
        // The ID comes last, so whatever it holds stays whole.
        let b2 = &f.leases[1];
        assert_eq!(b2.id, "id\twith\ttabs");
        assert_eq!((b2.attempt, b2.max_attempts), (2, 5));
        assert_eq!(b2.deadline_at_ms, 1_700_000_009_000);
        assert!(b2.decode().unwrap_err().contains("not a UUID"));
    }

    #[test]
    fn an_empty_fetch_and_a_broken_reply() {
        let f = parse_fetched(vec![b("1750000000077\t")]).unwrap();
        assert!(f.leases.is_empty());
        assert_eq!(f.next_due_ms, None);
        assert!(parse_fetched(vec![]).is_err());
        assert!(parse_fetched(vec![b("1\t"), b("1\t1\t1\t0\t0\tx")]).is_err());
    }

    #[test]
    fn a_payload_that_is_not_utf8_is_decoded_as_far_as_it_goes_and_refused() {
        let reply = vec![
            b(""),
            b("9\t1\t3\t0\t0\t0190fa3c-7d45-7a8e-9d6e-111111111111"),
            vec![0xff, 0xfe, b'{'],
        ];
        let f = parse_fetched(reply).unwrap();
        let err = f.leases[0].decode().unwrap_err();
        assert!(err.contains("undecodable job payload"), "{err}");
    }
}
