//! GCRA rate limiting with reservations (smoothing, like nginx `limit_req ... delay`): a request
//! over the rate is given the next free slot if it lies within `max_wait`, and refused otherwise.
//! Mechanism only: keys, rates and instants. Several limits (the account's and the client's) are
//! reserved together or not at all.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::protect::policy::Rate;
use crate::store::error::Stored;
use crate::svc::BoxFuture;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The account's limit; labelled `tenant`, the metric label CONTRACT.md fixes.
    Account,
    Client,
}

impl Scope {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scope::Account => "tenant",
            Scope::Client => "client",
        }
    }
}

/// One limit to reserve against.
#[derive(Debug, Clone)]
pub(crate) struct Limit {
    /// The account the limit belongs to (a shared store keeps an account's limits together).
    pub(crate) account: String,
    pub(crate) key: String,
    pub(crate) scope: Scope,
    pub(crate) rate: Rate,
}

/// A limit's state after a decision, for the `RateLimit` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Standing {
    pub(crate) scope: Scope,
    pub(crate) rate: Rate,
    /// Requests that would go at once now.
    pub(crate) remaining: u32,
    /// Until the limit is back to its full burst.
    pub(crate) reset: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Go after `wait` (zero: at once).
    Granted {
        wait: Duration,
        standing: Vec<Standing>,
    },
    /// No slot within `max_wait`; the limit that refused, and when to come back.
    Refused {
        scope: Scope,
        retry_after: Duration,
        standing: Vec<Standing>,
    },
}

pub(crate) trait RateLimiter: Send + Sync + 'static {
    fn reserve(&self, limits: Vec<Limit>, max_wait: Duration) -> BoxFuture<Stored<Decision>>;
}

/// The in-memory limiter: each key's theoretical arrival time.
#[derive(Default)]
pub(crate) struct MemoryLimiter {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    tats: HashMap<String, Instant>,
    /// The latest `now` decided on. Callers read the clock before they take the lock, so two
    /// requests at once may take it in the other order; a decision is made at the later of its
    /// own time and the last one's, or the second of a burst would find the first's slot ahead
    /// of its own clock and be refused (or kept waiting) for the difference.
    latest: Option<Instant>,
}

pub(crate) fn tolerance(rate: &Rate) -> Duration {
    rate.interval() * (rate.burst - 1)
}

/// A limit's standing when its theoretical arrival time lies `ahead` of now.
pub(crate) fn standing(limit: &Limit, ahead: Duration) -> Standing {
    let interval = limit.rate.interval();
    let tolerance = tolerance(&limit.rate);
    let remaining = if tolerance >= ahead {
        ((tolerance - ahead).as_nanos() / interval.as_nanos().max(1)) as u32 + 1
    } else {
        0
    };
    Standing {
        scope: limit.scope,
        rate: limit.rate,
        remaining: remaining.min(limit.rate.burst),
        reset: ahead,
    }
}

/// GCRA for one limit: when a request arriving `now` may go, given the key's `tat`.
fn allowed_at(rate: &Rate, tat: Option<Instant>, now: Instant) -> Instant {
    let tat = tat.map_or(now, |t| t.max(now));
    tat.checked_sub(tolerance(rate)).unwrap_or(now).max(now)
}

impl MemoryLimiter {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn decide(&self, limits: &[Limit], max_wait: Duration, now: Instant) -> Decision {
        let mut state = self.state.lock().expect("limiter state");
        let now = state.latest.map_or(now, |latest| latest.max(now));
        state.latest = Some(now);
        let tats = &mut state.tats;
        let mut go_at = now;
        let mut refused_by = None;
        for l in limits {
            let at = allowed_at(&l.rate, tats.get(&l.key).copied(), now);
            if at > go_at {
                go_at = at;
            }
            if at - now > max_wait && refused_by.is_none() {
                refused_by = Some(l.scope);
            }
        }
        if let Some(scope) = refused_by {
            let standing = limits
                .iter()
                .map(|l| {
                    let tat = tats.get(&l.key).copied().unwrap_or(now).max(now);
                    standing(l, tat - now)
                })
                .collect();
            return Decision::Refused {
                scope,
                retry_after: go_at - now - max_wait.min(go_at - now),
                standing,
            };
        }
        // Every limit's slot is taken at the moment the request will actually go.
        let mut standing_after = Vec::with_capacity(limits.len());
        for l in limits {
            let tat = tats.get(&l.key).copied().unwrap_or(go_at).max(go_at) + l.rate.interval();
            tats.insert(l.key.clone(), tat);
            standing_after.push(standing(l, tat - now));
        }
        Decision::Granted {
            wait: go_at - now,
            standing: standing_after,
        }
    }
}

