//! Client-side plan limits: E2B refuses (429) a create or resume beyond the team's
//! concurrent-sandbox limit or creation rate. Rather than provoke those refusals,
//! this client stays under the configured limits itself:
//!
//! - **Concurrency**: at most `max_concurrent_sandboxes` sandboxes that this client
//!   created or resumed are running at once. A slot is reserved before a create or
//!   resume is sent and released on kill, pause, or when E2B says the sandbox is
//!   gone (404) or paused (listed as paused, e.g. after an auto-pause).
//! - **Rate**: creates and resumes are spaced at least `1 / creates_per_second`
//!   apart (a token bucket holding one token), plus a small margin because E2B
//!   measures arrival times, not our send times. Every attempt takes a token,
//!   retries included, because E2B counts every request.
//!
//! At a limit, a call **waits**, up to a bound (`limit_wait`, by default the
//! request timeout), and then fails with `SandboxError::LimitReached`, which the
//! queue treats as transient. Waiting smooths bursts (a pool filling up) without
//! failing jobs; the bound keeps a stuck pool from hanging a job forever.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::sandbox::SandboxError;

/// The extra spacing between starts: 5 % of the interval, at most 50 ms.
fn margin(interval: Duration) -> Duration {
    (interval / 20).min(Duration::from_millis(50))
}

#[derive(Debug)]
pub struct PlanLimits {
    max_running: usize,
    interval: Duration,
    wait: Mutex<Duration>,
    state: Mutex<State>,
    freed: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Sandboxes this client holds as running.
    running: HashSet<String>,
    /// Slots reserved by creates and resumes in flight.
    reserved: usize,
    /// The earliest instant the next create or resume may be sent.
    next_start: Option<Instant>,
}

impl PlanLimits {
    pub fn new(max_running: u32, starts_per_second: f64, wait: Duration) -> Arc<Self> {
        let interval = Duration::from_secs_f64(1.0 / starts_per_second.max(1e-6));
        Arc::new(Self {
            max_running: max_running.max(1) as usize,
            interval: interval + margin(interval),
            wait: Mutex::new(wait),
            state: Mutex::new(State::default()),
            freed: Notify::new(),
        })
    }

    pub fn set_wait(&self, wait: Duration) {
        *self.wait.lock().unwrap() = wait;
    }

    fn wait(&self) -> Duration {
        *self.wait.lock().unwrap()
    }

    /// Reserve a running slot, waiting (bounded) while all are taken.
    pub async fn reserve(self: &Arc<Self>) -> Result<Reservation, SandboxError> {
        let deadline = Instant::now() + self.wait();
        loop {
            // Register for the wake-up before checking, so a release between the
            // check and the wait is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut s = self.state.lock().unwrap();
                if s.running.len() + s.reserved < self.max_running {
                    s.reserved += 1;
                    return Ok(Reservation {
                        limits: Arc::clone(self),
                        armed: true,
                    });
                }
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(SandboxError::LimitReached(format!(
                    "{} sandboxes running (sandbox.e2b.max_concurrent_sandboxes); none freed within {:?}",
                    self.max_running,
                    self.wait()
                )));
            }
        }
    }

    /// Wait for the next create/resume turn (bounded).
    pub async fn start_turn(&self) -> Result<(), SandboxError> {
        let at = {
            let now = Instant::now();
            let mut s = self.state.lock().unwrap();
            let at = s.next_start.map_or(now, |n| n.max(now));
            if at.duration_since(now) > self.wait() {
                return Err(SandboxError::LimitReached(format!(
                    "sandbox creation rate (sandbox.e2b.creates_per_second): next turn in {:?}",
                    at.duration_since(now)
                )));
            }
            s.next_start = Some(at + self.interval);
            at
        };
        tokio::time::sleep_until(at).await;
        Ok(())
    }

    pub fn is_running(&self, id: &str) -> bool {
        self.state.lock().unwrap().running.contains(id)
    }

    /// Release `id`'s slot (kill, pause, gone). A no-op when not held.
    pub fn release(&self, id: &str) {
        if self.state.lock().unwrap().running.remove(id) {
            self.freed.notify_waiters();
        }
    }

    /// Keep only the held IDs for which `keep` is true (list reconciliation).
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        let dropped = {
            let mut s = self.state.lock().unwrap();
            let before = s.running.len();
            s.running.retain(|id| keep(id));
            before != s.running.len()
        };
        if dropped {
            self.freed.notify_waiters();
        }
    }

    /// The IDs held now.
    pub fn held(&self) -> HashSet<String> {
        self.state.lock().unwrap().running.clone()
    }

    pub fn running(&self) -> usize {
        self.state.lock().unwrap().running.len()
    }
}

/// A reserved slot. Dropped without [`Reservation::commit`] (the call failed or
/// was cancelled) it frees the slot again.
#[derive(Debug)]
pub struct Reservation {
    limits: Arc<PlanLimits>,
    armed: bool,
}

impl Reservation {
    /// The sandbox is now running: the slot is held by `id` until released.
    pub fn commit(mut self, id: &str) {
        let mut s = self.limits.state.lock().unwrap();
        s.reserved -= 1;
        if !s.running.insert(id.to_string()) {
            // Already held (a racing connect): the reserved slot is not needed.
            drop(s);
            self.limits.freed.notify_waiters();
        }
        self.armed = false;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.armed {
            self.limits.state.lock().unwrap().reserved -= 1;
            self.limits.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn cap_waits_for_a_release_then_times_out() {
        let l = PlanLimits::new(1, 100.0, Duration::from_secs(5));
        l.reserve().await.unwrap().commit("a");
        assert_eq!(l.running(), 1);
        let l2 = Arc::clone(&l);
        let waiter = tokio::spawn(async move { l2.reserve().await.map(|r| r.commit("b")) });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        l.release("a");
        waiter.await.unwrap().unwrap();
        assert!(l.is_running("b"));
        let e = l.reserve().await.unwrap_err();
        assert!(matches!(e, SandboxError::LimitReached(_)), "{e:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_reservation_frees_its_slot() {
        let l = PlanLimits::new(1, 100.0, Duration::from_millis(10));
        let r = l.reserve().await.unwrap();
        assert!(l.reserve().await.is_err());
        drop(r);
        l.reserve().await.unwrap().commit("x");
        l.retain(|_| false);
        assert_eq!(l.running(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn starts_are_spaced_by_the_rate_and_bounded_by_the_wait() {
        let l = PlanLimits::new(10, 2.0, Duration::from_secs(1));
        let t0 = Instant::now();
        l.start_turn().await.unwrap();
        l.start_turn().await.unwrap();
        let gap = t0.elapsed();
        assert!(gap >= Duration::from_millis(500), "{gap:?}");
        l.start_turn().await.unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(1000));
        // Three turns queued at once: the third is more than 1 s away.
        let l = PlanLimits::new(10, 1.0, Duration::from_millis(1500));
        l.start_turn().await.unwrap();
        let (a, b) = tokio::join!(l.start_turn(), l.start_turn());
        assert!(a.is_ok());
        assert!(matches!(b, Err(SandboxError::LimitReached(_))));
    }
}
