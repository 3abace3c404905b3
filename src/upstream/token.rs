//! The token broker: one per upstream account. It trades the account's uuid and secret for a token
//! at `POST /v1/auth/getToken`, keeps it with its expiry, refreshes it in the background ahead of
//! expiry, and makes sure that however many requests need a token at once, exactly one `getToken`
//! is in flight. A token the upstream rejected (code 401) is dropped with [`TokenBroker::invalidate`],
//! so the next [`TokenBroker::get`] fetches a new one, once for everyone.
//!
//! States: no token yet → held (valid until `expires_at`) → due for refresh → held again; a failed
//! `getToken` puts the broker in backoff (callers get the error at once, no upstream call) until
//! `retry_at`, doubling with jitter up to `retry_max`. A fixed token (`FINOVY_TOKEN`) is always held.
//!
//! A reload may change the credentials ([`TokenBroker::set_credentials`]): a new uuid or secret is
//! used by the next `getToken` (the token held stays until then), and a failing broker tries
//! again at once, within `min_refresh_interval`; a new fixed token replaces the old one at once.
//!
//! The upstream is trusted no further than needed: its `effectiveTime` is clamped to
//! `[min_lifetime, max_lifetime]`, and `getToken` goes out at most once per `min_refresh_interval`
//! (on this replica, and in shared mode for the fleet), on every path that asks for it, so that a
//! token that comes back already expired cannot make the gateway loop; callers then get an error at
//! once. A refusal's `msg` goes to the log (escaped, without the credentials), never to a client.
//!
//! A [`Lease`] hands the current token to a client that calls the upstream itself, valid until the
//! moment the broker itself plans to replace it; asking for one never sends `getToken`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, header};
use rand::Rng;
use serde::Deserialize;
use tokio::time::Instant;

use crate::config::{Credentials, TokenConfig};
use crate::fleet::token::{SharedToken, TokenStore};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::single_flight::{Flight, SingleFlight};
use crate::upstream::UpstreamClient;

/// What a caller sees when no token can be had. None of them holds a credential or the
/// upstream's own message (that goes to the log only).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("no upstream token is held at the moment; retry shortly")]
    NotHeld,
    #[error(
        "the current token is kept, since getToken was called less than {} ago; report it again in {retry_after}s",
        humantime::format_duration(*interval)
    )]
    KeptTooRecent {
        interval: Duration,
        retry_after: u64,
    },
    #[error(
        "getToken was called less than {} ago; retry shortly",
        humantime::format_duration(*interval)
    )]
    Throttled { interval: Duration },
    #[error("cannot build the getToken request: {0}")]
    BadRequest(String),
    #[error("getToken failed: {0}")]
    Unreachable(String),
    #[error("getToken answered HTTP {0} with an unexpected body")]
    UnexpectedBody(http::StatusCode),
    #[error("the upstream refused getToken (code {}); see the gateway's log", code.map_or("none".to_string(), |c| c.to_string()))]
    Refused { code: Option<i64> },
}

impl TokenError {
    /// Whether no token is held because of this replica's own settings: the upstream refused
    /// its credentials (a refusal code, not its `500`/`503` of a failure), or the request could
    /// not be built from them. Otherwise the upstream is unreachable, failing, slow or throttled,
    /// an outage every replica meets alike (`/readyz` tells the two apart).
    pub(crate) fn is_refusal(&self) -> bool {
        match self {
            TokenError::Refused { code } => !matches!(code, None | Some(0 | 500 | 503)),
            TokenError::BadRequest(_) => true,
            _ => false,
        }
    }
}

/// What a flight of the broker is for: a token now ([`TokenBroker::get`]), or the planned refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Need {
    Valid,
    Refresh,
}

/// The route label of `getToken` calls in the upstream metrics.
pub(crate) const TOKEN_ROUTE: &str = "auth.token";

