//! One upstream token per account for the whole fleet. The token lives in Redis with its expiry
//! (`expires_ms|lifetime_ms|token`, expiring with it); whoever finds it missing or due takes the
//! refresh lock (`SET NX PX lock_ttl` with a fence), calls `getToken`, and writes the new token
//! only while still holding the lock. The others wait for it. A token the upstream rejected (or a
//! client reported refused) is marked refused for the fleet (a sorted set of its SHA-1, scored by
//! its expiry, the key expiring with the last of them): no replica takes it from the store or
//! leases it again. The store keeps it until its replacement is written over it, so the replica
//! that replaces it is the one that holds the getToken gate, and no replica finds the fleet
//! without a token meanwhile.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::now_ms;
use crate::fleet::{Fleet, UNLOCK, fence, px};
use crate::secret::Secret;
use crate::store::error::StoreError;

/// Writes the token if the lock is still ours, then frees the lock.
const PUBLISH: &str = r"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
";

/// The stored token (`''` when none), whether it is refused, and whether the token `ARGV[2]` (a
/// replica's own, `''` for none) is. `ARGV[1]` is now, in epoch ms.
const READ: &str = r"
local function refused(t)
  if t == '' then return 0 end
  local s = redis.call('ZSCORE', KEYS[2], redis.sha1hex(t))
  if s and tonumber(s) > tonumber(ARGV[1]) then return 1 end
  return 0
end
local v = redis.call('GET', KEYS[1]) or ''
local t = string.match(v, '^[^|]*|[^|]*|(.*)$') or ''
return {v, refused(t), refused(ARGV[2])}
";

/// Marks the token `ARGV[1]` refused until its expiry `ARGV[2]` (epoch ms; now is `ARGV[3]`),
/// forgets marks whose token has expired, and lets the set expire with its last token.
const MARK: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], redis.sha1hex(ARGV[1]))
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(last[2]) - tonumber(ARGV[3])))
return 1
";

/// Takes the gate for `ARGV[1]` ms (`ARGV[2]` = `1`: even if another holds it) and answers -1, or
/// answers how many ms the gate stays closed.
const GATE: &str = r"
if ARGV[2] == '1' then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
  return -1
end
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return -1 end
return redis.call('PTTL', KEYS[1])
";

/// A token as the fleet shares it.
#[derive(Clone)]
pub(crate) struct SharedToken {
    pub(crate) token: Secret,
    pub(crate) expires_ms: u64,
    pub(crate) lifetime: Duration,
    /// Marked refused for the fleet: never taken or leased (see [`TokenStore::mark_refused`]).
    pub(crate) refused: bool,
}

pub(crate) struct TokenStore {
    fleet: Arc<Fleet>,
    publish: redis::Script,
    read: redis::Script,
    mark: redis::Script,
    gate: redis::Script,
    unlock: redis::Script,
}

impl TokenStore {
    pub(crate) fn new(fleet: Arc<Fleet>) -> TokenStore {
        TokenStore {
            fleet,
            publish: redis::Script::new(PUBLISH),
            read: redis::Script::new(READ),
            mark: redis::Script::new(MARK),
            gate: redis::Script::new(GATE),
            unlock: redis::Script::new(UNLOCK),
        }
    }

    fn key(&self, account: &str) -> String {
        self.fleet.account_key(account, &["token"])
    }

    fn lock_key(&self, account: &str) -> String {
        self.fleet.account_key(account, &["lock", "token"])
    }

    fn gate_key(&self, account: &str) -> String {
        self.fleet.account_key(account, &["token-gate"])
    }

    fn refused_key(&self, account: &str) -> String {
        self.fleet.account_key(account, &["token-refused"])
    }

