//! The lease keeper renews every lease this worker holds, from an OS thread with its
//! own single-threaded runtime and its own Redis connection. Jobs run on the main
//! runtime; however busy or blocked they get, renewal does not starve (the failure that
//! runs agent jobs twice in other queues, see `reference/queue-anchors.md`).
//!
//! The same thread also:
//! - reclaims expired leases of any worker every `reclaim_interval` (crash recovery
//!   within the lease TTL plus about a second);
//! - listens on the queue's cancel channel and stops attempts whose job was cancelled
//!   (renewal reports the cancel flag too, in case a message is missed);
//! - stops an attempt whose lease renewal reports it lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::attempt::{AbortReason, AbortSignal};
use super::{Lease, QueueConfig, RedisQueue, Renewal};
use crate::settings::RedisSettings;

#[derive(Clone)]
struct Held {
    token: String,
    abort: AbortSignal,
}

/// Handle to the keeper thread of one queue.
pub struct LeaseKeeper {
    held: Arc<Mutex<HashMap<String, Held>>>,
    announced: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Keeper timings.
#[derive(Debug, Clone, Copy)]
pub struct KeeperTimings {
    pub renew_every: Duration,
    pub reclaim_every: Duration,
}

impl LeaseKeeper {
    /// Start the keeper thread for one queue. It opens its own Redis connection.
    pub fn start(
        redis: RedisSettings,
        mut config: QueueConfig,
        timings: KeeperTimings,
    ) -> LeaseKeeper {
        let held: Arc<Mutex<HashMap<String, Held>>> = Arc::default();
        let announced: Arc<Mutex<Option<String>>> = Arc::default();
        let stop = CancellationToken::new();
        config.give_up_after = None;
        let thread = {
            let held = held.clone();
            let announced = announced.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("lease-keeper-{}", config.kind))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("lease keeper runtime");
                    runtime.block_on(keeper_main(redis, config, timings, held, announced, stop));
                })
                .expect("spawn lease keeper thread")
        };
        LeaseKeeper {
            held,
            announced,
            stop,
            thread: Some(thread),
        }
    }

    /// From now on, also announce worker `name` as alive at every renewal tick (the
    /// pool's reconcile tells live workers' sandboxes from strays by it).
    pub fn announce_worker(&self, name: &str) {
        *self.announced.lock().unwrap() = Some(name.to_string());
    }

    /// Start renewing `lease`; returns the attempt's stop signal.
    pub fn hold(&self, lease: &Lease) -> AbortSignal {
        let abort = AbortSignal::default();
        self.held.lock().unwrap().insert(
            lease.id.clone(),
            Held {
                token: lease.token.clone(),
                abort: abort.clone(),
            },
        );
        abort
    }

    /// Stop renewing (the attempt was settled).
    pub fn release(&self, id: &str) {
        self.held.lock().unwrap().remove(id);
    }

    /// Stop one held attempt.
    pub fn abort(&self, id: &str, reason: AbortReason) -> bool {
        match self.held.lock().unwrap().get(id) {
            Some(h) => {
                h.abort.abort(reason);
                true
            }
            None => false,
        }
    }

    /// Stop every held attempt (shutdown).
    pub fn abort_all(&self, reason: AbortReason) -> usize {
        let held = self.held.lock().unwrap();
        for h in held.values() {
            h.abort.abort(reason);
        }
        held.len()
    }

    pub fn held_count(&self) -> usize {
        self.held.lock().unwrap().len()
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

async fn keeper_main(
    redis: RedisSettings,
    config: QueueConfig,
    timings: KeeperTimings,
    held: Arc<Mutex<HashMap<String, Held>>>,
    announced: Arc<Mutex<Option<String>>>,
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
    let cancel_listener = tokio::spawn(listen_for_cancels(
        redis.clone(),
        queue.keys().cancel_channel.clone(),
        held.clone(),
        stop.clone(),
    ));
    let mut renew = tokio::time::interval(timings.renew_every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reclaim = tokio::time::interval(timings.reclaim_every);
    reclaim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = renew.tick() => {
                let name = announced.lock().unwrap().clone();
                if let Some(name) = name
                    && let Err(e) = queue.announce_worker(&name, config.lease_ttl).await
                {
                    tracing::warn!(error = %e, "could not announce this worker as alive");
                }
                renew_all(&queue, &held, timings.renew_every).await
            }
            _ = reclaim.tick() => {
                match queue.reclaim_expired(100).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(queue = %config.kind, jobs = n, "reclaimed jobs whose lease expired"),
                    Err(e) => tracing::warn!(error = %e, "reclaim of expired leases failed"),
                }
            }
        }
    }
    cancel_listener.abort();
}

async fn renew_all(queue: &RedisQueue, held: &Mutex<HashMap<String, Held>>, budget: Duration) {
    let snapshot: Vec<(String, Held)> = held
        .lock()
        .unwrap()
        .iter()
        .map(|(id, h)| (id.clone(), h.clone()))
        .collect();
    if snapshot.is_empty() {
        return;
    }
    let pairs: Vec<(String, String)> = snapshot
        .iter()
        .map(|(id, h)| (id.clone(), h.token.clone()))
        .collect();
    let started = Instant::now();
    let codes = match queue.renew(&pairs).await {
        Ok(codes) => codes,
        Err(e) => {
            tracing::warn!(error = %e, leases = pairs.len(), "lease renewal failed");
            return;
        }
    };
    if started.elapsed() > budget {
        tracing::warn!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "lease renewal is lagging"
        );
    }
    for ((id, h), code) in snapshot.iter().zip(codes) {
        match code {
            Renewal::Renewed => {}
            Renewal::CancelRequested => h.abort.abort(AbortReason::Cancelled),
            Renewal::Lost => {
                tracing::warn!(job_id = %id, "lease lost: another worker owns this job now; stopping this attempt");
                h.abort.abort(AbortReason::LeaseLost);
            }
        }
    }
}

async fn listen_for_cancels(
    redis: RedisSettings,
    channel: String,
    held: Arc<Mutex<HashMap<String, Held>>>,
    stop: CancellationToken,
) {
    loop {
        let attempt = async {
            let client = redis::Client::open(redis.url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                let id: String = msg.get_payload()?;
                if let Some(h) = held.lock().unwrap().get(&id) {
                    tracing::info!(job_id = %id, "cancellation requested; stopping the attempt");
                    h.abort.abort(AbortReason::Cancelled);
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
