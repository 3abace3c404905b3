//! `[create.budget]` and each client's `budget = { ... }`: the caps as written, and as the guard
//! runs with them (the zone looked up, the threshold checked, each client's own caps computed).

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use super::window::Period;
use crate::config::error::ConfigError;

/// `[create.budget]` as written: caps on spending, off unless set. `account` caps count every
/// client of an account together; `client` caps count each client alone (a client's own
/// `budget = { ... }` replaces them key by key).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BudgetConfig {
    /// IANA name of the zone whose midnights and 1sts begin day and month windows; UTC when absent.
    pub(crate) timezone: Option<String>,
    /// Fraction of a cap whose reaching is reported once per window; absent = no warnings.
    pub(crate) warn_at: Option<f64>,
    pub(crate) account: Caps,
    pub(crate) client: Caps,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Caps {
    /// Creates (of any protected route) per clock hour; 0 = no cap.
    pub(crate) creates_per_hour: u64,
    /// Creates per day in `timezone`; 0 = no cap.
    pub(crate) creates_per_day: u64,
    /// Creates per calendar month in `timezone`; 0 = no cap.
    pub(crate) creates_per_month: u64,
    /// Gigabytes of disk created per day in `timezone`; 0 = no cap.
    pub(crate) gb_per_day: u64,
    /// Gigabytes of disk created per calendar month in `timezone`; 0 = no cap.
    pub(crate) gb_per_month: u64,
}

/// What a cap counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    Creates,
    Gb,
}

/// One cap: its name (`creates_per_day`, as the config, the answers and the metrics say it), its
/// window, what it counts, and its limit (0 = not set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cap {
    pub(crate) name: &'static str,
    pub(crate) period: Period,
    pub(crate) unit: Unit,
    pub(crate) limit: u64,
}

impl Caps {
    pub(crate) fn any(&self) -> bool {
        self.all().iter().any(|c| c.limit > 0)
    }

    /// Every cap, set or not.
    pub(crate) fn all(&self) -> [Cap; 5] {
        let cap = |name, period, unit, limit| Cap {
            name,
            period,
            unit,
            limit,
        };
        [
            cap(
                "creates_per_hour",
                Period::Hour,
                Unit::Creates,
                self.creates_per_hour,
            ),
            cap(
                "creates_per_day",
                Period::Day,
                Unit::Creates,
                self.creates_per_day,
            ),
            cap(
                "creates_per_month",
                Period::Month,
                Unit::Creates,
                self.creates_per_month,
            ),
            cap("gb_per_day", Period::Day, Unit::Gb, self.gb_per_day),
            cap("gb_per_month", Period::Month, Unit::Gb, self.gb_per_month),
        ]
    }

    /// The caps that are set.
    pub(crate) fn set(&self) -> impl Iterator<Item = Cap> {
        self.all().into_iter().filter(|c| c.limit > 0)
    }

    /// The limit of `unit` per `period` (0 = not set).
    pub(crate) fn limit(&self, period: Period, unit: Unit) -> u64 {
        self.all()
            .iter()
            .find(|c| c.period == period && c.unit == unit)
            .map_or(0, |c| c.limit)
    }

    /// These caps with a client's own keys in place of theirs.
    fn overridden(self, own: &ClientBudget) -> Caps {
        Caps {
            creates_per_hour: own.creates_per_hour.unwrap_or(self.creates_per_hour),
            creates_per_day: own.creates_per_day.unwrap_or(self.creates_per_day),
            creates_per_month: own.creates_per_month.unwrap_or(self.creates_per_month),
            gb_per_day: own.gb_per_day.unwrap_or(self.gb_per_day),
            gb_per_month: own.gb_per_month.unwrap_or(self.gb_per_month),
        }
    }
}

/// The spending guard's settings, resolved.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BudgetSettings {
    /// The zone's IANA name, as `check-config` shows it.
    pub(crate) timezone: String,
    #[serde(skip)]
    pub(crate) tz: TimeZone,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) warn_at: Option<f64>,
    pub(crate) account: Caps,
    pub(crate) client: Caps,
    /// Each configured account's name (whose caps the metrics show).
    #[serde(skip)]
    pub(crate) accounts: Vec<String>,
    /// Each configured client: its account and its client caps (its own keys applied).
    #[serde(skip)]
    pub(crate) clients: BTreeMap<String, (String, Caps)>,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            timezone: "UTC".into(),
            tz: TimeZone::UTC,
            warn_at: None,
            account: Caps::default(),
            client: Caps::default(),
            accounts: Vec::new(),
            clients: BTreeMap::new(),
        }
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl BudgetConfig {
    pub(crate) fn resolve(&self) -> Result<BudgetSettings, ConfigError> {
        let timezone = self.timezone.clone().unwrap_or_else(|| "UTC".into());
        let tz = TimeZone::get(&timezone).map_err(|e| {
            invalid(
                "create.budget.timezone",
                format!("expected an IANA time zone name such as \"Asia/Shanghai\": {e}"),
            )
        })?;
        if let Some(w) = self.warn_at
            && !(w > 0.0 && w <= 1.0)
        {
            return Err(invalid(
                "create.budget.warn_at",
                format!("expected a fraction of a cap in (0, 1], such as 0.8, got {w}"),
            ));
        }
        Ok(BudgetSettings {
            timezone,
            tz,
            warn_at: self.warn_at,
            account: self.account,
            client: self.client,
            ..BudgetSettings::default()
        })
    }
}

