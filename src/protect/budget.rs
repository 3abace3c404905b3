//! The spending guard: caps on creates per hour and per day and on GB of disk per day, for each
//! account and each client, counted in clock windows (UTC). A create is admitted against every cap
//! it falls under or refused before it costs anything; an admission is refunded when the create
//! did not buy anything. Off unless `[create.budget]` sets a cap.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::protect::policy::{BudgetConfig, Caps};

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Window {
    Hour(u64),
    Day(u64),
}

#[derive(Debug, Clone, Copy, Default)]
struct Spent {
    creates: u64,
    gb: u64,
}

/// A refused create: which cap, of whom, and when it resets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverCap {
    /// `account` or `client`.
    pub scope: &'static str,
    pub who: String,
    /// `creates_per_hour`, `creates_per_day` or `gb_per_day`.
    pub cap: &'static str,
    pub limit: u64,
    pub resets_in: Duration,
}

/// What an admission charged, to refund it.
#[derive(Debug, Clone)]
pub struct Admission {
    charges: Vec<(String, Window, u64)>,
}

pub struct Budget {
    caps: BudgetConfig,
    spent: Mutex<HashMap<(String, Window), Spent>>,
}

impl Budget {
    pub fn new(caps: BudgetConfig) -> Budget {
        Budget {
            caps,
            spent: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.caps.account.any() || self.caps.client.any()
    }

    /// Admits one create of `gb` GB (0 for hosts) at `now` (seconds since the epoch), or names the cap.
    pub fn admit(
        &self,
        account: &str,
        client: &str,
        gb: u64,
        now: u64,
    ) -> Result<Admission, OverCap> {
        let (hour, day) = (Window::Hour(now / HOUR), Window::Day(now / DAY));
        let scopes = [
            (
                "account",
                format!("account|{account}"),
                account,
                self.caps.account,
            ),
            (
                "client",
                format!("client|{account}|{client}"),
                client,
                self.caps.client,
            ),
        ];
        let mut spent = self.spent.lock().expect("budget state");
        // Windows that have passed are of no use any more.
        spent.retain(|(_, w), _| match w {
            Window::Hour(h) => *h >= now / HOUR,
            Window::Day(d) => *d >= now / DAY,
        });
        for (scope, key, who, caps) in &scopes {
            let get = |w| spent.get(&(key.clone(), w)).copied().unwrap_or_default();
            let over = |cap: &'static str, limit: u64, resets_in: u64| OverCap {
                scope,
                who: who.to_string(),
                cap,
                limit,
                resets_in: Duration::from_secs(resets_in),
            };
            let Caps {
                creates_per_hour,
                creates_per_day,
                gb_per_day,
            } = *caps;
            if creates_per_hour > 0 && get(hour).creates >= creates_per_hour {
                return Err(over(
                    "creates_per_hour",
                    creates_per_hour,
                    HOUR - now % HOUR,
                ));
            }
            if creates_per_day > 0 && get(day).creates >= creates_per_day {
                return Err(over("creates_per_day", creates_per_day, DAY - now % DAY));
            }
            if gb_per_day > 0 && get(day).gb + gb > gb_per_day {
                return Err(over("gb_per_day", gb_per_day, DAY - now % DAY));
            }
        }
        let mut charges = Vec::new();
        for (_, key, _, _) in scopes.into_iter().filter(|s| s.3.any()) {
            for w in [hour, day] {
                let s = spent.entry((key.clone(), w)).or_default();
                s.creates += 1;
                if matches!(w, Window::Day(_)) {
                    s.gb += gb;
                }
                charges.push((
                    key.clone(),
                    w,
                    if matches!(w, Window::Day(_)) { gb } else { 0 },
                ));
            }
        }
        Ok(Admission { charges })
    }

    /// Gives an admission back: the create bought nothing.
    pub fn refund(&self, admission: Admission) {
        let mut spent = self.spent.lock().expect("budget state");
        for (key, w, gb) in admission.charges {
            if let Some(s) = spent.get_mut(&(key, w)) {
                s.creates = s.creates.saturating_sub(1);
                s.gb = s.gb.saturating_sub(gb);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(account: Caps, client: Caps) -> Budget {
        Budget::new(BudgetConfig { account, client })
    }

    #[test]
    fn daily_cap_refuses_the_next_and_names_it() {
        let b = budget(
            Caps::default(),
            Caps {
                creates_per_day: 2,
                ..Caps::default()
            },
        );
        let now = 10 * DAY + 5 * HOUR;
        b.admit("a", "svc", 20, now).unwrap();
        b.admit("a", "svc", 20, now).unwrap();
        let over = b.admit("a", "svc", 20, now).unwrap_err();
        assert_eq!(
            (over.scope, over.cap, over.limit),
            ("client", "creates_per_day", 2)
        );
        assert_eq!(over.resets_in, Duration::from_secs(19 * HOUR));
        assert!(
            b.admit("a", "other", 20, now).is_ok(),
            "another client has its own budget"
        );
        assert!(b.admit("a", "svc", 20, 11 * DAY).is_ok(), "a new day");
    }

    #[test]
    fn gb_cap_and_refunds() {
        let b = budget(
            Caps {
                gb_per_day: 100,
                ..Caps::default()
            },
            Caps::default(),
        );
        let a = b.admit("acct", "c1", 60, 0).unwrap();
        assert_eq!(b.admit("acct", "c2", 60, 0).unwrap_err().cap, "gb_per_day");
        b.refund(a);
        assert!(b.admit("acct", "c2", 60, 0).is_ok());
    }
}
