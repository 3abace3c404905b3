//! The broker against the simulator (`crate::sim`), in process, on tokio's paused clock: every
//! phase of [`state::Phase`] is reached through the broker's own API, and each way out of it.
//!
//! The clock moves only by `tokio::time::advance`: a blocking task held for the whole test keeps
//! tokio from jumping the paused clock to the next timer while a `getToken` is on the wire (it
//! would fire the client's timeout), so a test says exactly how much time passes.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, advance};

use super::state::Phase;
use super::{FIXED_LEASE, TokenBroker, TokenError, TokenStatus};
use crate::config::{Credentials, Egress, TokenConfig, UpstreamConfig};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::sim::{SimConfig, Simulator};
use crate::upstream::UpstreamClient;

/// The simulator's tokens live this long; with the default `refresh_before` (5m), the broker
/// plans their refresh 25 minutes in.
const TTL: Duration = Duration::from_secs(30 * 60);
const REFRESH_AT: Duration = Duration::from_secs(25 * 60);
/// The default `min_refresh_interval`.
const INTERVAL: Duration = Duration::from_secs(5);

/// Keeps the paused clock still while I/O is under way (see the module doc); let go when dropped.
struct Frozen {
    _release: std::sync::mpsc::Sender<()>,
}

fn freeze() -> Frozen {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    tokio::task::spawn_blocking(move || {
        let _ = rx.recv();
    });
    Frozen { _release: tx }
}

/// The simulator on a loopback port, and a client for it.
struct Upstream {
    base_url: String,
    client: UpstreamClient,
    metrics: Arc<Metrics>,
    _frozen: Frozen,
}

impl Upstream {
    async fn start() -> Upstream {
        let frozen = freeze();
        let cfg = SimConfig {
            token_ttl: TTL,
            ..SimConfig::default()
        };
        let sim = Simulator::bind("127.0.0.1:0".parse().unwrap(), cfg)
            .await
            .unwrap();
        let base_url = format!("http://{}", sim.local_addr());
        tokio::spawn(sim.run(std::future::pending()));
        let metrics = Arc::new(Metrics::new());
        let client = UpstreamClient::new(
            &UpstreamConfig::default(),
            &Egress::default(),
            &[],
            metrics.clone(),
        )
        .unwrap();
        Upstream {
            base_url,
            client,
            metrics,
            _frozen: frozen,
        }
    }

    fn broker(&self, credentials: &Credentials) -> Arc<TokenBroker> {
        Arc::new(
            TokenBroker::new(
                "test",
                &self.base_url,
                credentials,
                self.client.clone(),
                TokenConfig::default(),
                self.metrics.clone(),
            )
            .unwrap(),
        )
    }

    async fn control(&self, method: http::Method, path: &str, body: &str) -> serde_json::Value {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base_url))
            .body(bytes::Bytes::from(body.to_string()))
            .unwrap();
        let answer = self.client.send("test", req).await.unwrap();
        serde_json::from_slice(&answer.body).unwrap()
    }

    /// How many `getToken` calls reached the simulator.
    async fn get_token_calls(&self) -> u64 {
        let stats = self.control(http::Method::GET, "/_sim/stats", "").await;
        stats["calls"]["getToken"].as_u64().unwrap()
    }

    /// The simulator answers every API call with HTTP 500 (`error`), or normally (`none`).
    async fn fault(&self, mode: &str) {
        let body = format!(r#"{{"mode":"{mode}"}}"#);
        self.control(http::Method::POST, "/_sim/fault", &body).await;
    }

    /// `getToken` calls the broker has seen end with `outcome` (`ok`, `error`, `throttled`).
    fn refreshes(&self, outcome: &str) -> u64 {
        self.metrics
            .token_refreshes
            .with_label_values(&[outcome])
            .get()
    }
}

fn demo() -> Credentials {
    Credentials::Exchange {
        uuid: Secret::new("demo-uuid"),
        secret: Secret::new("demo-secret"),
    }
}

fn wrong() -> Credentials {
    Credentials::Exchange {
        uuid: Secret::new("demo-uuid"),
        secret: Secret::new("not-the-secret"),
    }
}

fn fixed(token: &str) -> Credentials {
    Credentials::Fixed {
        token: Secret::new(token),
    }
}

/// Runs the refresher until the test ends.
fn refresher(broker: &Arc<TokenBroker>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(broker.clone().run_refresher(std::future::pending()))
}

