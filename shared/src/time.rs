//! Wall-clock helpers. Redis scores and job timestamps are Unix milliseconds.
//!
//! **One clock.** Everything several processes must agree on (leases, reclaim, retry
//! delays, deadlines, holds, admission slots) is stamped and compared inside the Lua
//! scripts with Redis' own clock (`TIME`), never with a caller's. A process needs the
//! time by Redis' clock only to wait (how long until the next delayed job falls due) and
//! to check a deadline before it starts work: [`redis_now_ms`] estimates it from this
//! host's clock and the offset the last fetch observed ([`observe_redis_clock`]).
//!
//! `FLEET_CLOCK_OFFSET_MS` (a signed number of milliseconds, read once) shifts this
//! process's clock, [`now_ms`], as a host whose clock is wrong would be: the tests run
//! workers minutes apart with it to show that nothing depends on their clocks agreeing.
//! It is not a setting and nothing else reads it.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The environment variable that shifts this process's clock (tests).
pub const CLOCK_OFFSET_ENV: &str = "FLEET_CLOCK_OFFSET_MS";

static CLOCK_OFFSET_MS: LazyLock<i64> = LazyLock::new(|| {
    std::env::var(CLOCK_OFFSET_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
});

/// Redis' clock minus [`now_ms`], as last observed (0 until then).
static REDIS_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Milliseconds since the Unix epoch by this host's clock (shifted by
/// `FLEET_CLOCK_OFFSET_MS` when set).
pub fn now_ms() -> u64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0);
    shift(real, *CLOCK_OFFSET_MS)
}

fn shift(ms: u64, by: i64) -> u64 {
    if by >= 0 {
        ms.saturating_add(by.unsigned_abs())
    } else {
        ms.saturating_sub(by.unsigned_abs())
    }
}

/// Note Redis' time `redis_ms` as a script just read it (a fetch reply carries it).
pub fn observe_redis_clock(redis_ms: u64) {
    let local = now_ms();
    let offset =
        i64::try_from(redis_ms).unwrap_or(i64::MAX) - i64::try_from(local).unwrap_or(i64::MAX);
    REDIS_OFFSET_MS.store(offset, Ordering::Relaxed);
}

/// Milliseconds since the Unix epoch by Redis' clock, estimated from this host's clock
/// and the offset last observed (this host's clock until one was).
pub fn redis_now_ms() -> u64 {
    shift(now_ms(), REDIS_OFFSET_MS.load(Ordering::Relaxed))
}

/// A duration in whole milliseconds, saturating at `u64::MAX` (an `as u64` cast of
/// `as_millis()` would silently wrap a long one into a short one).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The instant `d` from now; a duration too long to represent (a job option written
/// around the edge's validation) is capped at about a century instead of panicking
/// with "overflow when adding duration to instant".
pub fn instant_after(d: Duration) -> tokio::time::Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = tokio::time::Instant::now();
    now.checked_add(d).unwrap_or(now + FAR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shift_saturates_both_ways() {
        assert_eq!(shift(1000, 60_000), 61_000);
        assert_eq!(shift(61_000, -60_000), 1000);
        assert_eq!(shift(1000, -60_000), 0);
        assert_eq!(shift(u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn millis_saturates_instead_of_wrapping() {
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::from_secs(u64::MAX)), u64::MAX);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn an_instant_too_far_away_is_capped_instead_of_panicking() {
        let soon = instant_after(Duration::from_secs(1));
        assert!(soon > tokio::time::Instant::now());
        assert!(instant_after(Duration::MAX) > soon);
        assert!(instant_after(Duration::from_secs(u64::MAX)) > soon);
    }
}