/// When the upstream does not say how long a token lives: its documented 30 minutes.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// How long a lease of a fixed token lasts: its expiry is not known, and whoever keeps it may
/// replace it, so a client asks again this often.
pub(crate) const FIXED_LEASE: Duration = Duration::from_secs(60);

/// The current token, lent to a client that calls the upstream itself.
#[derive(Clone)]
pub(crate) struct Lease {
    pub(crate) token: Secret,
    /// Epoch milliseconds; never later than the moment the broker plans to replace the token
    /// (nor than its expiry, less the margin the gateway keeps for itself).
    pub(crate) expires_ms: u64,
}

#[derive(Clone)]
struct Held {
    token: Secret,
    expires_at: Instant,
    lifetime: Duration,
}

impl Held {
    /// The last moment the gateway sends this token: a little before its expiry, so that no
    /// request carries it at its last instant.
    fn usable_until(&self) -> Instant {
        let margin = (self.lifetime / 20).min(Duration::from_secs(2));
        self.expires_at
            .checked_sub(margin)
            .unwrap_or(self.expires_at)
    }
}

#[derive(Default)]
struct State {
    held: Option<Held>,
    /// The last token the upstream rejected: never taken back from the fleet's store.
    rejected: Option<Secret>,
    /// The last `getToken` failure and when the next try may go.
    failing: Option<(TokenError, Instant)>,
    failures: u32,
    /// When this replica last sent `getToken`.
    last_sent: Option<Instant>,
}

impl Source {
    fn of(credentials: &Credentials) -> Option<Source> {
        match credentials {
            Credentials::Exchange { uuid, secret } => Some(Source::Exchange {
                uuid: uuid.clone(),
                secret: secret.clone(),
            }),
            Credentials::Fixed { token } => Some(Source::Fixed(token.clone())),
            Credentials::Missing { .. } => None,
        }
    }
}

/// What `/readyz` and the metrics report.
#[derive(Debug, Clone)]
pub(crate) enum TokenStatus {
    Fixed,
    Held {
        expires_in: Duration,
    },
    /// The last `getToken` failed, for this reason ([`TokenError::is_refusal`] tells whose).
    Failing(TokenError),
    None,
}

/// The account's credentials, as the last (re)load read them.
#[derive(Clone, PartialEq)]
enum Source {
    Exchange { uuid: Secret, secret: Secret },
    Fixed(Secret),
}

pub(crate) struct TokenBroker {
    account: String,
    source: Mutex<Source>,
    /// Told when a reload changed the credentials, so the refresher acts on them at once.
    changed: tokio::sync::Notify,
    base_url: String,
    client: UpstreamClient,
    cfg: TokenConfig,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    /// Held while a `getToken` is in flight: one at a time, whichever path asks.
    fetching: tokio::sync::Mutex<()>,
    /// The work of [`TokenBroker::get`] and of the planned refresh, each run in a task of its own
    /// and shared by everyone waiting for it: a caller that goes away (a client that hung up)
    /// never aborts a `getToken` in flight, which would leave no token and, within
    /// `min_refresh_interval`, no way to get one.
    flights: SingleFlight<Need, Result<Secret, TokenError>>,
    /// Shared mode: the fleet's token, refreshed by one replica for all.
    shared: Option<Arc<TokenStore>>,
}

impl std::fmt::Debug for TokenBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBroker")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

/// A failed exchange: what callers may see, and what only the log gets (the upstream's `msg`).
struct Refused {
    public: TokenError,
    detail: String,
}

#[derive(Deserialize)]
struct TokenAnswer {
    code: Option<i64>,
    msg: Option<String>,
    data: Option<TokenData>,
}

#[derive(Deserialize)]
struct TokenData {
    token: String,
    #[serde(rename = "effectiveTime")]
    effective_time: Option<serde_json::Value>,
}

