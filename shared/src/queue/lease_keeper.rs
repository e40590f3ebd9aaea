//! The lease keeper renews every lease this worker holds, from an OS thread with its
//! own single-threaded runtime and its own Redis connection. Jobs run on the main
//! runtime; however busy or blocked they get, renewal does not starve (the failure that
//! runs agent jobs twice in other queues, see `reference/queue-anchors.md`).
//!
//! Held leases are keyed by job ID *and* fencing token: after a stall the same worker
//! can fetch its own reclaimed job again, and then holds two attempts of one job for a
//! while. The new attempt replaces the old one (which is told to stop); the old one's
//! release touches only its own entry.
//!
//! The same thread also:
//! - reclaims expired leases of any worker every `reclaim_interval` (crash recovery
//!   within the lease TTL plus about a second);
//! - listens on the queue's cancel channel and stops attempts whose job was cancelled
//!   (renewal reports the cancel flag too, in case a message is missed);
//! - stops an attempt whose lease renewal reports it lost;
//! - stops an attempt whose renewals could not be confirmed for the lease TTL minus a
//!   margin (Redis unreachable or frozen): by then another worker may own the job. It
//!   ends as [`AbortReason::LeaseUnconfirmed`], handed back uncounted if its lease still
//!   holds when Redis answers again.
//!
//! Every Redis call of the keeper is bounded (one renewal interval) and gives way to
//! `stop`, so neither an outage nor a frozen server can hang the keeper or the
//! worker's shutdown. [`LeaseKeeper::is_ticking`] tells `/readyz` whether renewal works.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::attempt::{AbortReason, AbortSignal};
use super::{Lease, QueueConfig, RedisQueue, Renewal, index};
use crate::settings::RedisSettings;

/// A held attempt: the job ID and the fencing token of its lease.
type AttemptKey = (String, String);

struct Held {
    abort: AbortSignal,
    /// Until when the lease is known to hold: the start of the last renewal round
    /// Redis confirmed (or the hold) plus the lease TTL.
    confirmed_until: Instant,
}

/// What the keeper thread shares with its handle.
#[derive(Default)]
struct Shared {
    held: Mutex<HashMap<AttemptKey, Held>>,
    announced: Mutex<Option<String>>,
    /// When the last renewal round ended with every Redis call confirmed (at first:
    /// when the keeper started).
    last_tick: Mutex<Option<Instant>>,
}

