//! What a broker exchanges and for how long: the account's credentials as last (re)loaded, and
//! the lifetimes the upstream's documentation gives. Knows nothing of the broker itself.

use std::time::Duration;

use crate::config::Credentials;
use crate::secret::Secret;

/// The route label of `getToken` calls in the upstream metrics.
pub(crate) const TOKEN_ROUTE: &str = "auth.token";

/// When the upstream does not say how long a token lives: its documented 30 minutes.
pub(super) const DEFAULT_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// How long a lease of a fixed token lasts: its expiry is not known, and whoever keeps it may
/// replace it, so a client asks again this often.
pub(crate) const FIXED_LEASE: Duration = Duration::from_secs(60);

/// How long a refused fixed token stays refused: until a reload replaces it.
pub(super) const FIXED_REFUSED: Duration = Duration::from_secs(365 * 24 * 3600);

/// The account's credentials, as the last (re)load read them.
#[derive(Clone, PartialEq)]
pub(super) enum Source {
    Exchange { uuid: Secret, secret: Secret },
    Fixed(Secret),
}

impl Source {
    pub(super) fn of(credentials: &Credentials) -> Option<Source> {
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
