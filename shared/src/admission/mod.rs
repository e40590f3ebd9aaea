//! Fleet-wide admission: a sandbox provider's plan limits, shared by every worker
//! through Redis. E2B refuses (429) a create or resume beyond the team's concurrent
//! sandboxes (20 Hobby / 100 Pro) or its create rate (1/s Hobby / 5/s Pro); each
//! worker counting alone, three workers on a 20-sandbox plan could ask for 60.
//!
//! Two pieces of state, one Lua script per transition (`lua/`, KEYS/ARGV in each
//! header), one method per script:
//!
//! - **Slots** (a semaphore): a ZSET of holders, each with a hold expiry. A create or
//!   resume first takes a slot under a reservation (`create:<uuid>`,
//!   [`FleetAdmission::acquire_slot`]), which becomes the sandbox's own when it starts
//!   ([`FleetAdmission::commit_slot`]) or is given back if it fails
//!   ([`FleetAdmission::release_slots`], also on kill, pause and "gone"). Holders
//!   renew their holds ([`FleetAdmission::renew_slots`]) every third of the hold; a
//!   worker killed with `kill -9` stops renewing, and its holds are reclaimed by the
//!   next `acquire_slot` once they expire, so no slot leaks.
//! - **Start turns** (a token bucket of one token, as GCRA): one key holding when the
//!   next start may be sent ([`FleetAdmission::take_start_token`]); a 429 with
//!   `Retry-After` pushes it later for everyone ([`FleetAdmission::defer_starts`]).
//!
//! Every script reads the time from Redis (`TIME`), and callers only get durations
//! back ("wait 400 ms"), so workers whose clocks disagree still share one timeline.
//!
//! Keys live under `<key_prefix>:{<scope>}:` (scope `e2b` for the E2B provider): the
//! braces are a Redis Cluster hash tag, so each script touches one slot. This module
//! knows nothing of jobs or agents: the provider admits sandboxes, and the fleet's
//! agent registry can later take its slots the same way.
//!
//! | key               | type   | holds                                                     |
//! |-------------------|--------|-----------------------------------------------------------|
//! | `…:slots`         | ZSET   | holder (sandbox ID or `create:<uuid>`) → hold expiry (ms) |
//! | `…:next_start`    | STRING | the next free start turn (µs, Redis clock)                |
//! | `…:released`      | ZSET   | holder released by some worker → until when it is remembered (ms) |

use std::sync::LazyLock;
use std::time::Duration;

use crate::connection::RedisConn;
use redis::Script;

use crate::queue::QueueError;
use crate::settings::RedisSettings;

/// Errors of admission calls (Redis unreachable or answering nonsense).
pub type AdmissionError = QueueError;

struct Scripts {
    acquire_slot: Script,
    commit_slot: Script,
    release_slots: Script,
    renew_slots: Script,
    take_start_token: Script,
    defer_starts: Script,
}

const LIB: &str = include_str!("lua/_lib.lua");

fn load(body: &str) -> Script {
    Script::new(&format!("{LIB}\n{body}"))
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    acquire_slot: load(include_str!("lua/acquire_slot-1.lua")),
    commit_slot: load(include_str!("lua/commit_slot-2.lua")),
    release_slots: load(include_str!("lua/release_slots-2.lua")),
    renew_slots: load(include_str!("lua/renew_slots-2.lua")),
    take_start_token: load(include_str!("lua/take_start_token-1.lua")),
    defer_starts: load(include_str!("lua/defer_starts-1.lua")),
});

/// The keys of one admission scope.
#[derive(Debug, Clone)]
pub struct AdmissionKeys {
    pub slots: String,
    pub next_start: String,
    pub released: String,
}

impl AdmissionKeys {
    /// `<key_prefix>:{<scope>}:slots`, `…:next_start` and `…:released`.
    pub fn new(key_prefix: &str, scope: &str) -> AdmissionKeys {
        let prefix = format!("{key_prefix}:{{{scope}}}:");
        AdmissionKeys {
            slots: format!("{prefix}slots"),
            next_start: format!("{prefix}next_start"),
            released: format!("{prefix}released"),
        }
    }
}

/// A plan's limits, as the fleet shares them.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Sandboxes running (or starting) at once, fleet-wide.
    pub max_running: u32,
    /// Spacing of creates and resumes, fleet-wide.
    pub start_interval: Duration,
    /// How long a hold lasts without renewal: a dead worker's slots come back
    /// within this (the worker's lease TTL).
    pub hold: Duration,
}

impl Plan {
    /// A plan of `max_running` sandboxes and `starts_per_second`, with a small margin
    /// on the spacing (5 % of the interval, at most 20 ms): the provider counts
    /// arrival times, not our send times. Small, because on a full plan every start
    /// pays it: at 1/s, 20 sandboxes come up 0.4 s later than the plan allows.
    pub fn new(max_running: u32, starts_per_second: f64, hold: Duration) -> Plan {
        let interval = Duration::from_secs_f64(1.0 / starts_per_second.max(1e-6));
        Plan {
            max_running: max_running.max(1),
            start_interval: interval + (interval / 20).min(Duration::from_millis(20)),
            hold: hold.max(Duration::from_secs(1)),
        }
    }
}

/// What [`FleetAdmission::acquire_slot`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotAnswer {
    Taken,
    /// All slots are held; the earliest hold expires in this long (a release may
    /// come sooner).
    Full {
        earliest_expiry: Duration,
    },
}

/// What [`FleetAdmission::renew_slots`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Renewed {
    /// Holds that had expired (the holder stalled) and were put back.
    pub lost: Vec<String>,
    /// Holders another worker released (it killed or paused the sandbox): not renewed;
    /// the caller stops holding them.
    pub released: Vec<String>,
}

