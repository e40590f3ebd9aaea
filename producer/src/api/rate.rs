//! The per-token request rate limit (`api.requests_per_minute`, or a token's own):
//! a token bucket per token name, holding a minute's allowance and refilled
//! continuously, so a client may burst up to its allowance and then goes at the
//! steady rate. Past it: 429 with `Retry-After`, the seconds until one request is
//! allowed again. Counted in this process only; the map holds one entry per
//! configured token (and one for all requests when there is no token), so it is
//! bounded by the settings.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Default)]
pub struct RateLimiter {
    /// Token name → (requests left, when last refilled).
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// Take one request from `name`'s allowance of `per_minute` (0: no limit), or the
    /// whole seconds until one is available.
    pub fn take(&self, name: &str, per_minute: u32, now: Instant) -> Result<(), u64> {
        if per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(per_minute);
        let per_sec = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (left, last) = buckets.entry(name.to_string()).or_insert((capacity, now));
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *left = (*left + elapsed * per_sec).min(capacity);
        *last = now;
        if *left >= 1.0 {
            *left -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *left) / per_sec).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_minute_of_allowance_then_the_steady_rate() {
        let limiter = RateLimiter::default();
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.take("a", 3, start), Ok(()));
        }
        assert_eq!(limiter.take("a", 3, start), Err(20), "one request per 20 s");
        assert_eq!(
            limiter.take("b", 3, start),
            Ok(()),
            "another token is not held back"
        );
        assert_eq!(
            limiter.take("a", 3, start + Duration::from_secs(10)),
            Err(10)
        );
        assert_eq!(
            limiter.take("a", 3, start + Duration::from_secs(20)),
            Ok(())
        );
        assert_eq!(limiter.take("a", 0, start), Ok(()), "0: no limit");
    }
}
