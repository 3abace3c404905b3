//! What a caller is told when the broker has no token for it: one error per reason, none of them
//! holding a credential or the upstream's own message (that goes to the log only).

use std::time::Duration;

use super::source::FIXED_LEASE;

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