/// Handle to the keeper thread of one queue.
pub struct LeaseKeeper {
    shared: Arc<Shared>,
    lease_ttl: Duration,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Keeper timings.
#[derive(Debug, Clone, Copy)]
pub struct KeeperTimings {
    pub renew_every: Duration,
    pub reclaim_every: Duration,
}

/// How long before its lease can have expired an unconfirmed attempt is stopped: a
/// quarter of the TTL (7.5 s of the default 30 s), time for the kill to land.
fn unconfirmed_margin(lease_ttl: Duration) -> Duration {
    lease_ttl / 4
}

impl LeaseKeeper {
    /// Start the keeper thread for one queue. It opens its own Redis connection.
    pub fn start(
        redis: RedisSettings,
        mut config: QueueConfig,
        timings: KeeperTimings,
    ) -> LeaseKeeper {
        // Counted as a tick: a keeper just started has half a TTL to confirm its first
        // round before `/readyz` holds it against the worker.
        let shared = Arc::new(Shared {
            last_tick: Mutex::new(Some(Instant::now())),
            ..Shared::default()
        });
        let stop = CancellationToken::new();
        // A keeper call that cannot finish within one interval is given up and tried
        // afresh at the next tick (with a fresh `now`), never retried without end.
        config.give_up_after = Some(timings.renew_every);
        config.reclaim_interval = timings.reclaim_every;
        let lease_ttl = config.lease_ttl;
        let thread = {
            let shared = shared.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("lease-keeper-{}", config.kind))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("lease keeper runtime");
                    runtime.block_on(keeper_main(redis, config, timings, shared, stop));
                })
                .expect("spawn lease keeper thread")
        };
        LeaseKeeper {
            shared,
            lease_ttl,
            stop,
            thread: Some(thread),
        }
    }

    /// From now on, also announce worker `name` as alive at every renewal tick (the
    /// pool's reconcile tells live workers' sandboxes from strays by it).
    pub fn announce_worker(&self, name: &str) {
        *self.shared.announced.lock().unwrap() = Some(name.to_string());
    }

    /// Stop announcing the worker (it is stopping: see `RedisQueue::withdraw_worker`).
    pub fn stop_announcing(&self) {
        *self.shared.announced.lock().unwrap() = None;
    }

    /// Start renewing `lease`; returns the attempt's stop signal. An attempt of the
    /// same job under an older token (the worker fetched its own reclaimed job again)
    /// is replaced: it is told its lease is lost, and no longer renewed.
    pub fn hold(&self, lease: &Lease) -> AbortSignal {
        let abort = AbortSignal::default();
        let mut held = self.shared.held.lock().unwrap();
        held.retain(|(id, token), h| {
            let replaced = *id == lease.id && *token != lease.token;
            if replaced {
                tracing::warn!(job_id = %id, "a newer attempt of this job holds its lease now; stopping the old one");
                h.abort.abort(AbortReason::LeaseLost);
            }
            !replaced
        });
        held.insert(
            (lease.id.clone(), lease.token.clone()),
            Held {
                abort: abort.clone(),
                confirmed_until: Instant::now() + self.lease_ttl,
            },
        );
        abort
    }

    /// Stop renewing `lease` (its attempt was settled). Another attempt of the same job
    /// is left alone.
    pub fn release(&self, lease: &Lease) {
        self.shared
            .held
            .lock()
            .unwrap()
            .remove(&(lease.id.clone(), lease.token.clone()));
    }

    /// Stop every held attempt of job `id`.
    pub fn abort(&self, id: &str, reason: AbortReason) -> bool {
        abort_job(&self.shared.held.lock().unwrap(), id, reason)
    }

    /// Stop every held attempt (shutdown).
    pub fn abort_all(&self, reason: AbortReason) -> usize {
        let held = self.shared.held.lock().unwrap();
        for h in held.values() {
            h.abort.abort(reason);
        }
        held.len()
    }

    pub fn held_count(&self) -> usize {
        self.shared.held.lock().unwrap().len()
    }

    /// Whether renewal works: a renewal round was confirmed by Redis within half the
    /// lease TTL (`/readyz`).
    pub fn is_ticking(&self) -> bool {
        self.shared
            .last_tick
            .lock()
            .unwrap()
            .is_some_and(|t| t.elapsed() <= self.lease_ttl / 2)
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Stop every held attempt of job `id`; whether there was one.
fn abort_job(held: &HashMap<AttemptKey, Held>, id: &str, reason: AbortReason) -> bool {
    let mut found = false;
    for ((job, _), h) in held.iter() {
        if job == id {
            h.abort.abort(reason);
            found = true;
        }
    }
    found
}

/// Run `op` unless `stop` comes first, for at most `limit`; `None` if cut short.
async fn bounded<T>(
    stop: &CancellationToken,
    limit: Duration,
    op: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        _ = stop.cancelled() => None,
        r = tokio::time::timeout(limit, op) => r.ok(),
    }
}

