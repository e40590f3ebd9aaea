//! What a running attempt knows about itself: its lease, its limits, and a signal
//! that tells it to stop — because its job was cancelled, because its lease was lost
//! (another worker now owns the job) or could not be renewed for too long (Redis out of
//! reach), or because the worker is shutting down.
//! Handlers get it as `Data<AttemptContext>`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::Lease;

/// Why an attempt was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// `fleet cancel`: kill the work, end the job `cancelled`.
    Cancelled,
    /// The lease was reclaimed: another attempt owns the job; this one's writes are refused.
    LeaseLost,
    /// The drain timeout passed: hand the job back to the queue, attempt not counted.
    Shutdown,
    /// Renewals could not be confirmed (Redis unreachable or frozen) until shortly
    /// before the lease could expire: the work is stopped, since another worker may
    /// own the job by then. Handed back uncounted if the lease still holds when Redis
    /// answers again (a frozen Redis: reclaim makes up for the freeze); refused as
    /// stale if it was reclaimed meanwhile (that attempt counted as `lease_lost`).
    LeaseUnconfirmed,
}

impl AbortReason {
    fn code(self) -> u8 {
        match self {
            AbortReason::Cancelled => 1,
            AbortReason::LeaseLost => 2,
            AbortReason::Shutdown => 3,
            AbortReason::LeaseUnconfirmed => 4,
        }
    }
    fn from_code(code: u8) -> Option<AbortReason> {
        match code {
            1 => Some(AbortReason::Cancelled),
            2 => Some(AbortReason::LeaseLost),
            3 => Some(AbortReason::Shutdown),
            4 => Some(AbortReason::LeaseUnconfirmed),
            _ => None,
        }
    }
}

/// The stop signal of one attempt: a cancellation token plus the first reason given.
#[derive(Debug, Clone, Default)]
pub struct AbortSignal {
    token: CancellationToken,
    reason: Arc<AtomicU8>,
}

impl AbortSignal {
    /// Stop the attempt; the first reason given sticks.
    pub fn abort(&self, reason: AbortReason) {
        let _ = self
            .reason
            .compare_exchange(0, reason.code(), Ordering::SeqCst, Ordering::SeqCst);
        self.token.cancel();
    }

    pub fn reason(&self) -> Option<AbortReason> {
        AbortReason::from_code(self.reason.load(Ordering::SeqCst))
    }

    /// Cancelled when the attempt must stop; give it to the work (e.g. `RunOptions::cancel`).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// One attempt's context, injected into each task.
#[derive(Debug, Clone)]
pub struct AttemptContext {
    pub lease: Arc<Lease>,
    pub abort: AbortSignal,
    /// The attempt's time limit (the job's option, else the queue's policy).
    pub attempt_timeout: Duration,
    /// The retry policy for this job: the queue's, with the job's own overrides.
    pub policy: Arc<crate::settings::RetryPolicy>,
    /// The worker's name (for attempt records and sandbox tags).
    pub worker: Arc<str>,
    /// What undoes a success whose result is not recorded (see [`UndoIfDiscarded`]).
    pub undo: UndoIfDiscarded,
}

type Undo = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// Undoes what a successful attempt made when its result is discarded: the lease was
/// lost (another attempt now owns the job and will do the work again) or the result
/// could not be written (the job runs again when its lease expires). A handler whose
/// success creates something only its result names (a `launch`'s agent) sets it; the
/// backend runs it after a success is refused, never after one is recorded.
#[derive(Clone, Default)]
pub struct UndoIfDiscarded(Arc<Mutex<Option<Undo>>>);

impl UndoIfDiscarded {
    /// Set the undo (replacing one set before).
    pub fn set(&self, undo: impl FnOnce() -> BoxFuture<'static, ()> + Send + 'static) {
        *self.0.lock().unwrap() = Some(Box::new(undo));
    }

    /// The undo, if one is set (it can be taken once).
    pub fn take(&self) -> Option<Undo> {
        self.0.lock().unwrap().take()
    }
}

impl std::fmt::Debug for UndoIfDiscarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.0.lock().map(|u| u.is_some()).unwrap_or(false);
        f.debug_tuple("UndoIfDiscarded").field(&set).finish()
    }
}
