//! The route table: every upstream call the gateway forwards, by name (CONTRACT.md, "Clients"),
//! and every fact about each one. Other modules ask a [`Route`] what it is (read, mutation or
//! spend), which query parameters it takes, how its cache entries are keyed, what a success makes
//! stale, whether its answers may leave the process; none of them matches on route names.
//!
//! A request is classified once, at the edge, from its method and raw path. Only exact matches of the
//! table are routes; a path parameter is one segment of `[A-Za-z0-9_-]`, so `..`, `//`, `%2F`,
//! backslashes and every other way out of the table simply match nothing and are answered 404.
//! Literals match in their own letter case only; since a configured route may not overlap another
//! route or a reserved path in any case, a request in another case matches no route at all, even
//! where the upstream would ignore case.
//! The upstream host never comes from the request: the forwarded URI is the account's base URL
//! plus the matched path.
//!
//! The compiled routes are statics. `[[routes]]` entries of the config add routes the upstream
//! published after a release ([`RouteTable::with_configured`]): each is built once per config load
//! and leaked, so that a route stays a `Copy` pointer whatever config made it. That is bounded by
//! the config (a reload that rebuilds them leaks a few hundred bytes; `[[routes]]` itself only
//! changes with a restart). Routes compare, hash and order by name.

mod configured;
mod own;
mod query;
mod route;
mod table;

pub use route::Route;
pub use table::{RouteMatch, classify};

pub(crate) use configured::{RouteConfig, no_configured, serialize_configured};
pub(crate) use own::GatewayRoute;
pub(crate) use query::check_query;
pub(crate) use route::{Caching, Kind, SpendBody, Stale};
pub(crate) use table::RouteTable;
