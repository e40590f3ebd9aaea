//! Delays: the retry delay of a failed job (exponential backoff with full jitter,
//! honouring an upstream `Retry-After`), and the backoff of Redis operations that
//! hit a passing fault (disconnect, timeout, a restarting server still loading).

use std::time::Duration;

use backon::ExponentialBuilder;
use rand::Rng;

use crate::settings::RetryPolicy;

/// The upper bound of the delay before retry number `retry` (1 = first retry):
/// `min(cap, base * 2^(retry-1))`.
pub fn backoff_ceiling(policy: &RetryPolicy, retry: u32) -> Duration {
    let exp = retry.saturating_sub(1).min(32);
    let ms = policy
        .backoff_base_ms
        .saturating_mul(1u64 << exp)
        .min(policy.backoff_cap_ms);
    Duration::from_millis(ms)
}

/// "Full jitter": a uniformly random delay in `[0, ceiling]`, so retries of many
/// jobs that failed together spread out instead of hitting the upstream together.
/// An upstream `Retry-After` longer than that wins.
pub fn retry_delay(policy: &RetryPolicy, retry: u32, retry_after: Option<Duration>) -> Duration {
    let ceiling = backoff_ceiling(policy, retry).as_millis() as u64;
    let jittered = Duration::from_millis(rand::rng().random_range(0..=ceiling));
    match retry_after {
        Some(after) if after > jittered => after,
        _ => jittered,
    }
}

/// Backoff for Redis operations. `None` retries without end (workers: they must
/// outlive a Redis restart); `Some(d)` gives up after about `d` (the CLI).
pub fn redis_backoff(give_up_after: Option<Duration>) -> ExponentialBuilder {
    let builder = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter();
    match give_up_after {
        None => builder.without_max_times(),
        Some(d) => builder.without_max_times().with_total_delay(Some(d)),
    }
}

/// Whether a Redis error is weather (retry) rather than a bug or bad request: a
/// broken or refused link, a timeout, a server still loading, and every refusal a
/// failover or a resharding causes — READONLY (a primary demoted to replica),
/// MASTERDOWN, TRYAGAIN, CLUSTERDOWN, MOVED/ASK that outlived the cluster client's
/// own redirects (a slot map in flux), and the cluster client finding no connection
/// for a slot (its primary died and no replica serves it yet). None of them ran the
/// command.
pub fn is_transient(err: &redis::RedisError) -> bool {
    use redis::ServerErrorKind as K;
    err.is_io_error()
        || err.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || matches!(
            err.kind(),
            redis::ErrorKind::Server(
                K::BusyLoading
                    | K::TryAgain
                    | K::MasterDown
                    | K::ClusterDown
                    | K::ReadOnly
                    | K::Moved
                    | K::Ask
            )
        )
        || err.to_string().contains("LOADING")
        // WAIT/WAITAOF (`queue.durability`) sent to a primary just demoted to replica,
        // before the cluster client's slot map caught up: READONLY, for those two
        || err.to_string().contains("cannot be used with replica instances")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            backoff_base_ms: 100,
            backoff_cap_ms: 1000,
            attempt_timeout_secs: 10,
            deadline_secs: 0,
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let p = policy();
        let c: Vec<u64> = (1..=6)
            .map(|n| backoff_ceiling(&p, n).as_millis() as u64)
            .collect();
        assert_eq!(c, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jittered_delay_stays_in_the_envelope() {
        let p = policy();
        for retry in 1..=5 {
            for _ in 0..200 {
                let d = retry_delay(&p, retry, None);
                assert!(d <= backoff_ceiling(&p, retry));
            }
        }
    }

    #[test]
    fn failover_and_resharding_refusals_are_weather_not_bugs() {
        use redis::{ErrorKind, RedisError, ServerErrorKind as K};
        for kind in [
            K::ReadOnly,
            K::MasterDown,
            K::BusyLoading,
            K::TryAgain,
            K::ClusterDown,
            K::Moved,
            K::Ask,
        ] {
            let err = RedisError::from((ErrorKind::Server(kind), "refused"));
            assert!(is_transient(&err), "{kind:?}");
        }
        let reset = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(is_transient(&reset));
        // The cluster client's own answer when it reaches no node for a slot (the
        // primary died and the slot map has not caught up yet).
        let no_node =
            RedisError::from((ErrorKind::ClusterConnectionNotFound, "No connections found"));
        assert!(is_transient(&no_node));
        // the durability confirmation reaching a demoted primary (a failover test
        // met it: cluster_faults.rs)
        let demoted = RedisError::from((
            ErrorKind::Server(K::ResponseError),
            "ERR:",
            "WAIT cannot be used with replica instances. Please also note ...".to_string(),
        ));
        assert!(is_transient(&demoted));
        let bug = RedisError::from((ErrorKind::Server(K::ResponseError), "ERR wrong args"));
        assert!(!is_transient(&bug));
        let slot = RedisError::from((ErrorKind::Server(K::CrossSlot), "CROSSSLOT"));
        assert!(
            !is_transient(&slot),
            "a script touching two slots is a bug to fix"
        );
    }

    #[test]
    fn longer_retry_after_wins() {
        let d = retry_delay(&policy(), 1, Some(Duration::from_secs(7)));
        assert_eq!(d, Duration::from_secs(7));
    }
}
