//! The spending guard: caps on creates per hour and per day and on GB of disk per day, for each
//! account and each client, counted in clock windows (UTC). A create is admitted against every cap
//! it falls under or refused before it costs anything; an admission is refunded when the create
//! did not buy anything. Off unless `[create.budget]` sets a cap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::now_secs;
use crate::protect::policy::BudgetConfig;
use crate::store::error::Stored;
use crate::svc::BoxFuture;
use crate::swap::Swap;

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// One counter of one clock window (`account|a|h|493812`), what a create adds to it, and its caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Charge {
    /// The account charged (a shared store keeps an account's counters together).
    pub(crate) account: String,
    pub(crate) key: String,
    pub(crate) gb: u64,
    /// 0 = no cap.
    pub(crate) max_creates: u64,
    pub(crate) max_gb: u64,
    /// The counter is of no use after this (the window's end, plus a margin for clock skew).
    pub(crate) ttl: Duration,
}

/// Which cap a charge would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Over {
    Creates(usize),
    Gb(usize),
}

/// Where the counters live: this replica's memory, or Redis for the fleet. `charge` adds every
/// charge or none, atomically.
pub(crate) trait Ledger: Send + Sync + 'static {
    fn charge(&self, charges: Vec<Charge>) -> BoxFuture<Stored<Result<(), Over>>>;
    fn refund(&self, charges: Vec<Charge>) -> BoxFuture<Stored<()>>;
}

#[derive(Debug, Clone, Copy, Default)]
struct Spent {
    creates: u64,
    gb: u64,
    until_secs: u64,
}

/// The counters in memory.
#[derive(Default)]
pub(crate) struct MemoryLedger {
    spent: Mutex<HashMap<String, Spent>>,
}

impl MemoryLedger {
    /// Checks and adds at `now` (seconds since the epoch).
    pub(crate) fn charge_at(&self, charges: &[Charge], now: u64) -> Result<(), Over> {
        let mut spent = self.spent.lock().expect("budget state");
        // Windows that have passed are of no use any more.
        spent.retain(|_, s| s.until_secs > now);
        for (i, c) in charges.iter().enumerate() {
            let s = spent.get(&c.key).copied().unwrap_or_default();
            if c.max_creates > 0 && s.creates >= c.max_creates {
                return Err(Over::Creates(i));
            }
            if c.max_gb > 0 && s.gb + c.gb > c.max_gb {
                return Err(Over::Gb(i));
            }
        }
        for c in charges {
            let s = spent.entry(c.key.clone()).or_default();
            s.creates += 1;
            s.gb += c.gb;
            s.until_secs = now + c.ttl.as_secs();
        }
        Ok(())
    }
}

impl Ledger for MemoryLedger {
    fn charge(&self, charges: Vec<Charge>) -> BoxFuture<Stored<Result<(), Over>>> {
        Box::pin(std::future::ready(Ok(self.charge_at(&charges, now_secs()))))
    }

