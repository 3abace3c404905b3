//! Create protection as data: per-route policies (`[create.routes."disk.create"]`) for the routes
//! that spend money, and the optional spending guard (`[create.budget]`). Resolved once at start.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::error::ConfigError;
use crate::duration;
use crate::protect::budget::settings::{BudgetConfig, BudgetSettings};
use crate::routes::{Route, RouteTable};

/// The `[create]` section as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CreateConfig {
    pub(crate) routes: BTreeMap<String, CreatePolicyConfig>,
    pub(crate) budget: BudgetConfig,
    /// How long an in-flight create's record stays claimed without its replica renewing it.
    pub(crate) lease: Option<String>,
    /// Live idempotency and de-dup records one client may hold.
    pub(crate) max_records_per_client: Option<u64>,
    /// Bytes the records of this replica's memory may take together.
    pub(crate) records_max_bytes: Option<u64>,
}

/// Defaults of the `[create]` keys above.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(5);
pub(crate) const DEFAULT_MAX_RECORDS_PER_CLIENT: u64 = 10_000;

/// One route's policy as written; every field falls back to the built-in default.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreatePolicyConfig {
    /// `"N/DURATION"`: creates per period for the account, e.g. `"1/1s"`, `"30/1m"`.
    pub(crate) rate: Option<String>,
    pub(crate) burst: Option<u32>,
    /// The same, per client; absent = no per-client limit.
    pub(crate) client_rate: Option<String>,
    pub(crate) client_burst: Option<u32>,
    pub(crate) max_wait: Option<String>,
    pub(crate) dedup_window: Option<String>,
    pub(crate) idempotency_ttl: Option<String>,
    /// Whose identical key-less creates collapse: `"client"` (default) or `"account"`.
    pub(crate) dedup_scope: Option<String>,
}

/// A GCRA rate: `count` events per `period`, with `burst` allowed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Rate {
    pub(crate) count: u32,
    #[serde(with = "duration")]
    pub(crate) period: Duration,
    pub(crate) burst: u32,
}

impl Rate {
    /// The time one event uses up (GCRA's emission interval).
    pub(crate) fn interval(&self) -> Duration {
        self.period / self.count
    }
}

/// Whose identical key-less creates collapse into one purchase. Per client by default: two
/// services that each buy the same disk at the same moment want two disks, not one disk both
/// try to mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DedupScope {
    Client,
    Account,
}

impl DedupScope {
    fn parse(text: &str) -> Result<DedupScope, String> {
        match text {
            "client" => Ok(DedupScope::Client),
            "account" => Ok(DedupScope::Account),
            _ => Err(format!("expected \"client\" or \"account\", got {text:?}")),
        }
    }
}

/// How one spending route is protected.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct CreatePolicy {
    pub(crate) rate: Rate,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) client_rate: Option<Rate>,
    #[serde(with = "duration")]
    pub(crate) max_wait: Duration,
    #[serde(with = "duration")]
    pub(crate) dedup_window: Duration,
    #[serde(with = "duration")]
    pub(crate) idempotency_ttl: Duration,
    pub(crate) dedup_scope: DedupScope,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CreateSettings {
    pub(crate) routes: BTreeMap<Route, CreatePolicy>,
    pub(crate) budget: BudgetSettings,
    #[serde(with = "duration")]
    pub(crate) lease: Duration,
    pub(crate) max_records_per_client: u64,
    pub(crate) records_max_bytes: u64,
}