impl TokenBroker {
    /// `None` when the account has no credentials (`serve` refuses to start before this).
    pub(crate) fn new(
        account: &str,
        base_url: &str,
        credentials: &Credentials,
        client: UpstreamClient,
        cfg: TokenConfig,
        metrics: Arc<Metrics>,
    ) -> Option<TokenBroker> {
        Some(TokenBroker {
            account: account.to_string(),
            source: Mutex::new(Source::of(credentials)?),
            changed: tokio::sync::Notify::new(),
            base_url: base_url.to_string(),
            client,
            cfg,
            metrics,
            state: Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
            flights: SingleFlight::new(),
            shared: None,
        })
    }

    fn is_fixed(&self) -> bool {
        matches!(*self.source.lock().expect("token source"), Source::Fixed(_))
    }

    /// New credentials from a reload. Unchanged ones change nothing; missing ones are never
    /// applied (a reload refuses them before this).
    pub(crate) fn set_credentials(&self, credentials: &Credentials) {
        let Some(new) = Source::of(credentials) else {
            return;
        };
        {
            let mut source = self.source.lock().expect("token source");
            if *source == new {
                return;
            }
            match &new {
                Source::Fixed(_) => {
                    tracing::info!(account = %self.account, "fixed token replaced");
                }
                Source::Exchange { .. } => {
                    tracing::info!(account = %self.account, "credentials changed; the next getToken uses them");
                }
            }
            *source = new;
        }
        {
            // A failure was the old credentials': the next try need not wait out its backoff.
            let mut state = self.state.lock().expect("token state");
            state.failing = None;
            state.failures = 0;
        }
        self.changed.notify_one();
    }

    /// Shares the token with the fleet through `store`.
    pub(crate) fn with_shared(mut self, store: Arc<TokenStore>) -> TokenBroker {
        self.shared = Some(store);
        self
    }

    /// A valid token, fetching one if none is held (one fetch for all concurrent callers).
    pub(crate) async fn get(self: &Arc<Self>) -> Result<Secret, TokenError> {
        if let Some(t) = self.valid_now() {
            return Ok(t);
        }
        self.in_flight(Need::Valid).await
    }

    /// Joins or starts the task doing `need`, and waits for it.
    async fn in_flight(self: &Arc<Self>, need: Need) -> Result<Secret, TokenError> {
        // `None`: the task panicked; nothing is held, so say so.
        self.start(need)
            .wait()
            .await
            .unwrap_or(Err(TokenError::NotHeld))
    }

    /// Joins or starts the task doing `need`.
    fn start(self: &Arc<Self>, need: Need) -> Flight<Result<Secret, TokenError>> {
        let me = self.clone();
        self.flights.join_or_start(need, move || async move {
            match need {
                Need::Valid => me.fetch_unless_held().await,
                Need::Refresh => me.refresh_if_due().await,
            }
        })
    }

    /// [`TokenBroker::get`]'s work once no valid token is held.
    async fn fetch_unless_held(&self) -> Result<Secret, TokenError> {
        let _fetching = self.fetching.lock().await;
        // Whoever held the lock before us may have fetched, or failed, for us too.
        if let Some(t) = self.valid_now() {
            return Ok(t);
        }
        if let Some(t) = self.adopt_shared(false).await {
            return Ok(t);
        }
        if let Some(e) = self.backing_off() {
            return Err(e);
        }
        self.obtain().await
    }

    /// Drops `token` if it is still the held one: the upstream said it is no longer valid.
    pub(crate) async fn invalidate(self: &Arc<Self>, token: &Secret) {
        {
            let mut state = self.state.lock().expect("token state");
            state.rejected = Some(token.clone());
            if state.held.as_ref().is_some_and(|h| &h.token == token) {
                tracing::info!(account = %self.account, "upstream rejected the token; fetching a new one");
                state.held = None;
                // Started before the state is let go: whoever finds the token gone also finds
                // its replacement under way (a lease waits for it instead of answering "none").
                drop(self.start(Need::Valid));
            }
        }
        if let Some(shared) = &self.shared {
            shared.drop_rejected(&self.account, token).await;
        }
    }

