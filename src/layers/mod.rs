//! The gateway's middleware, one concern per module, composed in request order by
//! [`crate::stack::build`]. Layers hand each other what they learned through request and response
//! extensions (the types below), never through shared global state.

pub(crate) mod access_log;
pub(crate) mod auth;
pub(crate) mod body_limit;
pub(crate) mod budget;
pub(crate) mod cache;
pub(crate) mod cache_hit;
pub(crate) mod client_limit;
pub(crate) mod dedup;
pub(crate) mod rate_limit;
pub(crate) mod request_id;
pub(crate) mod rescue;
pub(crate) mod route;
pub(crate) mod token;
pub(crate) mod token_lease;
pub(crate) mod validate;

use std::sync::Arc;

use crate::secret::Secret;

/// The request's id (`X-Request-Id`, kept or generated); the `traceId` of the gateway's own errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RequestId(pub Arc<str>);

impl RequestId {
    /// The request's id, set by the request-id layer (empty before it).
    pub(crate) fn of<B>(req: &http::Request<B>) -> RequestId {
        req.extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// The authenticated client's name, on the answer for the access log (never its key).
#[derive(Debug, Clone)]
pub(crate) struct ClientName(pub Arc<str>);

/// The account an answer concerns, on answers whose access line names it (a token lease).
#[derive(Debug, Clone)]
pub(crate) struct AccountName(pub Arc<str>);

/// Who is calling, set by the auth layer: the client's name and the upstream account it uses.
/// One entry for both, since every entry in a request's extensions is an allocation.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) client: Arc<str>,
    pub(crate) account: Arc<crate::upstream::AccountHandle>,
}

/// Marks an answer made because the upstream call broke after the request was sent (timeout,
/// reset, not JSON): the upstream may have carried it out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutcomeUnknown;

/// The upstream token to send with this request, set by the token layer.
#[derive(Clone)]
pub(crate) struct UpstreamToken(pub Secret);
