//! `getToken` and the token check every other call goes through.

use std::collections::HashMap;
use std::time::Duration;

use http::HeaderValue;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::sim::SimConfig;
use crate::sim::envelope::{ApiError, UNAUTHORIZED};
use crate::sim::params;
use crate::sim::state::random_alnum;

/// The request header carrying the token, as the upstream names it.
pub(crate) const TOKEN_HEADER: &str = "finovy-access-token";

/// How long an expired token is remembered, so that a late caller is told "expired" rather than
/// "unknown". Older ones are forgotten when new tokens are issued, which bounds the map.
const REMEMBER_EXPIRED: Duration = Duration::from_secs(3600);

/// Issued tokens and when each expires. Several tokens may be valid at once, as upstream.
#[derive(Default)]
pub(crate) struct Tokens {
    expiries: HashMap<String, Instant>,
}

impl Tokens {
    /// Forgets every token (`/_sim/revoke-tokens`); answers how many there were.
    pub(super) fn revoke_all(&mut self) -> usize {
        let n = self.expiries.len();
        self.expiries.clear();
        n
    }

    /// Accepts a known token that has not expired; code 401 otherwise, saying which case it is.
    pub(super) fn check(&self, header: Option<&HeaderValue>, now: Instant) -> Result<(), ApiError> {
        let Some(value) = header else {
            return Err(ApiError::new(
                UNAUTHORIZED,
                "missing token: send the Finovy-Access-Token header (鉴权失败)",
            ));
        };
        let token = value.to_str().unwrap_or_default();
        match self.expiries.get(token) {
            None => Err(ApiError::new(
                UNAUTHORIZED,
                "unknown token: get a new one from /v1/auth/getToken (鉴权失败)",
            )),
            Some(expiry) if now >= *expiry => Err(ApiError::new(
                UNAUTHORIZED,
                "token expired: get a new one from /v1/auth/getToken (鉴权失败)",
            )),
            Some(_) => Ok(()),
        }
    }

    fn issue(&mut self, now: Instant, ttl: Duration) -> String {
        self.expiries
            .retain(|_, expiry| now.saturating_duration_since(*expiry) < REMEMBER_EXPIRED);
        let token = random_alnum(22);
        // `ttl` is capped (see `sim::bounded`), so the addition cannot overflow.
        self.expiries.insert(token.clone(), now + ttl);
        token
    }
}

/// `POST /v1/auth/getToken` with `{"uuid","secret"}`.
pub(crate) fn get_token(
    tokens: &mut Tokens,
    cfg: &SimConfig,
    now: Instant,
    body: &[u8],
) -> Result<Value, ApiError> {
    let obj = params::object(body)?;
    let uuid = params::field(&obj, "uuid").and_then(Value::as_str);
    let secret = params::field(&obj, "secret").and_then(Value::as_str);
    match (uuid, secret) {
        (Some(uuid), Some(secret)) if uuid == cfg.uuid && secret == cfg.secret => {
            let token = tokens.issue(now, cfg.token_ttl);
            let millis = u64::try_from(cfg.token_ttl.as_millis()).unwrap_or(u64::MAX);
            Ok(json!({"token": token, "effectiveTime": millis}))
        }
        (Some(_), Some(_)) => Err(ApiError::new(UNAUTHORIZED, "wrong uuid or secret")),
        _ => Err(ApiError::new(
            UNAUTHORIZED,
            "uuid and secret are required (strings)",
        )),
    }
}
