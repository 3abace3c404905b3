//! The broker's state, and every change to it: which token it holds, whether its last `getToken`
//! failed, and what it remembers to keep `getToken` rare (when it last went out, when the fleet's
//! gate opens, which tokens were refused). Pure: no I/O, no lock, no clock but the `now` it is
//! given, no randomness; the broker takes the lock, reads the clock and calls the upstream.

use std::time::Duration;

use tokio::time::Instant;

use super::error::TokenError;
use crate::config::TokenConfig;
use crate::secret::Secret;

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

/// How many refused tokens a broker remembers: one per `getToken` at most, so a few is plenty.
const REFUSED_KEPT: usize = 8;

/// A token obtained with `getToken` (or taken from the fleet's store).
#[derive(Clone)]
pub(super) struct Held {
    pub(super) token: Secret,
    pub(super) expires_at: Instant,
    pub(super) lifetime: Duration,
}

impl Held {
    /// The last moment the gateway sends this token: a little before its expiry, so that no
    /// request carries it at its last instant.
    pub(super) fn usable_until(&self) -> Instant {
        let margin = (self.lifetime / 20).min(Duration::from_secs(2));
        self.expires_at
            .checked_sub(margin)
            .unwrap_or(self.expires_at)
    }
}

/// A failed `getToken`: what callers are told meanwhile, and when the next try may go.
#[derive(Clone)]
pub(super) struct Failure {
    pub(super) error: TokenError,
    pub(super) retry_at: Instant,
}

/// Where the exchanged token stands. A fixed token (`FINOVY_TOKEN`) is always held and never
/// refreshed, so it has no phase: the phase of the last credentials to be exchanged stays as it
/// was, for a reload that brings them back.
#[derive(Clone, Default)]
pub(super) enum Phase {
    /// No token and no failure: none fetched yet, or the upstream refused (401) the one held.
    /// Out: a `getToken` that succeeds, or the fleet's token (→ `Held`); one that fails
    /// (→ `Failing`).
    #[default]
    Empty,
    /// A token, sent until just before `expires_at` and refreshed ahead of it (at once when it
    /// is marked refused). Out: its refresh (→ `Held`, the new token); a failed refresh
    /// (→ `Retrying`); the upstream's 401 (→ `Empty`). Past its expiry it is as good as none.
    Held(Held),
    /// No token, and the last `getToken` failed: callers get its error at once, with no upstream
    /// call, until `retry_at`. Out: a try after `retry_at`, or at once with new credentials
    /// (→ `Held`, or `Failing` again with a longer backoff); the fleet's token (→ `Held`); a
    /// reload of the credentials (→ `Empty`).
    Failing(Failure),
    /// A token still held, but its refresh failed: the token is sent while it lasts, the next
    /// try goes at `retry_at`. Out: as `Failing` (a reload → `Held`); the upstream's 401
    /// (→ `Failing`).
    Retrying(Held, Failure),
}

/// Everything the broker knows besides its credentials.
#[derive(Default)]
pub(super) struct State {
    pub(super) phase: Phase,
    /// `getToken` failures in a row, for the backoff: a success, the fleet's token or a reload
    /// starts it again.
    failures: u32,
    /// Tokens refused (the upstream's 401, a client's report), each until it expires: never
    /// leased, nor taken back from the fleet's store. The newest last, a few at most.
    refused: Vec<(Secret, Instant)>,
    /// Shared mode: when the fleet's getToken gate was last seen to open.
    not_before: Option<Instant>,
    /// The credentials' generation the last `getToken` used (see `TokenBroker::source`).
    sent_gen: u64,
    /// When this replica last sent `getToken`.
    last_sent: Option<Instant>,
}

/// How long before expiry a token of `lifetime` is refreshed.
pub(super) fn refresh_ahead(cfg: &TokenConfig, lifetime: Duration) -> Duration {
    cfg.refresh_before.min(lifetime / 4)
}

// === impl State: what it says ===

impl State {
    /// The token held, expired or not.
    pub(super) fn held(&self) -> Option<&Held> {
        match &self.phase {
            Phase::Held(h) | Phase::Retrying(h, _) => Some(h),
            Phase::Empty | Phase::Failing(_) => None,
        }
    }

