//! Shared mode: the broker's side of the fleet's token (the store itself is
//! [`crate::fleet::token`]). One replica calls `getToken` for all, under the fleet's refresh lock,
//! and publishes the token; the others take it from the store, and learn there which tokens the
//! fleet knows refused. Without Redis (or while it fails) the broker works on its own.

use std::time::Duration;

use tokio::time::Instant;

use super::TokenBroker;
use super::state::{Held, refresh_ahead};
use crate::fleet::token::SharedToken;
use crate::secret::Secret;

impl TokenBroker {
    /// When `token` expires (epoch ms) if it is the one in use: held here or, in shared mode,
    /// the fleet's; `None` when it is neither.
    pub(super) async fn current_expiry(&self, token: &Secret) -> Option<u64> {
        let held = self.state().held().cloned();
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
    pub(super) async fn follow_fleet(&self) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        let held = self.state().held().cloned();
        let Ok((fleet, held_refused)) = shared
            .read(&self.account, held.as_ref().map(|h| &h.token))
            .await
        else {
            return true;
        };
        let mut state = self.state();
        if held_refused && let Some(h) = &held {
            state.mark_refused(&h.token, h.expires_at, Instant::now());
        }
        let Some(t) = fleet else {
            return true;
        };
        let same = held.as_ref().is_some_and(|h| h.token == t.token);
        if t.refused {
            state.mark_refused(&t.token, super::until(Some(t.expires_ms)), Instant::now());
            return same;
        }
        drop(state);
        if !same {
            self.adopt(t, false);
        }
        true
    }

    /// Takes the fleet's token when it is usable (and, with `need_fresh`, not yet due for
    /// refresh), and holds it here.
    pub(super) async fn adopt_shared(&self, need_fresh: bool) -> Option<Secret> {
        let shared = self.shared.as_ref()?;
        let t = shared.read(&self.account, None).await.ok()?.0?;
        self.adopt(t, need_fresh)
    }

    /// Holds the fleet's token `t` when it is usable (see [`TokenBroker::adopt_shared`]).
    fn adopt(&self, t: SharedToken, need_fresh: bool) -> Option<Secret> {
        let now_ms = crate::clock::now_ms();
        let left = Duration::from_millis(t.expires_ms.checked_sub(now_ms)?);
        let margin = (t.lifetime / 20).min(Duration::from_secs(2));
        let due = left <= refresh_ahead(&self.cfg, t.lifetime);
        let mut state = self.state();
        let now = Instant::now();
        if left <= margin || (need_fresh && due) || t.refused || state.is_refused(&t.token, now) {
            return None;
        }
        // A new token from the fleet is this account's latest; the one already held is not.
        if !state.holds(&t.token) {
            self.counts.obtained(now_ms);
        }
        state.obtained(Held {
            token: t.token.clone(),
            expires_at: now + left,
            lifetime: t.lifetime,
        });
        Some(t.token)
    }

    /// A new token: in shared mode the refresh lock decides which replica calls `getToken`, and
    /// the others wait for its token (or fetch on their own once the lock's holder is gone, or
    /// while Redis fails). `renewing`: new credentials, whose token is wanted rather than the
    /// fleet's. The caller holds `fetching`.
    pub(super) async fn obtain(&self, renewing: bool) -> Result<Secret, super::TokenError> {
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
                    let held = self.state().held().cloned();
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
}
