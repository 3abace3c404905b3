//! The token broker: one per upstream account. It trades the account's uuid and secret for a token
//! at `POST /v1/auth/getToken`, keeps it with its expiry, refreshes it in the background ahead of
//! expiry, and makes sure that however many requests need a token at once, exactly one `getToken`
//! is in flight. A token the upstream rejected (code 401) is dropped with [`TokenBroker::invalidate`],
//! so the next [`TokenBroker::get`] fetches a new one, once for everyone.
//!
//! A token refused (the gateway's own 401, or a client's report) is remembered as refused until
//! it expires, here and in shared mode for the fleet: it is never leased, nor taken from the
//! fleet's store, again. Its replacement is due at once; when `min_refresh_interval` holds it
//! back, the refresher is woken to fetch it as soon as the interval allows.
//!
//! States: no token yet → held (valid until `expires_at`) → due for refresh → held again; a failed
//! `getToken` puts the broker in backoff (callers get the error at once, no upstream call) until
//! `retry_at`, doubling with jitter up to `retry_max`. A fixed token (`FINOVY_TOKEN`) is always held.
//!
//! A reload may change the credentials ([`TokenBroker::set_credentials`]): a new uuid or secret is
//! tried at once, by a `getToken` that neither a failure of the old ones nor `min_refresh_interval`
//! holds back (the token held stays until it succeeds); a new fixed token replaces the old one at
//! once. A fixed token the upstream refused is not leased until a reload changes it.
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
use crate::upstream::client::UpstreamClient;

