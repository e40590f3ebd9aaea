//! Switchable faults of the fake E2B server. A [`Faults`] handle is shared with
//! the running server, so a test can change them at any moment; each fault
//! imitates something E2B (or the network to it) really does.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What the control plane answers instead of doing the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ControlFault {
    /// An error status (5xx) with E2B's JSON error body.
    Status(u16),
    /// 429 with `Retry-After: <secs>`.
    RateLimited(u64),
}

/// How envd's edge answers for a sandbox it cannot find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotFoundBody {
    /// `{"sandboxId","message":"The sandbox was not found","code":502}`.
    Json,
    /// The HTML page the edge serves to browser-like clients.
    Html,
}

/// A plan the fake enforces as E2B does: creates and resumes beyond it get 429.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Sandboxes running (or starting) at once.
    pub max_running: usize,
    /// Creates and resumes per second: one accepted start per `1 / rate`, measured
    /// on arrival.
    pub starts_per_second: f64,
}

/// How long the fake takes over each control-plane call that does work, as E2B does
/// (its control plane starts a microVM, snapshots it, tears it down). The time is
/// spent inside the handler, before the effect: a create or resume counts against the
/// plan as starting meanwhile, a sandbox being paused or killed still runs (and
/// counts) until its call returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latencies {
    /// `POST /sandboxes`.
    pub create: Duration,
    /// `POST /sandboxes/{id}/connect` of a paused sandbox (a resume; connecting to a
    /// running one only extends its TTL and takes no time).
    pub resume: Duration,
    /// `POST /sandboxes/{id}/pause`.
    pub pause: Duration,
    /// `DELETE /sandboxes/{id}`.
    pub kill: Duration,
    /// Each call's latency is drawn uniformly within ± this fraction (0..1) of its
    /// value, which is so the median; drawn from a seeded generator, so a run with the
    /// same seed and the same order of calls gets the same latencies.
    pub jitter: f64,
    pub seed: u64,
}

impl Latencies {
    /// E2B as measured from a client near it: create p50 ≈ 450 ms, resume ≈ 1 s,
    /// pause ≈ 2 s, kill ≈ 200 ms, each ± 20 %.
    pub fn realistic() -> Latencies {
        Latencies {
            create: Duration::from_millis(450),
            resume: Duration::from_secs(1),
            pause: Duration::from_secs(2),
            kill: Duration::from_millis(200),
            jitter: 0.2,
            seed: 0x1a7e,
        }
    }
}

/// The control-plane calls that take time ([`Latencies`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    Create,
    Resume,
    Pause,
    Kill,
}

#[derive(Debug)]
struct State {
    rng: StdRng,
    latencies: Option<(Latencies, StdRng)>,
    fail_next: VecDeque<ControlFault>,
    error_rate: f64,
    error_status: u16,
    delay_all: Duration,
    delay_next: VecDeque<Duration>,
    envd_not_found: Option<NotFoundBody>,
    vanish_next_exec: bool,
    cut_next_stream: bool,
    lose_next_start: bool,
    pause_keeps_files: bool,
    list_page_size: Option<usize>,
    plan: Option<Plan>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            rng: StdRng::seed_from_u64(0x0e2b),
            latencies: None,
            fail_next: VecDeque::new(),
            error_rate: 0.0,
            error_status: 503,
            delay_all: Duration::ZERO,
            delay_next: VecDeque::new(),
            envd_not_found: None,
            vanish_next_exec: false,
            cut_next_stream: false,
            lose_next_start: false,
            pause_keeps_files: true,
            list_page_size: None,
            plan: None,
        }
    }
}

/// The fault switches. Cloning gives another handle on the same switches.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Mutex<State>>);