impl BudgetSettings {
    /// Learns the configured accounts, and the clients (client, account, own caps), each client's
    /// own caps applied.
    pub(crate) fn know_names(
        &mut self,
        accounts: Vec<String>,
        clients: impl IntoIterator<Item = (String, String, Option<ClientBudget>)>,
    ) {
        self.accounts = accounts;
        self.clients = clients
            .into_iter()
            .map(|(name, account, own)| {
                let caps = own.map_or(self.client, |own| self.client.overridden(&own));
                (name, (account, caps))
            })
            .collect();
    }

    /// The client caps of `client`: its own, or `[create.budget.client]`.
    pub(crate) fn client_caps(&self, client: &str) -> Caps {
        self.clients.get(client).map_or(self.client, |c| c.1)
    }

    /// Whether any cap is set, for any account or client.
    pub(crate) fn enabled(&self) -> bool {
        self.account.any() || self.client.any() || self.clients.values().any(|c| c.1.any())
    }

    /// The soft threshold of a cap of `limit`: the use at or above `warn_at` × `limit` (0 = none).
    pub(crate) fn threshold(&self, limit: u64) -> u64 {
        match self.warn_at {
            // A hair under, so that 0.7 × 10 is 7 and not 8 (0.7 × 10 is 7.000000000000001).
            Some(w) if limit > 0 => ((w * limit as f64 - 1e-9).ceil() as u64).clamp(1, limit),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigError;

    fn resolve(text: &str) -> Result<BudgetSettings, ConfigError> {
        let c: BudgetConfig = toml::from_str(text).unwrap();
        c.resolve()
    }

    #[test]
    fn utc_by_default_and_a_bad_zone_names_its_key() {
        let s = resolve("").unwrap();
        assert_eq!((s.timezone.as_str(), s.warn_at), ("UTC", None));
        assert!(!s.enabled());
        let e = resolve("timezone = \"Mars/Olympus\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("create.budget.timezone"), "{e}");
        let s = resolve("timezone = \"Asia/Shanghai\"").unwrap();
        assert_eq!(s.tz.iana_name(), Some("Asia/Shanghai"));
    }

    #[test]
    fn warn_at_is_a_fraction_of_a_cap() {
        for bad in ["0.0", "1.5", "-0.2", "nan"] {
            let e = resolve(&format!("warn_at = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("create.budget.warn_at"), "{bad}: {e}");
        }
        let s = resolve("warn_at = 0.7").unwrap();
        assert_eq!(s.threshold(10), 7);
        assert_eq!(s.threshold(5), 4, "3.5 rounds up");
        assert_eq!(s.threshold(1), 1);
        assert_eq!(s.threshold(0), 0, "no cap, no threshold");
        assert_eq!(resolve("warn_at = 1.0").unwrap().threshold(3), 3);
        assert_eq!(resolve("").unwrap().threshold(3), 0, "off when absent");
    }

    #[test]
    fn month_caps_are_caps() {
        let s = resolve("[account]\ngb_per_month = 500\n").unwrap();
        assert!(s.enabled());
        let set: Vec<_> = s.account.set().map(|c| c.name).collect();
        assert_eq!(set, ["gb_per_month"]);
        assert_eq!(s.account.limit(Period::Month, Unit::Gb), 500);
    }

    #[test]
    fn a_client_budget_replaces_the_client_caps_key_by_key() {
        let base = Caps {
            creates_per_day: 10,
            gb_per_day: 100,
            ..Caps::default()
        };
        let own = ClientBudget {
            creates_per_day: Some(5),
            gb_per_month: Some(1000),
            ..ClientBudget::default()
        };
        let caps = base.overridden(&own);
        assert_eq!(
            (caps.creates_per_day, caps.gb_per_day, caps.gb_per_month),
            (5, 100, 1000)
        );
        let off = ClientBudget {
            gb_per_day: Some(0),
            ..ClientBudget::default()
        };
        assert_eq!(base.overridden(&off).gb_per_day, 0, "0 lifts a cap");
    }
}

/// A client's own spending caps: each key set here replaces the same key of
/// `[create.budget.client]` for this client alone (0 lifts that cap); a key not set keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientBudget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creates_per_hour: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creates_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creates_per_month: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gb_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gb_per_month: Option<u64>,
}
