//! The two-level cache store of shared mode. L1 is the replica's own moka store (the hit path
//! reads only it); L2 is Redis, where every replica's fills land, each entry with its stored time
//! (so `Age` and `Cache-Status` stay true) and a TTL of as long as it can still be served.
//!
//! - A miss across the fleet makes one upstream call: the filler holds a per-key lock (`SET NX
//!   PX lock_ttl`, with a fence); the others poll L2 for its entry and, once the lock is gone (its
//!   holder failed or died, and the lock expired), claim it themselves.
//! - Invalidations bump a fleet epoch, delete from L2 and are published; every replica drops the
//!   matching L1 entries when the message arrives. A fill that began before an invalidation is
//!   not stored (its epoch moved on). A replica that lost its subscription clears its L1 when it
//!   subscribes again, since it may have missed messages.
//! - `host.one` answers carry host passwords: they stay in L1, never in Redis.
//! - When Redis fails, L1 carries on alone (fail-open), counted in `redis_errors_total`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;

use crate::cache::entry::Entry;
use crate::cache::key::CacheKey;
use crate::fleet::codec::{decode_entry, encode_entry};
use crate::fleet::{Fleet, StoreError, UNLOCK, fence, px};
use crate::metrics::Metrics;
use crate::routes::Route;
use crate::store::{CacheStore, Claim, Invalidation, MemoryStore, Ticket, Usage};
use crate::svc::BoxFuture;

/// Takes the fill lock; answers the fleet epoch when taken, -1 when someone holds it.
const CLAIM: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return tonumber(redis.call('GET', KEYS[2]) or 0)
end
return -1
"#;

/// Stores the entry unless the epoch moved on since the claim, then frees the lock if still ours.
const PUT_FILLED: &str = r#"
local stored = 0
if tonumber(redis.call('GET', KEYS[3]) or 0) == tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  stored = 1
end
if redis.call('GET', KEYS[2]) == ARGV[4] then redis.call('DEL', KEYS[2]) end
return stored
"#;

/// Routes whose answers never leave the replica.
fn local_only(route: Route) -> bool {
    route == Route::HostOne
}

pub struct TwoLevel(Arc<Inner>);

struct Inner {
    fleet: Arc<Fleet>,
    l1: MemoryStore,
    metrics: Arc<Metrics>,
    claim: redis::Script,
    put_filled: redis::Script,
    unlock: redis::Script,
    /// Names this replica's own invalidation messages (already applied here).
    origin: String,
    subscribed: AtomicBool,
}

/// Escapes a glob's special characters, for `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Microseconds since the Unix epoch: when an invalidation was sent, to measure its lag.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// An invalidation as a pub/sub message: `origin \t sent_us \t kind \t account \t route \t id`.
fn encode_message(origin: &str, what: &Invalidation) -> String {
    let (kind, account, route, id) = match what {
        Invalidation::Key(k) => ("key", &*k.account, k.route.as_str(), &*k.id),
        Invalidation::Route { account, route } => ("route", &**account, route.as_str(), ""),
        Invalidation::AnyAccount(route) => ("any", "", route.as_str(), ""),
        Invalidation::All => ("all", "", "", ""),
    };
    format!("{origin}\t{}\t{kind}\t{account}\t{route}\t{id}", now_us())
}

fn decode_message(msg: &str) -> Option<(&str, u64, Invalidation)> {
    let mut parts = msg.splitn(6, '\t');
    let origin = parts.next()?;
    let sent_us = parts.next()?.parse().ok()?;
    let kind = parts.next()?;
    let account = parts.next()?;
    let route = parts.next().map(Route::from_name);
    let id = parts.next()?;
    let what = match kind {
        "key" => Invalidation::Key(CacheKey::new(account, route??, id)),
        "route" => Invalidation::Route {
            account: account.into(),
            route: route??,
        },
        "any" => Invalidation::AnyAccount(route??),
        "all" => Invalidation::All,
        _ => return None,
    };
    Some((origin, sent_us, what))
}

impl TwoLevel {
    /// The store, and the task that applies other replicas' invalidations to L1 (run it until
    /// shutdown with [`TwoLevel::subscriber`]).
    pub fn new(fleet: Arc<Fleet>, l1_max_bytes: u64, metrics: Arc<Metrics>) -> TwoLevel {
        TwoLevel(Arc::new(Inner {
            fleet,
            l1: MemoryStore::new(l1_max_bytes),
            metrics,
            claim: redis::Script::new(CLAIM),
            put_filled: redis::Script::new(PUT_FILLED),
            unlock: redis::Script::new(UNLOCK),
            origin: fence(),
            subscribed: AtomicBool::new(false),
        }))
    }

    /// Whether other replicas' invalidations are reaching this one now.
    pub fn subscribed(&self) -> bool {
        self.0.subscribed.load(Ordering::SeqCst)
    }

