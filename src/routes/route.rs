//! A route and its facts: what it does upstream ([`Kind`]), its method and path, the query
//! parameters it takes, how its cache entries are keyed, what a success makes stale. A [`Route`]
//! is a `Copy` pointer to its [`RouteSpec`]; the specs themselves live in the table (compiled) or
//! are built from the config (`[[routes]]`).

use http::Method;
use serde::Serialize;

use crate::cache::written::RoutePolicyConfig;

/// What a route does upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Only reads: may be cached.
    Read,
    /// Changes state: never cached; may make cached answers stale.
    Mutation,
    /// Spends money: its body is validated, and it is rate-limited and de-duplicated.
    Spend,
}

/// Which validated body a spend route takes (`protect::validate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpendBody {
    Disk,
    HostQuantity,
    HostRent,
}

/// What tells a read route's requests apart in the cache: the path parameter and the declared
/// query parameters, or the canonical form of the JSON body (a POST that only reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeySource {
    PathAndQuery,
    Body,
}

/// A route's method. Its own type, so that a spec has nothing to drop and the compiled ones can
/// be built in statics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verb {
    Get,
    Post,
    Put,
    Delete,
}

static METHODS: [Method; 4] = [Method::GET, Method::POST, Method::PUT, Method::DELETE];

/// Whether a route is cached when the config says nothing of it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Caching {
    /// Never (mutations and spends; a configured read without a cache table).
    Never,
    /// Cacheable, off unless `[cache.routes."<name>"]` turns it on.
    Off,
    /// Cacheable and on.
    On,
    /// A configured read route's `[routes.cache]` table: on, with these timings.
    Table(&'static RoutePolicyConfig),
}

/// Which entries a successful mutation makes wrong: a route's entry for the id the mutation names,
/// or all of the account's entries of a route.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stale {
    SameId(Route),
    WholeRoute(Route),
}

/// Every fact about one route.
#[derive(Debug)]
pub(crate) struct RouteSpec {
    /// The `route` metric label and what allow-lists name.
    pub(super) name: &'static str,
    pub(super) method: Verb,
    /// The path up to the parameter (the whole path when there is none), then the rest after it.
    pub(super) prefix: &'static str,
    pub(super) param: Option<&'static str>,
    pub(super) suffix: &'static str,
    pub(super) kind: Kind,
    /// The query parameters this route takes (upstream-api.md); any other is refused, and cache
    /// keys are built from these only.
    pub(super) query: &'static [&'static str],
    pub(super) body: Option<SpendBody>,
    pub(super) key: KeySource,
    pub(super) caching: Caching,
    /// Whether its answer carries a disk status (`[cache.routes] status_ttl` applies).
    pub(super) disk_status: bool,
    pub(super) invalidates: &'static [Stale],
    /// Its answers never leave this process (`host.one` carries the host password).
    pub(super) local_only: bool,
    /// Identical requests in flight are sent upstream once (idempotent mutations).
    pub(super) collapses: bool,
    /// Position in its table (the compiled routes first), for per-route arrays.
    pub(super) index: usize,
    /// The config key that declared it (`routes[0]`); `None` for a compiled route.
    pub(super) source: Option<&'static str>,
}

/// A route: a pointer to its facts. The name (`as_str`) is the `route` metric label and what
/// client allow-lists name.
#[derive(Clone, Copy)]
pub struct Route(pub(super) &'static RouteSpec);

impl Route {
    pub(crate) fn as_str(self) -> &'static str {
        self.0.name
    }

    pub fn method(self) -> &'static Method {
        &METHODS[self.0.method as usize]
    }

    pub(crate) fn kind(self) -> Kind {
        self.0.kind
    }

    /// The query parameters this route takes; any other is refused.
    pub(crate) fn query_params(self) -> &'static [&'static str] {
        self.0.query
    }

    /// Whether it spends money (validated body, rate limit, de-duplication).
    pub(crate) fn spends_money(self) -> bool {
        self.0.kind == Kind::Spend
    }

    /// The body schema of a spend route.
    pub(crate) fn spend_body(self) -> Option<SpendBody> {
        self.0.body
    }

    /// Whether a purchase of unknown outcome is settled by finding the disk it made in
    /// `disk.list` (disk creates: their answer names the disk, and the list shows its order).
    pub(crate) fn settles_by_disk_list(self) -> bool {
        self.0.body == Some(SpendBody::Disk)
    }

    /// Whether it may be cached at all.
    pub(crate) fn cacheable(self) -> bool {
        !matches!(self.0.caching, Caching::Never)
    }

    pub(crate) fn caching(self) -> &'static Caching {
        &self.0.caching
    }

    pub(crate) fn has_disk_status(self) -> bool {
        self.0.disk_status
    }

    /// Whether its cache entries are told apart by the request's JSON body.
    pub(crate) fn body_keyed(self) -> bool {
        self.0.key == KeySource::Body
    }

    /// What a success of this route makes stale.
    pub(crate) fn invalidates(self) -> &'static [Stale] {
        self.0.invalidates
    }

    /// Whether its answers must stay in this process's memory (never in Redis).
    pub(crate) fn local_only(self) -> bool {
        self.0.local_only
    }

    /// Whether identical requests in flight are sent upstream once.
    pub(crate) fn collapses_in_flight(self) -> bool {
        self.0.collapses
    }

    /// Position in its table, for per-route arrays.
    pub(crate) fn index(self) -> usize {
        self.0.index
    }

    /// The config key that declared it; `None` when compiled in.
    pub(crate) fn source(self) -> Option<&'static str> {
        self.0.source
    }

    /// Its path as written, `{param}` included.
    pub(crate) fn path_template(self) -> String {
        match self.0.param {
            Some(p) => format!("{}{{{p}}}{}", self.0.prefix, self.0.suffix),
            None => self.0.prefix.to_string(),
        }
    }

    /// An example path for this route, for docs and tests.
    pub fn example_path(self, param: &str) -> String {
        match self.0.param {
            Some(_) => format!("{}{param}{}", self.0.prefix, self.0.suffix),
            None => self.0.prefix.to_string(),
        }
    }

    /// The path parameter when `path` is this route's; `Some(None)` for a route without one.
    pub(super) fn matches(self, path: &str) -> Option<Option<&str>> {
        let rest = path.strip_prefix(self.0.prefix)?;
        if self.0.param.is_none() {
            return rest.is_empty().then_some(None);
        }
        let p = rest.strip_suffix(self.0.suffix)?;
        is_param(p).then_some(Some(p))
    }
}

impl PartialEq for Route {
    fn eq(&self, other: &Route) -> bool {
        std::ptr::eq(self.0, other.0) || self.0.name == other.0.name
    }
}

impl Eq for Route {}

impl std::hash::Hash for Route {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.name.hash(h);
    }
}

impl PartialOrd for Route {
    fn partial_cmp(&self, other: &Route) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Route {
    fn cmp(&self, other: &Route) -> std::cmp::Ordering {
        self.0.name.cmp(other.0.name)
    }
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Route {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest path parameter accepted; upstream ids are ten characters.
const MAX_PARAM: usize = 128;

pub(super) fn is_param(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PARAM
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
