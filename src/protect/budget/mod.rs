//! The spending guard: caps on creates and on GB of disk per clock hour, per day and per calendar
//! month in the configured zone (`[create.budget] timezone`), for each account and each client
//! (a client's own `budget = { ... }` in place of the client caps). A create is admitted against
//! every cap it falls under or refused before it costs anything; an admission is refunded when the
//! create did not buy anything. Off unless a cap is set.
//!
//! - `settings`: the caps as written and resolved;
//! - `window`: the hour, day and month windows, in the zone;
//! - `tally`: the counters (this replica's memory; `crate::fleet::tally` for a fleet).
//!
//! What the guard has to say (a soft threshold reached, a cap spent) is a [`BudgetEvent`], handed
//! to whoever raises alerts; [`Budget::gauges`] reads what each set cap has used, for the metrics.

pub(crate) mod settings;
pub(crate) mod tally;
pub(crate) mod window;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use settings::{BudgetSettings, Cap, Caps, Unit};
use tally::{Charge, Crossed, Measure, Over, Tally};
use window::{Period, window};

use crate::store::error::Stored;
use crate::swap::Swap;

/// How long a counter outlives its window: a margin for replicas whose clocks differ.
const MARGIN: Duration = Duration::from_secs(3600);

/// One cap of one account or client: who, which cap, its limit, and when its window resets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CapOf {
    /// `account` or `client`.
    pub(crate) scope: &'static str,
    pub(crate) who: String,
    /// `creates_per_hour`, `creates_per_day`, `creates_per_month`, `gb_per_day`, `gb_per_month`.
    pub(crate) cap: &'static str,
    pub(crate) limit: u64,
    pub(crate) resets_in: Duration,
}

/// A refused create: the cap it would pass.
pub(crate) type OverCap = CapOf;

/// What the guard reports, for logs, metrics and alerts (the `budget.threshold` and
/// `budget.exhausted` webhook events are raised from these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BudgetEvent {
    /// An admitted create brought a cap's use to `warn_at` × its limit: once per window and cap,
    /// for the whole fleet.
    Threshold { cap: CapOf, used: u64 },
    /// A create was refused: the cap is spent until its window resets.
    Exhausted(CapOf),
}

/// What an admission charged (to refund it), and the thresholds it crossed.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    charges: Vec<Charge>,
    pub(crate) events: Vec<BudgetEvent>,
}

/// One set cap's use now, for the gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CapUse {
    pub(crate) scope: &'static str,
    pub(crate) who: String,
    pub(crate) cap: &'static str,
    pub(crate) used: u64,
    pub(crate) limit: u64,
    /// When the cap's window ends and its use starts again at 0 (seconds since the epoch).
    pub(crate) resets_at: u64,
}

/// One account's or client's caps, and the prefix of its counters' keys.
struct Whose {
    scope: &'static str,
    who: String,
    account: String,
    key: String,
    caps: Caps,
}

/// Who a charge is for, to name the cap it would pass or the threshold it crossed.
struct Labels {
    scope: &'static str,
    who: String,
    period: Period,
    caps: Caps,
    resets_in: u64,
}

pub(crate) struct Budget {
    /// Swapped by a reload; an admission counts against the caps current when it is made.
    settings: Swap<BudgetSettings>,
    tally: Arc<dyn Tally>,
    /// Callers admitted that no `[[clients]]` entry names (the anonymous caller, per account),
    /// so their client caps show in the gauges too.
    unnamed: Mutex<BTreeSet<(String, String)>>,
}

impl Budget {
    pub(crate) fn new(settings: BudgetSettings, tally: Arc<dyn Tally>) -> Budget {
        Budget {
            settings: Swap::new(settings),
            tally,
            unnamed: Mutex::default(),
        }
    }

    /// New caps (a reload): counters already charged stay, measured against them.
    pub(crate) fn set_caps(&self, settings: BudgetSettings) {
        self.settings.store(settings);
    }

    /// The settings in force (the zone and `warn_at` the console shows).
    pub(crate) fn settings(&self) -> Arc<BudgetSettings> {
        self.settings.load()
    }

    pub(crate) fn enabled(&self) -> bool {
        self.settings.with(BudgetSettings::enabled)
    }

    /// The account's and the client's caps, where any is set.
    fn scopes(s: &BudgetSettings, account: &str, client: &str) -> Vec<Whose> {
        let scopes = [
            Whose {
                scope: "account",
                who: account.to_string(),
                account: account.to_string(),
                key: format!("account|{account}"),
                caps: s.account,
            },
            Whose {
                scope: "client",
                who: client.to_string(),
                account: account.to_string(),
                key: format!("client|{account}|{client}"),
                caps: s.client_caps(client),
            },
        ];
        scopes.into_iter().filter(|s| s.caps.any()).collect()
    }