/// What a caller sees when no token can be had. None of them holds a credential or the
/// upstream's own message (that goes to the log only).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("no upstream token is held at the moment; retry shortly")]
    NotHeld,
    #[error(
        "the current token was refused; getToken goes out at most once per {}, so its replacement comes in {retry_after}s: ask again then",
        humantime::format_duration(*interval)
    )]
    Replacing {
        interval: Duration,
        retry_after: u64,
    },
    #[error(
        "the upstream refused the fixed token; it is leased again once it is replaced (a reload of FINOVY_TOKEN or its file)"
    )]
    FixedRefused,
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
            // A fixed token the upstream refused: this replica's own setting, until a reload.
            TokenError::BadRequest(_) | TokenError::FixedRefused => true,
            _ => false,
        }
    }

    /// What `Retry-After` says: the wait when it is known, else a second.
    pub(crate) fn retry_after(&self) -> u64 {
        match self {
            TokenError::Replacing { retry_after, .. } => *retry_after,
            TokenError::Throttled { interval } => crate::clock::retry_secs(*interval),
            TokenError::FixedRefused => FIXED_LEASE.as_secs(),
            _ => 1,
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

/// How long a refused fixed token stays refused: until a reload replaces it.
const FIXED_REFUSED: Duration = Duration::from_secs(365 * 24 * 3600);

/// When a token expiring at `expires_ms` (epoch ms) is past; unknown: a default lifetime hence.
fn until(expires_ms: Option<u64>) -> Instant {
    let left = expires_ms.map_or(DEFAULT_LIFETIME, |ms| {
        Duration::from_millis(ms.saturating_sub(crate::clock::now_ms()))
    });
    Instant::now() + left
}

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
    /// Tokens refused (the upstream's 401, a client's report), each until it expires: never
    /// leased, nor taken back from the fleet's store. The newest last, a few at most.
    refused: Vec<(Secret, Instant)>,
    /// Shared mode: when the fleet's getToken gate was last seen to open.
    not_before: Option<Instant>,
    /// The credentials' generation the last `getToken` used (see [`TokenBroker::source`]).
    sent_gen: u64,
    /// The last `getToken` failure and when the next try may go.
    failing: Option<(TokenError, Instant)>,
    failures: u32,
    /// When this replica last sent `getToken`.
    last_sent: Option<Instant>,
}

/// How many refused tokens a broker remembers: one per `getToken` at most, so a few is plenty.
const REFUSED_KEPT: usize = 8;

impl State {
    fn is_refused(&self, token: &Secret) -> bool {
        let now = Instant::now();
        self.refused
            .iter()
            .any(|(t, until)| t == token && *until > now)
    }

    fn mark_refused(&mut self, token: &Secret, until: Instant) {
        let now = Instant::now();
        self.refused.retain(|(t, u)| t != token && *u > now);
        if self.refused.len() >= REFUSED_KEPT {
            self.refused.remove(0);
        }
        self.refused.push((token.clone(), until));
    }
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
    /// The credentials, and their generation: a reload that changes them counts one up, and
    /// new credentials are tried at once.
    source: Mutex<(Source, u64)>,
    /// Wakes the refresher: a reload changed the credentials, or a refused token's replacement
    /// is due sooner than it planned.
    wake: tokio::sync::Notify,
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
            source: Mutex::new((Source::of(credentials)?, 0)),
            wake: tokio::sync::Notify::new(),
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
        self.fixed().is_some()
    }

    fn fixed(&self) -> Option<Secret> {
        match &self.source.lock().expect("token source").0 {
            Source::Fixed(t) => Some(t.clone()),
            Source::Exchange { .. } => None,
        }
    }

    fn source_gen(&self) -> u64 {
        self.source.lock().expect("token source").1
    }

    /// New credentials from a reload. Unchanged ones change nothing; missing ones are never
    /// applied (a reload refuses them before this).
    pub(crate) fn set_credentials(&self, credentials: &Credentials) {
        let Some(new) = Source::of(credentials) else {
            return;
        };
        {
            let mut source = self.source.lock().expect("token source");
            if source.0 == new {
                return;
            }
            match &new {
                Source::Fixed(_) => {
                    tracing::info!(account = %self.account, "fixed token replaced");
                }
                Source::Exchange { .. } => {
                    tracing::info!(account = %self.account, "credentials changed; trying them now");
                }
            }
            *source = (new, source.1 + 1);
        }
        {
            // A failure was the old credentials': the next try need not wait out its backoff.
            let mut state = self.state.lock().expect("token state");
            state.failing = None;
            state.failures = 0;
        }
        self.wake.notify_one();
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
        self.obtain(self.renewing()).await
    }

    /// The upstream said `token` is no longer valid: it is marked refused (here, and in shared
    /// mode for the fleet) and dropped if it is still the held one, its replacement started.
    pub(crate) async fn invalidate(self: &Arc<Self>, token: &Secret) {
        if self.fixed().as_ref() == Some(token) {
            self.refuse_fixed(token);
            return;
        }
        {
            // A flood of 401s on one token: the first marks it and starts the replacement; the
            // rest find it marked and no longer held, and have nothing to do (no Redis call).
            let state = self.state.lock().expect("token state");
            if state.is_refused(token) && !state.held.as_ref().is_some_and(|h| &h.token == token) {
                return;
            }
        }
        let expires_ms = self.current_expiry(token).await;
        {
            let mut state = self.state.lock().expect("token state");
            state.mark_refused(token, until(expires_ms));
            if state.held.as_ref().is_some_and(|h| &h.token == token) {
                tracing::info!(account = %self.account, "upstream rejected the token; fetching a new one");
                state.held = None;
                // Started before the state is let go: whoever finds the token gone also finds
                // its replacement under way (a lease waits for it instead of answering "none").
                drop(self.start(Need::Valid));
                // Held back by min_refresh_interval, that fetch fails: the refresher fetches the
                // replacement as soon as one may go, whether or not a request asks.
                self.wake.notify_one();
            }
        }
        if let (Some(shared), Some(ms)) = (&self.shared, expires_ms) {
            shared.mark_refused(&self.account, token, ms).await;
        }
    }

    /// The fixed token was refused: it is not leased until a reload replaces it.
    fn refuse_fixed(&self, token: &Secret) {
        let mut state = self.state.lock().expect("token state");
        if !state.is_refused(token) {
            tracing::warn!(account = %self.account, "the upstream refused the fixed token; it is not leased until a reload replaces it");
            state.mark_refused(token, Instant::now() + FIXED_REFUSED);
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
                    () = self.wake.notified() => continue,
                }
            }
            let due = self.next_refresh();
            tokio::select! {
                () = &mut shutdown => return,
                () = self.wake.notified() => continue,
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
        // New credentials are tried, not the fleet's token that the old ones got.
        let renewing = self.renewing();
        if !renewing && let Some(t) = self.adopt_shared(true).await {
            return Ok(t); // another replica refreshed it for the fleet
        }
        self.obtain(renewing).await
    }

    /// Whether the credentials changed since the last `getToken`.
    fn renewing(&self) -> bool {
        let sent = self.state.lock().expect("token state").sent_gen;
        sent != self.source_gen()
    }

    /// When the background refresher should act next.
    fn next_refresh(&self) -> Instant {
        let state = self.state.lock().expect("token state");
        self.planned_refresh(&state, Instant::now())
    }

    /// When the token in `state` is to be replaced: ahead of its expiry, at once when it was
    /// refused, at the retry after a failure; never sooner than the next `getToken` may go,
    /// unless the credentials changed since the last one (they are tried at once).
    fn planned_refresh(&self, state: &State, now: Instant) -> Instant {
        if state.sent_gen != self.source_gen() {
            return now;
        }
        let due = match (&state.failing, &state.held) {
            (Some((_, retry_at)), _) => *retry_at,
            (None, Some(h)) if state.is_refused(&h.token) => now,
            (None, Some(h)) => {
                let ahead = self.refresh_ahead(h.lifetime);
                h.expires_at.checked_sub(ahead).unwrap_or(now)
            }
            (None, None) => now,
        };
        due.max(self.next_fetch(state, now))
    }

    /// The earliest moment the next `getToken` may go: `min_refresh_interval` after this
    /// replica's last, and in shared mode when the fleet's gate was last seen to open.
    fn next_fetch(&self, state: &State, now: Instant) -> Instant {
        let mine = state
            .last_sent
            .map(|sent| sent + self.cfg.min_refresh_interval);
        [Some(now), mine, state.not_before]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(now)
    }

    fn valid_now(&self) -> Option<Secret> {
        if let Some(t) = self.fixed() {
            return Some(t);
        }
        let state = self.state.lock().expect("token state");
        let h = state.held.as_ref()?;
        (Instant::now() < h.usable_until()).then(|| h.token.clone())
    }

    /// A lease of the current token for a client that calls the upstream itself. It never sends
    /// `getToken` of its own: in shared mode it follows the fleet's token; when the held token is
    /// due for its planned refresh, that refresh is done now (as the refresher is about to), so
    /// the lease is of the new token; with no token held it waits only for a `getToken` already
    /// in flight, then fails. A refused token is never leased: until its replacement comes, the
    /// answer is an error that says when to ask again.
    pub(crate) async fn lease(self: &Arc<Self>) -> Result<Lease, TokenError> {
        if let Some(token) = self.fixed() {
            if self.state.lock().expect("token state").is_refused(&token) {
                return Err(TokenError::FixedRefused);
            }
            return Ok(Lease {
                token,
                expires_ms: crate::clock::now_ms() + FIXED_LEASE.as_millis() as u64,
            });
        }
        if !self.follow_fleet().await {
            return Err(self.lease_error(true));
        }
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
        self.current_lease().ok_or_else(|| self.lease_error(false))
    }

    /// Why no lease can be had: the current token was refused (`refused`, or the held one is
    /// marked so) and its replacement comes at the next moment a `getToken` may go; else the
    /// failure being backed off, or none held.
    fn lease_error(&self, refused: bool) -> TokenError {
        let state = self.state.lock().expect("token state");
        let refused = refused
            || state
                .held
                .as_ref()
                .is_some_and(|h| state.is_refused(&h.token));
        if refused {
            let now = Instant::now();
            let wait = self.next_fetch(&state, now) - now;
            return TokenError::Replacing {
                interval: self.cfg.min_refresh_interval,
                retry_after: crate::clock::retry_secs(wait),
            };
        }
        drop(state);
        self.backing_off().unwrap_or(TokenError::NotHeld)
    }

    /// A client says the upstream refused `token`. When it is still the current token (held
    /// here, or the fleet's), it is marked refused (here and for the fleet: nobody leases it
    /// again) and replaced at once when a `getToken` may go now (in shared mode: when this
    /// replica gets the fleet's gate), once for all callers; else the refresher replaces it as
    /// soon as one may, and the answer says when. The gateway's own requests keep sending it
    /// meanwhile, since the claim is only the client's word (the upstream's 401 drops it). A
    /// token no longer current changes nothing. The answer is the current lease, never of a
    /// refused token. A fixed token reported is not leased until a reload changes it.
    pub(crate) async fn renew_rejected(
        self: &Arc<Self>,
        token: &Secret,
    ) -> Result<Lease, TokenError> {
        if self.fixed().as_ref() == Some(token) {
            self.refuse_fixed(token);
        } else if let Some(expires_ms) = self.current_expiry(token).await {
            self.state
                .lock()
                .expect("token state")
                .mark_refused(token, until(Some(expires_ms)));
            if let Some(shared) = &self.shared {
                shared.mark_refused(&self.account, token, expires_ms).await;
            }
            // The refresher replaces it if this report cannot (the gate is closed).
            self.wake.notify_one();
            let _ = self.in_flight(Need::Refresh).await;
        }
        self.lease().await
    }

    /// The held token's lease, unless none is held, it was refused, or its planned refresh is
    /// already due.
    fn current_lease(&self) -> Option<Lease> {
        let state = self.state.lock().expect("token state");
        let h = state.held.as_ref()?;
        if state.is_refused(&h.token) {
            return None;
        }
        let now = Instant::now();
        let until = h.usable_until().min(self.planned_refresh(&state, now));
        (until > now).then(|| Lease {
            token: h.token.clone(),
            expires_ms: crate::clock::now_ms() + (until - now).as_millis() as u64,
        })
    }

    /// When `token` expires (epoch ms) if it is the one in use: held here or, in shared mode,
    /// the fleet's; `None` when it is neither.
    async fn current_expiry(&self, token: &Secret) -> Option<u64> {
        let held = self.state.lock().expect("token state").held.clone();
        if let Some(h) = held.filter(|h| &h.token == token) {
            let left = h.expires_at.saturating_duration_since(Instant::now());
            return Some(crate::clock::now_ms() + left.as_millis() as u64);
        }
        match self.shared.as_ref()?.read(&self.account, None).await {
            Ok((Some(t), _)) if &t.token == token => Some(t.expires_ms),
            _ => None,
        }
    }

    /// Shared mode: takes the fleet's token when it differs from the held one (another replica
    /// replaced it, after a rejection say) and is not refused, and learns which of the two the
    /// fleet knows refused. False when the held token must not be leased: the fleet's is
    /// another one, refused, so the held one is older still. Redis failing or empty leaves the
    /// held token.
    async fn follow_fleet(&self) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        let held = self.state.lock().expect("token state").held.clone();
        let Ok((fleet, held_refused)) = shared
            .read(&self.account, held.as_ref().map(|h| &h.token))
            .await
        else {
            return true;
        };
        let mut state = self.state.lock().expect("token state");
        if held_refused && let Some(h) = &held {
            state.mark_refused(&h.token, h.expires_at);
        }
        let Some(t) = fleet else {
            return true;
        };
        let same = held.as_ref().is_some_and(|h| h.token == t.token);
        if t.refused {
            state.mark_refused(&t.token, until(Some(t.expires_ms)));
            return same;
        }
        drop(state);
        if !same {
            self.adopt(t, false);
        }
        true
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
        let t = shared.read(&self.account, None).await.ok()?.0?;
        self.adopt(t, need_fresh)
    }

    /// Holds the fleet's token `t` when it is usable (see [`TokenBroker::adopt_shared`]).
    fn adopt(&self, t: SharedToken, need_fresh: bool) -> Option<Secret> {
        let now_ms = crate::clock::now_ms();
        let left = Duration::from_millis(t.expires_ms.checked_sub(now_ms)?);
        let margin = (t.lifetime / 20).min(Duration::from_secs(2));
        let due = left <= self.refresh_ahead(t.lifetime);
        let mut state = self.state.lock().expect("token state");
        if left <= margin || (need_fresh && due) || t.refused || state.is_refused(&t.token) {
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
    /// while Redis fails). `renewing`: new credentials, whose token is wanted rather than the
    /// fleet's. The caller holds `fetching`.
    async fn obtain(&self, renewing: bool) -> Result<Secret, TokenError> {
        let Some(shared) = &self.shared else {
            return self.fetch().await;
        };
        let deadline = Instant::now() + shared.wait();
        loop {
            match shared.lock(&self.account).await {
                Err(_) => return self.fetch().await,
                Ok(Some(fence)) => {
                    // Someone may have shared a token just before the lock came free.
                    if !renewing && let Some(t) = self.adopt_shared(true).await {
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
                                expires_ms: crate::clock::now_ms() + left.as_millis() as u64,
                                lifetime: h.lifetime,
                                refused: false,
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
                    if !renewing && let Some(t) = self.adopt_shared(true).await {
                        return Ok(t);
                    }
                }
            }
        }
    }

    /// One `getToken` call, unless one went out less than `min_refresh_interval` ago (here, or in
    /// shared mode anywhere in the fleet): then an error at once. The first with new credentials
    /// goes at once: the interval guards against a loop, which a reload is not. The caller holds
    /// `fetching`.
    async fn fetch(&self) -> Result<Secret, TokenError> {
        let (source, generation) = self.source.lock().expect("token source").clone();
        let Source::Exchange { uuid, secret } = source else {
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
        // Taken before the fleet's gate, so that this replica's own interval never ends after it.
        let sent_at = Instant::now();
        let renewing = {
            let state = self.state.lock().expect("token state");
            let renewing = state.sent_gen != generation;
            if !renewing && state.last_sent.is_some_and(|t| sent_at < t + interval) {
                return Err(too_soon());
            }
            renewing
        };
        // The fleet's gate; without Redis this replica's own is enough.
        if let Some(shared) = &self.shared
            && !interval.is_zero()
            && let Ok(Some(wait)) = shared.gate(&self.account, interval, renewing).await
        {
            // The refresher comes back when it opens.
            self.state.lock().expect("token state").not_before = Some(Instant::now() + wait);
            return Err(too_soon());
        }
        {
            let mut state = self.state.lock().expect("token state");
            state.last_sent = Some(sent_at);
            state.sent_gen = generation;
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
                // A failure of credentials a reload has replaced holds nothing back.
                if self.source_gen() == generation {
                    state.failing = Some((e.clone(), Instant::now() + backoff));
                }
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