async fn keeper_main(
    redis: RedisSettings,
    config: QueueConfig,
    timings: KeeperTimings,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let queue = loop {
        match RedisQueue::open(&redis, config.clone()).await {
            Ok(q) => break q,
            Err(e) => {
                tracing::warn!(error = %e, "lease keeper cannot reach Redis yet; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    };
    // Three loops, so that a renewal stuck on Redis never delays the check of
    // unconfirmed leases, nor a reclaim the renewal.
    let tasks = [
        tokio::spawn(listen_for_cancels(
            redis.clone(),
            queue.keys().cancel_channel.clone(),
            shared.clone(),
            stop.clone(),
        )),
        tokio::spawn(renew_loop(
            queue.clone(),
            timings.renew_every,
            shared.clone(),
            stop.clone(),
        )),
        tokio::spawn(reclaim_loop(
            queue.clone(),
            timings.reclaim_every,
            stop.clone(),
        )),
        tokio::spawn(stop_unconfirmed_loop(
            config.lease_ttl,
            shared.clone(),
            stop.clone(),
        )),
    ];
    stop.cancelled().await;
    for task in tasks {
        task.abort();
    }
}

async fn renew_loop(
    queue: RedisQueue,
    every: Duration,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let lease_ttl = queue.config().lease_ttl;
    let mut renew = tokio::time::interval(every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = renew.tick() => {}
        }
        let started = Instant::now();
        let round = async {
            let name = shared.announced.lock().unwrap().clone();
            if let Some(name) = name {
                queue
                    .announce_worker(&name, lease_ttl)
                    .await
                    .map_err(|e| format!("could not announce this worker as alive: {e}"))?;
            }
            renew_all(&queue, &shared, started).await
        };
        match bounded(&stop, every, round).await {
            Some(Ok(())) => {
                *shared.last_tick.lock().unwrap() = Some(Instant::now());
                continue;
            }
            Some(Err(e)) => tracing::warn!(error = %e, "lease renewal failed"),
            None if stop.is_cancelled() => return,
            None => tracing::warn!(
                waited_ms = every.as_millis() as u64,
                "lease renewal got no answer from Redis in time"
            ),
        }
        // A failed round is tried again soon, not a whole interval later: one passing
        // fault must not bring a lease near the point where its attempt is stopped.
        renew.reset_after(every / 6);
    }
}

async fn renew_all(queue: &RedisQueue, shared: &Shared, started: Instant) -> Result<(), String> {
    let pairs: Vec<AttemptKey> = shared.held.lock().unwrap().keys().cloned().collect();
    if pairs.is_empty() {
        return Ok(());
    }
    let codes = queue
        .renew(&pairs)
        .await
        .map_err(|e| format!("{e} ({} leases)", pairs.len()))?;
    // Redis extended each renewed lease to at least `started + TTL`.
    let confirmed_until = started + queue.config().lease_ttl;
    let mut held = shared.held.lock().unwrap();
    for (key, code) in pairs.iter().zip(codes) {
        let Some(h) = held.get_mut(key) else {
            continue; // settled meanwhile
        };
        match code {
            Renewal::Renewed => h.confirmed_until = confirmed_until,
            Renewal::CancelRequested => {
                h.confirmed_until = confirmed_until;
                h.abort.abort(AbortReason::Cancelled)
            }
            Renewal::Lost => {
                tracing::warn!(job_id = %key.0, "lease lost: another worker owns this job now; stopping this attempt");
                h.abort.abort(AbortReason::LeaseLost);
            }
        }
    }
    Ok(())
}

async fn reclaim_loop(queue: RedisQueue, every: Duration, stop: CancellationToken) {
    let kind = queue.config().kind;
    let mut reclaim = tokio::time::interval(every);
    reclaim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = reclaim.tick() => {}
        }
        let limit = every.max(queue.config().lease_ttl / 3);
        match bounded(&stop, limit, queue.reclaim_expired(100)).await {
            Some(Ok(0)) => {}
            Some(Ok(n)) => {
                tracing::warn!(queue = %kind, jobs = n, "reclaimed jobs whose lease expired")
            }
            Some(Err(e)) => tracing::warn!(error = %e, "reclaim of expired leases failed"),
            None => {}
        }
        // Listing index entries of jobs whose records expired (index.rs): a few
        // bounded calls per tick, more while each call finds a full chunk.
        for _ in 0..TRIM_CALLS_PER_TICK {
            match bounded(&stop, limit, queue.trim_indexes(index::TRIM_CHUNK)).await {
                Some(Ok(n)) if n as usize == index::TRIM_CHUNK => continue,
                Some(Err(e)) => tracing::warn!(error = %e, "trim of the listing indexes failed"),
                _ => {}
            }
            break;
        }
    }
}

/// Most index trim calls per reclaim tick (each takes out up to `index::TRIM_CHUNK`).
const TRIM_CALLS_PER_TICK: usize = 8;

/// Stop attempts whose lease renewal has not been confirmed for the lease TTL minus a
/// margin: their lease may expire any moment, and then another worker owns the job.
async fn stop_unconfirmed_loop(lease_ttl: Duration, shared: Arc<Shared>, stop: CancellationToken) {
    let margin = unconfirmed_margin(lease_ttl);
    let mut check = tokio::time::interval((lease_ttl / 20).max(Duration::from_millis(20)));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = check.tick() => {}
        }
        let now = Instant::now();
        for ((id, _), h) in shared.held.lock().unwrap().iter() {
            if h.abort.reason().is_none() && now + margin >= h.confirmed_until {
                tracing::warn!(job_id = %id, "lease renewal unconfirmed for too long (Redis unreachable?); stopping this attempt before its lease can expire");
                h.abort.abort(AbortReason::LeaseUnconfirmed);
            }
        }
    }
}

async fn listen_for_cancels(
    redis: RedisSettings,
    channel: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let attempt = async {
            let mut pubsub = crate::connection::pubsub(&redis).await?;
            pubsub.subscribe(&channel).await?;
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                let id: String = msg.get_payload()?;
                if abort_job(&shared.held.lock().unwrap(), &id, AbortReason::Cancelled) {
                    tracing::info!(job_id = %id, "cancellation requested; stopping the attempt");
                }
            }
            Ok::<(), redis::RedisError>(())
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            result = attempt => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "cancel listener lost its connection; reconnecting");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