    /// The charges of one create of `gb` GB (0 for hosts) at `now` (seconds since the epoch):
    /// every window of every scope with a cap, so that a cap a reload sets finds its window's
    /// creates already counted.
    fn charges(
        s: &BudgetSettings,
        account: &str,
        client: &str,
        gb: u64,
        now: u64,
    ) -> Vec<(Charge, Labels)> {
        let mut out = Vec::new();
        for scope in Self::scopes(s, account, client) {
            for period in Period::ALL {
                let w = window(period, &s.tz, now);
                let max_creates = scope.caps.limit(period, Unit::Creates);
                let max_gb = scope.caps.limit(period, Unit::Gb);
                let resets_in = w.ends.saturating_sub(now);
                out.push((
                    Charge {
                        account: account.to_string(),
                        key: format!("{}|{}", scope.key, w.key),
                        gb,
                        max_creates,
                        max_gb,
                        warn_creates: s.threshold(max_creates),
                        warn_gb: s.threshold(max_gb),
                        ttl: Duration::from_secs(resets_in) + MARGIN,
                    },
                    Labels {
                        scope: scope.scope,
                        who: scope.who.clone(),
                        period,
                        caps: scope.caps,
                        resets_in,
                    },
                ));
            }
        }
        out
    }

    /// Admits one create of `gb` GB (0 for hosts) at `now` (seconds since the epoch), or names the
    /// cap it would pass.
    pub(crate) async fn admit(
        &self,
        account: &str,
        client: &str,
        gb: u64,
        now: u64,
    ) -> Stored<Result<Admission, OverCap>> {
        let s = self.settings.load();
        if !s.clients.contains_key(client) {
            let mut unnamed = self.unnamed.lock().expect("budget names");
            unnamed.insert((account.to_string(), client.to_string()));
        }
        let (charges, labels): (Vec<_>, Vec<_>) = Self::charges(&s, account, client, gb, now)
            .into_iter()
            .unzip();
        let named = |i: usize, measure: Measure| {
            let l: &Labels = &labels[i];
            let unit = match measure {
                Measure::Creates => Unit::Creates,
                Measure::Gb => Unit::Gb,
            };
            let cap = l
                .caps
                .all()
                .into_iter()
                .find(|c| c.period == l.period && c.unit == unit)
                .expect("a cap for every window a charge holds a limit of");
            CapOf {
                scope: l.scope,
                who: l.who.clone(),
                cap: cap.name,
                limit: cap.limit,
                resets_in: Duration::from_secs(l.resets_in),
            }
        };
        match self.tally.charge(charges.clone()).await? {
            Ok(crossed) => {
                let events = crossed
                    .into_iter()
                    .map(
                        |Crossed {
                             charge,
                             measure,
                             used,
                         }| BudgetEvent::Threshold {
                            cap: named(charge, measure),
                            used,
                        },
                    )
                    .collect();
                Ok(Ok(Admission { charges, events }))
            }
            Err(Over::Creates(i)) => Ok(Err(named(i, Measure::Creates))),
            Err(Over::Gb(i)) => Ok(Err(named(i, Measure::Gb))),
        }
    }

    /// Gives an admission back: the create bought nothing.
    pub(crate) async fn refund(&self, admission: Admission) -> Stored<()> {
        self.tally.refund(admission.charges).await
    }

    /// What each set cap of each known account and client has used in its window at `now`, read
    /// from the counters (the fleet's, in shared mode); a window that has ended reads 0.
    pub(crate) async fn gauges(&self, now: u64) -> Stored<Vec<CapUse>> {
        let s = self.settings.load();
        let mut scopes: Vec<Whose> = s
            .accounts
            .iter()
            .filter(|_| s.account.any())
            .map(|account| Whose {
                scope: "account",
                who: account.clone(),
                account: account.clone(),
                key: format!("account|{account}"),
                caps: s.account,
            })
            .collect();
        let unnamed = self.unnamed.lock().expect("budget names").clone();
        let clients = s
            .clients
            .iter()
            .map(|(client, (account, _))| (account.clone(), client.clone()))
            .chain(
                unnamed
                    .into_iter()
                    .filter(|(_, c)| !s.clients.contains_key(c)),
            );
        for (account, client) in clients {
            let caps = s.client_caps(&client);
            if caps.any() {
                scopes.push(Whose {
                    scope: "client",
                    who: client.clone(),
                    key: format!("client|{account}|{client}"),
                    account,
                    caps,
                });
            }
        }
        // One read per account: a shared store keeps an account's counters together.
        let mut by_account: BTreeMap<String, Vec<(&Whose, Cap, String, u64)>> = BTreeMap::new();
        for scope in &scopes {
            for cap in scope.caps.set() {
                let w = window(cap.period, &s.tz, now);
                let key = format!("{}|{}", scope.key, w.key);
                by_account
                    .entry(scope.account.clone())
                    .or_default()
                    .push((scope, cap, key, w.ends));
            }
        }
        let mut out = Vec::new();
        for (account, caps) in by_account {
            let keys = caps.iter().map(|c| c.2.clone()).collect();
            let used = self.tally.read(account, keys).await?;
            for ((scope, cap, _, resets_at), used) in caps.into_iter().zip(used) {
                out.push(CapUse {
                    scope: scope.scope,
                    who: scope.who.clone(),
                    cap: cap.name,
                    used: match cap.unit {
                        Unit::Creates => used.creates,
                        Unit::Gb => used.gb,
                    },
                    limit: cap.limit,
                    resets_at,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