    /// Whether this replica may call `getToken` now: `None` for one replica per `interval` (the
    /// fleet's `min_refresh_interval`, which the key's expiry measures), else how long the gate
    /// stays closed. With `force` the gate is taken whoever held it: new credentials are tried
    /// at once, and the others still wait `interval` after.
    pub(crate) async fn gate(
        &self,
        account: &str,
        interval: Duration,
        force: bool,
    ) -> Result<Option<Duration>, StoreError> {
        let mut inv = self.gate.key(self.gate_key(account));
        inv.arg(px(interval)).arg(if force { "1" } else { "0" });
        let left: i64 = self
            .fleet
            .run("token_gate", |mut c| async move {
                inv.invoke_async::<i64>(&mut c).await
            })
            .await?;
        // -2: the gate expired between the two commands; the next try takes it.
        Ok(match left {
            -1 => None,
            ms => Some(Duration::from_millis(ms.max(1) as u64)),
        })
    }

    /// `SET key value NX PX ttl`: whether this call set it.
    /// `op` labels its failures in `redis_errors_total`.
    async fn set_nx(
        &self,
        op: &'static str,
        key: String,
        value: String,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let ttl = px(ttl);
        let got: Option<String> = self
            .fleet
            .run(op, |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(got.is_some())
    }

    /// How long a replica waits for another's refresh before fetching on its own.
    pub(crate) fn wait(&self) -> Duration {
        self.fleet.lock_ttl + self.fleet.timeout()
    }

    /// The fleet's token, and whether `held` (this replica's own) is marked refused.
    pub(crate) async fn read(
        &self,
        account: &str,
        held: Option<&Secret>,
    ) -> Result<(Option<SharedToken>, bool), StoreError> {
        let mut inv = self.read.key(self.key(account));
        inv.key(self.refused_key(account))
            .arg(now_ms())
            .arg(held.map_or("", Secret::expose));
        let (v, refused, held_refused): (String, i64, i64) = self
            .fleet
            .run(
                "token",
                |mut c| async move { inv.invoke_async(&mut c).await },
            )
            .await?;
        let mut parts = v.splitn(3, '|');
        let token = (|| {
            let expires_ms = parts.next()?.parse().ok()?;
            let lifetime = Duration::from_millis(parts.next()?.parse().ok()?);
            let token = parts.next().filter(|t| !t.is_empty())?;
            Some(SharedToken {
                token: Secret::new(token.to_string()),
                expires_ms,
                lifetime,
                refused: refused == 1,
            })
        })();
        Ok((token, held_refused == 1))
    }

    /// The refresh lock's fence when this replica got it, `None` when another holds it.
    pub(crate) async fn lock(&self, account: &str) -> Result<Option<String>, StoreError> {
        let fence = fence();
        let got = self
            .set_nx(
                "token_lock",
                self.lock_key(account),
                fence.clone(),
                self.fleet.lock_ttl,
            )
            .await?;
        Ok(got.then_some(fence))
    }

    pub(crate) async fn unlock(&self, account: &str, fence: &str) {
        let mut inv = self.unlock.key(self.lock_key(account));
        inv.arg(fence);
        let _ = self
            .fleet
            .run("token_lock", |mut c| async move {
                inv.invoke_async::<i64>(&mut c).await
            })
            .await;
    }

    /// Shares a new token (if the lock is still ours) and frees the lock.
    pub(crate) async fn publish(&self, account: &str, t: &SharedToken, fence: &str) {
        let left = Duration::from_millis(t.expires_ms.saturating_sub(now_ms()));
        let value = format!(
            "{}|{}|{}",
            t.expires_ms,
            t.lifetime.as_millis(),
            t.token.expose()
        );
        let mut inv = self.publish.key(self.key(account));
        inv.key(self.lock_key(account))
            .arg(fence)
            .arg(value)
            .arg(px(left));
        let _ = self
            .fleet
            .run("token", |mut c| async move {
                inv.invoke_async::<i64>(&mut c).await
            })
            .await;
    }

    /// Marks `token` refused for the fleet until it expires (`expires_ms`): no replica takes it
    /// from the store or leases it again.
    pub(crate) async fn mark_refused(&self, account: &str, token: &Secret, expires_ms: u64) {
        let now = now_ms();
        if expires_ms <= now {
            return; // expired: nobody takes it anyway
        }
        let mut inv = self.mark.key(self.refused_key(account));
        inv.arg(token.expose()).arg(expires_ms).arg(now);
        let _ = self
            .fleet
            .run("token", |mut c| async move {
                inv.invoke_async::<i64>(&mut c).await
            })
            .await;
    }
}
