//! Plan limits: E2B refuses (429) a create or resume beyond the team's
//! concurrent-sandbox limit or creation rate. Rather than provoke those refusals,
//! the client stays under the configured limits itself:
//!
//! - **Concurrency**: at most `max_concurrent_sandboxes` sandboxes running at once. A
//!   slot is reserved before a create or resume is sent, becomes the sandbox's when it
//!   starts, and is released on kill, pause, or when E2B says the sandbox is gone (404)
//!   or paused (listed as paused, e.g. after an auto-pause).
//! - **Rate**: creates and resumes are spaced at least `1 / creates_per_second`
//!   apart (a token bucket holding one token), plus a small margin because E2B
//!   measures arrival times, not our send times. Every attempt takes a token,
//!   retries included, because E2B counts every request.
//!
//! Two modes. **Fleet-wide** ([`PlanLimits::fleet`], what workers use): the slots and
//! the start turns live in Redis ([`crate::admission`]) and are shared by every worker
//! on the plan; this process keeps the IDs it holds and renews their holds every third
//! of the hold, so a killed worker's slots come back when its holds expire.
//! **In-process** ([`PlanLimits::new`]): the same limits counted in memory, for a
//! provider used on its own (tests, tools).
//!
//! At a limit, a call **waits**, up to a bound (`limit_wait`, by default the
//! request timeout), and then fails with `SandboxError::LimitReached`, which the
//! queue treats as transient. Waiting smooths bursts (a pool filling up) without
//! failing jobs; the bound keeps a stuck pool from hanging a job forever. A fleet-wide
//! wait for a slot polls Redis (every ~100 ms, jittered, sooner when this process
//! frees one), never longer than until the earliest hold could expire.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rand::Rng;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admission::{FleetAdmission, SlotAnswer, TurnAnswer};
use crate::sandbox::SandboxError;

/// The extra spacing between starts: 5 % of the interval, at most 20 ms.
fn margin(interval: Duration) -> Duration {
    (interval / 20).min(Duration::from_millis(20))
}

/// How often a fleet-wide wait for a slot asks Redis again (jittered ±50 %).
const SLOT_POLL: Duration = Duration::from_millis(100);

pub struct PlanLimits {
    max_running: usize,
    interval: Duration,
    wait: Mutex<Duration>,
    state: Mutex<State>,
    freed: Notify,
    /// Set: the limits are the fleet's, in Redis.
    fleet: Option<FleetAdmission>,
    /// Serialises this process's Redis writes of held slots, so a renewal (which
    /// puts back lost holds) can never bring back a slot released meanwhile.
    slot_writes: tokio::sync::Mutex<()>,
    stop_renewing: CancellationToken,
    /// Reservations waiting now because every slot is taken.
    waiting: AtomicUsize,
}

impl std::fmt::Debug for PlanLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanLimits")
            .field("fleet", &self.fleet)
            .field("running", &self.running())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct State {
    /// Sandboxes this client holds as running.
    running: HashSet<String>,
    /// Reservations (`create:<uuid>`) of creates and resumes in flight.
    reserved: HashSet<String>,
    /// In-process mode: the earliest instant the next create or resume may be sent.
    next_start: Option<Instant>,
}

impl PlanLimits {
    /// In-process limits: this client alone counts against the plan.
    pub fn new(max_running: u32, starts_per_second: f64, wait: Duration) -> Arc<Self> {
        let interval = Duration::from_secs_f64(1.0 / starts_per_second.max(1e-6));
        Arc::new(Self {
            max_running: max_running.max(1) as usize,
            interval: interval + margin(interval),
            wait: Mutex::new(wait),
            state: Mutex::new(State::default()),
            freed: Notify::new(),
            fleet: None,
            slot_writes: tokio::sync::Mutex::new(()),
            stop_renewing: CancellationToken::new(),
            waiting: AtomicUsize::new(0),
        })
    }

    /// Fleet-wide limits in Redis. Starts the task that renews this process's holds
    /// (it ends when the limits are dropped); call within a Tokio runtime.
    pub fn fleet(admission: FleetAdmission, wait: Duration) -> Arc<Self> {
        let plan = admission.plan();
        let limits = Arc::new(Self {
            max_running: plan.max_running as usize,
            interval: plan.start_interval,
            wait: Mutex::new(wait),
            state: Mutex::new(State::default()),
            freed: Notify::new(),
            fleet: Some(admission),
            slot_writes: tokio::sync::Mutex::new(()),
            stop_renewing: CancellationToken::new(),
            waiting: AtomicUsize::new(0),
        });
        let (weak, stop) = (Arc::downgrade(&limits), limits.stop_renewing.clone());
        tokio::spawn(renew_holds(weak, stop, plan.hold / 3));
        limits
    }

    pub fn is_fleet_wide(&self) -> bool {
        self.fleet.is_some()
    }