    fn refund(&self, charges: Vec<Charge>) -> BoxFuture<Stored<()>> {
        let mut spent = self.spent.lock().expect("budget state");
        for c in charges {
            if let Some(s) = spent.get_mut(&c.key) {
                s.creates = s.creates.saturating_sub(1);
                s.gb = s.gb.saturating_sub(c.gb);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A refused create: which cap, of whom, and when it resets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OverCap {
    /// `account` or `client`.
    pub(crate) scope: &'static str,
    pub(crate) who: String,
    /// `creates_per_hour`, `creates_per_day` or `gb_per_day`.
    pub(crate) cap: &'static str,
    pub(crate) limit: u64,
    pub(crate) resets_in: Duration,
}

/// What an admission charged, to refund it.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    charges: Vec<Charge>,
}

pub(crate) struct Budget {
    /// Swapped by a reload; an admission counts against the caps current when it is made.
    caps: Swap<BudgetConfig>,
    ledger: Arc<dyn Ledger>,
}

/// Who a charge is for, to name the cap it would pass.
struct Labels {
    scope: &'static str,
    who: String,
    hourly: bool,
    resets_in: u64,
}

impl Budget {
    pub(crate) fn new(caps: BudgetConfig, ledger: Arc<dyn Ledger>) -> Budget {
        Budget {
            caps: Swap::new(caps),
            ledger,
        }
    }

    /// New caps (a reload): counters already charged stay, measured against them.
    pub(crate) fn set_caps(&self, caps: BudgetConfig) {
        self.caps.store(caps);
    }

    pub(crate) fn enabled(&self) -> bool {
        self.caps.with(|c| c.account.any() || c.client.any())
    }

    /// The charges of one create of `gb` GB (0 for hosts) at `now` (seconds since the epoch).
    fn charges(&self, account: &str, client: &str, gb: u64, now: u64) -> Vec<(Charge, Labels)> {
        let caps = self.caps.load();
        let scopes = [
            (
                "account",
                format!("account|{account}"),
                account,
                caps.account,
            ),
            (
                "client",
                format!("client|{account}|{client}"),
                client,
                caps.client,
            ),
        ];
        let mut out = Vec::new();
        for (scope, key, who, caps) in scopes.into_iter().filter(|s| s.3.any()) {
            let hour_end = HOUR - now % HOUR;
            let day_end = DAY - now % DAY;
            let margin = Duration::from_secs(HOUR);
            out.push((
                Charge {
                    account: account.to_string(),
                    key: format!("{key}|h|{}", now / HOUR),
                    gb: 0,
                    max_creates: caps.creates_per_hour,
                    max_gb: 0,
                    ttl: Duration::from_secs(hour_end) + margin,
                },
                Labels {
                    scope,
                    who: who.to_string(),
                    hourly: true,
                    resets_in: hour_end,
                },
            ));
            out.push((
                Charge {
                    account: account.to_string(),
                    key: format!("{key}|d|{}", now / DAY),
                    gb,
                    max_creates: caps.creates_per_day,
                    max_gb: caps.gb_per_day,
                    ttl: Duration::from_secs(day_end) + margin,
                },
                Labels {
                    scope,
                    who: who.to_string(),
                    hourly: false,
                    resets_in: day_end,
                },
            ));
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
        let (charges, labels): (Vec<_>, Vec<_>) =
            self.charges(account, client, gb, now).into_iter().unzip();
        let over = match self.ledger.charge(charges.clone()).await? {
            Ok(()) => return Ok(Ok(Admission { charges })),
            Err(over) => over,
        };
        let (i, gb_cap) = match over {
            Over::Creates(i) => (i, false),
            Over::Gb(i) => (i, true),
        };
        let (c, l) = (&charges[i], &labels[i]);
        let (cap, limit) = match (gb_cap, l.hourly) {
            (true, _) => ("gb_per_day", c.max_gb),
            (false, true) => ("creates_per_hour", c.max_creates),
            (false, false) => ("creates_per_day", c.max_creates),
        };
        Ok(Err(OverCap {
            scope: l.scope,
            who: l.who.clone(),
            cap,
            limit,
            resets_in: Duration::from_secs(l.resets_in),
        }))
    }

    /// Gives an admission back: the create bought nothing.
    pub(crate) async fn refund(&self, admission: Admission) -> Stored<()> {
        self.ledger.refund(admission.charges).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protect::policy::Caps;

    fn budget(account: Caps, client: Caps) -> Budget {
        Budget::new(
            BudgetConfig { account, client },
            Arc::new(MemoryLedger::default()),
        )
    }

    #[tokio::test]
    async fn daily_cap_refuses_the_next_and_names_it() {
        let b = budget(
            Caps::default(),
            Caps {
                creates_per_day: 2,
                ..Caps::default()
            },
        );
        let now = 10 * DAY + 5 * HOUR;
        b.admit("a", "svc", 20, now).await.unwrap().unwrap();
        b.admit("a", "svc", 20, now).await.unwrap().unwrap();
        let over = b.admit("a", "svc", 20, now).await.unwrap().unwrap_err();
        assert_eq!(
            (over.scope, over.cap, over.limit),
            ("client", "creates_per_day", 2)
        );
        assert_eq!(over.resets_in, Duration::from_secs(19 * HOUR));
        assert!(
            b.admit("a", "other", 20, now).await.unwrap().is_ok(),
            "another client has its own budget"
        );
        assert!(
            b.admit("a", "svc", 20, 11 * DAY).await.unwrap().is_ok(),
            "a new day"
        );
    }

    #[tokio::test]
    async fn gb_cap_and_refunds() {
        let b = budget(
            Caps {
                gb_per_day: 100,
                ..Caps::default()
            },
            Caps::default(),
        );
        let a = b.admit("acct", "c1", 60, 0).await.unwrap().unwrap();
        assert_eq!(
            b.admit("acct", "c2", 60, 0).await.unwrap().unwrap_err().cap,
            "gb_per_day"
        );
        b.refund(a).await.unwrap();
        assert!(b.admit("acct", "c2", 60, 0).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn the_hourly_cap_resets_on_the_hour_and_says_when() {
        let b = budget(
            Caps {
                creates_per_hour: 2,
                ..Caps::default()
            },
            Caps::default(),
        );
        let last_second = 7 * DAY + 13 * HOUR + 3599;
        b.admit("a", "svc", 20, last_second).await.unwrap().unwrap();
        b.admit("a", "other", 20, last_second)
            .await
            .unwrap()
            .unwrap();
        let over = b
            .admit("a", "third", 20, last_second)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            (over.scope, over.who.as_str(), over.cap, over.limit),
            ("account", "a", "creates_per_hour", 2),
            "an account cap counts every client of the account"
        );
        assert_eq!(over.resets_in, Duration::from_secs(1));
        let next_hour = last_second + 1;
        b.admit("a", "svc", 20, next_hour).await.unwrap().unwrap();
        b.admit("a", "svc", 20, next_hour).await.unwrap().unwrap();
        let over = b
            .admit("a", "svc", 20, next_hour)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(over.resets_in, Duration::from_secs(HOUR));
        assert!(
            b.admit("b", "svc", 20, next_hour).await.unwrap().is_ok(),
            "another account has its own budget"
        );
    }

    #[tokio::test]
    async fn the_daily_cap_spans_the_hours_and_resets_at_midnight_utc() {
        let b = budget(
            Caps {
                creates_per_hour: 10,
                creates_per_day: 3,
                ..Caps::default()
            },
            Caps::default(),
        );
        let day = 20 * DAY;
        for hour in [0, 9, 23] {
            b.admit("a", "svc", 20, day + hour * HOUR)
                .await
                .unwrap()
                .unwrap();
        }
        let over = b
            .admit("a", "svc", 20, day + DAY - 1)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!((over.cap, over.limit), ("creates_per_day", 3));
        assert_eq!(over.resets_in, Duration::from_secs(1));
        assert!(b.admit("a", "svc", 20, day + DAY).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_refused_create_charges_no_cap() {
        let b = budget(
            Caps {
                creates_per_day: 5,
                gb_per_day: 50,
                ..Caps::default()
            },
            Caps::default(),
        );
        b.admit("a", "svc", 40, 0).await.unwrap().unwrap();
        // Over the GB cap: refused, and neither the GB nor the create counter moved.
        for _ in 0..3 {
            let over = b.admit("a", "svc", 20, 0).await.unwrap().unwrap_err();
            assert_eq!(over.cap, "gb_per_day");
        }
        for _ in 0..4 {
            b.admit("a", "svc", 0, 0).await.unwrap().unwrap();
        }
        let over = b.admit("a", "svc", 0, 0).await.unwrap().unwrap_err();
        assert_eq!(over.cap, "creates_per_day", "five admitted in all");
    }
}
