//! Idempotency and de-dup records in Redis: one record per key for the whole fleet, so that a
//! retry landing on another replica finds what the first attempt did. `begin` is atomic (a script:
//! read, or write if absent), and every record expires with its TTL.
//!
//! A record found absent is written only where its absence proves that none was there: the same
//! script reads the fleet marker (gone or changed: Redis lost its data, perhaps a moment ago, and
//! the loss is handled as the marker check handles it) and Redis's eviction policy (one that may
//! drop records refuses). In a Redis Cluster the marker lives in another slot than the record, so
//! it is read just before the script instead.
//!
//! The executing replica renews an in-flight record's lease (a script that rewrites it only while
//! it is still that same in-flight record), and each client's live records are counted in a
//! sorted set per client (member: the record's key, score: its expiry), pruned on every create.
//!
//! A lock (settling an unknown outcome) is a key of its own holding its holder's random token,
//! taken with `SET NX PX` (after the same marker and eviction checks as a record's begin) and
//! released by a compare-and-delete script, so that a holder whose lock expired never frees the
//! next holder's. It lives under the record key space (`rec`), where the marker record it
//! replaces lived, so replicas of either version see one another's.
//!
//! While Redis fails, the operation fails (creates are refused: without the shared record a
//! duplicate purchase cannot be ruled out), unless `creates_when_down = "local"` gave this store
//! the replica's own records to fall back to.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::now_ms;
use crate::fleet::codec::{decode_record, encode_record};
use crate::fleet::{Fleet, px};
use crate::protect::records::{
    Begin, Hold, Lock, LockToken, MemoryRecords, Record, RecordStore, marker,
};
use crate::store::error::{StoreError, Stored};
use crate::svc::BoxFuture;

/// `{'found', value}` for an existing record. Otherwise, unless `ARGV[4]` is `1` (eviction
/// allowed), `{'may-evict', policy}` while `maxmemory-policy` is not `noeviction`; `{'lost'}`
/// when the fleet marker (`KEYS[2]`, absent in a cluster) is not `ARGV[3]`, the value this replica
/// knows; else writes `ARGV[1]` with a `PX` of `ARGV[2]`: `{'started'}`.
const BEGIN: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return {'found', v} end
if ARGV[4] ~= '1' then
  local info = redis.pcall('INFO', 'memory')
  local policy = type(info) == 'string' and string.match(info, 'maxmemory_policy:(%S+)') or 'unknown'
  if policy ~= 'noeviction' then return {'may-evict', policy} end
end
if KEYS[2] and redis.call('GET', KEYS[2]) ~= ARGV[3] then return {'lost', false} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {'started', false}
";

/// Writes `ARGV[1]` (a renewed in-flight record) with a `PX` of `ARGV[2]` only if the stored
/// value is the same record but for its lease: every byte but the last 8 (the lease; see
/// `codec`). 1 when renewed.
const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
local new = ARGV[1]
if v and #v == #new and string.sub(v, 1, #v - 8) == string.sub(new, 1, #new - 8) then
  redis.call('SET', KEYS[1], new, 'PX', ARGV[2])
  return 1
end
return 0
";

/// The owner's live records (`KEYS[1]`, a sorted set by expiry): drops the expired (`ARGV[3]` is
/// now), then counts `ARGV[1]` until `ARGV[2]` unless it is new and `ARGV[4]` are already held.
/// 0 when held; otherwise the soonest expiry of the held ones. The set lives as long as its
/// longest-lived member.
const HOLD: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if not redis.call('ZSCORE', KEYS[1], ARGV[1])
   and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(tonumber(first[2]), 1)
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], string.format('%d', tonumber(last[2]) + 1))
return 0
";

/// Whether the owner (`KEYS[1]`) holds a live key other than `ARGV[1]` (`ARGV[2]` is now): 1 or 0.
const HOLDS_OTHER: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local n = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then n = n - 1 end
if n > 0 then return 1 end
return 0
";

/// `{'taken'}` while `KEYS[1]` exists. Otherwise the checks of [`BEGIN`] (`ARGV[4]`, `KEYS[2]`,
/// `ARGV[3]`: `{'may-evict', policy}`, `{'lost'}`), then `SET KEYS[1] ARGV[1] NX PX ARGV[2]`:
/// `{'held'}`.
const LOCK: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return {'taken', false} end
if ARGV[4] ~= '1' then
  local info = redis.pcall('INFO', 'memory')
  local policy = type(info) == 'string' and string.match(info, 'maxmemory_policy:(%S+)') or 'unknown'
  if policy ~= 'noeviction' then return {'may-evict', policy} end
