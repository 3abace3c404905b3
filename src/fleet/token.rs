//! One upstream token per account for the whole fleet. The token lives in Redis with its expiry
//! (`expires_ms|lifetime_ms|token`, expiring with it); whoever finds it missing or due takes the
//! refresh lock (`SET NX PX lock_ttl` with a fence), calls `getToken`, and writes the new token
//! only while still holding the lock. The others wait for it. A token the upstream rejected is
//! deleted only if it is still the stored one, so one 401 anywhere makes one refresh, not N.

use std::sync::Arc;
use std::time::Duration;

use crate::fleet::{Fleet, StoreError, UNLOCK, fence, now_ms, px};
use crate::secret::Secret;

/// Writes the token if the lock is still ours, then frees the lock.
const PUBLISH: &str = r"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
";

/// Deletes the token only if it is the rejected one.
const DROP_IF: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, -string.len(ARGV[1])) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A token as the fleet shares it.
#[derive(Clone)]
pub(crate) struct SharedToken {
    pub(crate) token: Secret,
    pub(crate) expires_ms: u64,
    pub(crate) lifetime: Duration,
}

pub(crate) struct TokenStore {
    fleet: Arc<Fleet>,
    publish: redis::Script,
    drop_if: redis::Script,
    unlock: redis::Script,
}

impl TokenStore {
    pub(crate) fn new(fleet: Arc<Fleet>) -> TokenStore {
        TokenStore {
            fleet,
            publish: redis::Script::new(PUBLISH),
            drop_if: redis::Script::new(DROP_IF),
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

    /// Whether this replica may call `getToken` now: true for one replica per `interval` (the
    /// fleet's `min_refresh_interval`), which the key's expiry measures.
    pub(crate) async fn gate(&self, account: &str, interval: Duration) -> Result<bool, StoreError> {
        self.set_nx("token_gate", self.gate_key(account), "1".into(), interval)
            .await
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

    pub(crate) async fn read(&self, account: &str) -> Result<Option<SharedToken>, StoreError> {
        let key = self.key(account);
        let v: Option<String> = self
            .fleet
            .run("token", |mut c| async move {
                redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await?;
        Ok(v.and_then(|v| {
            let mut parts = v.splitn(3, '|');
            let expires_ms = parts.next()?.parse().ok()?;
            let lifetime = Duration::from_millis(parts.next()?.parse().ok()?);
            let token = parts.next().filter(|t| !t.is_empty())?;
            Some(SharedToken {
                token: Secret::new(token.to_string()),
                expires_ms,
                lifetime,
            })
        }))
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

    /// Deletes `token` if it is still the shared one: the upstream rejected it.
    pub(crate) async fn drop_rejected(&self, account: &str, token: &Secret) {
        let mut inv = self.drop_if.key(self.key(account));
        inv.arg(format!("|{}", token.expose()));
        let _ = self
            .fleet
            .run("token", |mut c| async move {
                inv.invoke_async::<i64>(&mut c).await
            })
            .await;
    }
}
