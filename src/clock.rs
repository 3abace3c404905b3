//! The wall clock, as the gateway reads it: epoch times that records, entries and tokens carry
//! (so replicas of one fleet agree on them) and that the metrics and logs show, and the whole
//! seconds a `Retry-After` says. A leaf: the stores, the upstream broker, the layers and the
//! metrics all read it, and it knows none of them. Elapsed time is measured on tokio's clock
//! (`tokio::time::Instant`), never here, so tests with paused time stay exact.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the clock replicas share (entries and records carry it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Microseconds since the Unix epoch: when an invalidation was sent, to measure its lag.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Whole seconds since the Unix epoch: the windows of the spending guard.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seconds since the Unix epoch with their fraction, as Prometheus timestamps are written.
pub(crate) fn now_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Whole seconds to wait, rounded up, at least one: what `Retry-After` says.
pub(crate) fn retry_secs(wait: Duration) -> u64 {
    secs_ceil(wait).max(1)
}

/// Whole seconds, rounded up (0 stays 0): what the `RateLimit` headers say.
pub(crate) fn secs_ceil(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_secs_rounds_up_to_at_least_one() {
        assert_eq!(retry_secs(Duration::ZERO), 1);
        assert_eq!(retry_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_secs(Duration::from_secs(3)), 3);
    }
}