    /// The last `getToken` failure, while no success has followed it.
    pub(super) fn failure(&self) -> Option<&Failure> {
        match &self.phase {
            Phase::Failing(f) | Phase::Retrying(_, f) => Some(f),
            Phase::Empty | Phase::Held(_) => None,
        }
    }

    pub(super) fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the held token is `token`.
    pub(super) fn holds(&self, token: &Secret) -> bool {
        self.held().is_some_and(|h| &h.token == token)
    }

    /// Whether `token` is marked refused at `now`.
    pub(super) fn is_refused(&self, token: &Secret, now: Instant) -> bool {
        self.refused
            .iter()
            .any(|(t, until)| t == token && *until > now)
    }

    /// Whether a token is held and marked refused.
    pub(super) fn held_refused(&self, now: Instant) -> bool {
        self.held().is_some_and(|h| self.is_refused(&h.token, now))
    }

    /// Whether credentials of generation `generation` were not yet tried with a `getToken`.
    pub(super) fn renewing(&self, generation: u64) -> bool {
        self.sent_gen != generation
    }

    /// Whether a `getToken` at `now` with credentials of `generation` is held back by
    /// `interval` since this replica's last one (the first with new credentials never is).
    pub(super) fn too_soon(&self, now: Instant, interval: Duration, generation: u64) -> bool {
        !self.renewing(generation) && self.last_sent.is_some_and(|t| now < t + interval)
    }

    /// The token to send at `now`: the held one until just before it expires, refused or not
    /// (a refusal the upstream itself made drops it).
    pub(super) fn valid(&self, now: Instant) -> Option<Secret> {
        let h = self.held()?;
        (now < h.usable_until()).then(|| h.token.clone())
    }

    /// The failure whose backoff holds the next `getToken` back at `now`.
    pub(super) fn backing_off(&self, now: Instant) -> Option<TokenError> {
        self.failure()
            .filter(|f| now < f.retry_at)
            .map(|f| f.error.clone())
    }

    /// What `/readyz` and the metrics see (of exchanged credentials): an unexpired token first,
    /// else the failure, else none.
    pub(super) fn status(&self, now: Instant) -> TokenStatus {
        match (self.held(), self.failure()) {
            (Some(h), _) if h.expires_at > now => TokenStatus::Held {
                expires_in: h.expires_at - now,
            },
            (_, Some(f)) => TokenStatus::Failing(f.error.clone()),
            _ => TokenStatus::None,
        }
    }

    /// When the token is to be replaced: ahead of its expiry, at once when it was refused, at the
    /// retry after a failure; never sooner than the next `getToken` may go, unless the
    /// credentials (of `generation`) changed since the last one: they are tried at once.
    pub(super) fn planned_refresh(
        &self,
        cfg: &TokenConfig,
        generation: u64,
        now: Instant,
    ) -> Instant {
        if self.renewing(generation) {
            return now;
        }
        let due = match &self.phase {
            Phase::Failing(f) | Phase::Retrying(_, f) => f.retry_at,
            Phase::Held(h) if self.is_refused(&h.token, now) => now,
            Phase::Held(h) => {
                let ahead = refresh_ahead(cfg, h.lifetime);
                h.expires_at.checked_sub(ahead).unwrap_or(now)
            }
            Phase::Empty => now,
        };
        due.max(self.next_fetch(cfg.min_refresh_interval, now))
    }

    /// The earliest moment the next `getToken` may go: `interval` after this replica's last, and
    /// in shared mode when the fleet's gate was last seen to open.
    pub(super) fn next_fetch(&self, interval: Duration, now: Instant) -> Instant {
        let mine = self.last_sent.map(|sent| sent + interval);
        [Some(now), mine, self.not_before]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(now)
    }

    /// The held token and the moment its lease ends, unless it is refused or that moment (its
    /// last usable one, or its planned refresh) is past.
    pub(super) fn leasable(
        &self,
        cfg: &TokenConfig,
        generation: u64,
        now: Instant,
    ) -> Option<(Secret, Instant)> {
        let h = self.held()?;
        if self.is_refused(&h.token, now) {
            return None;
        }
        let until = h
            .usable_until()
            .min(self.planned_refresh(cfg, generation, now));
        (until > now).then(|| (h.token.clone(), until))
    }
}