end
if KEYS[2] and redis.call('GET', KEYS[2]) ~= ARGV[3] then return {'lost', false} end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'held', false} end
return {'taken', false}
";

/// Deletes `KEYS[1]` only while it holds the token `ARGV[1]`: 1 when deleted.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

pub struct RedisRecords(Arc<Inner>);

/// Redis's answer, or, when Redis failed and creates fall back to this replica, `local`'s.
async fn or_local<T>(
    redis: Stored<T>,
    local: &Option<MemoryRecords>,
    fallback: impl FnOnce(&MemoryRecords) -> BoxFuture<Stored<T>>,
) -> Stored<T> {
    match (redis, local) {
        (Ok(v), _) => Ok(v),
        (Err(_), Some(local)) => fallback(local).await,
        (Err(e), None) => Err(e),
    }
}

struct Inner {
    fleet: Arc<Fleet>,
    begin: redis::Script,
    renew: redis::Script,
    hold: redis::Script,
    holds_other: redis::Script,
    lock: redis::Script,
    unlock: redis::Script,
    local: Option<MemoryRecords>,
}

impl RedisRecords {
    pub fn new(fleet: Arc<Fleet>, fall_back_to_local: bool) -> RedisRecords {
        RedisRecords(Arc::new(Inner {
            fleet,
            begin: redis::Script::new(BEGIN),
            renew: redis::Script::new(RENEW),
            hold: redis::Script::new(HOLD),
            holds_other: redis::Script::new(HOLDS_OTHER),
            lock: redis::Script::new(LOCK),
            unlock: redis::Script::new(UNLOCK),
            local: fall_back_to_local.then(MemoryRecords::default),
        }))
    }

    fn key(&self, key: &str) -> String {
        self.0.fleet.key(&["rec", key])
    }

    fn owner_key(&self, owner: &str) -> String {
        self.0.fleet.key(&["rec-owner", owner])
    }
}

/// What a guarded script answered: its own word and value, or one of the guards'.
enum Guarded {
    Said(String, Option<Vec<u8>>),
    /// The fleet's data was lost a moment ago: new creates are refused for this long.
    Lost(Duration),
    /// Redis may evict keys under this `maxmemory-policy`.
    MayEvict(String),
}

