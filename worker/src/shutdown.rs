//! Shutdown, in the order the promises need it:
//!
//! 1. First SIGTERM/SIGINT: stop fetching (the `stop` token; apalis workers stop
//!    taking tasks). In-flight jobs keep running and their leases keep being renewed.
//! 2. After `worker.drain_timeout_secs`, or at a second signal: every unfinished attempt
//!    is told `AbortReason::Shutdown`; its process is killed and the job is released
//!    back to the front of the queue without counting an attempt.
//! 3. When the workers have ended, the pool pauses persistent agents and kills the rest.
//!    Writing the released attempts back needs Redis; if it is out of reach, the worker
//!    waits one lease TTL for it ([`Releaser::gave_up_settling`]) and then stops anyway:
//!    those jobs come back when their leases expire, as after a crash. Shutdown never
//!    hangs on Redis (the lease keeper's calls are bounded too).
//!
//! The handlers are installed first thing in `wiring::run`, so a signal that arrives
//! while the worker is still starting stops it the same way (exit 0), never by the
//! default action.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fleet_shared::queue::attempt::AbortReason;
use fleet_shared::queue::lease_keeper::LeaseKeeper;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// The lease keepers whose attempts a second signal (or the drain timeout) releases;
/// handed over once they exist.
#[derive(Clone, Default)]
pub struct Releaser {
    keepers: Arc<OnceLock<Vec<Arc<LeaseKeeper>>>>,
    /// Cancelled once in-flight work has been told to stop (drain timeout or second signal).
    released: CancellationToken,
}

impl Releaser {
    pub fn set(&self, keepers: Vec<Arc<LeaseKeeper>>) {
        let _ = self.keepers.set(keepers);
    }

    fn release_all(&self) -> usize {
        let released = self
            .keepers
            .get()
            .map(|ks| ks.iter().map(|k| k.abort_all(AbortReason::Shutdown)).sum())
            .unwrap_or(0);
        self.released.cancel();
        released
    }

    /// Resolves `grace` after in-flight work was released: the time the workers get to
    /// write their outcomes (Redis may be out of reach) before the worker stops anyway.
    pub async fn gave_up_settling(&self, grace: Duration) {
        self.released.cancelled().await;
        tokio::time::sleep(grace).await;
    }
}

/// Install the SIGTERM/SIGINT handlers now, before the worker does any I/O, and watch
/// them: the first signal cancels `stop` (also while the worker is still starting: waiting
/// for Redis, reconciling sandboxes), the second one or the drain timeout releases
/// in-flight work through the returned [`Releaser`]. Installed any later, a signal during
/// startup would meet the default action and kill the process.
pub fn watch_signals(
    stop: CancellationToken,
    drain_timeout: Duration,
) -> std::io::Result<Releaser> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let releaser = Releaser::default();
    let release = releaser.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = stop.cancelled() => {}
        }
        tracing::info!(
            drain_timeout_secs = drain_timeout.as_secs(),
            "shutting down: no new jobs; waiting for in-flight jobs"
        );
        stop.cancel();
        tokio::select! {
            _ = term.recv() => tracing::warn!("second signal: releasing in-flight jobs now"),
            _ = int.recv() => tracing::warn!("second signal: releasing in-flight jobs now"),
            _ = tokio::time::sleep(drain_timeout) => tracing::warn!("drain timeout passed: releasing unfinished jobs back to the queue"),
        }
        let released = release.release_all();
        if released > 0 {
            tracing::warn!(
                jobs = released,
                "released unfinished jobs (attempts not counted)"
            );
        }
    });
    Ok(releaser)
}