impl Faults {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }

    /// Back to a healthy server.
    pub fn clear(&self) {
        self.with(|s| *s = State::default());
    }

    /// The next `n` control-plane requests are answered `status` (e.g. 503).
    pub fn fail_next_control(&self, n: usize, status: u16) {
        self.with(|s| {
            s.fail_next
                .extend(std::iter::repeat_n(ControlFault::Status(status), n))
        });
    }

    /// A `fraction` (0..=1) of control-plane requests, drawn at random with a
    /// fixed seed, is answered `status`.
    pub fn set_control_error_rate(&self, fraction: f64, status: u16) {
        self.with(|s| {
            s.error_rate = fraction.clamp(0.0, 1.0);
            s.error_status = status;
        });
    }

    /// The next `n` control-plane requests are answered 429 with `Retry-After`.
    pub fn rate_limit_next(&self, n: usize, retry_after: Duration) {
        self.with(|s| {
            s.fail_next.extend(std::iter::repeat_n(
                ControlFault::RateLimited(retry_after.as_secs().max(1)),
                n,
            ))
        });
    }

    /// Every control-plane response waits `delay` after the work is done (so a
    /// client that gives up still finds the effect, as with a slow real server).
    pub fn set_control_delay(&self, delay: Duration) {
        self.with(|s| s.delay_all = delay);
    }

    /// Only the next `n` control-plane responses wait `delay` (after the work).
    pub fn delay_next_control(&self, n: usize, delay: Duration) {
        self.with(|s| s.delay_next.extend(std::iter::repeat_n(delay, n)));
    }

    /// envd requests to every sandbox get 502 "The sandbox was not found".
    pub fn set_envd_not_found(&self, body: Option<NotFoundBody>) {
        self.with(|s| s.envd_not_found = body);
    }

    /// The next `process.Start`: after the `start` event the stream is cut and
    /// the sandbox is killed (it is gone for envd and the control plane alike).
    pub fn vanish_during_next_exec(&self) {
        self.with(|s| s.vanish_next_exec = true);
    }

    /// The next `process.Start`: after the `start` event the stream is cut; the
    /// process goes on running (re-attach with `process.Connect`).
    pub fn cut_next_stream(&self) {
        self.with(|s| s.cut_next_stream = true);
    }

    /// The next `process.Start`: the process starts, but the connection is cut
    /// before any event (the client never learns the PID; re-attach by tag).
    pub fn lose_next_start_answer(&self) {
        self.with(|s| s.lose_next_start = true);
    }

    /// Whether a paused sandbox keeps its files when resumed (default true;
    /// false imitates E2B#884, files lost across pause/resume).
    pub fn set_pause_keeps_files(&self, keep: bool) {
        self.with(|s| s.pause_keeps_files = keep);
    }

    /// Cap list pages at `n` items whatever `limit` the client asks for, so
    /// pagination shows with few sandboxes.
    pub fn set_list_page_size(&self, n: Option<usize>) {
        self.with(|s| s.list_page_size = n);
    }

    /// Enforce a plan (E2B's limits) on creates and resumes: beyond its concurrent
    /// sandboxes, 429 "maximum number of concurrent E2B sandboxes"; sooner than
    /// `1 / starts_per_second` after the last accepted start, 429 with `Retry-After: 1`.
    /// Refusals are counted in [`super::Counters`] (`cap_refusals`, `rate_refusals`).
    pub fn set_plan(&self, plan: Option<Plan>) {
        self.with(|s| s.plan = plan);
    }

    /// Give create, resume, pause and kill the time they take at E2B (`None`: none).
    pub fn set_latencies(&self, latencies: Option<Latencies>) {
        self.with(|s| s.latencies = latencies.map(|l| (l, StdRng::seed_from_u64(l.seed))));
    }

    /// How long `call` takes this time (zero without latencies).
    pub(crate) fn latency(&self, call: Call) -> Duration {
        self.with(|s| {
            let Some((l, rng)) = &mut s.latencies else {
                return Duration::ZERO;
            };
            let median = match call {
                Call::Create => l.create,
                Call::Resume => l.resume,
                Call::Pause => l.pause,
                Call::Kill => l.kill,
            };
            let j = l.jitter.clamp(0.0, 0.99);
            if j == 0.0 {
                return median;
            }
            median.mul_f64(rng.random_range(1.0 - j..=1.0 + j))
        })
    }

    pub(crate) fn plan(&self) -> Option<Plan> {
        self.with(|s| s.plan)
    }

    pub(crate) fn take_control_fault(&self) -> Option<ControlFault> {
        self.with(|s| {
            if let Some(f) = s.fail_next.pop_front() {
                return Some(f);
            }
            if s.error_rate > 0.0 && s.rng.random_bool(s.error_rate) {
                return Some(ControlFault::Status(s.error_status));
            }
            None
        })
    }

    pub(crate) fn take_control_delay(&self) -> Duration {
        self.with(|s| s.delay_next.pop_front().unwrap_or(s.delay_all))
    }

    pub(crate) fn envd_not_found(&self) -> Option<NotFoundBody> {
        self.with(|s| s.envd_not_found)
    }

    /// Which stream fault the next Start gets (vanish wins), consuming it.
    pub(crate) fn take_stream_fault(&self) -> Option<StreamFault> {
        self.with(|s| {
            if std::mem::take(&mut s.vanish_next_exec) {
                Some(StreamFault::Vanish)
            } else if std::mem::take(&mut s.cut_next_stream) {
                Some(StreamFault::Cut)
            } else if std::mem::take(&mut s.lose_next_start) {
                Some(StreamFault::LoseStart)
            } else {
                None
            }
        })
    }

    pub(crate) fn pause_keeps_files(&self) -> bool {
        self.with(|s| s.pause_keeps_files)
    }

    pub(crate) fn list_page_size(&self) -> Option<usize> {
        self.with(|s| s.list_page_size)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamFault {
    /// Cut after the `start` event.
    Cut,
    /// Cut after the `start` event, and kill the sandbox.
    Vanish,
    /// Cut before the `start` event.
    LoseStart,
}