// === impl State: how it changes ===

impl State {
    /// A new token, from `getToken` or the fleet: whatever failed before is over.
    pub(super) fn obtained(&mut self, held: Held) {
        self.phase = Phase::Held(held);
        self.failures = 0;
    }

    /// A `getToken` failed. It counts toward the backoff; `failure` is kept (callers get its error
    /// until its `retry_at`) unless the credentials changed while it was on the wire (`None`).
    pub(super) fn failed(&mut self, failure: Option<Failure>) {
        self.failures = self.failures.saturating_add(1);
        let Some(failure) = failure else {
            return;
        };
        self.phase = match std::mem::take(&mut self.phase) {
            Phase::Held(h) | Phase::Retrying(h, _) => Phase::Retrying(h, failure),
            Phase::Empty | Phase::Failing(_) => Phase::Failing(failure),
        };
    }

    /// New credentials: a failure was the old ones', so the next try need not wait out its
    /// backoff. A token held stays until the new credentials get one.
    pub(super) fn reloaded(&mut self) {
        self.failures = 0;
        self.phase = match std::mem::take(&mut self.phase) {
            Phase::Held(h) | Phase::Retrying(h, _) => Phase::Held(h),
            Phase::Empty | Phase::Failing(_) => Phase::Empty,
        };
    }

    /// The upstream refused the held token: it is dropped (a failure being backed off stays).
    pub(super) fn dropped(&mut self) {
        self.phase = match std::mem::take(&mut self.phase) {
            Phase::Retrying(_, f) | Phase::Failing(f) => Phase::Failing(f),
            Phase::Held(_) | Phase::Empty => Phase::Empty,
        };
    }

    /// Marks `token` refused until `until`; expired marks are forgotten.
    pub(super) fn mark_refused(&mut self, token: &Secret, until: Instant, now: Instant) {
        self.refused.retain(|(t, u)| t != token && *u > now);
        if self.refused.len() >= REFUSED_KEPT {
            self.refused.remove(0);
        }
        self.refused.push((token.clone(), until));
    }

    /// A `getToken` goes out at `at` with credentials of `generation`.
    pub(super) fn sending(&mut self, at: Instant, generation: u64) {
        self.last_sent = Some(at);
        self.sent_gen = generation;
    }

    /// Shared mode: the fleet's gate stays closed until `until`.
    pub(super) fn gate_closed(&mut self, until: Instant) {
        self.not_before = Some(until);
    }
}

/// What a flight of the broker is for: a token now ([`TokenBroker::get`]), or the planned refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Need {
    Valid,
    Refresh,
}

#[cfg(test)]
mod tests {
    //! The transitions alone, with no broker and no upstream: what each leaves behind.

    use super::*;

    fn held(token: &str, expires_at: Instant) -> Held {
        Held {
            token: Secret::new(token),
            expires_at,
            lifetime: Duration::from_secs(30 * 60),
        }
    }

    fn failure(retry_at: Instant) -> Failure {
        Failure {
            error: TokenError::Refused { code: Some(500) },
            retry_at,
        }
    }