fn invalid(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

pub(crate) fn parse_rate(text: &str, burst: u32) -> Result<Rate, String> {
    let expected =
        || format!("expected \"COUNT/DURATION\" such as \"1/1s\" or \"30/1m\", got {text:?}");
    let (count, period) = text.split_once('/').ok_or_else(expected)?;
    let count: u32 = count.trim().parse().map_err(|_| expected())?;
    let period = duration::parse(period).map_err(|_| expected())?;
    if count == 0 || period.is_zero() {
        return Err(expected());
    }
    if burst == 0 {
        return Err("burst must be at least 1".into());
    }
    Ok(Rate {
        count,
        period,
        burst,
    })
}

impl CreateConfig {
    pub(crate) fn resolve(&self, table: &RouteTable) -> Result<CreateSettings, ConfigError> {
        for name in self.routes.keys() {
            let key = format!("create.routes.{name:?}");
            let route = table
                .by_name(name)
                .ok_or_else(|| table.unknown(key.clone(), name))?;
            if !route.spends_money() {
                return Err(invalid(
                    key,
                    "only disk.create, host.create_quantity and host.create_rent have a create policy",
                ));
            }
        }
        let mut routes = BTreeMap::new();
        for route in table.iter().filter(|r| r.spends_money()) {
            let c = self.routes.get(route.as_str()).cloned().unwrap_or_default();
            let key = |field: &str| format!("create.routes.{:?}.{field}", route.as_str());
            let dur = |field: &str,
                       v: &Option<String>,
                       default: Duration|
             -> Result<Duration, ConfigError> {
                match v {
                    Some(text) => duration::parse(text).map_err(|m| invalid(key(field), m)),
                    None => Ok(default),
                }
            };
            let rate = parse_rate(c.rate.as_deref().unwrap_or("1/1s"), c.burst.unwrap_or(1))
                .map_err(|m| invalid(key("rate"), m))?;
            let client_rate = match &c.client_rate {
                Some(text) => Some(
                    parse_rate(text, c.client_burst.unwrap_or(1))
                        .map_err(|m| invalid(key("client_rate"), m))?,
                ),
                None => None,
            };
            let dedup_scope = DedupScope::parse(c.dedup_scope.as_deref().unwrap_or("client"))
                .map_err(|m| invalid(key("dedup_scope"), m))?;
            routes.insert(
                route,
                CreatePolicy {
                    rate,
                    client_rate,
                    max_wait: dur("max_wait", &c.max_wait, Duration::from_secs(5))?,
                    dedup_window: dur("dedup_window", &c.dedup_window, Duration::from_secs(10))?,
                    idempotency_ttl: dur(
                        "idempotency_ttl",
                        &c.idempotency_ttl,
                        Duration::from_secs(24 * 3600),
                    )?,
                    dedup_scope,
                },
            );
        }
        let lease = match &self.lease {
            Some(text) => duration::parse(text).map_err(|m| invalid("create.lease".into(), m))?,
            None => DEFAULT_LEASE,
        };
        // Renewed every third of it: below a second, a slow Redis could let a live create lapse.
        if lease < Duration::from_secs(1) {
            return Err(invalid("create.lease".into(), "must be at least 1s"));
        }
        let max_records_per_client = self
            .max_records_per_client
            .unwrap_or(DEFAULT_MAX_RECORDS_PER_CLIENT);
        if max_records_per_client == 0 {
            return Err(invalid(
                "create.max_records_per_client".into(),
                "must be at least 1",
            ));
        }
        let records_max_bytes = self
            .records_max_bytes
            .unwrap_or(crate::protect::records::DEFAULT_MAX_BYTES);
        if records_max_bytes < 1024 * 1024 {
            return Err(invalid(
                "create.records_max_bytes".into(),
                "must be at least 1048576 (1 MiB)",
            ));
        }
        Ok(CreateSettings {
            routes,
            budget: self.budget.resolve()?,
            lease,
            max_records_per_client,
            records_max_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_every_spending_route() {
        let s = CreateConfig::default()
            .resolve(&RouteTable::default())
            .unwrap();
        assert_eq!(s.routes.len(), 3);
        let p = &s.routes[&Route::DiskCreate];
        assert_eq!(p.rate.interval(), Duration::from_secs(1));
        assert_eq!(p.dedup_window, Duration::from_secs(10));
        assert!(p.client_rate.is_none());
        assert_eq!(p.dedup_scope, DedupScope::Client);
        assert_eq!(s.lease, Duration::from_secs(5));
        assert_eq!(s.max_records_per_client, 10_000);
    }

    #[test]
    fn dedup_scope_is_client_or_account() {
        let with = |scope: &str| {
            let mut c = CreateConfig::default();
            c.routes.insert(
                "host.create_rent".into(),
                CreatePolicyConfig {
                    dedup_scope: Some(scope.into()),
                    ..Default::default()
                },
            );
            c.resolve(&RouteTable::default())
        };
        let s = with("account").unwrap();
        assert_eq!(
            s.routes[&Route::HostCreateRent].dedup_scope,
            DedupScope::Account
        );
        assert_eq!(s.routes[&Route::DiskCreate].dedup_scope, DedupScope::Client);
        let e = with("Account").unwrap_err().to_string();
        assert!(
            e.contains("create.routes.\"host.create_rent\".dedup_scope"),
            "{e}"
        );
    }

    #[test]
    fn lease_and_record_bounds_are_checked() {
        for (c, key) in [
            (
                CreateConfig {
                    lease: Some("500ms".into()),
                    ..Default::default()
                },
                "create.lease",
            ),
            (
                CreateConfig {
                    lease: Some("soon".into()),
                    ..Default::default()
                },
                "create.lease",
            ),
            (
                CreateConfig {
                    max_records_per_client: Some(0),
                    ..Default::default()
                },
                "create.max_records_per_client",
            ),
            (
                CreateConfig {
                    records_max_bytes: Some(10),
                    ..Default::default()
                },
                "create.records_max_bytes",
            ),
        ] {
            let e = c.resolve(&RouteTable::default()).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn rates_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_rate("30/1m", 2).unwrap().interval(),
            Duration::from_secs(2)
        );
        for bad in ["1", "0/1s", "x/1s", "1/soon"] {
            assert!(parse_rate(bad, 1).is_err(), "{bad}");
        }
        let mut c = CreateConfig::default();
        c.routes.insert(
            "disk.create".into(),
            CreatePolicyConfig {
                rate: Some("fast".into()),
                ..Default::default()
            },
        );
        let e = c.resolve(&RouteTable::default()).unwrap_err().to_string();
        assert!(e.contains("create.routes.\"disk.create\".rate"), "{e}");
        let mut c = CreateConfig::default();
        c.routes
            .insert("disk.info".into(), CreatePolicyConfig::default());
        assert!(
            c.resolve(&RouteTable::default())
                .unwrap_err()
                .to_string()
                .contains("disk.info")
        );
    }
}