impl Inner {
    /// Runs `script` on `key` (with `value` and `ttl`) under the fleet's guards: the marker (in a
    /// Redis Cluster read just before, elsewhere in the same script) and the eviction policy. At
    /// most one loss is noticed per call: a replica that had not read the marker yet reads it and
    /// runs again; a second change within one call is an answer Redis never gives.
    async fn guarded(
        &self,
        op: &'static str,
        script: &redis::Script,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Stored<Guarded> {
        let fleet = &self.fleet;
        let cluster = fleet.is_cluster();
        for _ in 0..2 {
            if cluster {
                fleet.check_marker().await?;
                if let Some(left) = fleet.refusing_new_creates() {
                    return Ok(Guarded::Lost(left));
                }
            }
            let mut inv = script.key(key);
            if !cluster {
                inv.key(fleet.marker_key());
            }
            inv.arg(value)
                .arg(px(ttl))
                .arg(fleet.marker_seen())
                .arg(u8::from(fleet.eviction.allowed()));
            let (what, found): (String, Option<Vec<u8>>) = fleet
                .run(op, |mut c| async move { inv.invoke_async(&mut c).await })
                .await?;
            match (what.as_str(), found) {
                ("may-evict", Some(policy)) => {
                    let policy = String::from_utf8_lossy(&policy).into_owned();
                    fleet.eviction.saw(&policy);
                    return Ok(Guarded::MayEvict(policy));
                }
                // The marker is gone or changed: noticed here as every second, and unless this
                // replica only now read it for the first time, a loss within the grace window.
                ("lost", _) => {
                    fleet.check_marker().await?;
                    if let Some(left) = fleet.refusing_new_creates() {
                        return Ok(Guarded::Lost(left));
                    }
                }
                (_, found) => return Ok(Guarded::Said(what, found)),
            }
        }
        Err(StoreError::Unexpected(format!(
            "{}: the fleet marker changed twice",
            op.replace('_', " ")
        )))
    }

    /// [`RecordStore::begin`] on Redis.
    async fn begin(&self, rkey: &str, record: &Record) -> Stored<Begin> {
        let value = encode_record(record);
        match self
            .guarded("record_begin", &self.begin, rkey, &value, record.ttl)
            .await?
        {
            Guarded::Lost(left) => Ok(Begin::Lost(left)),
            Guarded::MayEvict(policy) => Ok(Begin::MayEvict(policy)),
            Guarded::Said(what, found) => match (what.as_str(), found) {
                ("started", _) => Ok(Begin::Started),
                // An undecodable record (another version) is kept, never overwritten: a purchase
                // may stand behind it.
                ("found", Some(b)) => Ok(decode_record(&b).map_or(
                    Begin::Exists(marker(&record.fingerprint, record.ttl)),
                    Begin::Exists,
                )),
                (other, _) => Err(StoreError::Unexpected(format!("record begin: {other}"))),
            },
        }
    }

    /// [`RecordStore::try_lock`] on Redis: as [`Inner::begin`], with a lock for a record.
    async fn try_lock(&self, lkey: &str, ttl: Duration) -> Stored<Lock> {
        let token = LockToken::new();
        match self
            .guarded("record_lock", &self.lock, lkey, token.0.as_bytes(), ttl)
            .await?
        {
            Guarded::Lost(left) => Ok(Lock::Lost(left)),
            Guarded::MayEvict(policy) => Ok(Lock::MayEvict(policy)),
            Guarded::Said(what, _) => match what.as_str() {
                "held" => Ok(Lock::Held(token)),
                "taken" => Ok(Lock::Taken),
                other => Err(StoreError::Unexpected(format!("record lock: {other}"))),
            },
        }
    }
}

impl RecordStore for RedisRecords {
    fn begin(&self, key: &str, record: Record) -> BoxFuture<Stored<Begin>> {
        let (rkey, key) = (self.key(key), key.to_string());
        let this = self.0.clone();
        Box::pin(async move {
            let found = this.begin(&rkey, &record).await;
            or_local(found, &this.local, |l| l.begin(&key, record)).await
        })
    }

    fn get(&self, key: &str) -> BoxFuture<Stored<Option<Record>>> {
        let (rkey, key) = (self.key(key), key.to_string());
        let this = self.0.clone();
        Box::pin(async move {
            let got: Result<Option<Vec<u8>>, _> = this
                .fleet
                .run("record_get", |mut c| async move {
                    redis::cmd("GET").arg(&rkey).query_async(&mut c).await
                })
                .await;
            let got = got.map(|v| v.and_then(|b| decode_record(&b)));
            or_local(got, &this.local, |l| l.get(&key)).await
        })
    }

    fn set(&self, key: &str, record: Record) -> BoxFuture<Stored<()>> {
        let (rkey, key) = (self.key(key), key.to_string());
        let this = self.0.clone();
        Box::pin(async move {
            let value = encode_record(&record);
            let ttl = px(record.ttl);
            let done: Result<(), _> = this
                .fleet
                .run("record_set", |mut c| async move {
                    redis::cmd("SET")
                        .arg(&rkey)
                        .arg(value)
                        .arg("PX")
                        .arg(ttl)
                        .query_async(&mut c)
                        .await
                })
                .await;
            or_local(done, &this.local, |l| l.set(&key, record)).await
        })
    }

    fn remove(&self, key: &str) -> BoxFuture<Stored<()>> {
        let (rkey, key) = (self.key(key), key.to_string());
        let this = self.0.clone();
        Box::pin(async move {
            let done: Result<(), _> = this
                .fleet
                .run("record_remove", |mut c| async move {
                    redis::cmd("DEL").arg(&rkey).query_async(&mut c).await
                })
                .await;
            if let Some(local) = &this.local {
                // What was recorded locally while Redis was down goes too.
                local.remove(&key).await?;
                return Ok(());
            }
            done
        })
    }

