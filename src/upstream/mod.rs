//! Everything that talks to the upstream: the pooled HTTP client, the per-account token broker, and
//! the innermost service that forwards a classified request.

pub(crate) mod client;
pub(crate) mod forward;
pub(crate) mod no_proxy;
pub(crate) mod token;

use std::sync::Arc;

pub(crate) use client::UpstreamClient;
pub(crate) use token::TokenBroker;

/// One upstream account as the data plane sees it: where to send, and whose token to use.
#[derive(Debug)]
pub(crate) struct AccountHandle {
    /// Shared, since every cache key of the account carries it.
    pub(crate) name: Arc<str>,
    /// The base URL without a trailing slash.
    pub(crate) base_url: String,
    pub(crate) broker: Arc<TokenBroker>,
}
