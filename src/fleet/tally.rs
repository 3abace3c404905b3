//! The spending guard's counters for the whole fleet: one hash per window (`c` creates, `g` GB,
//! and `wc` / `wg` once a soft threshold was reported), checked and charged by one script so that
//! replicas admitting at once never pass a cap together, and a threshold is reported by one
//! replica once per window. Each hash expires after its window. The keys and fields are those the
//! counters had before thresholds and months existed, so an upgrade keeps the counts.

use std::sync::Arc;

use crate::fleet::{Fleet, px};
use crate::protect::budget::tally::{Charge, Crossed, Measure, MemoryTally, Over, Tally, Used};
use crate::store::error::StoreError;
use crate::store::error::Stored;
use crate::svc::BoxFuture;

/// KEYS: the windows. ARGV: per window gb, max_creates, max_gb, warn_creates, warn_gb, ttl_ms
/// (0 = no cap, no threshold). Returns `{n}` with n = 2*i+1 (creates cap of window i, 0-based)
/// or 2*i+2 (GB cap) when over a cap, else `{0, code, used, ...}`: each threshold reached first
/// by this charge (its code as above) and the counter's value after it.
const CHARGE: &str = r"
for i = 1, #KEYS do
  local gb, max_c, max_g = tonumber(ARGV[6*i-5]), tonumber(ARGV[6*i-4]), tonumber(ARGV[6*i-3])
  local c = tonumber(redis.call('HGET', KEYS[i], 'c') or 0)
  local g = tonumber(redis.call('HGET', KEYS[i], 'g') or 0)
  if max_c > 0 and c >= max_c then return {2 * (i - 1) + 1} end
  if max_g > 0 and g + gb > max_g then return {2 * (i - 1) + 2} end
end
local out = {0}
for i = 1, #KEYS do
  local warn_c, warn_g = tonumber(ARGV[6*i-2]), tonumber(ARGV[6*i-1])
  local c = redis.call('HINCRBY', KEYS[i], 'c', 1)
  local g = redis.call('HINCRBY', KEYS[i], 'g', tonumber(ARGV[6*i-5]))
  redis.call('PEXPIRE', KEYS[i], ARGV[6*i])
  if warn_c > 0 and c >= warn_c and redis.call('HSETNX', KEYS[i], 'wc', 1) == 1 then
    table.insert(out, 2 * (i - 1) + 1)
    table.insert(out, c)
  end
  if warn_g > 0 and g >= warn_g and redis.call('HSETNX', KEYS[i], 'wg', 1) == 1 then
    table.insert(out, 2 * (i - 1) + 2)
    table.insert(out, g)
  end
end
return out
";

/// Gives one create back, never below zero.
const REFUND: &str = r#"
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local c = redis.call('HINCRBY', KEYS[i], 'c', -1)
    if c < 0 then redis.call('HSET', KEYS[i], 'c', 0) end
    -- `0 - n`, not `-n`: Lua turns -0 into "-0", which HINCRBY refuses (a host create has 0 GB).
    local g = redis.call('HINCRBY', KEYS[i], 'g', 0 - tonumber(ARGV[i]))
    if g < 0 then redis.call('HSET', KEYS[i], 'g', 0) end
  end
end
return 0
"#;

/// The creates and GB of each window (0 for one gone), in one round trip for one account.
const READ: &str = r"
local out = {}
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'c', 'g')
  table.insert(out, tonumber(v[1] or 0))
  table.insert(out, tonumber(v[2] or 0))
end
return out
";

pub(crate) struct RedisTally(Arc<Inner>);

struct Inner {
    fleet: Arc<Fleet>,
    charge: redis::Script,
    refund: redis::Script,
    read: redis::Script,
    local: Option<MemoryTally>,
}

impl RedisTally {
    pub(crate) fn new(fleet: Arc<Fleet>, fall_back_to_local: bool) -> RedisTally {
        RedisTally(Arc::new(Inner {
            fleet,
            charge: redis::Script::new(CHARGE),
            refund: redis::Script::new(REFUND),
            read: redis::Script::new(READ),
            local: fall_back_to_local.then(MemoryTally::default),
        }))
    }
}