    /// Listens for invalidations until `shutdown`, re-subscribing after a lost connection.
    pub fn subscriber(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let this = self.0.clone();
        async move {
            tokio::pin!(shutdown);
            loop {
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = this.listen() => {}
                }
                this.subscribed.store(false, Ordering::SeqCst);
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        }
    }
}

impl Inner {
    fn key(&self, k: &CacheKey) -> String {
        self.fleet
            .key(&["cache", &k.account, k.route.as_str(), &k.id])
    }

    fn lock_key(&self, k: &CacheKey) -> String {
        self.fleet
            .key(&["lock", "cache", &k.account, k.route.as_str(), &k.id])
    }

    fn epoch_key(&self) -> String {
        self.fleet.key(&["cache-epoch"])
    }

    fn channel(&self) -> String {
        self.fleet.key(&["invalidate"])
    }

    /// One subscription, until its connection ends.
    async fn listen(&self) {
        let connect = async {
            let mut ps = self.fleet.client().get_async_pubsub().await?;
            ps.subscribe(self.channel()).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let mut ps = match tokio::time::timeout(self.fleet.timeout() * 4, connect).await {
            Ok(Ok(ps)) => ps,
            Ok(Err(e)) => return self.fleet.subscription_failed(&StoreError(e.to_string())),
            Err(_) => {
                let e = StoreError("subscribing timed out".into());
                return self.fleet.subscription_failed(&e);
            }
        };
        // Whatever was published while this replica was not listening is lost: start L1 afresh.
        self.l1.invalidate(Invalidation::All).await;
        self.subscribed.store(true, Ordering::SeqCst);
        tracing::info!("listening for the fleet's cache invalidations");
        let mut messages = ps.on_message();
        while let Some(msg) = messages.next().await {
            let Ok(text) = msg.get_payload::<String>() else {
                continue;
            };
            let Some((origin, sent_us, what)) = decode_message(&text) else {
                continue;
            };
            if origin == self.origin {
                continue;
            }
            self.l1.invalidate(what).await;
            let lag = now_us().saturating_sub(sent_us);
            self.metrics.invalidation_lag.observe(lag as f64 / 1e6);
        }
        tracing::warn!(
            "lost the subscription to the fleet's cache invalidations; subscribing again"
        );
        self.fleet
            .subscription_failed(&StoreError("subscription connection lost".into()));
    }

    async fn get_l2(&self, key: &CacheKey) -> Result<Option<Arc<Entry>>, StoreError> {
        let mut c = self.fleet.conn();
        let rkey = self.key(key);
        let got: Option<Vec<u8>> = self
            .fleet
            .run("cache_get", async move {
                redis::cmd("GET").arg(&rkey).query_async(&mut c).await
            })
            .await?;
        Ok(got.and_then(|b| decode_entry(&b)).map(Arc::new))
    }

    /// Deletes every L2 key matching `pattern`.
    async fn delete_matching(&self, pattern: String) -> Result<(), StoreError> {
        let mut cursor: u64 = 0;
        loop {
            let mut c = self.fleet.conn();
            let p = pattern.clone();
            let (next, keys): (u64, Vec<String>) = self
                .fleet
                .run("cache_invalidate", async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&p)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if !keys.is_empty() {
                let mut c = self.fleet.conn();
                self.fleet
                    .run("cache_invalidate", async move {
                        redis::cmd("UNLINK")
                            .arg(keys)
                            .query_async::<()>(&mut c)
                            .await
                    })
                    .await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    async fn invalidate_l2(&self, what: &Invalidation) -> Result<(), StoreError> {
        let message = encode_message(&self.origin, what);
        // The epoch moves first: a fill that claimed before this cannot store after it.
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("INCR").arg(self.epoch_key()).ignore();
        // Like every key, the epoch expires: a day after the last invalidation (then reads as 0).
        pipe.cmd("PEXPIRE")
            .arg(self.epoch_key())
            .arg(24 * 3600 * 1000)
            .ignore();
        if let Invalidation::Key(k) = what {
            pipe.cmd("DEL").arg(self.key(k)).ignore();
        }
        pipe.cmd("PUBLISH")
            .arg(self.channel())
            .arg(message)
            .ignore();
        let mut c = self.fleet.conn();
        self.fleet
            .run("cache_invalidate", async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await?;
        let cache = self.fleet.key(&["cache"]);
        let pattern = match what {
            Invalidation::Key(_) => return Ok(()),
            Invalidation::Route { account, route } => {
                format!(
                    "{}:{}:{}:*",
                    glob_escape(&cache),
                    glob_escape(account),
                    route
                )
            }
            Invalidation::AnyAccount(route) => format!("{}:*:{}:*", glob_escape(&cache), route),
            Invalidation::All => format!("{}:*", glob_escape(&cache)),
        };
        self.delete_matching(pattern).await
    }
}

impl CacheStore for TwoLevel {
    fn get(&self, key: &CacheKey) -> BoxFuture<Option<Arc<Entry>>> {
        let l1 = self.0.l1.peek(key);
        if local_only(key.route)
            || l1.as_ref().is_some_and(|e| {
                e.freshness(tokio::time::Instant::now())
                    .is_some_and(|f| matches!(f, crate::cache::entry::Freshness::Fresh(_)))
            })
        {
            return Box::pin(std::future::ready(l1));
        }
        let (this, key) = (self.0.clone(), key.clone());
        Box::pin(async move {
            match this.get_l2(&key).await {
                Ok(Some(entry)) => {
                    this.l1.put(key, entry.clone()).await;
                    Some(entry)
                }
                // L2 has nothing newer: what L1 holds may still serve stale.
                Ok(None) | Err(_) => l1,
            }
        })
    }

    fn peek(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.0.l1.peek(key)
    }

    fn put(&self, key: CacheKey, entry: Arc<Entry>) -> BoxFuture<()> {
        let this = self.0.clone();
        Box::pin(async move {
            this.l1.put(key.clone(), entry.clone()).await;
            if local_only(key.route) {
                return;
            }
            let value = encode_entry(&entry);
            let (rkey, ttl) = (this.key(&key), px(entry.retain_for()));
            let mut c = this.fleet.conn();
            let _ = this
                .fleet
                .run("cache_put", async move {
                    redis::cmd("SET")
                        .arg(&rkey)
                        .arg(value)
                        .arg("PX")
                        .arg(ttl)
                        .query_async::<()>(&mut c)
                        .await
                })
                .await;
        })
    }

    fn invalidate(&self, what: Invalidation) -> BoxFuture<()> {
        let this = self.0.clone();
        Box::pin(async move {
            this.l1.invalidate(what.clone()).await;
            // Failing here is counted; L2 entries then live out their TTL.
            let _ = this.invalidate_l2(&what).await;
        })
    }

    fn usage(&self) -> Usage {
        self.0.l1.usage()
    }

    fn claim_fill(&self, key: &CacheKey) -> BoxFuture<Claim> {
        if local_only(key.route) {
            return Box::pin(std::future::ready(Claim::Claimed(Ticket::default())));
        }
        let (this, key) = (self.0.clone(), key.clone());
        Box::pin(async move {
            let fence = fence();
            let mut inv = this.claim.key(this.lock_key(&key));
            inv.key(this.epoch_key())
                .arg(&fence)
                .arg(px(this.fleet.lock_ttl));
            let mut c = this.fleet.conn();
            match this
                .fleet
                .run("cache_lock", inv.invoke_async::<i64>(&mut c))
                .await
            {
                Ok(-1) => Claim::Busy,
                Ok(epoch) => Claim::Claimed(Ticket {
                    epoch: Some(epoch),
                    fence: Some(fence),
                }),
                // Without Redis this replica fills on its own.
                Err(_) => Claim::Claimed(Ticket::default()),
            }
        })
    }

    fn put_filled(&self, key: CacheKey, entry: Arc<Entry>, ticket: Ticket) -> BoxFuture<bool> {
        let (Some(epoch), Some(fence)) = (ticket.epoch, ticket.fence) else {
            let put = self.put(key, entry);
            return Box::pin(async move {
                put.await;
                true
            });
        };
        let this = self.0.clone();
        Box::pin(async move {
            let mut inv = this.put_filled.key(this.key(&key));
            inv.key(this.lock_key(&key))
                .key(this.epoch_key())
                .arg(epoch)
                .arg(encode_entry(&entry))
                .arg(px(entry.retain_for()))
                .arg(fence);
            let mut c = this.fleet.conn();
            match this
                .fleet
                .run("cache_put", inv.invoke_async::<i64>(&mut c))
                .await
            {
                Ok(0) => false,
                _ => {
                    this.l1.put(key, entry).await;
                    true
                }
            }
        })
    }

    fn release_fill(&self, key: &CacheKey, ticket: Ticket) -> BoxFuture<()> {
        let Some(fence) = ticket.fence else {
            return Box::pin(std::future::ready(()));
        };
        let (this, key) = (self.0.clone(), key.clone());
        Box::pin(async move {
            let mut inv = this.unlock.key(this.lock_key(&key));
            inv.arg(fence);
            let mut c = this.fleet.conn();
            let _ = this
                .fleet
                .run("cache_lock", inv.invoke_async::<i64>(&mut c))
                .await;
        })
    }

    fn fill_wait(&self) -> Duration {
        // Past a whole lock lifetime the holder is gone: its lock has expired.
        self.0.fleet.lock_ttl + self.0.fleet.timeout()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let cases = [
            Invalidation::Key(CacheKey::new("acct", Route::DiskInfo, "disk\t1")),
            Invalidation::Route {
                account: "acct".into(),
                route: Route::DiskList,
            },
            Invalidation::AnyAccount(Route::DiskInfo),
            Invalidation::All,
        ];
        for what in cases {
            let msg = encode_message("me", &what);
            let (origin, _, back) = decode_message(&msg).expect("decodes");
            assert_eq!(origin, "me");
            assert_eq!(back, what);
        }
        assert!(decode_message("garbage").is_none());
    }

    #[test]
    fn globs_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
