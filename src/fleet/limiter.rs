//! The create limit for the whole fleet: the same GCRA with reservations as
//! [`crate::protect::gcra::MemoryLimiter::decide`], run atomically in Redis by one script on
//! Redis's own clock (`TIME`), so replicas with drifting clocks still share one schedule. Each
//! limit's theoretical arrival time is one key (microseconds), expiring once it is in the past.

use std::sync::Arc;
use std::time::Duration;

use crate::fleet::Fleet;
use crate::protect::gcra::{Decision, Limit, MemoryLimiter, RateLimiter, standing, tolerance};
use crate::store::error::Stored;
use crate::svc::BoxFuture;

/// KEYS: one per limit. ARGV: max_wait, then interval and tolerance per limit (microseconds).
/// Returns {go_at - now, refused limit (1-based, 0 = granted), then each limit's tat - now}.
const RESERVE: &str = r"
-- Redis before 5 replicates scripts verbatim, which TIME forbids; later versions do this anyway.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local max_wait = tonumber(ARGV[1])
local tats = {}
local go_at = now
local refused = 0
for i = 1, #KEYS do
  local tol = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat
  local at = tat - tol
  if at < now then at = now end
  if at > go_at then go_at = at end
  if at - now > max_wait and refused == 0 then refused = i end
end
if refused == 0 then
  for i = 1, #KEYS do
    local tat = tats[i]
    if tat < go_at then tat = go_at end
    tat = tat + tonumber(ARGV[2 * i])
    tats[i] = tat
    redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
  end
end
local out = {go_at - now, refused}
for i = 1, #KEYS do out[#out + 1] = tats[i] - now end
return out
";

pub(crate) struct RedisLimiter(Arc<Inner>);

struct Inner {
    fleet: Arc<Fleet>,
    script: redis::Script,
    local: Option<MemoryLimiter>,
}

impl RedisLimiter {
    pub(crate) fn new(fleet: Arc<Fleet>, fall_back_to_local: bool) -> RedisLimiter {
        RedisLimiter(Arc::new(Inner {
            fleet,
            script: redis::Script::new(RESERVE),
            local: fall_back_to_local.then(MemoryLimiter::new),
        }))
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn decision(limits: &[Limit], max_wait: Duration, out: &[i64]) -> Option<Decision> {
    let us = |v: i64| Duration::from_micros(v.max(0) as u64);
    let (&go_in, &refused) = (out.first()?, out.get(1)?);
    let aheads = out.get(2..2 + limits.len())?;
    let standing = limits
        .iter()
        .zip(aheads)
        .map(|(l, &ahead)| standing(l, us(ahead)))
        .collect();
    let go_in = us(go_in);
    Some(if refused == 0 {
        Decision::Granted {
            wait: go_in,
            standing,
        }
    } else {
        Decision::Refused {
            scope: limits.get(refused as usize - 1)?.scope,
            retry_after: go_in.saturating_sub(max_wait),
            standing,
        }
    })
}

impl RateLimiter for RedisLimiter {
    fn reserve(&self, limits: Vec<Limit>, max_wait: Duration) -> BoxFuture<Stored<Decision>> {
        let this = self.0.clone();
        Box::pin(async move {
            let mut inv = this.script.prepare_invoke();
            inv.arg(micros(max_wait));
            for l in &limits {
                inv.key(this.fleet.account_key(&l.account, &["rate", &l.key]));
                inv.arg(micros(l.rate.interval()))
                    .arg(micros(tolerance(&l.rate)));
            }
            let out: Result<Vec<i64>, _> = this
                .fleet
                .run("rate_limit", |mut c| async move {
                    inv.invoke_async(&mut c).await
                })
                .await;
            match (out, &this.local) {
                (Ok(out), _) => decision(&limits, max_wait, &out).ok_or_else(|| {
                    crate::store::error::StoreError::Unexpected("the rate script's answer".into())
                }),
                (Err(_), Some(local)) => local.reserve(limits, max_wait).await,
                (Err(e), None) => Err(e),
            }
        })
    }
}