    pub fn set_wait(&self, wait: Duration) {
        *self.wait.lock().unwrap() = wait;
    }

    pub fn wait(&self) -> Duration {
        *self.wait.lock().unwrap()
    }

    fn at_cap(&self) -> SandboxError {
        SandboxError::LimitReached(format!(
            "{} sandboxes running (sandbox.e2b.max_concurrent_sandboxes{}); none freed within {:?}",
            self.max_running,
            if self.fleet.is_some() {
                ", fleet-wide"
            } else {
                ""
            },
            self.wait()
        ))
    }

    /// Whether a create or resume of this process is waiting for a slot now (every
    /// one is taken): the pool then frees one by ending an idle agent.
    pub fn slot_wanted(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// Reserve a running slot, waiting (bounded) while all are taken.
    pub async fn reserve(self: &Arc<Self>) -> Result<Reservation, SandboxError> {
        let mut waiting = None;
        let deadline = Instant::now() + self.wait();
        let holder = format!("create:{}", uuid::Uuid::now_v7());
        loop {
            // Register for the wake-up before checking, so a release between the
            // check and the wait is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let mut pause = None;
            match &self.fleet {
                None => {
                    let mut s = self.state.lock().unwrap();
                    if s.running.len() + s.reserved.len() < self.max_running {
                        s.reserved.insert(holder.clone());
                    } else {
                        pause = Some(deadline.saturating_duration_since(Instant::now()));
                    }
                }
                Some(fleet) => match fleet.acquire_slot(&holder).await.map_err(admission_error)? {
                    SlotAnswer::Taken => {
                        self.state.lock().unwrap().reserved.insert(holder.clone());
                    }
                    SlotAnswer::Full { earliest_expiry } => {
                        let jitter = rand::rng().random_range(0.5..1.5);
                        pause = Some(
                            SLOT_POLL
                                .mul_f64(jitter)
                                .min(earliest_expiry.max(Duration::from_millis(5))),
                        );
                    }
                },
            }
            let Some(pause) = pause else {
                drop(waiting);
                return Ok(Reservation {
                    limits: Arc::clone(self),
                    holder,
                    armed: true,
                });
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(self.at_cap());
            }
            if waiting.is_none() {
                waiting = Some(Waiting::new(&self.waiting));
            }
            let until = deadline.min(now + pause);
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Wait for the next create/resume turn (bounded).
    pub async fn start_turn(&self) -> Result<(), SandboxError> {
        let too_far = |wait: Duration| {
            SandboxError::LimitReached(format!(
                "sandbox creation rate (sandbox.e2b.creates_per_second{}): next turn in {wait:?}",
                if self.fleet.is_some() {
                    ", fleet-wide"
                } else {
                    ""
                },
            ))
        };
        if let Some(fleet) = &self.fleet {
            return match fleet
                .take_start_token(self.wait())
                .await
                .map_err(admission_error)?
            {
                TurnAnswer::Taken { wait } => {
                    tokio::time::sleep(wait).await;
                    Ok(())
                }
                TurnAnswer::TooFar { wait } => Err(too_far(wait)),
            };
        }
        let at = {
            let now = Instant::now();
            let mut s = self.state.lock().unwrap();
            let at = s.next_start.map_or(now, |n| n.max(now));
            if at.duration_since(now) > self.wait() {
                return Err(too_far(at.duration_since(now)));
            }
            s.next_start = Some(at + self.interval);
            at
        };
        tokio::time::sleep_until(at).await;
        Ok(())
    }

    /// The provider said 429: no start (here, or fleet-wide) for `delay`.
    pub async fn defer_starts(&self, delay: Duration) {
        match &self.fleet {
            Some(fleet) => {
                if let Err(e) = fleet.defer_starts(delay).await {
                    tracing::warn!(error = %e, "could not hold the fleet's starts back after a 429");
                }
            }
            None => {
                let mut s = self.state.lock().unwrap();
                let not_before = Instant::now() + delay;
                s.next_start = Some(s.next_start.map_or(not_before, |n| n.max(not_before)));
            }
        }
    }

    pub fn is_running(&self, id: &str) -> bool {
        self.state.lock().unwrap().running.contains(id)
    }

    /// Release `id`'s slot (kill, pause, gone). Fleet-wide, the slot is freed even
    /// when another worker held it (this one killed a dead worker's sandbox).
    pub async fn release(&self, id: &str) {
        self.release_all(vec![id.to_string()], true).await;
    }

    /// Keep only the held IDs for which `keep` is true (list reconciliation).
    pub async fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        let dropped: Vec<String> = self
            .state
            .lock()
            .unwrap()
            .running
            .iter()
            .filter(|id| !keep(id))
            .cloned()
            .collect();
        self.release_all(dropped, false).await;
    }

    async fn release_all(&self, ids: Vec<String>, even_unheld: bool) {
        if ids.is_empty() {
            return;
        }
        let _writes = match &self.fleet {
            Some(_) => Some(self.slot_writes.lock().await),
            None => None,
        };
        let mut freed = false;
        let mut in_redis = Vec::new();
        {
            let mut s = self.state.lock().unwrap();
            for id in ids {
                if s.running.remove(&id) {
                    freed = true;
                    in_redis.push(id);
                } else if even_unheld {
                    in_redis.push(id);
                }
            }
        }
        if let Some(fleet) = &self.fleet {
            let refs: Vec<&str> = in_redis.iter().map(String::as_str).collect();
            match fleet.release_slots(&refs).await {
                Ok(n) => freed |= n > 0,
                Err(e) => {
                    // Nobody renews them now: they come back when their holds expire.
                    tracing::warn!(sandboxes = ?in_redis, error = %e, "could not release fleet slots; they free themselves when their holds expire");
                }
            }
        }
        if freed {
            self.freed.notify_waiters();
        }
    }

    /// Renew the holds of everything this process holds or reserves (fleet-wide).
    async fn renew(&self) {
        let Some(fleet) = &self.fleet else { return };
        let _writes = self.slot_writes.lock().await;
        let holders: Vec<String> = {
            let s = self.state.lock().unwrap();
            s.running.iter().chain(s.reserved.iter()).cloned().collect()
        };
        match fleet.renew_slots(&holders).await {
            Ok(renewed) => {
                if !renewed.lost.is_empty() {
                    tracing::warn!(holders = ?renewed.lost, "fleet slots had expired (renewals stalled); taken back");
                }
                if !renewed.released.is_empty() {
                    // Another worker killed or paused them: they no longer run here.
                    tracing::debug!(holders = ?renewed.released, "fleet slots released by another worker");
                    let mut s = self.state.lock().unwrap();
                    for id in &renewed.released {
                        s.running.remove(id);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not renew fleet slots"),
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

impl Drop for PlanLimits {
    fn drop(&mut self) {
        self.stop_renewing.cancel();
    }
}

fn admission_error(e: crate::admission::AdmissionError) -> SandboxError {
    SandboxError::Unavailable(format!("fleet admission (Redis): {e}"))
}

/// Renew a process's fleet holds every `every` until the limits are dropped.
async fn renew_holds(limits: Weak<PlanLimits>, stop: CancellationToken, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(limits) = limits.upgrade() else {
            return;
        };
        limits.renew().await;
    }
}

/// Counts a reservation as waiting for a slot while it lives (also when the wait is
/// cut off).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Waiting<'a> {
        n.fetch_add(1, Ordering::SeqCst);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A reserved slot. Dropped without [`Reservation::commit`] (the call failed or
/// was cancelled) it frees the slot again.
#[derive(Debug)]
pub struct Reservation {
    limits: Arc<PlanLimits>,
    holder: String,
    armed: bool,
}

impl Reservation {
    /// The sandbox is now running: the slot is held by `id` until released.
    pub async fn commit(mut self, id: &str) {
        self.armed = false;
        let limits = Arc::clone(&self.limits);
        let _writes = match &limits.fleet {
            Some(_) => Some(limits.slot_writes.lock().await),
            None => None,
        };
        let newly = {
            let mut s = limits.state.lock().unwrap();
            s.reserved.remove(&self.holder);
            s.running.insert(id.to_string())
        };
        if let Some(fleet) = &limits.fleet
            && let Err(e) = fleet.commit_slot(&self.holder, id).await
        {
            // The next renewal gives the sandbox its slot.
            tracing::warn!(sandbox = %id, error = %e, "could not move the reserved fleet slot to the sandbox");
        }
        if !newly {
            // Already held (a racing connect): the reserved slot is not needed.
            limits.freed.notify_waiters();
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.limits
            .state
            .lock()
            .unwrap()
            .reserved
            .remove(&self.holder);
        self.limits.freed.notify_waiters();
        if self.limits.fleet.is_some()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (limits, holder) = (Arc::clone(&self.limits), self.holder.clone());
            rt.spawn(async move {
                let _writes = limits.slot_writes.lock().await;
                if let Some(fleet) = &limits.fleet
                    && let Err(e) = fleet.release_slots(&[&holder]).await
                {
                    tracing::debug!(error = %e, "could not release a reserved fleet slot; it expires by itself");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn cap_waits_for_a_release_then_times_out() {
        let l = PlanLimits::new(1, 100.0, Duration::from_secs(5));
        l.reserve().await.unwrap().commit("a").await;
        assert_eq!(l.running(), 1);
        let l2 = Arc::clone(&l);
        let waiter = tokio::spawn(async move {
            let r = l2.reserve().await?;
            r.commit("b").await;
            Ok::<_, SandboxError>(())
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        l.release("a").await;
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
        l.reserve().await.unwrap().commit("x").await;
        l.retain(|_| false).await;
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
