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

use std::sync::Arc;

use http::Method;
use serde::{Deserialize, Serialize};

use crate::cache::written::RoutePolicyConfig;
use crate::config_error::ConfigError;

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
enum Verb {
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
    name: &'static str,
    method: Verb,
    /// The path up to the parameter (the whole path when there is none), then the rest after it.
    prefix: &'static str,
    param: Option<&'static str>,
    suffix: &'static str,
    kind: Kind,
    /// The query parameters this route takes (upstream-api.md); any other is refused, and cache
    /// keys are built from these only.
    query: &'static [&'static str],
    body: Option<SpendBody>,
    key: KeySource,
    caching: Caching,
    /// Whether its answer carries a disk status (`[cache.routes] status_ttl` applies).
    disk_status: bool,
    invalidates: &'static [Stale],
    /// Its answers never leave this process (`host.one` carries the host password).
    local_only: bool,
    /// Identical requests in flight are sent upstream once (idempotent mutations).
    collapses: bool,
    /// Position in its table (the compiled routes first), for per-route arrays.
    index: usize,
    /// The config key that declared it (`routes[0]`); `None` for a compiled route.
    source: Option<&'static str>,
}

/// A compiled route's spec with the facts most routes share; the statics below set the rest.
const fn spec(
    index: usize,
    name: &'static str,
    method: Verb,
    prefix: &'static str,
    param: Option<&'static str>,
    kind: Kind,
) -> RouteSpec {
    RouteSpec {
        name,
        method,
        prefix,
        param,
        suffix: "",
        kind,
        query: &[],
        body: None,
        key: KeySource::PathAndQuery,
        caching: match kind {
            Kind::Read => Caching::Off,
            _ => Caching::Never,
        },
        disk_status: false,
        invalidates: &[],
        local_only: false,
        collapses: matches!(kind, Kind::Mutation),
        index,
        source: None,
    }
}

use Kind::{Mutation, Read, Spend};
use Stale::{SameId, WholeRoute};

static DISK_INFO: RouteSpec = RouteSpec {
    caching: Caching::On,
    disk_status: true,
    ..spec(
        0,
        "disk.info",
        Verb::Get,
        "/v1/PveMachineHardDisk/open/info/",
        Some("id"),
        Read,
    )
};
static DISK_CREATE: RouteSpec = RouteSpec {
    body: Some(SpendBody::Disk),
    invalidates: &[
        WholeRoute(Route::DiskList),
        WholeRoute(Route::DiskMemoryTotal),
    ],
    ..spec(
        1,
        "disk.create",
        Verb::Post,
        "/v1/PveMachineHardDisk/open/create",
        None,
        Spend,
    )
};
static DISK_LIST: RouteSpec = RouteSpec {
    key: KeySource::Body,
    ..spec(
        2,
        "disk.list",
        Verb::Post,
        "/v1/PveMachineHardDisk/open/getList",
        None,
        Read,
    )
};
static DISK_MOUNT: RouteSpec = RouteSpec {
    invalidates: &[SameId(Route::DiskInfo), WholeRoute(Route::DiskList)],
    ..spec(
        3,
        "disk.mount",
        Verb::Post,
        "/v1/PveMachineHardDisk/open/pveCreate",
        None,
        Mutation,
    )
};
static DISK_UPDATE_STATUS: RouteSpec = RouteSpec {
    invalidates: &[
        SameId(Route::DiskInfo),
        WholeRoute(Route::DiskList),
        WholeRoute(Route::DiskMemoryTotal),
    ],
    ..spec(
        4,
        "disk.update_status",
        Verb::Put,
        "/v1/PveMachineHardDisk/open/updateStatus",
        None,
        Mutation,
    )
};
static DISK_MEMORY_TOTAL: RouteSpec = spec(
    5,
    "disk.memory_total",
    Verb::Get,
    "/v1/PveMachineHardDisk/open/memoryTotal/",
    Some("area"),
    Read,
);
static HOST_IMAGE: RouteSpec = spec(6, "host.image", Verb::Get, "/v1/pve/open/image", None, Read);
static HOST_PACKAGE: RouteSpec = spec(
    7,
    "host.package",
    Verb::Get,
    "/v1/pve/open/packAge/",
    Some("type"),
    Read,
);
static HOST_CREATE_QUANTITY: RouteSpec = RouteSpec {
    body: Some(SpendBody::HostQuantity),
    invalidates: &[WholeRoute(Route::HostPage)],
    ..spec(
        8,
        "host.create_quantity",
        Verb::Post,
        "/v1/pve/open/createquantity",
        None,
        Spend,
    )
};
static HOST_CREATE_RENT: RouteSpec = RouteSpec {
    body: Some(SpendBody::HostRent),
    invalidates: &[WholeRoute(Route::HostPage)],
    ..spec(
        9,
        "host.create_rent",
        Verb::Post,
        "/v1/pve/open/createRent",
        None,
        Spend,
    )
};
static HOST_OPERATE: RouteSpec = RouteSpec {
    query: &["type"],
    invalidates: &[SameId(Route::HostOne), WholeRoute(Route::HostPage)],
    ..spec(
        10,
        "host.operate",
        Verb::Get,
        "/v1/pve/open/operate/",
        Some("id"),
        Mutation,
    )
};
static HOST_REBOOT: RouteSpec = RouteSpec {
    invalidates: &[SameId(Route::HostOne), WholeRoute(Route::HostPage)],
    ..spec(
        11,
        "host.reboot",
        Verb::Get,
        "/v1/pve/open/reboot/",
        Some("id"),
        Mutation,
    )
};
static HOST_ONE: RouteSpec = RouteSpec {
    local_only: true,
    ..spec(
        12,
        "host.one",
        Verb::Get,
        "/v1/pve/open/one/",
        Some("id"),
        Read,
    )
};
static HOST_PAGE: RouteSpec = RouteSpec {
    query: &["page", "pageSize"],
    ..spec(
        13,
        "host.page",
        Verb::Get,
        "/v1/pve/open/mypage",
        None,
        Read,
    )
};
static HOST_DELETE: RouteSpec = RouteSpec {
    // Deleting a host unmounts its disks.
    invalidates: &[
        SameId(Route::HostOne),
        WholeRoute(Route::HostPage),
        WholeRoute(Route::DiskInfo),
        WholeRoute(Route::DiskList),
    ],
    ..spec(
        14,
        "host.delete",
        Verb::Delete,
        "/v1/pve/open/delete/",
        Some("id"),
        Mutation,
    )
};