    pub(crate) fn status(&self) -> TokenStatus {
        if self.is_fixed() {
            return TokenStatus::Fixed;
        }
        let state = self.state.lock().expect("token state");
        let now = Instant::now();
        match (&state.held, &state.failing) {
            (Some(h), _) if h.expires_at > now => TokenStatus::Held {
                expires_in: h.expires_at - now,
            },
            (_, Some((e, _))) => TokenStatus::Failing(e.clone()),
            _ => TokenStatus::None,
        }
    }

    /// Keeps the token fresh until `shutdown` resolves: fetches one at start, then again ahead of
    /// each expiry, and after a failure once its backoff has passed. Idle while the token is
    /// fixed; a reload's new credentials wake it.
    pub(crate) async fn run_refresher(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            if self.is_fixed() {
                tokio::select! {
                    () = &mut shutdown => return,
                    () = self.changed.notified() => continue,
                }
            }
            let due = self.next_refresh();
            tokio::select! {
                () = &mut shutdown => return,
                () = self.changed.notified() => continue,
                () = tokio::time::sleep_until(due) => {}
            }
            if self.is_fixed() {
                continue; // a fixed token is never refreshed; a reload may change that
            }
            let _ = self.in_flight(Need::Refresh).await;
        }
    }

    /// The planned refresh, when it is due: the fleet's newer token or a `getToken`.
    async fn refresh_if_due(&self) -> Result<Secret, TokenError> {
        let _fetching = self.fetching.lock().await;
        if self.is_fixed() || self.next_refresh() > Instant::now() {
            // Fixed, or someone refreshed while we waited for the lock.
            return self.valid_now().ok_or(TokenError::NotHeld);
        }
        if let Some(t) = self.adopt_shared(true).await {
            return Ok(t); // another replica refreshed it for the fleet
        }
        self.obtain().await
    }

    /// When the background refresher should act next.
    fn next_refresh(&self) -> Instant {
        let state = self.state.lock().expect("token state");
        self.planned_refresh(&state, Instant::now())
    }

    /// When the token in `state` is to be replaced: ahead of its expiry, at the retry after a
    /// failure, never sooner than the next `getToken` may go.
    fn planned_refresh(&self, state: &State, now: Instant) -> Instant {
        let due = match (&state.failing, &state.held) {
            (Some((_, retry_at)), _) => *retry_at,
            (None, Some(h)) => {
                let ahead = self.refresh_ahead(h.lifetime);
                h.expires_at.checked_sub(ahead).unwrap_or(now)
            }
            (None, None) => now,
        };
        // Never sooner than the next `getToken` may go.
        match state.last_sent {
            Some(sent) => due.max(sent + self.cfg.min_refresh_interval),
            None => due,
        }
    }

    fn valid_now(&self) -> Option<Secret> {
        if let Source::Fixed(t) = &*self.source.lock().expect("token source") {
            return Some(t.clone());
        }
        let state = self.state.lock().expect("token state");
        let h = state.held.as_ref()?;
        (Instant::now() < h.usable_until()).then(|| h.token.clone())
    }

    /// A lease of the current token for a client that calls the upstream itself. It never sends
    /// `getToken` of its own: in shared mode it follows the fleet's token; when the held token is
    /// due for its planned refresh, that refresh is done now (as the refresher is about to), so
    /// the lease is of the new token; with no token held it waits only for a `getToken` already
    /// in flight, then fails.
    pub(crate) async fn lease(self: &Arc<Self>) -> Result<Lease, TokenError> {
        let fixed = match &*self.source.lock().expect("token source") {
            Source::Fixed(t) => Some(t.clone()),
            Source::Exchange { .. } => None,
        };
        if let Some(token) = fixed {
            return Ok(Lease {
                token,
                expires_ms: crate::fleet::now_ms() + FIXED_LEASE.as_millis() as u64,
            });
        }
        self.follow_fleet().await;
        if let Some(lease) = self.current_lease() {
            return Ok(lease);
        }
        let held = self.state.lock().expect("token state").held.is_some();
        if held {
            let _ = self.in_flight(Need::Refresh).await;
        } else {
            // Waits for a `getToken` in flight (a request's, the refresher's), never starts one.
            if let Some(flight) = self.flights.join(&Need::Valid) {
                drop(flight.wait().await);
            }
            drop(self.fetching.lock().await);
        }
        self.current_lease()
            .ok_or_else(|| self.backing_off().unwrap_or(TokenError::NotHeld))
    }

    /// A client says the upstream refused `token`. When it is still the current token (held
    /// here, or the fleet's), it is dropped and a new one fetched, once for all callers, as after
    /// the gateway's own 401; a token no longer current changes nothing. Either way the answer is
    /// the current lease. Since the claim is only the client's word, a token is not dropped
    /// within `min_refresh_interval` of the last `getToken` (it could not be replaced yet): the
    /// caller is told to retry instead.
    pub(crate) async fn renew_rejected(
        self: &Arc<Self>,
        token: &Secret,
    ) -> Result<Lease, TokenError> {
        if !self.is_fixed() && self.is_current(token).await {
            if let Some(wait) = self.fetch_allowed_in() {
                return Err(TokenError::KeptTooRecent {
                    interval: self.cfg.min_refresh_interval,
                    retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                });
            }
            self.invalidate(token).await;
            self.get().await?;
        }
        self.lease().await
    }

    /// The held token's lease, unless none is held or its planned refresh is already due.
    fn current_lease(&self) -> Option<Lease> {
        let state = self.state.lock().expect("token state");
        let h = state.held.as_ref()?;
        let now = Instant::now();
        let until = h.usable_until().min(self.planned_refresh(&state, now));
        (until > now).then(|| Lease {
            token: h.token.clone(),
            expires_ms: crate::fleet::now_ms() + (until - now).as_millis() as u64,
        })
    }

    /// Whether `token` is the one in use: held here or, in shared mode, the fleet's.
    async fn is_current(&self, token: &Secret) -> bool {
        let held = self.state.lock().expect("token state").held.clone();
        if held.is_some_and(|h| &h.token == token) {
            return true;
        }
        match &self.shared {
            Some(shared) => matches!(
                shared.read(&self.account).await,
                Ok(Some(t)) if &t.token == token
            ),
            None => false,
        }
    }

    /// How long until this replica may send `getToken` again; `None` when it may now.
    fn fetch_allowed_in(&self) -> Option<Duration> {
        let state = self.state.lock().expect("token state");
        let next = state.last_sent? + self.cfg.min_refresh_interval;
        let now = Instant::now();
        (next > now).then(|| next - now)
    }

    /// Shared mode: takes the fleet's token when it differs from the held one (another replica
    /// replaced it, after a rejection say). Redis failing or empty leaves the held token.
    async fn follow_fleet(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        let Ok(Some(t)) = shared.read(&self.account).await else {
            return;
        };
        let same = {
            let state = self.state.lock().expect("token state");
            state.held.as_ref().is_some_and(|h| h.token == t.token)
        };
        if !same {
            self.adopt(t, false);
        }
    }

    fn backing_off(&self) -> Option<TokenError> {
        let state = self.state.lock().expect("token state");
        match &state.failing {
            Some((e, retry_at)) if Instant::now() < *retry_at => Some(e.clone()),
            _ => None,
        }
    }

    /// How long before expiry a token is refreshed.
    fn refresh_ahead(&self, lifetime: Duration) -> Duration {
        self.cfg.refresh_before.min(lifetime / 4)
    }

    /// Takes the fleet's token when it is usable (and, with `need_fresh`, not yet due for
    /// refresh), and holds it here.
    async fn adopt_shared(&self, need_fresh: bool) -> Option<Secret> {
        let shared = self.shared.as_ref()?;
        let t = shared.read(&self.account).await.ok()??;
        self.adopt(t, need_fresh)
    }

    /// Holds the fleet's token `t` when it is usable (see [`TokenBroker::adopt_shared`]).
    fn adopt(&self, t: SharedToken, need_fresh: bool) -> Option<Secret> {
        let now_ms = crate::fleet::now_ms();
        let left = Duration::from_millis(t.expires_ms.checked_sub(now_ms)?);
        let margin = (t.lifetime / 20).min(Duration::from_secs(2));
        let due = left <= self.refresh_ahead(t.lifetime);
        let mut state = self.state.lock().expect("token state");
        if left <= margin || (need_fresh && due) || state.rejected.as_ref() == Some(&t.token) {
            return None;
        }
        state.held = Some(Held {
            token: t.token.clone(),
            expires_at: Instant::now() + left,
            lifetime: t.lifetime,
        });
        state.failing = None;
        state.failures = 0;
        Some(t.token)
    }

    /// A new token: in shared mode the refresh lock decides which replica calls `getToken`, and
    /// the others wait for its token (or fetch on their own once the lock's holder is gone, or
    /// while Redis fails). The caller holds `fetching`.
    async fn obtain(&self) -> Result<Secret, TokenError> {
        let Some(shared) = &self.shared else {
            return self.fetch().await;
        };
        let deadline = Instant::now() + shared.wait();
        loop {
            match shared.lock(&self.account).await {
                Err(_) => return self.fetch().await,
                Ok(Some(fence)) => {
                    // Someone may have shared a token just before the lock came free.
                    if let Some(t) = self.adopt_shared(true).await {
                        shared.unlock(&self.account, &fence).await;
                        return Ok(t);
                    }
                    let fetched = self.fetch().await;
                    let held = self.state.lock().expect("token state").held.clone();
                    match (&fetched, held) {
                        (Ok(_), Some(h)) => {
                            let left = h.expires_at.saturating_duration_since(Instant::now());
                            let t = SharedToken {
                                token: h.token,
                                expires_ms: crate::fleet::now_ms() + left.as_millis() as u64,
                                lifetime: h.lifetime,
                            };
                            shared.publish(&self.account, &t, &fence).await;
                        }
                        _ => shared.unlock(&self.account, &fence).await,
                    }
                    return fetched;
                }
                Ok(None) if Instant::now() >= deadline => return self.fetch().await,
                Ok(None) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if let Some(t) = self.adopt_shared(true).await {
                        return Ok(t);
                    }
                }
            }
        }
    }

    /// One `getToken` call, unless one went out less than `min_refresh_interval` ago (here, or in
    /// shared mode anywhere in the fleet): then an error at once. The caller holds `fetching`.
    async fn fetch(&self) -> Result<Secret, TokenError> {
        let Source::Exchange { uuid, secret } = self.source.lock().expect("token source").clone()
        else {
            // A reload made the token fixed while this caller waited: it is held.
            return self.valid_now().ok_or(TokenError::NotHeld);
        };
        let (uuid, secret) = (&uuid, &secret);
        let interval = self.cfg.min_refresh_interval;
        let too_soon = || {
            self.metrics
                .token_refreshes
                .with_label_values(&["throttled"])
                .inc();
            TokenError::Throttled { interval }
        };
        let sent_at = Instant::now();
        {
            let mut state = self.state.lock().expect("token state");
            if state.last_sent.is_some_and(|t| sent_at < t + interval) {
                return Err(too_soon());
            }
            state.last_sent = Some(sent_at);
        }
        // The fleet's gate; without Redis this replica's own is enough.
        if let Some(shared) = &self.shared
            && !interval.is_zero()
            && let Ok(false) = shared.gate(&self.account, interval).await
        {
            return Err(too_soon());
        }
        let result = self
            .exchange(&self.client, &self.base_url, uuid, secret)
            .await;
        let mut state = self.state.lock().expect("token state");
        match result {
            Ok((token, lifetime)) => {
                self.metrics
                    .token_refreshes
                    .with_label_values(&["ok"])
                    .inc();
                tracing::info!(account = %self.account, lifetime = ?lifetime, "obtained an upstream token");
                state.held = Some(Held {
                    token: token.clone(),
                    expires_at: sent_at + lifetime,
                    lifetime,
                });
                state.failing = None;
                state.failures = 0;
                Ok(token)
            }
            Err(Refused { public: e, detail }) => {
                self.metrics
                    .token_refreshes
                    .with_label_values(&["error"])
                    .inc();
                let backoff = self.backoff(state.failures);
                state.failures = state.failures.saturating_add(1);
                // The upstream's own words, escaped and without the credentials, for the operator.
                let mut detail = detail;
                for (value, name) in [(secret, "<secret>"), (uuid, "<uuid>")] {
                    if !value.expose().is_empty() {
                        detail = detail.replace(value.expose(), name);
                    }
                }
                // Cut after the credentials are out: a cut inside one would leave its start.
                let detail: String = detail.chars().take(200).collect();
                let detail = detail.escape_debug().to_string();
                tracing::warn!(account = %self.account, error = %e, upstream = %detail, retry_in = ?backoff, "getToken failed");
                state.failing = Some((e.clone(), Instant::now() + backoff));
                Err(e)
            }
        }
    }

    async fn exchange(
        &self,
        client: &UpstreamClient,
        base_url: &str,
        uuid: &Secret,
        secret: &Secret,
    ) -> Result<(Secret, Duration), Refused> {
        let plain = |public: TokenError| Refused {
            public,
            detail: String::new(),
        };
        let body = serde_json::json!({ "uuid": uuid.expose(), "secret": secret.expose() });
        let req = http::Request::builder()
            .method(Method::POST)
            .uri(format!("{base_url}/v1/auth/getToken"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(Bytes::from(body.to_string()))
            .map_err(|e| plain(TokenError::BadRequest(e.to_string())))?;
        let answer = client.send(TOKEN_ROUTE, req).await.map_err(|e| Refused {
            public: TokenError::Unreachable(e.to_string()),
            detail: e.detail(),
        })?;
        let parsed: TokenAnswer = serde_json::from_slice(&answer.body)
            .map_err(|_| plain(TokenError::UnexpectedBody(answer.parts.status)))?;
        match (parsed.code, parsed.data) {
            (Some(0), Some(data)) if !data.token.is_empty() => {
                let ms = data.effective_time.and_then(|v| {
                    v.as_i64()
                        .or_else(|| v.as_f64().map(|f| f as i64))
                        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                });
                Ok((Secret::new(data.token), self.lifetime(ms)))
            }
            // The code is the client's business; the upstream's message is the operator's.
            (code, _) => Err(Refused {
                public: TokenError::Refused { code },
                detail: parsed.msg.unwrap_or_default(),
            }),
        }
    }

    /// The upstream's `effectiveTime` (ms) within the configured bounds; its documented 30 minutes
    /// when it gives none.
    fn lifetime(&self, effective_ms: Option<i64>) -> Duration {
        let told = match effective_ms {
            Some(ms) => Duration::from_millis(ms.max(0) as u64),
            None => DEFAULT_LIFETIME,
        };
        // The configuration checks min <= max; a lifetime of nothing would be refreshed at once.
        told.clamp(self.cfg.min_lifetime, self.cfg.max_lifetime)
            .max(Duration::from_millis(100))
    }

    fn backoff(&self, failures: u32) -> Duration {
        let base = self
            .cfg
            .retry_min
            .saturating_mul(1u32 << failures.min(16))
            .min(self.cfg.retry_max);
        base.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}
