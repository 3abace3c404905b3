//! The gateway's edge: who may call, what a request may be, what reaches the upstream and what
//! comes back.
//!
//! - `anonymous`: callers without a key beside keyed clients get only the anonymous routes;
//! - `auth`: client keys, allow-lists, and client credentials never travelling on;
//! - `capacity`: slots and connections shared fairly, stalled and idle peers let go;
//! - `configured_routes`: `[[routes]]` from the config, forwarded, cached and refused like any;
//! - `forwarding`: every route reaches the simulator, and its answer comes back unchanged;
//! - `hostile_callers`: smuggling, header floods, odd targets and HTTP/2 floods on the wire;
//! - `query_parameters`: each route takes only its declared query parameters;
//! - `request_limits`: body size, concurrency, deadlines, stalls, and paths that try to escape;
//! - `route_matching_properties`: route classification over arbitrary requests (proptest);
//! - `tls`: TLS listeners, ALPN, client certificates and certificate reloads;
//! - `upstream_trust`: the upstream trusted no further than needed (answer size, tokens, Retry-After).

mod anonymous;
mod auth;
mod capacity;
mod configured_routes;
mod forwarding;
mod hostile_callers;
mod query_parameters;
mod request_limits;
mod route_matching_properties;
mod tls;
mod upstream_trust;