    fn renew(&self, key: &str, renewed: Record) -> BoxFuture<Stored<bool>> {
        let (rkey, key) = (self.key(key), key.to_string());
        let this = self.0.clone();
        Box::pin(async move {
            let mut inv = this.renew.key(&rkey);
            inv.arg(encode_record(&renewed)).arg(px(renewed.ttl));
            let done: Result<i64, _> = this
                .fleet
                .run("record_renew", |mut c| async move {
                    inv.invoke_async(&mut c).await
                })
                .await;
            match (done, &this.local) {
                (Ok(n), _) => Ok(n == 1),
                // A flight begun here while Redis was away is renewed here; one that lives in
                // Redis is not "changed" because Redis failed: the heartbeat tries again.
                (Err(e), Some(local)) => match local.renew(&key, renewed).await {
                    Ok(true) => Ok(true),
                    _ => Err(e),
                },
                (Err(e), None) => Err(e),
            }
        })
    }

    fn hold(&self, owner: &str, key: &str, until_ms: u64, max: u64) -> BoxFuture<Stored<Hold>> {
        let okey = self.owner_key(owner);
        let (owner, key) = (owner.to_string(), key.to_string());
        let this = self.0.clone();
        Box::pin(async move {
            let mut inv = this.hold.key(&okey);
            inv.arg(&key).arg(until_ms).arg(now_ms()).arg(max);
            let held: Result<u64, _> = this
                .fleet
                .run("record_hold", |mut c| async move {
                    inv.invoke_async(&mut c).await
                })
                .await;
            let held = held.map(|frees_at_ms| match frees_at_ms {
                0 => Hold::Held,
                frees_at_ms => Hold::Full { frees_at_ms },
            });
            or_local(held, &this.local, |l| l.hold(&owner, &key, until_ms, max)).await
        })
    }

    fn try_lock(&self, key: &str, ttl: Duration) -> BoxFuture<Stored<Lock>> {
        let (lkey, key) = (self.key(key), key.to_string());
        let this = self.0.clone();
        Box::pin(async move {
            let locked = this.try_lock(&lkey, ttl).await;
            or_local(locked, &this.local, |l| l.try_lock(&key, ttl)).await
        })
    }

    fn unlock(&self, key: &str, token: &LockToken) -> BoxFuture<Stored<bool>> {
        let (lkey, key, token) = (self.key(key), key.to_string(), token.clone());
        let this = self.0.clone();
        Box::pin(async move {
            let mut inv = this.unlock.key(&lkey);
            inv.arg(&token.0);
            let done: Result<i64, _> = this
                .fleet
                .run("record_unlock", |mut c| async move {
                    inv.invoke_async(&mut c).await
                })
                .await;
            match (done, &this.local) {
                (Ok(n), _) => Ok(n == 1),
                // A lock taken here while Redis was away is released here.
                (Err(_), Some(local)) => local.unlock(&key, &token).await,
                (Err(e), None) => Err(e),
            }
        })
    }

    fn release(&self, owner: &str, key: &str) -> BoxFuture<Stored<()>> {
        let okey = self.owner_key(owner);
        let (owner, key) = (owner.to_string(), key.to_string());
        let this = self.0.clone();
        Box::pin(async move {
            let k = key.clone();
            let done: Result<(), _> = this
                .fleet
                .run("record_release", |mut c| async move {
                    redis::cmd("ZREM")
                        .arg(&okey)
                        .arg(&k)
                        .query_async(&mut c)
                        .await
                })
                .await;
            if let Some(local) = &this.local {
                local.release(&owner, &key).await?;
                return Ok(());
            }
            done
        })
    }

    fn holds_other(&self, owner: &str, key: &str) -> BoxFuture<Stored<bool>> {
        let okey = self.owner_key(owner);
        let (owner, key) = (owner.to_string(), key.to_string());
        let this = self.0.clone();
        Box::pin(async move {
            let mut inv = this.holds_other.key(&okey);
            inv.arg(&key).arg(now_ms());
            let held: Result<u64, _> = this
                .fleet
                .run("record_holds_other", |mut c| async move {
                    inv.invoke_async(&mut c).await
                })
                .await;
            let held = held.map(|n: u64| n > 0);
            or_local(held, &this.local, |l| l.holds_other(&owner, &key)).await
        })
    }

    fn lost_data(&self) -> BoxFuture<Stored<Option<Duration>>> {
        let this = self.0.clone();
        Box::pin(async move {
            match this.fleet.check_marker_if_due().await {
                Ok(()) => Ok(this.fleet.refusing_new_creates()),
                // Falling back to this replica's records, which lost nothing.
                Err(_) if this.local.is_some() => Ok(None),
                Err(e) => Err(e),
            }
        })
    }
}