/// The compiled routes, in index order.
static COMPILED: [Route; 15] = [
    Route::DiskInfo,
    Route::DiskCreate,
    Route::DiskList,
    Route::DiskMount,
    Route::DiskUpdateStatus,
    Route::DiskMemoryTotal,
    Route::HostImage,
    Route::HostPackage,
    Route::HostCreateQuantity,
    Route::HostCreateRent,
    Route::HostOperate,
    Route::HostReboot,
    Route::HostOne,
    Route::HostPage,
    Route::HostDelete,
];

/// A route: a pointer to its facts. The name (`as_str`) is the `route` metric label and what
/// client allow-lists name.
#[derive(Clone, Copy)]
pub struct Route(&'static RouteSpec);

/// The compiled routes, named as the variants they once were so that call sites read the same.
#[allow(non_upper_case_globals)]
impl Route {
    pub(crate) const DiskInfo: Route = Route(&DISK_INFO);
    pub const DiskCreate: Route = Route(&DISK_CREATE);
    pub(crate) const DiskList: Route = Route(&DISK_LIST);
    pub(crate) const DiskMount: Route = Route(&DISK_MOUNT);
    pub(crate) const DiskUpdateStatus: Route = Route(&DISK_UPDATE_STATUS);
    pub(crate) const DiskMemoryTotal: Route = Route(&DISK_MEMORY_TOTAL);
    pub(crate) const HostImage: Route = Route(&HOST_IMAGE);
    pub(crate) const HostPackage: Route = Route(&HOST_PACKAGE);
    pub const HostCreateQuantity: Route = Route(&HOST_CREATE_QUANTITY);
    pub const HostCreateRent: Route = Route(&HOST_CREATE_RENT);
    pub(crate) const HostOperate: Route = Route(&HOST_OPERATE);
    pub(crate) const HostReboot: Route = Route(&HOST_REBOOT);
    pub(crate) const HostOne: Route = Route(&HOST_ONE);
    pub(crate) const HostPage: Route = Route(&HOST_PAGE);
    pub(crate) const HostDelete: Route = Route(&HOST_DELETE);
}

impl Route {
    pub(crate) fn as_str(self) -> &'static str {
        self.0.name
    }

    /// The compiled routes (a config's own are in its [`RouteTable`]).
    pub fn all() -> impl Iterator<Item = Route> {
        COMPILED.iter().copied()
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
    fn matches(self, path: &str) -> Option<Option<&str>> {
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

/// A `[[routes]]` entry as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteConfig {
    pub(crate) name: String,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) kind: String,
    /// The query parameters it takes; none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) query: Vec<String>,
    /// A read route's cache policy (`[routes.cache]`, keys as in `[cache.routes."<name>"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cache: Option<RoutePolicyConfig>,
}

/// The routes one config runs with: the compiled ones, then its `[[routes]]`.
#[derive(Debug, Clone)]
pub(crate) struct RouteTable {
    routes: Vec<Route>,
}

impl Default for RouteTable {
    fn default() -> RouteTable {
        RouteTable {
            routes: COMPILED.to_vec(),
        }
    }
}

/// Whether a table holds only the compiled routes (then `check-config` shows no `routes`).
pub(crate) fn no_configured(t: &Arc<RouteTable>) -> bool {
    t.routes.len() == COMPILED.len()
}

/// The configured routes, as `[[routes]]` entries (`check-config` shows them).
pub(crate) fn serialize_configured<S: serde::Serializer>(
    t: &Arc<RouteTable>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let configured: Vec<Route> = t.iter().filter(|r| r.source().is_some()).collect();
    let mut seq = s.serialize_seq(Some(configured.len()))?;
    for r in configured {
        seq.serialize_element(&serde_json::json!({
            "name": r.as_str(),
            "method": r.method().as_str(),
            "path": r.path_template(),
            "kind": if r.kind() == Kind::Read { "read" } else { "mutation" },
            "query": r.query_params(),
            "cached": matches!(r.caching(), Caching::Table(_)),
        }))?;
    }
    seq.end()
}

fn invalid(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// A route name: dot-separated words of lower-case letters, digits and `_`, each starting with a
/// letter (`billing.balance`), as the compiled names are.
fn is_route_name(name: &str) -> bool {
    name.len() <= 64
        && name.contains('.')
        && name.split('.').all(|w| {
            w.starts_with(|c: char| c.is_ascii_lowercase())
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// A path template's segments; `{x}` is the parameter. `Err` says what is wrong.
fn template_segments(path: &str) -> Result<Vec<&str>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("expected a path starting with /".into());
    };
    let segs: Vec<&str> = rest.split('/').collect();
    for s in &segs {
        let inner = s.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
        if !is_param(inner.unwrap_or(s)) {
            return Err(format!(
                "segment {s:?}: expected letters, digits, _ and - (or one {{param}} of those)"
            ));
        }
    }
    if segs.iter().filter(|s| s.starts_with('{')).count() > 1 {
        return Err("expected at most one {param} segment".into());
    }
    Ok(segs)
}

/// Whether two template segments can match one path segment: a `{param}` matches any, and
/// literals compare in any letter case (an upstream that ignores case would take
/// `/v1/pve/open/CreateRent` for the spend route `createRent`).
fn segment_overlaps(a: &str, b: &str) -> bool {
    a.starts_with('{') || b.starts_with('{') || a.eq_ignore_ascii_case(b)
}

/// Whether two templates' segments can match one path.
fn overlaps(a: &[&str], b: &[&str]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| segment_overlaps(x, y))
}

/// Paths the gateway keeps for itself or never forwards, as leading segments: `/_gateway` and
/// `/v1/auth`, and everything under them.
const RESERVED: [&[&str]; 2] = [&["_gateway"], &["v1", "auth"]];

/// The reserved prefix a template's segments can match, if any.
fn reserved_overlap(segs: &[&str]) -> Option<&'static [&'static str]> {
    RESERVED
        .into_iter()
        .find(|p| segs.len() >= p.len() && p.iter().zip(segs).all(|(x, y)| segment_overlaps(x, y)))
}

/// Whether a request's raw path is under a reserved prefix, in any letter case. The route table
/// never matches one, whatever its routes: the config check refuses such templates, and this
/// keeps it so should that check ever miss one.
fn is_reserved_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    RESERVED.iter().any(|p| {
        let mut segs = rest.split('/');
        p.iter()
            .all(|x| segs.next().is_some_and(|s| s.eq_ignore_ascii_case(x)))
    })
}

