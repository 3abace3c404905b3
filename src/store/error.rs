//! What a store answers when it could not do its work: the error every state store speaks (the
//! shared Redis one, and the memory ones that share its traits), and [`Stored`], their results.
//! A leaf: the create protection's traits, the fleet's Redis parts and the layers all name it,
//! and it knows none of them.

use std::time::Duration;

/// A shared-state operation that did not complete: Redis refused, was unreachable, or too slow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The connection or the command failed (the client's own words).
    #[error("shared state unavailable: {0}")]
    Redis(String),
    #[error("shared state unavailable: no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// Commands fail at once for a moment after a failure, which this carries.
    #[error("shared state unavailable: {0}")]
    Resting(Box<StoreError>),
    /// A script or command answered what it never answers.
    #[error("shared state unavailable: unexpected answer: {0}")]
    Unexpected(String),
    #[error("shared state unavailable: cache invalidations: {0}")]
    Subscription(&'static str),
}

impl StoreError {
    /// The kind of failure, in one word (a span's `error.type`).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            StoreError::Redis(_) => "redis",
            StoreError::Timeout(_) => "timeout",
            StoreError::Resting(_) => "resting",
            StoreError::Unexpected(_) => "unexpected",
            StoreError::Subscription(_) => "subscription",
        }
    }

    /// What went wrong, without the common prefix (for `/readyz` and the log).
    pub(crate) fn detail(&self) -> String {
        match self {
            StoreError::Redis(e) | StoreError::Unexpected(e) => e.clone(),
            StoreError::Timeout(t) => {
                format!("no answer within {}", humantime::format_duration(*t))
            }
            StoreError::Resting(e) => e.detail(),
            StoreError::Subscription(e) => (*e).to_string(),
        }
    }
}

/// What a store's operation returns.
pub(crate) type Stored<T> = Result<T, StoreError>;
