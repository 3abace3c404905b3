//! The spending guard's counters for the whole fleet: one hash per clock window (`c` creates, `g`
//! GB), checked and charged by one script so that replicas admitting at once never pass a cap
//! together. Each hash expires after its window.

use std::sync::Arc;

use crate::fleet::{Fleet, px};
use crate::protect::budget::{Charge, Ledger, MemoryLedger, Over};
use crate::store::error::StoreError;
use crate::store::error::Stored;
use crate::svc::BoxFuture;

/// KEYS: the windows. ARGV: per window gb, max_creates, max_gb, ttl_ms (0 = no cap).
/// Returns 0 when charged, else 2*i+1 (creates cap of window i, 0-based) or 2*i+2 (GB cap).
const CHARGE: &str = r"
for i = 1, #KEYS do
  local gb, max_c, max_g = tonumber(ARGV[4*i-3]), tonumber(ARGV[4*i-2]), tonumber(ARGV[4*i-1])
  local c = tonumber(redis.call('HGET', KEYS[i], 'c') or 0)
  local g = tonumber(redis.call('HGET', KEYS[i], 'g') or 0)
  if max_c > 0 and c >= max_c then return 2 * (i - 1) + 1 end
  if max_g > 0 and g + gb > max_g then return 2 * (i - 1) + 2 end
end
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'c', 1)
  redis.call('HINCRBY', KEYS[i], 'g', tonumber(ARGV[4*i-3]))
  redis.call('PEXPIRE', KEYS[i], ARGV[4*i])
end
return 0
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

pub(crate) struct RedisLedger(Arc<Inner>);

struct Inner {
    fleet: Arc<Fleet>,
    charge: redis::Script,
    refund: redis::Script,
    local: Option<MemoryLedger>,
}

impl RedisLedger {
    pub(crate) fn new(fleet: Arc<Fleet>, fall_back_to_local: bool) -> RedisLedger {
        RedisLedger(Arc::new(Inner {
            fleet,
            charge: redis::Script::new(CHARGE),
            refund: redis::Script::new(REFUND),
            local: fall_back_to_local.then(MemoryLedger::default),
        }))
    }
}

impl Ledger for RedisLedger {
    fn charge(&self, charges: Vec<Charge>) -> BoxFuture<Stored<Result<(), Over>>> {
        let this = self.0.clone();
        Box::pin(async move {
            let mut inv = this.charge.prepare_invoke();
            for c in &charges {
                inv.key(this.fleet.account_key(&c.account, &["budget", &c.key]));
                inv.arg(c.gb)
                    .arg(c.max_creates)
                    .arg(c.max_gb)
                    .arg(px(c.ttl));
            }
            let out: Result<i64, _> = this
                .fleet
                .run(
                    "budget",
                    |mut c| async move { inv.invoke_async(&mut c).await },
                )
                .await;
            match (out, &this.local) {
                (Ok(0), _) => Ok(Ok(())),
                (Ok(n), _) if n > 0 => {
                    let i = ((n - 1) / 2) as usize;
                    Ok(Err(if n % 2 == 1 {
                        Over::Creates(i)
                    } else {
                        Over::Gb(i)
                    }))
                }
                (Ok(n), _) => Err(StoreError::Unexpected(format!("budget answer {n}"))),
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
                inv.key(this.fleet.account_key(&c.account, &["budget", &c.key]));
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
}
