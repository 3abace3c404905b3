//! `[token]`: when the upstream token is refreshed, how failed refreshes back off, and how far the
//! lifetime the upstream states is trusted.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{ConfigError, invalid};
use crate::duration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TokenConfig {
    /// Refresh this long before the token expires (at most a quarter of its lifetime).
    #[serde(with = "duration")]
    pub(crate) refresh_before: Duration,
    /// First wait after a failed `getToken`; doubles up to `retry_max`, with jitter.
    #[serde(with = "duration")]
    pub(crate) retry_min: Duration,
    #[serde(with = "duration")]
    pub(crate) retry_max: Duration,
    /// At most one `getToken` per account in this interval, whatever the upstream answers.
    #[serde(with = "duration")]
    pub(crate) min_refresh_interval: Duration,
    /// The upstream's `effectiveTime` is clamped to `[min_lifetime, max_lifetime]`.
    #[serde(with = "duration")]
    pub(crate) min_lifetime: Duration,
    #[serde(with = "duration")]
    pub(crate) max_lifetime: Duration,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            refresh_before: Duration::from_secs(5 * 60),
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            min_refresh_interval: Duration::from_secs(5),
            min_lifetime: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

impl TokenConfig {
    /// Each range's lower end at most its upper one.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.retry_min > self.retry_max {
            return Err(invalid(
                "token.retry_min",
                "must not exceed token.retry_max",
            ));
        }
        if self.min_lifetime > self.max_lifetime {
            return Err(invalid(
                "token.min_lifetime",
                "must not exceed token.max_lifetime",
            ));
        }
        Ok(())
    }
}
