//! Cache behaviour as data: a policy per route (`[cache.routes."disk.info"]` in the config file),
//! resolved once at start. Only routes that read state may be cached; a route that changes state
//! (a create, a mount, a power operation) is refused with an error naming it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cache::written::RoutePolicyConfig;
use crate::config::error::ConfigError;
use crate::duration;
use crate::routes::{Caching, Route, RouteTable};

/// The `[cache]` section as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CacheConfig {
    /// Upper bound of the memory the cache's entries take, in bytes.
    pub(crate) max_bytes: u64,
    /// Per-route overrides of the built-in policies, keyed by route name.
    pub(crate) routes: BTreeMap<String, RoutePolicyConfig>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: 64 * 1024 * 1024,
            routes: BTreeMap::new(),
        }
    }
}

/// How one route is cached.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct CachePolicy {
    #[serde(with = "duration")]
    pub(crate) ttl: Duration,
    #[serde(with = "duration")]
    pub(crate) stale_while_revalidate: Duration,
    #[serde(with = "duration")]
    pub(crate) stale_if_error: Duration,
    /// Disk status (as the upstream writes it, `"1"`) → TTL for entries in that state.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        serialize_with = "durations"
    )]
    pub(crate) status_ttl: BTreeMap<String, Duration>,
}

fn durations<S: serde::Serializer>(
    m: &BTreeMap<String, Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(m.len()))?;
    for (k, v) in m {
        map.serialize_entry(k, &humantime::format_duration(*v).to_string())?;
    }
    map.end()
}

/// Built-in policy: `disk.info` on (5s, 5s stale-while-revalidate, 5m stale-if-error, 1s while a
/// disk is mounting or being destroyed), every other cacheable route off with the same timings.
fn builtin(route: Route) -> (bool, CachePolicy) {
    let mut status_ttl = BTreeMap::new();
    if route.has_disk_status() {
        status_ttl.insert("1".to_string(), Duration::from_secs(1));
        status_ttl.insert("4".to_string(), Duration::from_secs(1));
    }
    let policy = CachePolicy {
        ttl: Duration::from_secs(5),
        stale_while_revalidate: Duration::from_secs(5),
        stale_if_error: Duration::from_secs(300),
        status_ttl,
    };
    (matches!(route.caching(), Caching::On), policy)
}

/// Applies a route's table (`key` names it) over `enabled` and `policy`. Writing a route's table
/// is asking for it to be cached, unless it says otherwise.
fn apply(
    key: &str,
    route: Route,
    c: &RoutePolicyConfig,
    enabled: &mut bool,
    policy: &mut CachePolicy,
) -> Result<(), ConfigError> {
    *enabled = c.enabled.unwrap_or(true);
    policy.ttl = c.ttl.unwrap_or(policy.ttl);
    policy.stale_while_revalidate = c
        .stale_while_revalidate
        .unwrap_or(policy.stale_while_revalidate);
    policy.stale_if_error = c.stale_if_error.unwrap_or(policy.stale_if_error);
    if policy.ttl.is_zero() {
        return Err(invalid(
            format!("{key}.ttl"),
            "expected a duration greater than 0",
        ));
    }
    if let Some(map) = &c.status_ttl {
        if !route.has_disk_status() {
            return Err(invalid(
                format!("{key}.status_ttl"),
                "only disk.info has a disk status",
            ));
        }
        policy.status_ttl.clear();
        for (status, text) in map {
            let d = duration::parse(text)
                .map_err(|m| invalid(format!("{key}.status_ttl.{status}"), m))?;
            policy.status_ttl.insert(status.clone(), d);
        }
    }
    Ok(())
}

/// The cache's resolved settings: the enabled routes' policies.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CacheSettings {
    pub(crate) max_bytes: u64,
    pub(crate) routes: BTreeMap<Route, CachePolicy>,
}

fn invalid(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl CacheConfig {
    pub(crate) fn resolve(&self, table: &RouteTable) -> Result<CacheSettings, ConfigError> {
        if self.max_bytes < 1024 {
            return Err(invalid(
                "cache.max_bytes".into(),
                "expected at least 1024 bytes",
            ));
        }
        for name in self.routes.keys() {
            let key = format!("cache.routes.{name:?}");
            let route = table
                .by_name(name)
                .ok_or_else(|| table.unknown(key.clone(), name))?;
            if !route.cacheable() {
                return Err(invalid(
                    key,
                    "this route changes state and cannot be cached",
                ));
            }
        }
        let mut routes = BTreeMap::new();
        for route in table.iter().filter(|r| r.cacheable()) {
            let (mut enabled, mut policy) = builtin(route);
            if let (Caching::Table(c), Some(source)) = (route.caching(), route.source()) {
                apply(
                    &format!("{source}.cache"),
                    route,
                    c,
                    &mut enabled,
                    &mut policy,
                )?;
            }
            if let Some(c) = self.routes.get(route.as_str()) {
                let key = format!("cache.routes.{:?}", route.as_str());
                apply(&key, route, c, &mut enabled, &mut policy)?;
            }
            if enabled {
                routes.insert(route, policy);
            }
        }
        Ok(CacheSettings {
            max_bytes: self.max_bytes,
            routes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CacheSettings, ConfigError> {
        #[derive(Deserialize)]
        struct File {
            cache: CacheConfig,
        }
        toml::from_str::<File>(text)
            .unwrap()
            .cache
            .resolve(&RouteTable::default())
    }

    #[test]
    fn disk_info_is_on_by_default_and_others_off() {
        let s = CacheConfig::default()
            .resolve(&RouteTable::default())
            .unwrap();
        assert_eq!(
            s.routes.keys().copied().collect::<Vec<_>>(),
            vec![Route::DiskInfo]
        );
        assert_eq!(
            s.routes[&Route::DiskInfo].status_ttl["1"],
            Duration::from_secs(1)
        );
    }

    #[test]
    fn enabling_one_route_keeps_the_defaults_of_others() {
        let s = parse("[cache.routes.\"host.one\"]\nenabled = true\nttl = \"30s\"\n").unwrap();
        assert!(s.routes.contains_key(&Route::DiskInfo));
        assert_eq!(s.routes[&Route::HostOne].ttl, Duration::from_secs(30));
    }

    #[test]
    fn a_routes_table_turns_it_on_unless_it_says_otherwise() {
        let s = parse("[cache.routes.\"disk.list\"]\nttl = \"30s\"\n").unwrap();
        assert_eq!(s.routes[&Route::DiskList].ttl, Duration::from_secs(30));
        let s = parse("[cache.routes.\"disk.info\"]\nenabled = false\nttl = \"30s\"\n").unwrap();
        assert!(!s.routes.contains_key(&Route::DiskInfo));
    }

    #[test]
    fn mutations_cannot_be_cached() {
        let e = parse("[cache.routes.\"disk.create\"]\nenabled = true\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("disk.create") && e.contains("cannot be cached"),
            "{e}"
        );
        let e = parse("[cache.routes.\"host.operate\"]\nenabled = true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("host.operate"), "{e}");
    }

    #[test]
    fn bad_status_ttl_is_named() {
        let e = parse("[cache.routes.\"disk.info\"]\nstatus_ttl = { \"1\" = \"soon\" }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("status_ttl.1"), "{e}");
    }
}
