//! Shutdown, in the order the promises need it:
//!
//! 1. First SIGTERM/SIGINT: stop fetching (the `stop` token; apalis workers stop
//!    taking tasks). In-flight jobs keep running and their leases keep being renewed.
//! 2. After `worker.drain_timeout_secs`, or at a second signal: every unfinished attempt
//!    is told `AbortReason::Shutdown`; its process is killed and the job is released
//!    back to the front of the queue without counting an attempt.
//! 3. When the workers have ended, the pool pauses persistent agents and kills the rest.

use std::sync::Arc;
use std::time::Duration;

use fleet_shared::queue::attempt::AbortReason;
use fleet_shared::queue::lease_keeper::LeaseKeeper;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Watch for signals; cancel `stop` at the first, release in-flight work at the second
/// or when the drain timeout passes.
pub fn watch_signals(
    stop: CancellationToken,
    keepers: Vec<Arc<LeaseKeeper>>,
    drain_timeout: Duration,
) {
    tokio::spawn(async move {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
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
        let released: usize = keepers
            .iter()
            .map(|k| k.abort_all(AbortReason::Shutdown))
            .sum();
        if released > 0 {
            tracing::warn!(
                jobs = released,
                "released unfinished jobs (attempts not counted)"
            );
        }
    });
}