/// Lets the other tasks (the refresher, the simulator) run until `done` holds; the clock stays.
async fn settle(mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the broker never got there"
        );
        tokio::task::yield_now().await;
    }
}

/// Lets the other tasks run a while, for a test that something does not happen.
async fn idle() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
}

fn phase(broker: &TokenBroker) -> &'static str {
    match broker.state().phase {
        Phase::Empty => "empty",
        Phase::Held(_) => "held",
        Phase::Failing(_) => "failing",
        Phase::Retrying(..) => "retrying",
    }
}

/// The error of an answer that must not be a lease (`Lease` shows no `Debug`).
fn no_lease(answer: Result<super::Lease, TokenError>) -> TokenError {
    match answer {
        Ok(_) => panic!("a lease where none may be had"),
        Err(e) => e,
    }
}

fn expires_in(broker: &TokenBroker) -> Duration {
    match broker.status() {
        TokenStatus::Held { expires_in } => expires_in,
        other => panic!("no token held: {other:?}"),
    }
}

fn failing(broker: &TokenBroker) -> TokenError {
    match broker.status() {
        TokenStatus::Failing(e) => e,
        other => panic!("not failing: {other:?}"),
    }
}

// === Empty → Held ===

#[tokio::test(start_paused = true)]
async fn a_fresh_token_is_fetched_once_then_held() {
    let up = Upstream::start().await;
    let broker = up.broker(&demo());
    assert_eq!(phase(&broker), "empty");
    assert!(matches!(broker.status(), TokenStatus::None));

    let token = broker.get().await.unwrap();
    assert_eq!(phase(&broker), "held");
    assert_eq!(expires_in(&broker), TTL);
    assert_eq!(broker.get().await.unwrap(), token);
    // The lease ends when the broker plans to replace the token.
    let lease = broker.lease().await.unwrap();
    assert_eq!(lease.token, token);
    let left = lease.expires_ms - crate::clock::now_ms();
    assert!(
        left.abs_diff(REFRESH_AT.as_millis() as u64) < 1000,
        "{left}"
    );
    assert_eq!(up.get_token_calls().await, 1);
}

#[tokio::test(start_paused = true)]
async fn callers_with_no_token_share_one_get_token() {
    let up = Upstream::start().await;
    let broker = up.broker(&demo());
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let broker = broker.clone();
            tokio::spawn(async move { broker.get().await.unwrap() })
        })
        .collect();
    let mut tokens = Vec::new();
    for c in callers {
        tokens.push(c.await.unwrap());
    }
    assert!(tokens.iter().all(|t| *t == tokens[0]));
    assert_eq!(up.get_token_calls().await, 1);
}

// === Held → Held: the refresh ahead of expiry ===

#[tokio::test(start_paused = true)]
async fn the_token_is_refreshed_ahead_of_expiry_once_for_all_waiters() {
    let up = Upstream::start().await;
    let broker = up.broker(&demo());
    let _refresher = refresher(&broker);
    settle(|| up.refreshes("ok") == 1).await;
    let first = broker.get().await.unwrap();

    advance(REFRESH_AT - Duration::from_secs(1)).await;
    idle().await;
    assert_eq!(up.refreshes("ok"), 1, "refreshed too early");
    assert_eq!(broker.get().await.unwrap(), first);

    // Due: the refresher and every lease asked now wait for one getToken.
    advance(Duration::from_secs(1)).await;
    let leases: Vec<_> = (0..8)
        .map(|_| {
            let broker = broker.clone();
            tokio::spawn(async move { broker.lease().await.unwrap().token })
        })
        .collect();
    for l in leases {
        let token = l.await.unwrap();
        assert_ne!(token, first, "a lease of the token due for refresh");
    }
    settle(|| up.refreshes("ok") == 2).await;
    let second = broker.get().await.unwrap();
    assert_ne!(second, first);
    assert_eq!(expires_in(&broker), TTL);
    idle().await;
    assert_eq!(up.get_token_calls().await, 2);
}

// === Empty → Failing → Failing: the upstream refuses ===

