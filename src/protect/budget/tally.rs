//! The spending guard's counters (its "tally"): per clock or calendar window, how many creates
//! and GB were admitted. A [`Tally`] charges every counter of one create or none of them,
//! atomically, and says which soft thresholds the charge crossed, each once per window. This
//! replica's memory holds them here ([`MemoryTally`]); `crate::fleet::tally` holds them in Redis
//! for a fleet. One conformance suite runs against both (`crate::store::conformance::tally`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::now_secs;
use crate::store::error::Stored;
use crate::svc::BoxFuture;

/// One counter of one window (`account|a|h|493812`), what a create adds to it, and its caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Charge {
    /// The account charged (a shared store keeps an account's counters together).
    pub(crate) account: String,
    pub(crate) key: String,
    pub(crate) gb: u64,
    /// 0 = no cap.
    pub(crate) max_creates: u64,
    pub(crate) max_gb: u64,
    /// Soft thresholds: reaching one is reported once per window; 0 = none.
    pub(crate) warn_creates: u64,
    pub(crate) warn_gb: u64,
    /// The counter is of no use after this (the window's end, plus a margin for clock skew).
    pub(crate) ttl: Duration,
}

/// What a counter measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Measure {
    Creates,
    Gb,
}

/// Which cap a charge would pass, by the charge's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Over {
    Creates(usize),
    Gb(usize),
}

/// A soft threshold an admitted charge reached first in its window: the charge's index, what it
/// measures, and the counter's value after the charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Crossed {
    pub(crate) charge: usize,
    pub(crate) measure: Measure,
    pub(crate) used: u64,
}

/// A counter's value: 0 for a window that has ended or saw nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Used {
    pub(crate) creates: u64,
    pub(crate) gb: u64,
}

/// Where the counters live: this replica's memory, or Redis for the fleet. `charge` adds every
/// charge or none, atomically.
pub(crate) trait Tally: Send + Sync + 'static {
    fn charge(&self, charges: Vec<Charge>) -> BoxFuture<Stored<Result<Vec<Crossed>, Over>>>;
    fn refund(&self, charges: Vec<Charge>) -> BoxFuture<Stored<()>>;
    /// The values of one account's counters `keys`, in their order.
    fn read(&self, account: String, keys: Vec<String>) -> BoxFuture<Stored<Vec<Used>>>;
}

#[derive(Debug, Clone, Copy, Default)]
struct Spent {
    used: Used,
    until_secs: u64,
    warned_creates: bool,
    warned_gb: bool,
}

/// The counters in memory.
#[derive(Default)]
pub(crate) struct MemoryTally {
    spent: Mutex<HashMap<String, Spent>>,
}

impl MemoryTally {
    /// Checks and adds at `now` (seconds since the epoch).
    pub(crate) fn charge_at(&self, charges: &[Charge], now: u64) -> Result<Vec<Crossed>, Over> {
        let mut spent = self.spent.lock().expect("budget state");
        // Windows that have passed are of no use any more.
        spent.retain(|_, s| s.until_secs > now);
        for (i, c) in charges.iter().enumerate() {
            let s = spent.get(&c.key).copied().unwrap_or_default().used;
            if c.max_creates > 0 && s.creates >= c.max_creates {
                return Err(Over::Creates(i));
            }
            if c.max_gb > 0 && s.gb + c.gb > c.max_gb {
                return Err(Over::Gb(i));
            }
        }
        let mut crossed = Vec::new();
        for (i, c) in charges.iter().enumerate() {
            let s = spent.entry(c.key.clone()).or_default();
            s.used.creates += 1;
            s.used.gb += c.gb;
            s.until_secs = now + c.ttl.as_secs();
            if c.warn_creates > 0 && s.used.creates >= c.warn_creates && !s.warned_creates {
                s.warned_creates = true;
                crossed.push(Crossed {
                    charge: i,
                    measure: Measure::Creates,
                    used: s.used.creates,
                });
            }
            if c.warn_gb > 0 && s.used.gb >= c.warn_gb && !s.warned_gb {
                s.warned_gb = true;
                crossed.push(Crossed {
                    charge: i,
                    measure: Measure::Gb,
                    used: s.used.gb,
                });
            }
        }
        Ok(crossed)
    }

    /// The counters `keys` at `now`.
    pub(crate) fn read_at(&self, keys: &[String], now: u64) -> Vec<Used> {
        let spent = self.spent.lock().expect("budget state");
        keys.iter()
            .map(|k| {
                spent
                    .get(k)
                    .filter(|s| s.until_secs > now)
                    .map(|s| s.used)
                    .unwrap_or_default()
            })
            .collect()
    }
}

impl Tally for MemoryTally {
    fn charge(&self, charges: Vec<Charge>) -> BoxFuture<Stored<Result<Vec<Crossed>, Over>>> {
        Box::pin(std::future::ready(Ok(self.charge_at(&charges, now_secs()))))
    }

    fn refund(&self, charges: Vec<Charge>) -> BoxFuture<Stored<()>> {
        let mut spent = self.spent.lock().expect("budget state");
        for c in charges {
            if let Some(s) = spent.get_mut(&c.key) {
                s.used.creates = s.used.creates.saturating_sub(1);
                s.used.gb = s.used.gb.saturating_sub(c.gb);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn read(&self, _account: String, keys: Vec<String>) -> BoxFuture<Stored<Vec<Used>>> {
        Box::pin(std::future::ready(Ok(self.read_at(&keys, now_secs()))))
    }
}
