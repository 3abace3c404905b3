//! Waiting for what only another process can show: polls with a deadline, never loops of a
//! test's own.

#![allow(dead_code)]

use std::time::Duration;

/// Polls `check` every 20 ms until it holds; fails naming `what` once `within` has passed. For
/// states only another process can show (the simulator's counters, a replica's readiness).
pub(crate) async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_some(what, within, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await;
}

/// [`eventually`] for a check that finds something: polls until `check` gives `Some`, and
/// returns what it found.
pub(crate) async fn eventually_some<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll(within, || {
        let found = check();
        async move { found.await.ok_or(()) }
    })
    .await
    .unwrap_or_else(|()| panic!("{what}: not within {within:?}"))
}

/// Polls `check` every 20 ms until it gives `Ok`, for `within` at most; its last `Err` when time
/// is up, for a caller that reports what it saw rather than failing at once.
pub(crate) async fn poll<T, E, F, Fut>(within: Duration, mut check: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(found) => return Ok(found),
            Err(last) if tokio::time::Instant::now() >= deadline => return Err(last),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