#[tokio::test(start_paused = true)]
async fn a_refusal_is_backed_off_then_throttled_without_calling_the_upstream() {
    let up = Upstream::start().await;
    let broker = up.broker(&wrong());

    let err = broker.get().await.unwrap_err();
    assert!(
        matches!(err, TokenError::Refused { code: Some(401) }),
        "{err}"
    );
    assert!(err.is_refusal());
    assert_eq!(phase(&broker), "failing");
    assert!(failing(&broker).is_refusal());
    // Within the backoff (retry_min, 500ms at most): the same error, no call.
    let err = broker.get().await.unwrap_err();
    assert!(
        matches!(err, TokenError::Refused { code: Some(401) }),
        "{err}"
    );
    assert_eq!(up.get_token_calls().await, 1);

    // Past the backoff, within min_refresh_interval: throttled, still no call.
    advance(Duration::from_millis(600)).await;
    let err = broker.get().await.unwrap_err();
    assert!(matches!(err, TokenError::Throttled { .. }), "{err}");
    assert_eq!(up.refreshes("throttled"), 1);
    assert_eq!(up.get_token_calls().await, 1);

    // Past the interval: the next try goes, and fails again.
    advance(INTERVAL).await;
    let err = broker.get().await.unwrap_err();
    assert!(
        matches!(err, TokenError::Refused { code: Some(401) }),
        "{err}"
    );
    assert_eq!(phase(&broker), "failing");
    assert_eq!(broker.state().failures(), 2);
    assert_eq!(up.get_token_calls().await, 2);
}

// === Held → Empty → Held: the upstream's 401, and min_refresh_interval ===

#[tokio::test(start_paused = true)]
async fn a_token_the_upstream_refused_is_replaced_once_the_interval_allows() {
    let up = Upstream::start().await;
    let broker = up.broker(&demo());
    let _refresher = refresher(&broker);
    settle(|| up.refreshes("ok") == 1).await;
    let first = broker.get().await.unwrap();

    broker.invalidate(&first).await;
    assert_eq!(phase(&broker), "empty");
    // Its replacement is held back by min_refresh_interval: nothing is held meanwhile.
    settle(|| up.refreshes("throttled") >= 1).await;
    let err = broker.get().await.unwrap_err();
    assert!(matches!(err, TokenError::Throttled { .. }), "{err}");
    let err = no_lease(broker.lease().await);
    assert!(matches!(err, TokenError::NotHeld), "{err}");
    // More 401s on the same token change nothing.
    broker.invalidate(&first).await;
    assert_eq!(up.get_token_calls().await, 1);

    // The refresher fetches it as soon as the interval has passed, with no request asking.
    advance(INTERVAL).await;
    settle(|| up.refreshes("ok") == 2).await;
    let second = broker.get().await.unwrap();
    assert_ne!(second, first);
    assert_eq!(phase(&broker), "held");
    assert_eq!(up.get_token_calls().await, 2);
}

// === Held, marked refused: a client's report ===

#[tokio::test(start_paused = true)]
async fn a_token_reported_refused_is_not_leased_and_is_replaced() {
    let up = Upstream::start().await;
    let broker = up.broker(&demo());
    let _refresher = refresher(&broker);
    settle(|| up.refreshes("ok") == 1).await;
    let first = broker.get().await.unwrap();

    // Within min_refresh_interval: no lease, and the answer says when to ask again.
    let err = no_lease(broker.renew_rejected(&first).await);
    let TokenError::Replacing { retry_after, .. } = err else {
        panic!("{err}");
    };
    assert_eq!(retry_after, INTERVAL.as_secs());
    // Still held, and still sent by the gateway: the claim is only the client's word.
    assert_eq!(phase(&broker), "held");
    assert_eq!(broker.get().await.unwrap(), first);
    assert!(broker.lease().await.is_err());
    assert_eq!(up.get_token_calls().await, 1);

    // The refresher replaces it once a getToken may go.
    advance(INTERVAL).await;
    settle(|| up.refreshes("ok") == 2).await;
    let lease = broker.lease().await.unwrap();
    assert_ne!(lease.token, first);

    // A report of a token no longer current changes nothing.
    advance(INTERVAL).await;
    let again = broker.renew_rejected(&first).await.unwrap();
    assert_eq!(again.token, lease.token);
    assert_eq!(up.get_token_calls().await, 2);

    // Past the interval, a report of the current one replaces it at once.
    let third = broker.renew_rejected(&lease.token).await.unwrap();
    assert_ne!(third.token, lease.token);
    assert_eq!(up.get_token_calls().await, 3);
}

// === Held → Retrying → (expiry) → Held: the upstream down ===

