//! `[[routes]]`: routes the upstream published after a release, declared in the config. Each
//! entry is checked (name, method, a path template that overlaps no other route and no reserved
//! path, kind, query parameters), then built once per config load and leaked, so that it is a
//! `Copy` [`Route`] like the compiled ones.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::route::{Caching, KeySource, Kind, Route};
use super::route::{RouteSpec, Verb, is_param};
use super::table::RouteTable;
use super::table::{COMPILED, RESERVED};
use crate::cache::written::RoutePolicyConfig;
use crate::config::error::ConfigError;

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

/// The reserved prefix a template's segments can match, if any.
fn reserved_overlap(segs: &[&str]) -> Option<&'static [&'static str]> {
    RESERVED
        .into_iter()
        .find(|p| segs.len() >= p.len() && p.iter().zip(segs).all(|(x, y)| segment_overlaps(x, y)))
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
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;
    use crate::routes::check_query;

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
}
