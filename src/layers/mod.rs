//! The gateway's middleware, one concern per module, composed in request order by
//! [`crate::stack::build`]. Layers hand each other what they learned as typed values (see [`crate::admitted`]),
//! never through shared global state.

pub(crate) mod access_log;
pub(crate) mod admit;
pub(crate) mod auth;
pub(crate) mod body_limit;
pub(crate) mod budget;
pub(crate) mod cache;
pub(crate) mod cache_hit;
pub(crate) mod client_limit;
pub(crate) mod collapse;
pub(crate) mod dedup;
pub(crate) mod invalidate;
pub(crate) mod ledger;
pub(crate) mod rate_limit;
pub(crate) mod request_id;
pub(crate) mod switch;
#[cfg(test)]
pub(crate) mod testing;
pub(crate) mod token;
pub(crate) mod token_lease;
pub(crate) mod trace;
pub(crate) mod validate;
