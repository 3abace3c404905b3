//! Everything that talks to the upstream: the pooled HTTP client, the per-account token broker, and
//! the innermost service that forwards a classified request.

pub mod client;
pub mod forward;
pub mod token;

use std::sync::Arc;

pub use client::{UpstreamClient, UpstreamError};
pub use token::TokenBroker;

/// One upstream account as the data plane sees it: where to send, and whose token to use.
#[derive(Debug)]
pub struct AccountHandle {
    /// Shared, since every cache key of the account carries it.
    pub name: Arc<str>,
    /// The base URL without a trailing slash.
    pub base_url: String,
    pub broker: Arc<TokenBroker>,
}
