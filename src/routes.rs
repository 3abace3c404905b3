//! The route table: every upstream call the gateway forwards, by name (CONTRACT.md, "Clients").
//!
//! A request is classified once, at the edge, from its method and raw path. Only exact matches of the
//! table are routes; a path parameter is one segment of `[A-Za-z0-9_-]`, so `..`, `//`, `%2F`,
//! backslashes and every other way out of the table simply match nothing and are answered 404.
//! The upstream host never comes from the request: the forwarded URI is the account's base URL
//! plus the matched path.

use std::sync::Arc;

use http::Method;
use serde::Serialize;

/// Every route the gateway forwards. The name (`as_str`) is the `route` metric label and what
/// client allow-lists name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    DiskInfo,
    DiskCreate,
    DiskList,
    DiskMount,
    DiskUpdateStatus,
    DiskMemoryTotal,
    HostImage,
    HostPackage,
    HostCreateQuantity,
    HostCreateRent,
    HostOperate,
    HostReboot,
    HostOne,
    HostPage,
    HostDelete,
}

/// How a route's path looks: a fixed prefix, then optionally one parameter segment.
struct Entry {
    route: Route,
    name: &'static str,
    method: Method,
    path: &'static str,
    has_param: bool,
}

const DISK: &str = "/v1/PveMachineHardDisk/open/";
const HOST: &str = "/v1/pve/open/";

/// The route table, in the order of [`Route`]'s variants (so a route's entry is found by index).
static TABLE: [Entry; 15] = {
    const fn e(
        route: Route,
        name: &'static str,
        method: Method,
        path: &'static str,
        has_param: bool,
    ) -> Entry {
        Entry {
            route,
            name,
            method,
            path,
            has_param,
        }
    }
    [
        e(Route::DiskInfo, "disk.info", Method::GET, "info", true),
        e(
            Route::DiskCreate,
            "disk.create",
            Method::POST,
            "create",
            false,
        ),
        e(Route::DiskList, "disk.list", Method::POST, "getList", false),
        e(
            Route::DiskMount,
            "disk.mount",
            Method::POST,
            "pveCreate",
            false,
        ),
        e(
            Route::DiskUpdateStatus,
            "disk.update_status",
            Method::PUT,
            "updateStatus",
            false,
        ),
        e(
            Route::DiskMemoryTotal,
            "disk.memory_total",
            Method::GET,
            "memoryTotal",
            true,
        ),
        e(Route::HostImage, "host.image", Method::GET, "image", false),
        e(
            Route::HostPackage,
            "host.package",
            Method::GET,
            "packAge",
            true,
        ),
        e(
            Route::HostCreateQuantity,
            "host.create_quantity",
            Method::POST,
            "createquantity",
            false,
        ),
        e(
            Route::HostCreateRent,
            "host.create_rent",
            Method::POST,
            "createRent",
            false,
        ),
        e(
            Route::HostOperate,
            "host.operate",
            Method::GET,
            "operate",
            true,
        ),
        e(
            Route::HostReboot,
            "host.reboot",
            Method::GET,
            "reboot",
            true,
        ),
        e(Route::HostOne, "host.one", Method::GET, "one", true),
        e(Route::HostPage, "host.page", Method::GET, "mypage", false),
        e(
            Route::HostDelete,
            "host.delete",
            Method::DELETE,
            "delete",
            true,
        ),
    ]
};

impl Route {
    pub fn as_str(self) -> &'static str {
        self.entry().name
    }

    pub fn from_name(name: &str) -> Option<Route> {
        TABLE.iter().find(|e| e.name == name).map(|e| e.route)
    }

    pub fn names() -> Vec<&'static str> {
        TABLE.iter().map(|e| e.name).collect()
    }

    pub fn all() -> impl Iterator<Item = Route> {
        TABLE.iter().map(|e| e.route)
    }

    pub fn method(self) -> &'static Method {
        &self.entry().method
    }

    /// The query parameters this route takes (upstream-api.md); any other is refused, and cache
    /// keys are built from these only.
    pub fn query_params(self) -> &'static [&'static str] {
        match self {
            Route::HostOperate => &["type"],
            Route::HostPage => &["page", "pageSize"],
            _ => &[],
        }
    }

    fn entry(self) -> &'static Entry {
        &TABLE[self as usize]
    }

    fn prefix(self) -> &'static str {
        match self {
            Route::DiskInfo
            | Route::DiskCreate
            | Route::DiskList
            | Route::DiskMount
            | Route::DiskUpdateStatus
            | Route::DiskMemoryTotal => DISK,
            _ => HOST,
        }
    }

    /// An example path for this route, for docs and tests.
    pub fn example_path(self, param: &str) -> String {
        let e = self.entry();
        if e.has_param {
            format!("{}{}/{param}", self.prefix(), e.path)
        } else {
            format!("{}{}", self.prefix(), e.path)
        }
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

/// Classifies a request by method and raw (still percent-encoded) path.
pub fn classify(method: &Method, path: &str) -> Option<RouteMatch> {
    let (prefix, rest) = if let Some(rest) = path.strip_prefix(DISK) {
        (DISK, rest)
    } else if let Some(rest) = path.strip_prefix(HOST) {
        (HOST, rest)
    } else {
        return None;
    };
    let (head, param) = match rest.split_once('/') {
        Some((head, param)) => (head, Some(param)),
        None => (rest, None),
    };
    let entry = TABLE
        .iter()
        .find(|e| e.route.prefix() == prefix && e.path == head)?;
    if entry.method != method {
        return None;
    }
    match (entry.has_param, param) {
        (false, None) => Some(RouteMatch {
            route: entry.route,
            param: None,
        }),
        (true, Some(p)) if is_param(p) => Some(RouteMatch {
            route: entry.route,
            param: Some(p.into()),
        }),
        _ => None,
    }
}

/// The longest parameter name shown back in an error.
const MAX_SHOWN: usize = 64;

/// Checks a request's raw query against the parameters `route` declares: each `name=value` (or
/// bare `name`) must name a declared parameter, at most once, and names are compared as sent (an
/// encoded name matches nothing). An empty query (`?`) is no parameter. `Err` says what is wrong,
/// naming the parameter. Allocates only on error.
pub fn check_query(route: Route, query: Option<&str>) -> Result<(), String> {
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
pub enum GatewayRoute {
    /// `GET /_gateway/token`: a lease of the account's upstream token.
    TokenLease,
    /// `POST /_gateway/token/rejected`: the upstream refused a leased token.
    TokenRejected,
}

impl GatewayRoute {
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayRoute::TokenLease => "gateway.token_lease",
            GatewayRoute::TokenRejected => "gateway.token_rejected",
        }
    }

    /// Exact method and path only, as for the table's routes.
    pub fn classify(method: &Method, path: &str) -> Option<GatewayRoute> {
        match (method, path) {
            (&Method::GET, "/_gateway/token") => Some(GatewayRoute::TokenLease),
            (&Method::POST, "/_gateway/token/rejected") => Some(GatewayRoute::TokenRejected),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_variant_order() {
        for (i, e) in TABLE.iter().enumerate() {
            assert_eq!(e.route as usize, i, "{}", e.name);
        }
    }

    #[test]
    fn every_route_classifies_its_own_example() {
        for r in Route::all() {
            let m = classify(r.method(), &r.example_path("AbC123xyz9")).unwrap();
            assert_eq!(m.route, r);
            assert_eq!(Route::from_name(r.as_str()), Some(r));
        }
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
        assert!(Route::from_name("gateway.token_lease").is_none());
    }
}