impl RouteTable {
    /// The compiled routes and `configured` (the config's `[[routes]]`); a bad entry is an error
    /// naming its key (`routes[0].path`).
    pub(crate) fn with_configured(configured: &[RouteConfig]) -> Result<RouteTable, ConfigError> {
        let mut table = RouteTable::default();
        let mut templates: Vec<(String, Route)> = table
            .routes
            .iter()
            .map(|r| (r.path_template(), *r))
            .collect();
        for (i, c) in configured.iter().enumerate() {
            let key = format!("routes[{i}]");
            if !is_route_name(&c.name) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!(
                        "{:?}: expected dot-separated lower-case words such as \"billing.balance\"",
                        c.name
                    ),
                ));
            }
            if c.name.starts_with("gateway.") {
                return Err(invalid(
                    format!("{key}.name"),
                    "gateway.* names the gateway's own endpoints",
                ));
            }
            if table.by_name(&c.name).is_some() {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("route {:?} already exists", c.name),
                ));
            }
            let method = match c.method.as_str() {
                "GET" => Verb::Get,
                "POST" => Verb::Post,
                "PUT" => Verb::Put,
                "DELETE" => Verb::Delete,
                other => {
                    return Err(invalid(
                        format!("{key}.method"),
                        format!("{other:?}: expected GET, POST, PUT or DELETE"),
                    ));
                }
            };
            let segs = template_segments(&c.path).map_err(|m| invalid(format!("{key}.path"), m))?;
            if let Some(p) = reserved_overlap(&segs) {
                return Err(invalid(
                    format!("{key}.path"),
                    format!(
                        "{:?} can match a path under /{} (in some letter case or through its \
                         {{param}}), which is never forwarded",
                        c.path,
                        p.join("/")
                    ),
                ));
            }
            for (t, r) in &templates {
                if overlaps(&segs, &template_segments(t).unwrap_or_default()) {
                    return Err(invalid(
                        format!("{key}.path"),
                        format!(
                            "{:?} overlaps route {r}'s path {t:?} (in some letter case or \
                             through a {{param}})",
                            c.path
                        ),
                    ));
                }
            }
            let kind = match c.kind.as_str() {
                "read" => Kind::Read,
                "mutation" => Kind::Mutation,
                other => {
                    return Err(invalid(
                        format!("{key}.kind"),
                        format!(
                            "{other:?}: expected \"read\" or \"mutation\" (spend routes are compiled in)"
                        ),
                    ));
                }
            };
            if kind == Kind::Mutation && c.cache.is_some() {
                return Err(invalid(
                    format!("{key}.cache"),
                    "a mutation is never cached",
                ));
            }
            if c.query.len() > 32 {
                return Err(invalid(
                    format!("{key}.query"),
                    "expected at most 32 parameters",
                ));
            }
            for (j, q) in c.query.iter().enumerate() {
                if !is_param(q) || c.query[..j].contains(q) {
                    return Err(invalid(
                        format!("{key}.query"),
                        format!("{q:?}: expected distinct names of letters, digits, _ and -"),
                    ));
                }
            }
            let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
            let (prefix, param, suffix) = match c.path.find('{') {
                Some(open) => {
                    let close = open + c.path[open..].find('}').unwrap_or(0);
                    (
                        leak(c.path[..open].to_string()),
                        Some(leak(c.path[open + 1..close].to_string())),
                        leak(c.path[close + 1..].to_string()),
                    )
                }
                None => (leak(c.path.clone()), None, ""),
            };
            let query: Vec<&'static str> = c.query.iter().map(|q| leak(q.clone())).collect();
            let spec = RouteSpec {
                name: leak(c.name.clone()),
                method,
                prefix,
                param,
                suffix,
                kind,
                query: Box::leak(query.into_boxed_slice()),
                body: None,
                // A POST or PUT that only reads is told apart by its body, as `disk.list` is.
                key: if matches!(method, Verb::Get | Verb::Delete) {
                    KeySource::PathAndQuery
                } else {
                    KeySource::Body
                },
                caching: match &c.cache {
                    Some(t) => Caching::Table(Box::leak(Box::new(t.clone()))),
                    None if kind == Kind::Read => Caching::Off,
                    None => Caching::Never,
                },
                disk_status: false,
                invalidates: &[],
                local_only: false,
                // What an unknown mutation does is not known: each request goes upstream.
                collapses: false,
                index: table.routes.len(),
                source: Some(leak(key)),
            };
            let route = Route(Box::leak(Box::new(spec)));
            templates.push((c.path.clone(), route));
            table.routes.push(route);
        }
        Ok(table)
    }

    /// Whether two tables route alike: the same routes, methods, paths, kinds and query
    /// parameters, and the same routes cacheable (a `[routes.cache]` table's timings aside: they
    /// apply on reload as `[cache.routes]` do).
    pub(crate) fn routes_alike(&self, other: &RouteTable) -> bool {
        let shape = |r: Route| {
            (
                r.as_str(),
                r.method(),
                r.path_template(),
                r.kind(),
                r.query_params(),
                r.cacheable(),
            )
        };
        self.routes.len() == other.routes.len()
            && self
                .iter()
                .zip(other.iter())
                .all(|(a, b)| shape(a) == shape(b))
    }

    pub(crate) fn by_name(&self, name: &str) -> Option<Route> {
        self.routes.iter().copied().find(|r| r.as_str() == name)
    }

    pub(crate) fn names(&self) -> Vec<&'static str> {
        self.routes.iter().map(|r| r.as_str()).collect()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = Route> + '_ {
        self.routes.iter().copied()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.routes.len()
    }

    /// Classifies a request by method and raw (still percent-encoded) path. Literal segments
    /// match in their own case only, and a path under `/_gateway` or `/v1/auth` is no route in
    /// any case.
    pub(crate) fn classify(&self, method: &Method, path: &str) -> Option<RouteMatch> {
        if is_reserved_path(path) {
            return None;
        }
        self.routes.iter().find_map(|r| {
            if r.method() != method {
                return None;
            }
            let param = r.matches(path)?;
            Some(RouteMatch {
                route: *r,
                param: param.map(Arc::from),
            })
        })
    }

    /// An unknown route name as a config error naming `key`.
    pub(crate) fn unknown(&self, key: String, name: &str) -> ConfigError {
        invalid(
            key,
            format!("unknown route {name:?}; expected one of {:?}", self.names()),
        )
    }
}

