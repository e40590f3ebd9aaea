//! Result waits (`GET /v1/jobs/{id}/result?wait=S`) share one Redis subscriber per
//! process. It listens on both queues' `done` channels (each message is the ID of a job
//! that just ended) and wakes only the waits registered for that ID, so a thousand
//! waits cost one Redis connection, and a job that ends costs one re-read of its own
//! record, not one per wait.
//!
//! A message can be missed while the subscriber is disconnected, so every wait is woken
//! when it (re)subscribes, and waits re-read their record every [`POLL_DISCONNECTED`]
//! while it is down. At most `api.max_waits` waits are registered at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::context::Queues;

/// While the subscriber is down, waits re-read their record this often.
pub const POLL_DISCONNECTED: Duration = Duration::from_secs(1);
/// Longest pause between two attempts to (re)connect the subscriber.
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// How long one connect-and-subscribe may take (a stopped Redis accepts and is silent).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The registry of waits and its subscriber task (started with the first wait).
pub struct Waiters {
    max: usize,
    shutdown: CancellationToken,
    shared: Arc<Shared>,
}

struct Shared {
    /// Job ID → the waits for it (by registration number).
    by_job: Mutex<Registry>,
    /// The subscriber is subscribed: no message is being missed.
    connected: AtomicBool,
    started: std::sync::Once,
}

#[derive(Default)]
struct Registry {
    by_job: HashMap<String, Vec<(u64, Arc<Notify>)>>,
    next: u64,
    count: usize,
}

/// The cap was reached: the caller answers 503.
#[derive(Debug)]
pub struct Full {
    pub max: usize,
}

/// One registered wait; unregisters itself when dropped.
pub struct Wait {
    shared: Arc<Shared>,
    job: String,
    number: u64,
    notify: Arc<Notify>,
}

impl Waiters {
    pub fn new(max: usize, shutdown: CancellationToken) -> Waiters {
        Waiters {
            max,
            shutdown,
            shared: Arc::new(Shared {
                by_job: Mutex::new(Registry::default()),
                connected: AtomicBool::new(false),
                started: std::sync::Once::new(),
            }),
        }
    }

    /// Register a wait for `job` (starting the subscriber on first use); `Full` when
    /// `api.max_waits` waits are registered already.
    pub fn register(&self, queues: &Queues, job: &str) -> Result<Wait, Full> {
        self.shared.started.call_once(|| {
            let redis = queues.research.redis_settings().clone();
            // Every shard's channel: a job ends on its own (queue/shards.rs).
            let mut channels = queues.research.done_channels();
            channels.extend(queues.lifecycle.done_channels());
            tokio::spawn(subscribe(
                self.shared.clone(),
                redis,
                channels,
                self.shutdown.clone(),
            ));
        });
        self.add(job)
    }

    /// Register a wait for `job` (the subscriber aside).
    fn add(&self, job: &str) -> Result<Wait, Full> {
        let mut registry = self.shared.registry();
        if registry.count >= self.max {
            return Err(Full { max: self.max });
        }
        registry.count += 1;
        registry.next += 1;
        let number = registry.next;
        let notify = Arc::new(Notify::new());
        registry
            .by_job
            .entry(job.to_string())
            .or_default()
            .push((number, notify.clone()));
        Ok(Wait {
            shared: self.shared.clone(),
            job: job.to_string(),
            number,
            notify,
        })
    }
}

impl Wait {
    /// Until the job may have changed: its `done` message arrived, the subscriber
    /// (re)subscribed, or — while it is disconnected — [`POLL_DISCONNECTED`] passed.
    /// A wake-up that came before this call is not lost (`Notify` keeps one permit).
    pub async fn changed(&self) {
        if self.shared.connected.load(Ordering::Acquire) {
            self.notify.notified().await;
        } else {
            let _ = tokio::time::timeout(POLL_DISCONNECTED, self.notify.notified()).await;
        }
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        let mut registry = self.shared.registry();
        registry.count -= 1;
        if let Some(list) = registry.by_job.get_mut(&self.job) {
            list.retain(|(n, _)| *n != self.number);
            if list.is_empty() {
                registry.by_job.remove(&self.job);
            }
        }
    }
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // Nothing panics while holding it; a poisoned lock still holds a sound map.
        self.by_job.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self, job: &str) {
        if let Some(list) = self.registry().by_job.get(job) {
            for (_, notify) in list {
                notify.notify_one();
            }
        }
    }

    fn wake_all(&self) {
        for list in self.registry().by_job.values() {
            for (_, notify) in list {
                notify.notify_one();
            }
        }
    }
}

/// The subscriber: connect, subscribe, route messages by job ID; on any failure, wake
/// every wait (they re-read and poll meanwhile) and reconnect with backoff. Ends at
/// shutdown.
async fn subscribe(
    shared: Arc<Shared>,
    redis: fleet_shared::settings::RedisSettings,
    channels: Vec<String>,
    shutdown: CancellationToken,
) {
    let mut pause = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let connect = async {
            let mut pubsub = fleet_shared::connection::pubsub(&redis).await?;
            for channel in &channels {
                pubsub.subscribe(channel).await?;
            }
            redis::RedisResult::Ok(pubsub)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(mut pubsub)) => {
                pause = Duration::from_millis(100);
                shared.connected.store(true, Ordering::Release);
                // Whatever ended while nobody listened is read again.
                shared.wake_all();
                tracing::debug!("result waits: subscribed to the done channels");
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(m) => {
                                if let Ok(job) = m.get_payload::<String>() {
                                    shared.wake(&job);
                                }
                            }
                            None => break,
                        },
                        _ = shutdown.cancelled() => return,
                    }
                }
                tracing::warn!("result waits: the Redis subscriber was disconnected; reconnecting");
            }
            // The details can name the Redis host: the log, not an answer, gets them.
            Ok(Err(e)) => tracing::warn!(error = %e, "result waits: cannot subscribe yet"),
            Err(_) => tracing::warn!("result waits: subscribing timed out"),
        }
        shared.connected.store(false, Ordering::Release);
        shared.wake_all();
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return,
        }
        pause = (pause * 2).min(RECONNECT_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_message_wakes_only_its_own_waits_and_is_not_lost() {
        let w = Waiters::new(2, CancellationToken::new());
        w.shared.connected.store(true, Ordering::Release);
        let a = w.add("a").unwrap();
        let b = w.add("b").unwrap();
        assert!(
            matches!(w.add("c"), Err(Full { max: 2 })),
            "over api.max_waits"
        );
        // Before anyone awaits: kept.
        w.shared.wake("a");
        tokio::time::timeout(Duration::from_secs(1), a.changed())
            .await
            .expect("the wake-up was kept");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.changed())
                .await
                .is_err(),
            "b was woken by a's message"
        );
        drop(a);
        drop(b);
        assert_eq!(w.shared.registry().count, 0);
        assert!(w.shared.registry().by_job.is_empty());
    }
}
