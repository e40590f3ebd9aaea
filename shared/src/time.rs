//! Wall-clock helpers. Redis scores and job timestamps are Unix milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
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