    fn name(state: &State) -> &'static str {
        match state.phase {
            Phase::Empty => "empty",
            Phase::Held(_) => "held",
            Phase::Failing(_) => "failing",
            Phase::Retrying(..) => "retrying",
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_keeps_a_held_token_and_a_success_clears_it() {
        let now = Instant::now();
        let mut state = State::default();
        state.failed(Some(failure(now + Duration::from_secs(1))));
        assert_eq!(name(&state), "failing");
        state.obtained(held("a", now + Duration::from_secs(1800)));
        assert_eq!((name(&state), state.failures()), ("held", 0));
        state.failed(Some(failure(now + Duration::from_secs(1))));
        state.failed(Some(failure(now + Duration::from_secs(2))));
        assert_eq!((name(&state), state.failures()), ("retrying", 2));
        // The token is still sent, and reported, while it lasts.
        assert_eq!(state.valid(now), Some(Secret::new("a")));
        assert!(matches!(state.status(now), TokenStatus::Held { .. }));
        assert_eq!(
            state.failure().unwrap().retry_at,
            now + Duration::from_secs(2)
        );
        // Past its expiry the failure is what is reported.
        let later = now + Duration::from_secs(1800);
        assert!(state.valid(later).is_none());
        assert!(matches!(state.status(later), TokenStatus::Failing(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_of_replaced_credentials_counts_but_holds_nothing_back() {
        let now = Instant::now();
        let mut state = State::default();
        state.failed(None);
        assert_eq!((name(&state), state.failures()), ("empty", 1));
        assert!(state.backing_off(now).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_clears_the_failure_and_keeps_the_token() {
        let now = Instant::now();
        let mut state = State::default();
        state.obtained(held("a", now + Duration::from_secs(1800)));
        state.failed(Some(failure(now + Duration::from_secs(1))));
        state.reloaded();
        assert_eq!((name(&state), state.failures()), ("held", 0));

        let mut state = State::default();
        state.failed(Some(failure(now + Duration::from_secs(1))));
        state.reloaded();
        assert_eq!((name(&state), state.failures()), ("empty", 0));
        assert!(state.backing_off(now).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_upstream_s_401_drops_the_token_and_keeps_the_failure() {
        let now = Instant::now();
        let mut state = State::default();
        state.obtained(held("a", now + Duration::from_secs(1800)));
        state.dropped();
        assert_eq!(name(&state), "empty");

        state.obtained(held("a", now + Duration::from_secs(1800)));
        state.failed(Some(failure(now + Duration::from_secs(1))));
        state.dropped();
        assert_eq!(name(&state), "failing");
        assert!(state.backing_off(now).is_some());
        assert!(state.backing_off(now + Duration::from_secs(1)).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_planned_refresh_of_each_phase() {
        let cfg = TokenConfig::default();
        let now = Instant::now();
        let expires_at = now + Duration::from_secs(1800);
        let mut state = State::default();
        // Empty, never sent: at once.
        assert_eq!(state.planned_refresh(&cfg, 0, now), now);
        // Held: `refresh_before` ahead of expiry.
        state.sending(now, 0);
        state.obtained(held("a", expires_at));
        let ahead = expires_at - cfg.refresh_before;
        assert_eq!(state.planned_refresh(&cfg, 0, now), ahead);
        assert_eq!(state.leasable(&cfg, 0, now).unwrap().1, ahead);
        // Marked refused: at once, but not before min_refresh_interval since the last getToken.
        state.mark_refused(&Secret::new("a"), expires_at, now);
        let next = now + cfg.min_refresh_interval;
        assert_eq!(state.planned_refresh(&cfg, 0, now), next);
        assert!(state.leasable(&cfg, 0, now).is_none());
        assert!(state.too_soon(now, cfg.min_refresh_interval, 0));
        // New credentials: at once, whatever the interval says.
        assert_eq!(state.planned_refresh(&cfg, 1, now), now);
        assert!(!state.too_soon(now, cfg.min_refresh_interval, 1));
        // Failing: at the retry, or the interval's end if later.
        state.failed(Some(failure(now + Duration::from_secs(60))));
        assert_eq!(
            state.planned_refresh(&cfg, 0, now),
            now + Duration::from_secs(60)
        );
        // The fleet's gate closed longer.
        state.gate_closed(now + Duration::from_secs(90));
        assert_eq!(
            state.planned_refresh(&cfg, 0, now),
            now + Duration::from_secs(90)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refused_tokens_are_remembered_until_they_expire_a_few_at_most() {
        let now = Instant::now();
        let mut state = State::default();
        let until = now + Duration::from_secs(10);
        for i in 0..=REFUSED_KEPT {
            state.mark_refused(&Secret::new(format!("t{i}")), until, now);
        }
        assert!(
            !state.is_refused(&Secret::new("t0"), now),
            "the oldest goes"
        );
        assert!(state.is_refused(&Secret::new(format!("t{REFUSED_KEPT}")), now));
        assert!(!state.is_refused(&Secret::new("t1"), until));
    }
}