impl Inner {
    fn key(&self, account: &str, key: &str) -> String {
        self.fleet.account_key(account, &["budget", key])
    }
}

/// A script's code for charge `i`'s cap or threshold (see [`CHARGE`]), decoded.
fn decode(code: i64) -> (usize, Measure) {
    let i = ((code - 1) / 2) as usize;
    let measure = if code % 2 == 1 {
        Measure::Creates
    } else {
        Measure::Gb
    };
    (i, measure)
}

/// The charge script's answer, read.
fn charged(out: &[i64], charges: usize) -> Stored<Result<Vec<Crossed>, Over>> {
    let unexpected = || StoreError::Unexpected(format!("budget answer {out:?}"));
    let in_range = |code: i64| code > 0 && decode(code).0 < charges;
    match out {
        [0, rest @ ..] if rest.len() % 2 == 0 => rest
            .chunks(2)
            .map(|pair| {
                let (charge, measure) = decode(pair[0]);
                in_range(pair[0])
                    .then_some(Crossed {
                        charge,
                        measure,
                        used: pair[1].max(0) as u64,
                    })
                    .ok_or_else(unexpected)
            })
            .collect::<Result<_, _>>()
            .map(Ok),
        [code] if in_range(*code) => Ok(Err(match decode(*code) {
            (i, Measure::Creates) => Over::Creates(i),
            (i, Measure::Gb) => Over::Gb(i),
        })),
        _ => Err(unexpected()),
    }
}

impl Tally for RedisTally {
    fn charge(&self, charges: Vec<Charge>) -> BoxFuture<Stored<Result<Vec<Crossed>, Over>>> {
        let this = self.0.clone();
        Box::pin(async move {
            let mut inv = this.charge.prepare_invoke();
            for c in &charges {
                inv.key(this.key(&c.account, &c.key));
                inv.arg(c.gb)
                    .arg(c.max_creates)
                    .arg(c.max_gb)
                    .arg(c.warn_creates)
                    .arg(c.warn_gb)
                    .arg(px(c.ttl));
            }
            let out: Result<Vec<i64>, _> = this
                .fleet
                .run(
                    "budget",
                    |mut c| async move { inv.invoke_async(&mut c).await },
                )
                .await;
            match (out, &this.local) {
                (Ok(out), _) => charged(&out, charges.len()),
                (Err(_), Some(local)) => local.charge(charges).await,
                (Err(e), None) => Err(e),
            }
        })
    }

    fn refund(&self, charges: Vec<Charge>) -> BoxFuture<Stored<()>> {
        let this = self.0.clone();
        Box::pin(async move {
            let mut inv = this.refund.prepare_invoke();
            for c in &charges {
                inv.key(this.key(&c.account, &c.key));
                inv.arg(c.gb);
            }
            let out: Result<i64, _> = this
                .fleet
                .run(
                    "budget",
                    |mut c| async move { inv.invoke_async(&mut c).await },
                )
                .await;
            match (out, &this.local) {
                (Ok(_), _) => Ok(()),
                (Err(_), Some(local)) => local.refund(charges).await,
                (Err(e), None) => Err(e),
            }
        })
    }

    fn read(&self, account: String, keys: Vec<String>) -> BoxFuture<Stored<Vec<Used>>> {
        let this = self.0.clone();
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut inv = this.read.prepare_invoke();
            for k in &keys {
                inv.key(this.key(&account, k));
            }
            let out: Result<Vec<i64>, _> = this
                .fleet
                .run(
                    "budget",
                    |mut c| async move { inv.invoke_async(&mut c).await },
                )
                .await;
            match (out, &this.local) {
                (Ok(out), _) if out.len() == 2 * keys.len() => Ok(out
                    .chunks(2)
                    .map(|v| Used {
                        creates: v[0].max(0) as u64,
                        gb: v[1].max(0) as u64,
                    })
                    .collect()),
                (Ok(out), _) => Err(StoreError::Unexpected(format!("budget read {out:?}"))),
                (Err(_), Some(local)) => local.read(account, keys).await,
                (Err(e), None) => Err(e),
            }
        })
    }
}