/// Classifies a request against the compiled routes only.
pub fn classify(method: &Method, path: &str) -> Option<RouteMatch> {
    static TABLE: std::sync::LazyLock<RouteTable> = std::sync::LazyLock::new(RouteTable::default);
    TABLE.classify(method, path)
}

/// A classified request: which route, and its path parameter (disk id, host id, area, type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub route: Route,
    /// Shared, since it often becomes part of a cache key as it is.
    pub param: Option<Arc<str>>,
}

/// The longest path parameter accepted; upstream ids are ten characters.
const MAX_PARAM: usize = 128;

fn is_param(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PARAM
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The longest parameter name shown back in an error.
const MAX_SHOWN: usize = 64;

/// Checks a request's raw query against the parameters `route` declares: each `name=value` (or
/// bare `name`) must name a declared parameter, at most once, and names are compared as sent (an
/// encoded name matches nothing). An empty query (`?`) is no parameter. `Err` says what is wrong,
/// naming the parameter. Allocates only on error.
pub(crate) fn check_query(route: Route, query: Option<&str>) -> Result<(), String> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(());
    };
    let declared = route.query_params();
    // A bitmask of the declared parameters seen: routes declare at most a few.
    let mut seen = 0u32;
    for pair in query.split('&') {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        if name.is_empty() {
            return Err(format!(
                "empty query parameter name in {:?}",
                query.chars().take(MAX_SHOWN).collect::<String>()
            ));
        }
        let Some(i) = declared.iter().position(|d| *d == name) else {
            let shown: String = name.chars().take(MAX_SHOWN).collect();
            return Err(if declared.is_empty() {
                format!(
                    "undeclared query parameter {shown:?}: route {route} takes no query parameters"
                )
            } else {
                format!(
                    "undeclared query parameter {shown:?}: route {route} takes only {}",
                    declared.join(", ")
                )
            });
        };
        if seen & (1 << i) != 0 {
            return Err(format!(
                "query parameter {name:?} given more than once: send it once"
            ));
        }
        seen |= 1 << i;
    }
    Ok(())
}