#[tokio::test(start_paused = true)]
async fn a_token_outlives_a_failed_refresh_until_it_expires() {
    let up = Upstream::start().await;
    let broker = up.broker(&demo());
    let _refresher = refresher(&broker);
    settle(|| up.refreshes("ok") == 1).await;
    let first = broker.get().await.unwrap();

    up.fault("error").await;
    advance(REFRESH_AT).await;
    settle(|| up.refreshes("error") == 1).await;
    assert_eq!(phase(&broker), "retrying");
    // The held token is still sent, and still reported held.
    assert_eq!(broker.get().await.unwrap(), first);
    assert_eq!(expires_in(&broker), TTL - REFRESH_AT);

    // Expired while the upstream is still down: a failure every replica meets alike.
    advance(TTL - REFRESH_AT).await;
    settle(|| up.refreshes("error") == 2).await;
    assert_eq!(phase(&broker), "retrying");
    let err = failing(&broker);
    assert!(
        matches!(err, TokenError::Refused { code: Some(500) }),
        "{err}"
    );
    assert!(!err.is_refusal());
    assert!(broker.get().await.is_err());
    assert!(broker.lease().await.is_err());

    // The upstream back: the next retry gets a token.
    up.fault("none").await;
    advance(INTERVAL).await;
    settle(|| up.refreshes("ok") == 2).await;
    assert_eq!(phase(&broker), "held");
    let second = broker.get().await.unwrap();
    assert_ne!(second, first);
}

// === Retrying → Failing: the upstream's 401 while the refresh fails ===

#[tokio::test(start_paused = true)]
async fn a_401_while_retrying_leaves_the_failure_and_no_token() {
    let up = Upstream::start().await;
    let broker = up.broker(&demo());
    let _refresher = refresher(&broker);
    settle(|| up.refreshes("ok") == 1).await;
    let first = broker.get().await.unwrap();
    up.fault("error").await;
    advance(REFRESH_AT).await;
    settle(|| up.refreshes("error") == 1).await;
    assert_eq!(phase(&broker), "retrying");

    broker.invalidate(&first).await;
    assert_eq!(phase(&broker), "failing");
    // The failure's backoff holds the replacement back: no call, its error at once.
    let err = broker.get().await.unwrap_err();
    assert!(
        matches!(err, TokenError::Refused { code: Some(500) }),
        "{err}"
    );
    assert_eq!(up.get_token_calls().await, 2);
}

// === Failing → Empty → Held: a reload with new credentials ===

#[tokio::test(start_paused = true)]
async fn new_credentials_are_tried_at_once() {
    let up = Upstream::start().await;
    let broker = up.broker(&wrong());
    let _refresher = refresher(&broker);
    settle(|| up.refreshes("error") == 1).await;
    assert_eq!(phase(&broker), "failing");
    let frozen_at = Instant::now();

    broker.set_credentials(&demo());
    // The old credentials' failure no longer holds anything back.
    assert_eq!(phase(&broker), "empty");
    assert_eq!(broker.state().failures(), 0);
    // Neither the backoff nor min_refresh_interval delays them: the clock has not moved.
    settle(|| up.refreshes("ok") == 1).await;
    assert_eq!(Instant::now(), frozen_at);
    assert_eq!(phase(&broker), "held");
    broker.get().await.unwrap();
    // Unchanged credentials change nothing.
    broker.set_credentials(&demo());
    idle().await;
    assert_eq!(up.get_token_calls().await, 2);
}

// === A fixed token: no phase; a reload is its way out ===

#[tokio::test(start_paused = true)]
async fn a_fixed_token_is_held_until_a_reload_replaces_it() {
    let up = Upstream::start().await;
    let broker = up.broker(&fixed("fixed-1"));
    let _refresher = refresher(&broker);
    assert!(matches!(broker.status(), TokenStatus::Fixed));
    assert_eq!(broker.get().await.unwrap(), Secret::new("fixed-1"));
    let lease = broker.lease().await.unwrap();
    let left = lease.expires_ms - crate::clock::now_ms();
    assert!(left <= FIXED_LEASE.as_millis() as u64);

    // Refused: still sent by the gateway, never leased, until a reload replaces it.
    broker.invalidate(&Secret::new("fixed-1")).await;
    assert!(matches!(
        broker.lease().await,
        Err(TokenError::FixedRefused)
    ));
    broker.set_credentials(&fixed("fixed-2"));
    assert_eq!(broker.lease().await.unwrap().token, Secret::new("fixed-2"));

    // Back to exchanged credentials: tried at once.
    broker.set_credentials(&demo());
    settle(|| up.refreshes("ok") == 1).await;
    assert_eq!(phase(&broker), "held");
    assert_eq!(up.get_token_calls().await, 1);
}