/// What [`FleetAdmission::take_start_token`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnAnswer {
    /// The turn is this caller's: send after waiting this long.
    Taken { wait: Duration },
    /// The next free turn is further away than the caller would wait; nothing taken.
    TooFar { wait: Duration },
}

/// One scope's shared plan limits. Cheap to clone (the connection is shared).
#[derive(Clone)]
pub struct FleetAdmission {
    conn: RedisConn,
    keys: AdmissionKeys,
    plan: Plan,
}

impl std::fmt::Debug for FleetAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetAdmission")
            .field("keys", &self.keys)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

impl FleetAdmission {
    /// Connect to Redis (a self-healing connection) for `scope`'s limits.
    pub async fn open(
        redis: &RedisSettings,
        scope: &str,
        plan: Plan,
    ) -> Result<FleetAdmission, AdmissionError> {
        let conn = crate::queue::connect(redis).await?;
        Ok(Self::with_connection(
            conn,
            AdmissionKeys::new(&redis.key_prefix, scope),
            plan,
        ))
    }

    pub fn with_connection(conn: RedisConn, keys: AdmissionKeys, plan: Plan) -> FleetAdmission {
        FleetAdmission { conn, keys, plan }
    }

    pub fn plan(&self) -> Plan {
        self.plan
    }

    pub fn keys(&self) -> &AdmissionKeys {
        &self.keys
    }

    fn hold_ms(&self) -> u64 {
        self.plan.hold.as_millis() as u64
    }

    /// Take a slot for `holder` if one is free (`acquire_slot-1.lua`).
    pub async fn acquire_slot(&self, holder: &str) -> Result<SlotAnswer, AdmissionError> {
        let (taken, ms): (i64, i64) = SCRIPTS
            .acquire_slot
            .key(&self.keys.slots)
            .arg(holder)
            .arg(self.plan.max_running)
            .arg(self.hold_ms())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(if taken == 1 {
            SlotAnswer::Taken
        } else {
            SlotAnswer::Full {
                earliest_expiry: Duration::from_millis(ms.max(0) as u64),
            }
        })
    }

    /// The reservation `reservation` became sandbox `sandbox` (`commit_slot-2.lua`).
    /// False when the reservation had expired (the sandbox got a slot anyway).
    pub async fn commit_slot(
        &self,
        reservation: &str,
        sandbox: &str,
    ) -> Result<bool, AdmissionError> {
        let held: i64 = SCRIPTS
            .commit_slot
            .key(&self.keys.slots)
            .key(&self.keys.released)
            .arg(reservation)
            .arg(sandbox)
            .arg(self.hold_ms())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(held == 1)
    }

    /// Free the slots of `holders` (`release_slots-2.lua`); how many held one. The
    /// workers that held them stop renewing them at their next renewal.
    pub async fn release_slots(&self, holders: &[&str]) -> Result<usize, AdmissionError> {
        if holders.is_empty() {
            return Ok(0);
        }
        let n: i64 = SCRIPTS
            .release_slots
            .key(&self.keys.slots)
            .key(&self.keys.released)
            .arg(self.hold_ms())
            .arg(holders)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n.max(0) as usize)
    }

    /// Extend the holds of `holders` (`renew_slots-2.lua`).
    pub async fn renew_slots(&self, holders: &[String]) -> Result<Renewed, AdmissionError> {
        if holders.is_empty() {
            return Ok(Renewed::default());
        }
        let (lost, released): (Vec<String>, Vec<String>) = SCRIPTS
            .renew_slots
            .key(&self.keys.slots)
            .key(&self.keys.released)
            .arg(self.hold_ms())
            .arg(holders)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(Renewed { lost, released })
    }

    /// Take the next start turn if it is at most `max_wait` away
    /// (`take_start_token-1.lua`).
    pub async fn take_start_token(&self, max_wait: Duration) -> Result<TurnAnswer, AdmissionError> {
        let (taken, us): (i64, i64) = SCRIPTS
            .take_start_token
            .key(&self.keys.next_start)
            .arg(self.plan.start_interval.as_micros() as u64)
            .arg(max_wait.as_micros() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let wait = Duration::from_micros(us.max(0) as u64);
        Ok(if taken == 1 {
            TurnAnswer::Taken { wait }
        } else {
            TurnAnswer::TooFar { wait }
        })
    }

    /// No start anywhere in the fleet for `delay` from now (`defer_starts-1.lua`);
    /// how long until the next free turn.
    pub async fn defer_starts(&self, delay: Duration) -> Result<Duration, AdmissionError> {
        let us: i64 = SCRIPTS
            .defer_starts
            .key(&self.keys.next_start)
            .arg(delay.as_micros() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(Duration::from_micros(us.max(0) as u64))
    }

    /// How many slots are held now (expired holds included until reclaimed).
    pub async fn held_slots(&self) -> Result<usize, AdmissionError> {
        let n: usize = redis::cmd("ZCARD")
            .arg(&self.keys.slots)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag_under_the_prefix() {
        let k = AdmissionKeys::new("fleet", "e2b");
        assert_eq!(k.slots, "fleet:{e2b}:slots");
        assert_eq!(k.next_start, "fleet:{e2b}:next_start");
        assert_eq!(k.released, "fleet:{e2b}:released");
    }

    #[test]
    fn the_start_interval_has_a_small_margin() {
        let p = Plan::new(5, 1.0, Duration::from_secs(30));
        assert_eq!(p.start_interval, Duration::from_millis(1020));
        let p = Plan::new(5, 5.0, Duration::from_secs(30));
        assert_eq!(p.start_interval, Duration::from_millis(210));
    }
}