/// The gateway's own endpoints on the data plane (`/_gateway/...`): served by the gateway itself,
/// never forwarded, and not routes of the table above (no allow-list names them, nothing caches
/// them). The name is the `route` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum GatewayRoute {
    /// `GET /_gateway/token`: a lease of the account's upstream token.
    TokenLease,
    /// `POST /_gateway/token/rejected`: the upstream refused a leased token.
    TokenRejected,
}

impl GatewayRoute {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GatewayRoute::TokenLease => "gateway.token_lease",
            GatewayRoute::TokenRejected => "gateway.token_rejected",
        }
    }

    /// Exact method and path only, as for the table's routes.
    pub(crate) fn classify(method: &Method, path: &str) -> Option<GatewayRoute> {
        match (method, path) {
            (&Method::GET, "/_gateway/token") => Some(GatewayRoute::TokenLease),
            (&Method::POST, "/_gateway/token/rejected") => Some(GatewayRoute::TokenRejected),
            _ => None,
        }
    }

    /// The gateway's own endpoints take no query parameters (checked, like a route's, once the
    /// caller is known).
    pub(crate) fn check_query(self, query: Option<&str>) -> Result<(), String> {
        match query {
            Some(q) if !q.is_empty() => {
                Err(format!("route {} takes no query parameters", self.as_str()))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_classifies_its_own_example() {
        let table = RouteTable::default();
        for (i, r) in Route::all().enumerate() {
            let m = classify(r.method(), &r.example_path("AbC123xyz9")).unwrap();
            assert_eq!(m.route, r);
            assert_eq!(table.by_name(r.as_str()), Some(r));
            assert_eq!(r.index(), i, "{r}");
        }
        assert_eq!(table.by_name("disk.nope"), None);
    }

    /// Every compiled route's facts, as README's tables state them.
    #[test]
    fn compiled_facts() {
        let row = |r: Route| {
            let stale: Vec<String> = r
                .invalidates()
                .iter()
                .map(|s| match s {
                    Stale::SameId(x) => format!("{x}:id"),
                    Stale::WholeRoute(x) => x.to_string(),
                })
                .collect();
            format!(
                "{} {} {} {:?} q={:?} cache={} body_keyed={} local={} collapses={} spend={:?} stale={}",
                r,
                r.method(),
                r.path_template(),
                r.kind(),
                r.query_params(),
                match r.caching() {
                    Caching::Never => "never",
                    Caching::Off => "off",
                    Caching::On => "on",
                    Caching::Table(_) => "table",
                },
                r.body_keyed(),
                r.local_only(),
                r.collapses_in_flight(),
                r.spend_body(),
                stale.join(","),
            )
        };
        let got: Vec<String> = Route::all().map(row).collect();
        let want = [
            "disk.info GET /v1/PveMachineHardDisk/open/info/{id} Read q=[] cache=on body_keyed=false local=false collapses=false spend=None stale=",
            "disk.create POST /v1/PveMachineHardDisk/open/create Spend q=[] cache=never body_keyed=false local=false collapses=false spend=Some(Disk) stale=disk.list,disk.memory_total",
            "disk.list POST /v1/PveMachineHardDisk/open/getList Read q=[] cache=off body_keyed=true local=false collapses=false spend=None stale=",
            "disk.mount POST /v1/PveMachineHardDisk/open/pveCreate Mutation q=[] cache=never body_keyed=false local=false collapses=true spend=None stale=disk.info:id,disk.list",
            "disk.update_status PUT /v1/PveMachineHardDisk/open/updateStatus Mutation q=[] cache=never body_keyed=false local=false collapses=true spend=None stale=disk.info:id,disk.list,disk.memory_total",
            "disk.memory_total GET /v1/PveMachineHardDisk/open/memoryTotal/{area} Read q=[] cache=off body_keyed=false local=false collapses=false spend=None stale=",
            "host.image GET /v1/pve/open/image Read q=[] cache=off body_keyed=false local=false collapses=false spend=None stale=",
            "host.package GET /v1/pve/open/packAge/{type} Read q=[] cache=off body_keyed=false local=false collapses=false spend=None stale=",
            "host.create_quantity POST /v1/pve/open/createquantity Spend q=[] cache=never body_keyed=false local=false collapses=false spend=Some(HostQuantity) stale=host.page",
            "host.create_rent POST /v1/pve/open/createRent Spend q=[] cache=never body_keyed=false local=false collapses=false spend=Some(HostRent) stale=host.page",
            "host.operate GET /v1/pve/open/operate/{id} Mutation q=[\"type\"] cache=never body_keyed=false local=false collapses=true spend=None stale=host.one:id,host.page",
            "host.reboot GET /v1/pve/open/reboot/{id} Mutation q=[] cache=never body_keyed=false local=false collapses=true spend=None stale=host.one:id,host.page",
            "host.one GET /v1/pve/open/one/{id} Read q=[] cache=off body_keyed=false local=true collapses=false spend=None stale=",
            "host.page GET /v1/pve/open/mypage Read q=[\"page\", \"pageSize\"] cache=off body_keyed=false local=false collapses=false spend=None stale=",
            "host.delete DELETE /v1/pve/open/delete/{id} Mutation q=[] cache=never body_keyed=false local=false collapses=true spend=None stale=host.one:id,host.page,disk.info,disk.list",
        ];
        assert_eq!(got, want);
        assert!(Route::DiskInfo.has_disk_status());
        assert_eq!(
            Route::all().filter(|r| r.has_disk_status()).count(),
            1,
            "only disk.info answers a disk status"
        );
    }

    fn configured(toml_text: &str) -> Result<RouteTable, ConfigError> {
        #[derive(Deserialize)]
        struct File {
            routes: Vec<RouteConfig>,
        }
        RouteTable::with_configured(&toml::from_str::<File>(toml_text).unwrap().routes)
    }

    const BALANCE: &str = "[[routes]]\nname = \"billing.balance\"\nmethod = \"GET\"\npath = \"/v1/pve/open/balance/{id}\"\nkind = \"read\"\n";

    #[test]
    fn a_configured_route_is_looked_up_and_classified() {
        let t = configured(&format!(
            "{BALANCE}[[routes]]\nname = \"billing.pay\"\nmethod = \"POST\"\npath = \"/v1/pve/open/pay/{{id}}/now\"\nkind = \"mutation\"\nquery = [\"a\", \"b\"]\n"
        ))
        .unwrap();
        assert_eq!(t.len(), 17);
        let b = t.by_name("billing.balance").unwrap();
        assert_eq!(
            (b.index(), b.kind(), b.source()),
            (15, Kind::Read, Some("routes[0]"))
        );
        // Cacheable, but off without a cache table.
        assert!(b.cacheable() && matches!(b.caching(), Caching::Off));
        let m = t
            .classify(&Method::GET, "/v1/pve/open/balance/Ab-1")
            .unwrap();
        assert_eq!((m.route, m.param.as_deref()), (b, Some("Ab-1")));
        assert!(
            t.classify(&Method::POST, "/v1/pve/open/balance/Ab-1")
                .is_none()
        );
        assert!(
            t.classify(&Method::GET, "/v1/pve/open/balance/a/b")
                .is_none()
        );
        assert!(
            t.classify(&Method::GET, "/v1/pve/open/balance/..")
                .is_none()
        );
        let p = t.by_name("billing.pay").unwrap();
        let m = t
            .classify(&Method::POST, "/v1/pve/open/pay/x1/now")
            .unwrap();
        assert_eq!((m.route, m.param.as_deref()), (p, Some("x1")));
        assert!(
            t.classify(&Method::POST, "/v1/pve/open/pay/x1/later")
                .is_none()
        );
        assert!(!p.cacheable() && !p.collapses_in_flight() && !p.spends_money());
        assert!(check_query(p, Some("a=1&b=2")).is_ok());
        assert!(check_query(p, Some("c=1")).is_err());
        // Compiled routes are classified as before, and the default table knows none of these.
        assert_eq!(
            t.classify(&Method::GET, "/v1/pve/open/one/x")
                .unwrap()
                .route,
            Route::HostOne
        );
        assert!(RouteTable::default().by_name("billing.balance").is_none());
        assert!(t.routes_alike(&configured(BALANCE).and_then(|_| configured(&format!(
            "{BALANCE}[[routes]]\nname = \"billing.pay\"\nmethod = \"POST\"\npath = \"/v1/pve/open/pay/{{id}}/now\"\nkind = \"mutation\"\nquery = [\"a\", \"b\"]\n"
        ))).unwrap()));
        assert!(!t.routes_alike(&RouteTable::default()));
    }

    #[test]
    fn bad_configured_routes_name_their_key() {
        let entry = |name: &str, method: &str, path: &str, kind: &str, extra: &str| {
            format!(
                "[[routes]]\nname = {name:?}\nmethod = {method:?}\npath = {path:?}\nkind = {kind:?}\n{extra}"
            )
        };
        let ok_path = "/v1/pve/open/balance/{id}";
        for (text, key) in [
            (
                entry("disk.info", "GET", ok_path, "read", ""),
                "routes[0].name",
            ),
            (
                entry("Billing.Balance", "GET", ok_path, "read", ""),
                "routes[0].name",
            ),
            (
                entry("balance", "GET", ok_path, "read", ""),
                "routes[0].name",
            ),
            (
                entry("gateway.x", "GET", ok_path, "read", ""),
                "routes[0].name",
            ),
            (
                entry("billing.balance", "PATCH", ok_path, "read", ""),
                "routes[0].method",
            ),
            (
                entry("billing.balance", "get", ok_path, "read", ""),
                "routes[0].method",
            ),
            (
                entry("billing.balance", "GET", "v1/x", "read", ""),
                "routes[0].path",
            ),
            (
                entry("billing.balance", "GET", "/v1/x/{a}/{b}", "read", ""),
                "routes[0].path",
            ),
            (
                entry("billing.balance", "GET", "/v1/x/../y", "read", ""),
                "routes[0].path",
            ),
            (
                entry("billing.balance", "GET", "/v1/x//y", "read", ""),
                "routes[0].path",
            ),
            (
                entry("billing.balance", "GET", "/v1/x/", "read", ""),
                "routes[0].path",
            ),
            (
                entry("billing.balance", "GET", "/v1/x/a%2Fb", "read", ""),
                "routes[0].path",
            ),
            (
                entry("billing.balance", "GET", "/v1/x/{a-}b", "read", ""),
                "routes[0].path",
            ),
            // Shadows disk.info's path (whatever the method), or a path never forwarded.
            (
                entry(
                    "billing.balance",
                    "GET",
                    "/v1/PveMachineHardDisk/open/info/{x}",
                    "read",
                    "",
                ),
                "routes[0].path",
            ),
            (
                entry(
                    "billing.balance",
                    "POST",
                    "/v1/PveMachineHardDisk/open/{x}/PgOiNCqaJQ",
                    "read",
                    "",
                ),
                "routes[0].path",
            ),
            (
                entry(
                    "billing.balance",
                    "POST",
                    "/v1/pve/open/{x}",
                    "mutation",
                    "",
                ),
                "routes[0].path",
            ),
            (
                entry(
                    "billing.balance",
                    "POST",
                    "/v1/auth/getToken",
                    "mutation",
                    "",
                ),
                "routes[0].path",
            ),
            (
                entry("billing.balance", "GET", "/_gateway/token", "read", ""),
                "routes[0].path",
            ),
            // Reserved paths through a {param} or in another letter case.
            (
                entry("billing.balance", "GET", "/{x}/token", "read", ""),
                "routes[0].path",
            ),
            (
                entry(
                    "billing.balance",
                    "POST",
                    "/{x}/token/rejected",
                    "mutation",
                    "",
                ),
                "routes[0].path",
            ),
            (
                entry(
                    "billing.balance",
                    "POST",
                    "/v1/{x}/getToken",
                    "mutation",
                    "",
                ),
                "routes[0].path",
            ),
            (
                entry(
                    "billing.balance",
                    "POST",
                    "/V1/Auth/getToken",
                    "mutation",
                    "",
                ),
                "routes[0].path",
            ),
            (
                entry("billing.balance", "GET", "/_GATEWAY/token", "read", ""),
                "routes[0].path",
            ),
            (
                entry("billing.balance", "GET", "/v1/{x}", "read", ""),
                "routes[0].path",
            ),
            // A compiled route's path in another letter case (a spend route unprotected).
            (
                entry(
                    "billing.balance",
                    "POST",
                    "/v1/pve/open/CreateRent",
                    "mutation",
                    "",
                ),
                "routes[0].path",
            ),
            (
                entry(
                    "billing.balance",
                    "GET",
                    "/V1/PVEMACHINEHARDDISK/OPEN/INFO/{x}",
                    "read",
                    "",
                ),
                "routes[0].path",
            ),
            (
                entry("billing.balance", "GET", ok_path, "spend", ""),
                "routes[0].kind",
            ),
            (
                entry(
                    "billing.balance",
                    "POST",
                    ok_path,
                    "mutation",
                    "[routes.cache]\nttl = \"5s\"\n",
                ),
                "routes[0].cache",
            ),
            (
                entry(
                    "billing.balance",
                    "GET",
                    ok_path,
                    "read",
                    "query = [\"a\", \"a\"]\n",
                ),
                "routes[0].query",
            ),
            (
                entry(
                    "billing.balance",
                    "GET",
                    ok_path,
                    "read",
                    "query = [\"a&b\"]\n",
                ),
                "routes[0].query",
            ),
            // Two configured routes: the same name, or paths that overlap.
            (
                format!(
                    "{BALANCE}{}",
                    entry("billing.balance", "GET", "/v1/y", "read", "")
                ),
                "routes[1].name",
            ),
            (
                format!(
                    "{BALANCE}{}",
                    entry(
                        "billing.other",
                        "POST",
                        "/v1/pve/open/balance/x",
                        "mutation",
                        ""
                    )
                ),
                "routes[1].path",
            ),
            (
                format!(
                    "{BALANCE}{}",
                    entry(
                        "billing.other",
                        "GET",
                        "/v1/pve/open/Balance/{y}",
                        "read",
                        ""
                    )
                ),
                "routes[1].path",
            ),
        ] {
            let e = configured(&text).unwrap_err();
            let ConfigError::Invalid { key: got, .. } = &e else {
                panic!("{e}")
            };
            assert_eq!(got, key, "{text}: {e}");
        }
    }

    #[test]
    fn paths_near_reserved_ones_are_still_allowed() {
        for path in [
            "/v2/{x}/token",
            "/v1/authx/{x}",
            "/x/_gateway/{y}",
            "/v1/pve/open/Rent",
        ] {
            let text = format!(
                "[[routes]]\nname = \"billing.x\"\nmethod = \"GET\"\npath = {path:?}\nkind = \"read\"\n"
            );
            assert!(configured(&text).is_ok(), "{path}");
        }
    }

    /// Were a route under a reserved path ever in a table (the config check refuses it), the
    /// table would still match no request there, in any letter case.
    #[test]
    fn the_table_never_matches_a_reserved_path() {
        let unchecked = |method, prefix, param, suffix| {
            Route(Box::leak(Box::new(RouteSpec {
                suffix,
                ..spec(15, "test.unchecked", method, prefix, param, Kind::Mutation)
            })))
        };
        let mut t = RouteTable::default();
        t.routes
            .push(unchecked(Verb::Get, "/", Some("x"), "/token"));
        t.routes
            .push(unchecked(Verb::Post, "/v1/", Some("x"), "/getToken"));
        for (m, p) in [
            (Method::GET, "/_gateway/token"),
            (Method::GET, "/_GATEWAY/token"),
            (Method::POST, "/v1/auth/getToken"),
            (Method::POST, "/V1/AUTH/getToken"),
        ] {
            assert!(t.classify(&m, p).is_none(), "{m} {p}");
        }
        // The same routes elsewhere are matched: the refusal is the reserved path's.
        assert!(t.classify(&Method::GET, "/other/token").is_some());
        assert!(t.classify(&Method::POST, "/v1/other/getToken").is_some());
    }

    #[test]
    fn wrong_method_is_not_a_route() {
        assert!(classify(&Method::POST, "/v1/PveMachineHardDisk/open/info/abc").is_none());
        assert!(classify(&Method::GET, "/v1/PveMachineHardDisk/open/create").is_none());
    }

    #[test]
    fn escapes_match_nothing() {
        for p in [
            "/v1/auth/getToken",
            "/v1/PveMachineHardDisk/open/info/../../auth/getToken",
            "/v1/PveMachineHardDisk/open/info/..",
            "/v1/PveMachineHardDisk/open/info/a%2Fb",
            "/v1/PveMachineHardDisk/open/info/a%2fb",
            "/v1/PveMachineHardDisk/open/info/a/b",
            "/v1/PveMachineHardDisk/open/info/",
            "/v1/PveMachineHardDisk/open/info/a\\b",
            "//evil.example/v1/PveMachineHardDisk/open/info/a",
            "/v1/PveMachineHardDisk/open//info/a",
            "/v1/PveMachineHardDisk/open/./info/a",
            "/v1/PveMachineHardDisk/open/info/%2e%2e",
        ] {
            assert!(classify(&Method::GET, p).is_none(), "{p}");
        }
        assert!(classify(&Method::POST, "/v1/PveMachineHardDisk/open/create/").is_none());
        assert!(classify(&Method::POST, "/v1/PveMachineHardDisk/open/create/x").is_none());
    }

    #[test]
    fn param_is_captured() {
        let m = classify(&Method::GET, "/v1/PveMachineHardDisk/open/info/PgOiNCqaJQ").unwrap();
        assert_eq!(m.param.as_deref(), Some("PgOiNCqaJQ"));
    }

    #[test]
    fn only_declared_query_parameters_pass() {
        assert!(check_query(Route::DiskInfo, None).is_ok());
        assert!(check_query(Route::DiskInfo, Some("")).is_ok());
        let e = check_query(Route::DiskInfo, Some("r=1")).unwrap_err();
        assert!(e.contains("\"r\"") && e.contains("disk.info"), "{e}");
        assert!(check_query(Route::HostOperate, Some("type=0")).is_ok());
        assert!(check_query(Route::HostPage, Some("pageSize=10&page=2")).is_ok());
        assert!(check_query(Route::HostPage, Some("page=2")).is_ok());
        let e = check_query(Route::HostPage, Some("page=1&x=2")).unwrap_err();
        assert!(e.contains("\"x\"") && e.contains("page, pageSize"), "{e}");
        // Repeated, empty and encoded names are refused.
        assert!(check_query(Route::HostOperate, Some("type=0&type=1")).is_err());
        assert!(check_query(Route::HostOperate, Some("type=0&")).is_err());
        assert!(check_query(Route::HostOperate, Some("=0")).is_err());
        assert!(check_query(Route::HostOperate, Some("t%79pe=0")).is_err());
    }

    #[test]
    fn gateway_endpoints_are_exact_and_never_table_routes() {
        assert_eq!(
            GatewayRoute::classify(&Method::GET, "/_gateway/token"),
            Some(GatewayRoute::TokenLease)
        );
        assert_eq!(
            GatewayRoute::classify(&Method::POST, "/_gateway/token/rejected"),
            Some(GatewayRoute::TokenRejected)
        );
        for (m, p) in [
            (Method::POST, "/_gateway/token"),
            (Method::GET, "/_gateway/token/rejected"),
            (Method::GET, "/_gateway/token/"),
            (Method::GET, "/_gateway//token"),
            (Method::GET, "/_gateway/%74oken"),
            (Method::GET, "/_GATEWAY/token"),
        ] {
            assert_eq!(GatewayRoute::classify(&m, p), None, "{m} {p}");
        }
        assert!(classify(&Method::GET, "/_gateway/token").is_none());
        assert!(
            RouteTable::default()
                .by_name("gateway.token_lease")
                .is_none()
        );
    }
}
