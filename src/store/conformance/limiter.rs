//! [`RateLimiter`]: a burst goes at once, then requests are given the next free slot within
//! `max_wait` and refused past it; a refusal reserves nothing and names its limit; several limits
//! are reserved together or not at all; handles share one schedule. Rates here are slow (minutes),
//! so that the real time a test takes moves no slot.

use std::time::Duration;

use super::Stores;
use crate::protect::gcra::{Decision, Limit, RateLimiter, Scope};
use crate::protect::policy::Rate;

fn limit(key: &str, scope: Scope, period_secs: u64, burst: u32) -> Limit {
    Limit {
        account: "acct".into(),
        key: key.into(),
        scope,
        rate: Rate {
            count: 1,
            period: Duration::from_secs(period_secs),
            burst,
        },
    }
}

async fn reserve(l: &dyn RateLimiter, limits: &[Limit], max_wait: Duration) -> Decision {
    l.reserve(limits.to_vec(), max_wait)
        .await
        .expect("the store answers")
}

/// The wait of a grant, `None` for a refusal.
fn wait(d: &Decision) -> Option<Duration> {
    match d {
        Decision::Granted { wait, .. } => Some(*wait),
        Decision::Refused { .. } => None,
    }
}

/// True when `d` is within a second below `expected` (the test's own time runs meanwhile).
fn about(d: Duration, expected: Duration) -> bool {
    d <= expected && d + Duration::from_secs(1) >= expected
}

async fn a_burst_goes_at_once_and_the_next_is_refused_without_a_wait(stores: &Stores) {
    let l = stores.limiter();
    let lim = [limit("k", Scope::Client, 60, 3)];
    for i in 0..3 {
        let d = reserve(&*l, &lim, Duration::ZERO).await;
        assert_eq!(wait(&d), Some(Duration::ZERO), "#{i}: {d:?}");
    }
    match reserve(&*l, &lim, Duration::ZERO).await {
        Decision::Refused {
            scope, retry_after, ..
        } => {
            assert_eq!(scope, Scope::Client);
            assert!(
                about(retry_after, Duration::from_secs(60)),
                "{retry_after:?}"
            );
        }
        d @ Decision::Granted { .. } => panic!("{d:?}"),
    }
}

async fn requests_over_the_rate_get_the_next_slots_within_max_wait(stores: &Stores) {
    let l = stores.limiter();
    let lim = [limit("k", Scope::Account, 60, 1)];
    let max_wait = Duration::from_secs(150);
    let waits = [
        wait(&reserve(&*l, &lim, max_wait).await),
        wait(&reserve(&*l, &lim, max_wait).await),
        wait(&reserve(&*l, &lim, max_wait).await),
    ];
    assert_eq!(waits[0], Some(Duration::ZERO));
    assert!(
        about(waits[1].unwrap(), Duration::from_secs(60)),
        "{waits:?}"
    );
    assert!(
        about(waits[2].unwrap(), Duration::from_secs(120)),
        "{waits:?}"
    );
    let d = reserve(&*l, &lim, max_wait).await;
    assert!(
        matches!(d, Decision::Refused { .. }),
        "180 s is past max_wait: {d:?}"
    );
}

async fn a_grant_reports_what_remains_of_the_burst(stores: &Stores) {
    let l = stores.limiter();
    let lim = [limit("k", Scope::Client, 60, 3)];
    for remaining in [2, 1, 0] {
        let Decision::Granted { standing, .. } = reserve(&*l, &lim, Duration::ZERO).await else {
            panic!("granted");
        };
        assert_eq!(standing.len(), 1);
        assert_eq!(standing[0].remaining, remaining, "{standing:?}");
        assert_eq!(standing[0].scope, Scope::Client);
    }
}

async fn limits_are_reserved_together_or_not_at_all(stores: &Stores) {
    let l = stores.limiter();
    let account = limit("account", Scope::Account, 60, 2);
    let client = limit("client", Scope::Client, 60, 1);
    let both = [account.clone(), client.clone()];
    assert_eq!(
        wait(&reserve(&*l, &both, Duration::ZERO).await),
        Some(Duration::ZERO)
    );
    match reserve(&*l, &both, Duration::ZERO).await {
        Decision::Refused { scope, .. } => assert_eq!(scope, Scope::Client, "the client's refused"),
        d @ Decision::Granted { .. } => panic!("{d:?}"),
    }
    // The refusal took nothing of the account's burst: one of its two is left.
    let only_account = [account];
    assert_eq!(
        wait(&reserve(&*l, &only_account, Duration::ZERO).await),
        Some(Duration::ZERO)
    );
    assert!(matches!(
        reserve(&*l, &only_account, Duration::ZERO).await,
        Decision::Refused { .. }
    ));
}

async fn each_key_has_its_own_schedule(stores: &Stores) {
    let l = stores.limiter();
    let a = [limit("a", Scope::Client, 60, 1)];
    let b = [limit("b", Scope::Client, 60, 1)];
    assert_eq!(
        wait(&reserve(&*l, &a, Duration::ZERO).await),
        Some(Duration::ZERO)
    );
    assert!(wait(&reserve(&*l, &a, Duration::ZERO).await).is_none());
    assert_eq!(
        wait(&reserve(&*l, &b, Duration::ZERO).await),
        Some(Duration::ZERO)
    );
}

async fn concurrent_reservations_on_several_handles_share_one_burst(stores: &Stores) {
    let lim = vec![limit("k", Scope::Account, 60, 3)];
    let reservations = (0..10).map(|_| {
        let (l, lim) = (stores.limiter(), lim.clone());
        tokio::spawn(async move { l.reserve(lim, Duration::ZERO).await })
    });
    let granted = futures_util::future::join_all(reservations)
        .await
        .into_iter()
        .filter(|d| matches!(d, Ok(Ok(Decision::Granted { .. }))))
        .count();
    assert_eq!(granted, 3);
}

conformance!(
    a_burst_goes_at_once_and_the_next_is_refused_without_a_wait,
    requests_over_the_rate_get_the_next_slots_within_max_wait,
    a_grant_reports_what_remains_of_the_burst,
    limits_are_reserved_together_or_not_at_all,
    each_key_has_its_own_schedule,
    concurrent_reservations_on_several_handles_share_one_burst,
);
