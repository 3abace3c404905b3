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
//! States ([`state::Phase`]): no token yet → held (valid until `expires_at`) → due for refresh →
//! held again; a failed `getToken` puts the broker in backoff (callers get the error at once, no
//! upstream call) until `retry_at`, doubling with jitter up to `retry_max`. A fixed token
//! (`FINOVY_TOKEN`) is always held.
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
//!
//! Here the broker's public face; [`state`] holds its states and their transitions (pure),
//! [`refresh`] the `getToken` call and the refresher, [`shared`] the following of the fleet's token
//! in shared mode, [`error`] what callers are told.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Credentials, TokenConfig};
use crate::counters::AccountCounters;
use crate::fleet::token::TokenStore;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::single_flight::SingleFlight;
use crate::upstream::client::UpstreamClient;

mod error;
mod refresh;
mod shared;
mod source;
mod state;
#[cfg(test)]
mod tests;

pub(crate) use error::TokenError;
use source::{DEFAULT_LIFETIME, FIXED_LEASE, FIXED_REFUSED, Source};
pub(crate) use state::TokenStatus;
use state::{Need, State};

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
    /// The account's token history for the console (last token, leases, refusals).
    counts: AccountCounters,
}

impl std::fmt::Debug for TokenBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBroker")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
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
            counts: AccountCounters::default(),
        })
    }

    /// Shares the token with the fleet through `store`.
    pub(crate) fn with_shared(mut self, store: Arc<TokenStore>) -> TokenBroker {
        self.shared = Some(store);
        self
    }

    /// The account's token history for the console.
    pub(crate) fn counts(&self) -> &AccountCounters {
        &self.counts
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("token state")
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
        self.state().reloaded();
        self.wake.notify_one();
    }

    /// A valid token, fetching one if none is held (one fetch for all concurrent callers).
    pub(crate) async fn get(self: &Arc<Self>) -> Result<Secret, TokenError> {
        if let Some(t) = self.valid_now() {
            return Ok(t);
        }
        self.in_flight(Need::Valid).await
    }

    /// The token to send now: the fixed one, or the held one until just before it expires.
    fn valid_now(&self) -> Option<Secret> {
        if let Some(t) = self.fixed() {
            return Some(t);
        }
        self.state().valid(Instant::now())
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
            let state = self.state();
            if state.is_refused(token, Instant::now()) && !state.holds(token) {
                return;
            }
        }
        let expires_ms = self.current_expiry(token).await;
        {
            let mut state = self.state();
            state.mark_refused(token, until(expires_ms), Instant::now());
            if state.holds(token) {
                tracing::info!(account = %self.account, "upstream rejected the token; fetching a new one");
                state.dropped();
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
        let mut state = self.state();
        let now = Instant::now();
        if !state.is_refused(token, now) {
            tracing::warn!(account = %self.account, "the upstream refused the fixed token; it is not leased until a reload replaces it");
            state.mark_refused(token, now + FIXED_REFUSED, now);
        }
    }

    pub(crate) fn status(&self) -> TokenStatus {
        if self.is_fixed() {
            return TokenStatus::Fixed;
        }
        self.state().status(Instant::now())
    }

    /// A lease of the current token for a client that calls the upstream itself. It never sends
    /// `getToken` of its own: in shared mode it follows the fleet's token; when the held token is
    /// due for its planned refresh, that refresh is done now (as the refresher is about to), so
    /// the lease is of the new token; with no token held it waits only for a `getToken` already
    /// in flight, then fails. A refused token is never leased: until its replacement comes, the
    /// answer is an error that says when to ask again.
    pub(crate) async fn lease(self: &Arc<Self>) -> Result<Lease, TokenError> {
        if let Some(token) = self.fixed() {
            if self.state().is_refused(&token, Instant::now()) {
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
        let held = self.state().held().is_some();
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
        let state = self.state();
        let now = Instant::now();
        if refused || state.held_refused(now) {
            let interval = self.cfg.min_refresh_interval;
            let wait = state.next_fetch(interval, now) - now;
            return TokenError::Replacing {
                interval,
                retry_after: crate::clock::retry_secs(wait),
            };
        }
        state.backing_off(now).unwrap_or(TokenError::NotHeld)
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
            self.state()
                .mark_refused(token, until(Some(expires_ms)), Instant::now());
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
        let generation = self.source_gen();
        let now = Instant::now();
        let (token, until) = self.state().leasable(&self.cfg, generation, now)?;
        Some(Lease {
            token,
            expires_ms: crate::clock::now_ms() + (until - now).as_millis() as u64,
        })
    }
}