impl RateLimiter for MemoryLimiter {
    fn reserve(&self, limits: Vec<Limit>, max_wait: Duration) -> BoxFuture<Stored<Decision>> {
        let d = self.decide(&limits, max_wait, Instant::now());
        Box::pin(std::future::ready(Ok(d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(key: &str, scope: Scope, count: u32, secs: u64, burst: u32) -> Limit {
        Limit {
            account: "a".into(),
            key: key.into(),
            scope,
            rate: Rate {
                count,
                period: Duration::from_secs(secs),
                burst,
            },
        }
    }

    fn wait(d: &Decision) -> Option<Duration> {
        match d {
            Decision::Granted { wait, .. } => Some(*wait),
            Decision::Refused { .. } => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_spaced_by_the_interval_and_refused_past_max_wait() {
        let l = MemoryLimiter::new();
        let lim = vec![limit("a", Scope::Account, 1, 1, 1)];
        let now = Instant::now();
        let waits: Vec<_> = (0..4)
            .map(|_| wait(&l.decide(&lim, Duration::from_millis(2500), now)))
            .collect();
        assert_eq!(
            waits,
            vec![
                Some(Duration::ZERO),
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(2)),
                None
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_read_its_clocks_in_the_other_order_than_it_took_the_lock_still_goes() {
        // Two requests of a burst of 2 (1 per 5 s): the second read the clock 10 ms before the
        // first, but took the lock after it. Without a wait allowed, both still go.
        let l = MemoryLimiter::new();
        let lim = vec![limit("a", Scope::Client, 1, 5, 2)];
        let now = Instant::now();
        let later = now + Duration::from_millis(10);
        assert_eq!(
            wait(&l.decide(&lim, Duration::ZERO, later)),
            Some(Duration::ZERO)
        );
        assert_eq!(
            wait(&l.decide(&lim, Duration::ZERO, now)),
            Some(Duration::ZERO)
        );
        // The burst is spent: a third is refused.
        assert_eq!(wait(&l.decide(&lim, Duration::ZERO, now)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn burst_goes_at_once_then_smooths() {
        let l = MemoryLimiter::new();
        let lim = vec![limit("a", Scope::Account, 2, 1, 3)];
        let now = Instant::now();
        let waits: Vec<_> = (0..4)
            .map(|_| wait(&l.decide(&lim, Duration::from_secs(5), now)).unwrap())
            .collect();
        assert_eq!(waits[..3], [Duration::ZERO; 3]);
        assert_eq!(waits[3], Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_reserves_nothing_and_names_its_scope() {
        let l = MemoryLimiter::new();
        let now = Instant::now();
        let both = vec![
            limit("t", Scope::Account, 10, 1, 10),
            limit("c", Scope::Client, 1, 10, 1),
        ];
        assert_eq!(
            wait(&l.decide(&both, Duration::ZERO, now)),
            Some(Duration::ZERO)
        );
        match l.decide(&both, Duration::ZERO, now) {
            Decision::Refused {
                scope, retry_after, ..
            } => {
                assert_eq!(scope, Scope::Client);
                assert_eq!(retry_after, Duration::from_secs(10));
            }
            other @ Decision::Granted { .. } => panic!("{other:?}"),
        }
        // The account limit was not charged by the refused request: 9 more go at once.
        let account_only = vec![limit("t", Scope::Account, 10, 1, 10)];
        for _ in 0..9 {
            assert_eq!(
                wait(&l.decide(&account_only, Duration::ZERO, now)),
                Some(Duration::ZERO)
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn standing_reports_remaining_and_reset() {
        let l = MemoryLimiter::new();
        let lim = vec![limit("a", Scope::Account, 2, 1, 2)];
        match l.decide(&lim, Duration::ZERO, Instant::now()) {
            Decision::Granted { standing, .. } => {
                assert_eq!(standing[0].remaining, 1);
                assert_eq!(standing[0].reset, Duration::from_millis(500));
            }
            other @ Decision::Refused { .. } => panic!("{other:?}"),
        }
    }

    #[test]
    fn scopes_are_named_as_in_the_contract() {
        // The `scope` label of `rate_limited_total` and the RateLimit headers' names.
        assert_eq!(Scope::Account.as_str(), "tenant");
        assert_eq!(Scope::Client.as_str(), "client");
    }

    #[test]
    fn standing_counts_the_slots_left_in_the_burst() {
        // 10 per 10 s, burst 10: an interval of 1 s, a tolerance of 9 s.
        let l = limit("k", Scope::Account, 10, 10, 10);
        assert_eq!(standing(&l, Duration::ZERO).remaining, 10);
        assert_eq!(standing(&l, Duration::from_secs(3)).remaining, 7);
        assert_eq!(standing(&l, Duration::from_millis(8500)).remaining, 1);
        assert_eq!(standing(&l, Duration::from_secs(10)).remaining, 0);
        assert_eq!(
            standing(&l, Duration::from_secs(3)).reset,
            Duration::from_secs(3)
        );
    }

    #[test]
    fn a_refusal_says_how_long_past_max_wait_the_slot_is() {
        let l = MemoryLimiter::new();
        let limits = vec![limit("k", Scope::Account, 1, 10, 1)];
        let now = Instant::now();
        let max_wait = Duration::from_secs(2);
        assert_eq!(
            wait(&l.decide(&limits, max_wait, now)),
            Some(Duration::ZERO)
        );
        // The next slot is 10 s away: 2 s of it could be waited, so come back in 8 s.
        match l.decide(&limits, max_wait, now) {
            Decision::Refused {
                retry_after, scope, ..
            } => {
                assert_eq!(scope, Scope::Account);
                assert_eq!(retry_after, Duration::from_secs(8));
            }
            d @ Decision::Granted { .. } => panic!("refused expected: {d:?}"),
        }
    }
}
