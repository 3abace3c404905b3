//! The cache's hit ratio over the last minutes (`GET /admin/overview`, `cache.hitRatio`): a small
//! ring of snapshots of `finovy_gateway_cache_lookups_total`, summed over routes, taken every
//! [`EVERY`] by a background task. The window's lookups are the live counts less the oldest
//! snapshot that is at most [`SPAN`] old, so the data plane pays nothing for it: the counters
//! are the ones it already keeps.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics::Metrics;

/// How far back the hit ratio looks.
pub(crate) const SPAN: Duration = Duration::from_secs(300);
/// How often a snapshot is taken.
pub(crate) const EVERY: Duration = Duration::from_secs(10);
/// Snapshots kept: one span's worth and the one just before it.
const KEPT: usize = (SPAN.as_secs() / EVERY.as_secs()) as usize + 1;

/// Cache lookups by result (a `bypass` is no lookup of an entry, so it is left out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Lookups {
    pub(crate) hit: u64,
    pub(crate) stale: u64,
    pub(crate) miss: u64,
    pub(crate) coalesced: u64,
}

impl Lookups {
    /// What was counted since `earlier` (a counter never goes down; if it did, 0).
    fn since(self, earlier: Lookups) -> Lookups {
        Lookups {
            hit: self.hit.saturating_sub(earlier.hit),
            stale: self.stale.saturating_sub(earlier.stale),
            miss: self.miss.saturating_sub(earlier.miss),
            coalesced: self.coalesced.saturating_sub(earlier.coalesced),
        }
    }

    /// Answers from the cache (fresh or stale) among all lookups; `None` without lookups.
    pub(crate) fn hit_ratio(self) -> Option<f64> {
        let answered = self.hit + self.stale;
        let all = answered + self.miss + self.coalesced;
        (all > 0).then(|| answered as f64 / all as f64)
    }

    /// The counter's current values, summed over routes.
    pub(crate) fn read(metrics: &Metrics) -> Lookups {
        use prometheus::core::Collector;
        let mut out = Lookups::default();
        for family in metrics.cache_lookups.collect() {
            for m in family.get_metric() {
                let result = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "result")
                    .map(prometheus::proto::LabelPair::value);
                let n = m.get_counter().get_value() as u64;
                match result {
                    Some("hit") => out.hit += n,
                    Some("stale") => out.stale += n,
                    Some("miss") => out.miss += n,
                    Some("coalesced") => out.coalesced += n,
                    _ => {}
                }
            }
        }
        out
    }
}

/// The snapshots, oldest first, each with its epoch milliseconds.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    samples: VecDeque<(u64, Lookups)>,
}

impl Ring {
    pub(crate) fn push(&mut self, at_ms: u64, counts: Lookups) {
        self.samples.push_back((at_ms, counts));
        while self.samples.len() > KEPT {
            self.samples.pop_front();
        }
    }

    /// The lookups counted in the window ending at `now_ms` (whose counts are `now`), and how
    /// long that window is in seconds: from the oldest snapshot at most [`SPAN`] old, so less
    /// than the span just after start. No snapshot yet: a window of nothing.
    pub(crate) fn window(&self, now_ms: u64, now: Lookups) -> (u64, Lookups) {
        let from = now_ms.saturating_sub(SPAN.as_millis() as u64);
        match self.samples.iter().find(|(at, _)| *at >= from) {
            Some(&(at, base)) => (now_ms.saturating_sub(at) / 1000, now.since(base)),
            None => (0, Lookups::default()),
        }
    }
}

/// The ring as the admin listener and the sampler share it.
pub(crate) struct LookupWindow {
    ring: Mutex<Ring>,
}

impl LookupWindow {
    /// A window whose first snapshot is taken now, before anything is served: the counts of
    /// the first minutes are exact.
    pub(crate) fn new(metrics: &Metrics, now_ms: u64) -> LookupWindow {
        let mut ring = Ring::default();
        ring.push(now_ms, Lookups::read(metrics));
        LookupWindow {
            ring: Mutex::new(ring),
        }
    }

    fn push(&self, now_ms: u64, counts: Lookups) {
        self.ring.lock().expect("lookup ring").push(now_ms, counts);
    }

    /// The window's length in seconds and its lookups, at `now_ms`.
    pub(crate) fn read(&self, metrics: &Metrics, now_ms: u64) -> (u64, Lookups) {
        let now = Lookups::read(metrics);
        self.ring.lock().expect("lookup ring").window(now_ms, now)
    }
}

/// Takes a snapshot every [`EVERY`] until `stop` resolves.
pub(crate) async fn sample(
    window: Arc<LookupWindow>,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()>,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + EVERY, EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => window.push(crate::clock::now_ms(), Lookups::read(&metrics)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(hit: u64, miss: u64) -> Lookups {
        Lookups {
            hit,
            miss,
            ..Lookups::default()
        }
    }

    const T0: u64 = 1_765_000_000_000;

    #[test]
    fn just_after_start_the_window_is_since_the_first_snapshot() {
        let mut ring = Ring::default();
        ring.push(T0, hits(0, 0));
        let (secs, seen) = ring.window(T0 + 42_500, hits(9, 1));
        assert_eq!(secs, 42);
        assert_eq!(seen, hits(9, 1));
        assert_eq!(seen.hit_ratio(), Some(0.9));
    }

    #[test]
    fn later_the_window_is_the_last_five_minutes() {
        let mut ring = Ring::default();
        // A snapshot every 10 s for 20 minutes: hits grow by 10 and misses by 1 each time.
        for i in 0..=120u64 {
            ring.push(T0 + i * 10_000, hits(i * 10, i));
        }
        assert_eq!(ring.samples.len(), KEPT);
        let now = T0 + 1_205_000;
        let (secs, seen) = ring.window(now, hits(1_205, 120));
        // The oldest snapshot within 300 s is the one at 910 s (i = 91).
        assert_eq!(secs, 295);
        assert_eq!(seen, hits(1_205 - 910, 120 - 91));
    }

    #[test]
    fn stale_answers_count_as_answered_and_coalesced_ones_do_not() {
        let l = Lookups {
            hit: 6,
            stale: 2,
            miss: 1,
            coalesced: 1,
        };
        assert_eq!(l.hit_ratio(), Some(0.8));
        assert_eq!(Lookups::default().hit_ratio(), None);
    }

    #[test]
    fn a_window_without_snapshots_counts_nothing() {
        let mut ring = Ring::default();
        assert_eq!(ring.window(T0, hits(5, 5)), (0, Lookups::default()));
        // Only snapshots older than the span: none in the window either.
        ring.push(T0, hits(1, 1));
        assert_eq!(
            ring.window(T0 + 400_000, hits(5, 5)),
            (0, Lookups::default())
        );
    }

    #[test]
    fn the_counter_is_summed_over_routes_by_result() {
        let metrics = Metrics::new();
        for (route, result, n) in [
            ("disk.info", "hit", 3),
            ("disk.list", "hit", 2),
            ("disk.info", "miss", 1),
            ("disk.info", "bypass", 7),
            ("disk.list", "stale", 4),
        ] {
            metrics
                .cache_lookups
                .with_label_values(&[route, result])
                .inc_by(n);
        }
        assert_eq!(
            Lookups::read(&metrics),
            Lookups {
                hit: 5,
                stale: 4,
                miss: 1,
                coalesced: 0
            }
        );
    }
}
