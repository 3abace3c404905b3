//! Getting a token: the flights that coalesce every caller's need into one task, the background
//! refresher that replaces the token ahead of its expiry, and the `getToken` call itself, held to
//! at most one per `min_refresh_interval` and backed off after a failure.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, header};
use rand::Rng;
use serde::Deserialize;
use tokio::time::Instant;

use super::TokenBroker;
use super::error::TokenError;
use super::source::{DEFAULT_LIFETIME, Source, TOKEN_ROUTE};
use super::state::Need;
use super::state::{Failure, Held};
use crate::secret::Secret;
use crate::single_flight::Flight;
use crate::upstream::client::UpstreamClient;

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

// === impl TokenBroker: flights ===

impl TokenBroker {
    /// Joins or starts the task doing `need`, and waits for it.
    pub(super) async fn in_flight(self: &Arc<Self>, need: Need) -> Result<Secret, TokenError> {
        // `None`: the task panicked; nothing is held, so say so.
        self.start(need)
            .wait()
            .await
            .unwrap_or(Err(TokenError::NotHeld))
    }

    /// Joins or starts the task doing `need`.
    pub(super) fn start(self: &Arc<Self>, need: Need) -> Flight<Result<Secret, TokenError>> {
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
        if let Some(e) = self.state().backing_off(Instant::now()) {
            return Err(e);
        }
        self.obtain(self.renewing()).await
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
        let generation = self.source_gen();
        self.state().renewing(generation)
    }

    /// When the background refresher should act next.
    fn next_refresh(&self) -> Instant {
        let generation = self.source_gen();
        self.state()
            .planned_refresh(&self.cfg, generation, Instant::now())
    }
}

// === impl TokenBroker: the refresher ===

impl TokenBroker {
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
}

// === impl TokenBroker: getToken ===

impl TokenBroker {
    /// One `getToken` call, unless one went out less than `min_refresh_interval` ago (here, or in
    /// shared mode anywhere in the fleet): then an error at once. The first with new credentials
    /// goes at once: the interval guards against a loop, which a reload is not. The caller holds
    /// `fetching`.
    pub(super) async fn fetch(&self) -> Result<Secret, TokenError> {
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
            let state = self.state();
            if state.too_soon(sent_at, interval, generation) {
                return Err(too_soon());
            }
            state.renewing(generation)
        };
        // The fleet's gate; without Redis this replica's own is enough.
        if let Some(shared) = &self.shared
            && !interval.is_zero()
            && let Ok(Some(wait)) = shared.gate(&self.account, interval, renewing).await
        {
            // The refresher comes back when it opens.
            self.state().gate_closed(Instant::now() + wait);
            return Err(too_soon());
        }
        self.state().sending(sent_at, generation);
        let result = self
            .exchange(&self.client, &self.base_url, uuid, secret)
            .await;
        let mut state = self.state();
        match result {
            Ok((token, lifetime)) => {
                self.metrics
                    .token_refreshes
                    .with_label_values(&["ok"])
                    .inc();
                tracing::info!(account = %self.account, lifetime = ?lifetime, "obtained an upstream token");
                self.counts.obtained(crate::clock::now_ms());
                state.obtained(Held {
                    token: token.clone(),
                    expires_at: sent_at + lifetime,
                    lifetime,
                });
                Ok(token)
            }
            Err(Refused { public: e, detail }) => {
                self.metrics
                    .token_refreshes
                    .with_label_values(&["error"])
                    .inc();
                if e.is_refusal() {
                    self.counts.refused();
                }
                let backoff = self.backoff(state.failures());
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
                let current = self.source_gen() == generation;
                state.failed(current.then(|| Failure {
                    error: e.clone(),
                    retry_at: Instant::now() + backoff,
                }));
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
