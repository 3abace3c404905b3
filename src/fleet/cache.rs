//! The two-level cache store of shared mode. L1 is the replica's own moka store (the hit path
//! reads only it); L2 is Redis, where every replica's fills land, each entry with its stored time
//! (so `Age` and `Cache-Status` stay true) and a TTL of as long as it can still be served.
//!
//! - A miss across the fleet makes one upstream call: the filler holds a per-key lock (`SET NX
//!   PX lock_ttl`, with a fence); the others poll L2 for its entry and, once the lock is gone (its
//!   holder failed or died, and the lock expired), claim it themselves.
//! - Entry keys carry a generation per account and route, so that dropping a whole route (all
//!   `disk.list` pages of an account) is one `INCR`: the old generation is never read again and
//!   expires on its own. Dropping one entry moves that entry's epoch: a fill of it that began
//!   before is not stored (and neither is one of a route whose generation moved meanwhile); fills
//!   of other entries are not disturbed. Invalidations are published; every replica drops the
//!   matching L1 entries when the message arrives, and a replica that lost its subscription clears
//!   its L1 when it subscribes again, since it may have missed some.
//! - Every key of an account shares a Redis Cluster hash tag (`{account}`), so each script touches
//!   one slot.
//! - `host.one` answers carry host passwords: they stay in L1, never in Redis.
//! - When Redis fails, L1 carries on alone (fail-open), counted in `redis_errors_total`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;

use crate::cache::entry::Entry;
use crate::cache::key::CacheKey;
use crate::clock::now_us;
use crate::fleet::codec::{decode_entry, encode_entry};
use crate::fleet::{Fleet, UNLOCK, fence, px};
use crate::metrics::Metrics;
use crate::routes::{Route, RouteTable};
use crate::store::error::StoreError;
use crate::store::memory::MemoryStore;
use crate::store::{CacheStore, Claim, Invalidation, RemoteHook, Ticket, Usage};
use crate::svc::BoxFuture;

/// How long the epoch and generation counters outlive their last change (and every entry).
const COUNTER_TTL_MS: u64 = 24 * 3600 * 1000;

/// KEYS: generation. ARGV: entry key up to the generation, then `:id`. The current entry.
const GET: &str = r"
local g = redis.call('GET', KEYS[1]) or '0'
return redis.call('GET', ARGV[1] .. g .. ARGV[2])
";

/// KEYS: lock, epoch, generation. ARGV: fence, lock px. Takes the fill lock and answers
/// {epoch, generation}, or {-1} when someone holds it.
const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {tonumber(redis.call('GET', KEYS[2]) or 0), tonumber(redis.call('GET', KEYS[3]) or 0)}
end
return {-1}
";

/// KEYS: epoch, generation. The account's epoch and the route's generation, for a fill that
/// does not take the lock.
const OBSERVE: &str = r"
return {tonumber(redis.call('GET', KEYS[1]) or 0), tonumber(redis.call('GET', KEYS[2]) or 0)}
";

/// KEYS: epoch, lock, generation. ARGV: epoch and generation of the claim, entry key up to the
/// generation, `:id`, value, px, fence, counter ttl. Stores the entry unless an invalidation came
/// since the claim (epoch -1: no claim, store anyway); the counters then outlive it. Frees the
/// lock if it is still ours.
const PUT_FILLED: &str = r"
local stored = 0
local e = tonumber(redis.call('GET', KEYS[1]) or 0)
local g = tonumber(redis.call('GET', KEYS[3]) or 0)
if tonumber(ARGV[1]) < 0 or (e == tonumber(ARGV[1]) and g == tonumber(ARGV[2])) then
  redis.call('SET', ARGV[3] .. g .. ARGV[4], ARGV[5], 'PX', ARGV[6])
  local keep = tonumber(ARGV[6]) + tonumber(ARGV[8])
  for _, k in ipairs({KEYS[1], KEYS[3]}) do
    if redis.call('EXISTS', k) == 1 and redis.call('PTTL', k) < keep then redis.call('PEXPIRE', k, keep) end
  end
  stored = 1
end
if redis.call('GET', KEYS[2]) == ARGV[7] then redis.call('DEL', KEYS[2]) end
return stored
";

/// KEYS: generation, then the entry's epoch when one entry goes. ARGV: entry key up to the
/// generation, `:id` (empty: the whole route), counter ttl, channel, message (empty: publish
/// nothing). Moves the route to a new generation, or moves the entry's epoch and drops it.
const INVALIDATE: &str = r"
for _, k in ipairs(KEYS) do
  if redis.call('PTTL', k) < tonumber(ARGV[3]) then
    redis.call('SET', k, tonumber(redis.call('GET', k) or 0), 'PX', ARGV[3])
  end
end
if ARGV[2] == '' then
  redis.call('INCR', KEYS[1])
else
  redis.call('INCR', KEYS[2])
  redis.call('DEL', ARGV[1] .. (redis.call('GET', KEYS[1]) or '0') .. ARGV[2])
end
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 0
";

/// KEYS: generation, epoch, lock. ARGV: as [`INVALIDATE`]'s for one entry. Runs that
/// invalidation only when Redis holds something of the entry (the entry, a fill in flight, or an
/// epoch that fills may be comparing against); otherwise there is nothing to drop or to overtake,
/// and it writes no key and publishes nothing.
const DROP_IF_HELD: &str = r"
local entry = ARGV[1] .. (redis.call('GET', KEYS[1]) or '0') .. ARGV[2]
if redis.call('EXISTS', entry, KEYS[2], KEYS[3]) == 0 then return 0 end
for _, k in ipairs({KEYS[1], KEYS[2]}) do
  if redis.call('PTTL', k) < tonumber(ARGV[3]) then
    redis.call('SET', k, tonumber(redis.call('GET', k) or 0), 'PX', ARGV[3])
  end
end
redis.call('INCR', KEYS[2])
redis.call('DEL', entry)
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1
";

pub(crate) struct TwoLevel(Arc<Inner>);

struct Inner {
    fleet: Arc<Fleet>,
    /// The configured accounts, for invalidations that span them.
    accounts: Vec<Arc<str>>,
    /// This config's routes: names in messages, and every route for a purge of all.
    routes: Arc<RouteTable>,
    l1: MemoryStore,
    metrics: Arc<Metrics>,
    get: redis::Script,
    claim: redis::Script,
    observe: redis::Script,
    put_filled: redis::Script,
    invalidate: redis::Script,
    drop_if_held: redis::Script,
    unlock: redis::Script,
    /// Names this replica's own invalidation messages (already applied here).
    origin: String,
    subscribed: AtomicBool,
    /// Moves on every L1 invalidation: an entry read from Redis (or stored there) before one is
    /// not put back into L1 after it.
    l1_seq: AtomicU64,
    /// Told of other replicas' invalidations (see [`CacheStore::on_remote_invalidation`]).
    remote_hook: std::sync::OnceLock<RemoteHook>,
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

fn decode_message<'a>(msg: &'a str, routes: &RouteTable) -> Option<(&'a str, u64, Invalidation)> {
    let mut parts = msg.splitn(6, '\t');
    let origin = parts.next()?;
    let sent_us = parts.next()?.parse().ok()?;
    let kind = parts.next()?;
    let account = parts.next()?;
    let route = parts.next().map(|name| routes.by_name(name));
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
    pub(crate) fn new(
        fleet: Arc<Fleet>,
        accounts: Vec<Arc<str>>,
        routes: Arc<RouteTable>,
        l1_max_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> TwoLevel {
        TwoLevel(Arc::new(Inner {
            fleet,
            accounts,
            routes,
            l1: MemoryStore::new(l1_max_bytes),
            metrics,
            get: redis::Script::new(GET),
            claim: redis::Script::new(CLAIM),
            observe: redis::Script::new(OBSERVE),
            put_filled: redis::Script::new(PUT_FILLED),
            invalidate: redis::Script::new(INVALIDATE),
            drop_if_held: redis::Script::new(DROP_IF_HELD),
            unlock: redis::Script::new(UNLOCK),
            origin: fence(),
            subscribed: AtomicBool::new(false),
            l1_seq: AtomicU64::new(0),
            remote_hook: std::sync::OnceLock::new(),
        }))
    }

    /// Whether other replicas' invalidations are reaching this one now.
    pub(crate) fn subscribed(&self) -> bool {
        self.0.subscribed.load(Ordering::SeqCst)
    }

    /// Listens for invalidations until `shutdown`, re-subscribing after a lost connection.
    pub(crate) fn subscriber(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let this = self.0.clone();
        async move {
            tokio::pin!(shutdown);
            loop {
                tokio::select! {
                    () = &mut shutdown => return,
                    () = this.listen() => {}
                }
                this.subscribed.store(false, Ordering::SeqCst);
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        }
    }
}

impl Inner {
    async fn invalidate_l1(&self, what: Invalidation) {
        self.l1_seq.fetch_add(1, Ordering::SeqCst);
        self.l1.invalidate(what).await;
    }

    /// Applies an invalidation that another replica made (or may have made, unheard).
    async fn invalidate_remote(&self, what: Invalidation) {
        if let Some(hook) = self.remote_hook.get() {
            hook(&what);
        }
        self.invalidate_l1(what).await;
    }

    /// Puts an entry read or stored while L1 was at `seq`; if an invalidation came meanwhile,
    /// the entry may be one it dropped, so it is taken out again.
    async fn put_l1_unless_invalidated(&self, key: CacheKey, entry: Arc<Entry>, seq: u64) {
        self.l1.put(key.clone(), entry).await;
        if self.l1_seq.load(Ordering::SeqCst) != seq {
            self.l1.invalidate(Invalidation::Key(key)).await;
        }
    }

    /// An entry's key up to its generation: `{p}{account}:cache:{route}:` (then `{gen}:{id}`).
    fn entry_base(&self, account: &str, route: Route) -> String {
        let mut k = self.fleet.account_key(account, &["cache", route.as_str()]);
        k.push(':');
        k
    }

    fn gen_key(&self, account: &str, route: Route) -> String {
        self.fleet.account_key(account, &["gen", route.as_str()])
    }

    /// The entry's invalidation count. Per entry, so that dropping one disk's entry does not stop
    /// the fills of the account's other disks from being stored.
    fn epoch_key(&self, k: &CacheKey) -> String {
        self.fleet
            .account_key(&k.account, &["cache-epoch", k.route.as_str(), &k.id])
    }

    fn lock_key(&self, k: &CacheKey) -> String {
        self.fleet
            .account_key(&k.account, &["lock", "cache", k.route.as_str(), &k.id])
    }

    fn channel(&self) -> String {
        self.fleet.key(&["invalidate"])
    }

    /// One subscription, until its connection ends.
    async fn listen(&self) {
        let connect = async {
            let mut ps = self.fleet.pubsub().await?;
            ps.subscribe(self.channel()).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let mut ps = match tokio::time::timeout(self.fleet.timeout() * 4, connect).await {
            Ok(Ok(ps)) => ps,
            Ok(Err(e)) => {
                return self
                    .fleet
                    .subscription_failed(&StoreError::Redis(e.to_string()));
            }
            Err(_) => {
                let e = StoreError::Subscription("subscribing timed out");
                return self.fleet.subscription_failed(&e);
            }
        };
        // Whatever was published while this replica was not listening is lost: start L1 afresh.
        self.invalidate_remote(Invalidation::All).await;
        self.subscribed.store(true, Ordering::SeqCst);
        tracing::info!("listening for the fleet's cache invalidations");
        let mut moved = self.fleet.primary_moved();
        moved.borrow_and_update();
        let mut messages = ps.on_message();
        loop {
            let msg = tokio::select! {
                msg = messages.next() => match msg {
                    Some(msg) => msg,
                    None => break,
                },
                // The primary moved: subscribe to the new one.
                _ = moved.changed() => return,
            };
            let Ok(text) = msg.get_payload::<String>() else {
                continue;
            };
            let Some((origin, sent_us, what)) = decode_message(&text, &self.routes) else {
                continue;
            };
            if origin == self.origin {
                continue;
            }
            self.invalidate_remote(what).await;
            let lag = now_us().saturating_sub(sent_us);
            self.metrics.invalidation_lag.observe(lag as f64 / 1e6);
        }
        tracing::warn!(
            "lost the subscription to the fleet's cache invalidations; subscribing again"
        );
        self.fleet
            .subscription_failed(&StoreError::Subscription("subscription connection lost"));
    }

    async fn get_l2(&self, key: &CacheKey) -> Result<Option<Arc<Entry>>, StoreError> {
        let mut inv = self.get.key(self.gen_key(&key.account, key.route));
        inv.arg(self.entry_base(&key.account, key.route))
            .arg(format!(":{}", key.id));
        let got: Option<Vec<u8>> = self
            .fleet
            .run("cache_get", |mut c| async move {
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(got.and_then(|b| decode_entry(&b)).map(Arc::new))
    }

    /// Drops one entry (`id`) or a whole route of one account in Redis, publishing `message`.
    async fn invalidate_one(
        &self,
        account: &str,
        route: Route,
        id: Option<&str>,
        message: &str,
    ) -> Result<(), StoreError> {
        let mut inv = self.invalidate.key(self.gen_key(account, route));
        if let Some(id) = id {
            inv.key(self.epoch_key(&CacheKey::new(account, route, id)));
        }
        inv.arg(self.entry_base(account, route))
            .arg(id.map(|id| format!(":{id}")).unwrap_or_default())
            .arg(COUNTER_TTL_MS)
            .arg(self.channel())
            .arg(message);
        self.fleet
            .run("cache_invalidate", |mut c| async move {
                inv.invoke_async::<i64>(&mut c).await
            })
            .await
            .map(|_| ())
    }

    async fn invalidate_l2(&self, what: &Invalidation) -> Result<(), StoreError> {
        let message = encode_message(&self.origin, what);
        let routes = |route: Option<Route>| -> Vec<Route> {
            match route {
                Some(r) => vec![r],
                None => self.routes.iter().filter(|r| !r.local_only()).collect(),
            }
        };
        let (accounts, routes): (Vec<Arc<str>>, Vec<Route>) = match what {
            Invalidation::Key(k) => {
                return self
                    .invalidate_one(&k.account, k.route, Some(&k.id), &message)
                    .await;
            }
            Invalidation::Route { account, route } => (vec![account.clone()], routes(Some(*route))),
            Invalidation::AnyAccount(route) => (self.accounts.clone(), routes(Some(*route))),
            Invalidation::All => (self.accounts.clone(), routes(None)),
        };
        // Published once, with the last of the changes it announces.
        let last = accounts.len() * routes.len();
        let mut n = 0;
        for account in &accounts {
            for route in &routes {
                n += 1;
                let msg = if n == last { message.as_str() } else { "" };
                self.invalidate_one(account, *route, None, msg).await?;
            }
        }
        Ok(())
    }
}

impl CacheStore for TwoLevel {
    fn get(&self, key: &CacheKey) -> BoxFuture<Option<Arc<Entry>>> {
        let l1 = self.0.l1.peek(key);
        if key.route.local_only()
            || l1
                .as_ref()
                .is_some_and(|e| e.is_fresh(tokio::time::Instant::now()))
        {
            return Box::pin(std::future::ready(l1));
        }
        let (this, key) = (self.0.clone(), key.clone());
        Box::pin(async move {
            let seq = this.l1_seq.load(Ordering::SeqCst);
            match this.get_l2(&key).await {
                Ok(Some(entry)) => {
                    this.put_l1_unless_invalidated(key, entry.clone(), seq)
                        .await;
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
            if key.route.local_only() {
                return;
            }
            // Without a claim (a forced refresh, or Redis was down at the claim): no epoch to check.
            let mut inv = this.put_filled.key(this.epoch_key(&key));
            inv.key(this.lock_key(&key))
                .key(this.gen_key(&key.account, key.route))
                .arg(-1)
                .arg(-1)
                .arg(this.entry_base(&key.account, key.route))
                .arg(format!(":{}", key.id))
                .arg(encode_entry(&entry))
                .arg(px(entry.retain_for()))
                .arg("")
                .arg(COUNTER_TTL_MS);
            let _ = this
                .fleet
                .run("cache_put", |mut c| async move {
                    inv.invoke_async::<i64>(&mut c).await
                })
                .await;
        })
    }

    fn invalidate(&self, what: Invalidation) -> BoxFuture<()> {
        let this = self.0.clone();
        Box::pin(async move {
            this.invalidate_l1(what.clone()).await;
            // Failing here is counted; L2 entries then live out their TTL.
            let _ = this.invalidate_l2(&what).await;
            // A read of L2 that began before the delete may have put the old entry back.
            this.invalidate_l1(what).await;
        })
    }

    fn drop_if_held(&self, key: CacheKey) -> BoxFuture<()> {
        if key.route.local_only() {
            // Never in Redis, but other replicas may hold it in L1: they must hear of it.
            return self.invalidate(Invalidation::Key(key));
        }
        let this = self.0.clone();
        Box::pin(async move {
            let what = Invalidation::Key(key.clone());
            this.invalidate_l1(what.clone()).await;
            let mut inv = this.drop_if_held.key(this.gen_key(&key.account, key.route));
            inv.key(this.epoch_key(&key))
                .key(this.lock_key(&key))
                .arg(this.entry_base(&key.account, key.route))
                .arg(format!(":{}", key.id))
                .arg(COUNTER_TTL_MS)
                .arg(this.channel())
                .arg(encode_message(&this.origin, &what));
            // Failing here is counted; an L2 entry then lives out its TTL.
            let _ = this
                .fleet
                .run("cache_invalidate", |mut c| async move {
                    inv.invoke_async::<i64>(&mut c).await
                })
                .await;
            // A read of L2 that began before the delete may have put the old entry back.
            this.invalidate_l1(what).await;
        })
    }

    fn usage(&self) -> Usage {
        self.0.l1.usage()
    }

    fn on_remote_invalidation(&self, hook: RemoteHook) {
        let _ = self.0.remote_hook.set(hook);
    }

    fn claim_fill(&self, key: &CacheKey) -> BoxFuture<Claim> {
        if key.route.local_only() {
            return Box::pin(std::future::ready(Claim::Claimed(Ticket::default())));
        }
        let (this, key) = (self.0.clone(), key.clone());
        Box::pin(async move {
            let fence = fence();
            let mut inv = this.claim.key(this.lock_key(&key));
            inv.key(this.epoch_key(&key))
                .key(this.gen_key(&key.account, key.route))
                .arg(&fence)
                .arg(px(this.fleet.lock_ttl));
            match this
                .fleet
                .run("cache_lock", |mut c| async move {
                    inv.invoke_async::<Vec<i64>>(&mut c).await
                })
                .await
            {
                Ok(got) => match got[..] {
                    [epoch, generation] => Claim::Claimed(Ticket {
                        epoch: Some(epoch),
                        generation: Some(generation),
                        fence: Some(fence),
                    }),
                    _ => Claim::Busy,
                },
                // Without Redis this replica fills on its own.
                Err(_) => Claim::Claimed(Ticket::default()),
            }
        })
    }

    fn observe(&self, key: &CacheKey) -> BoxFuture<Ticket> {
        if key.route.local_only() {
            return Box::pin(std::future::ready(Ticket::default()));
        }
        let (this, key) = (self.0.clone(), key.clone());
        Box::pin(async move {
            let mut inv = this.observe.key(this.epoch_key(&key));
            inv.key(this.gen_key(&key.account, key.route));
            match this
                .fleet
                .run("cache_lock", |mut c| async move {
                    inv.invoke_async::<Vec<i64>>(&mut c).await
                })
                .await
                .as_deref()
            {
                Ok([epoch, generation]) => Ticket {
                    epoch: Some(*epoch),
                    generation: Some(*generation),
                    fence: None,
                },
                _ => Ticket::default(),
            }
        })
    }

    fn put_filled(&self, key: CacheKey, entry: Arc<Entry>, ticket: Ticket) -> BoxFuture<bool> {
        // Without a lock there is no fence: the script then frees nothing.
        let fence = ticket.fence.unwrap_or_default();
        let (Some(epoch), Some(generation)) = (ticket.epoch, ticket.generation) else {
            let put = self.put(key, entry);
            return Box::pin(async move {
                put.await;
                true
            });
        };
        let this = self.0.clone();
        Box::pin(async move {
            let seq = this.l1_seq.load(Ordering::SeqCst);
            let mut inv = this.put_filled.key(this.epoch_key(&key));
            inv.key(this.lock_key(&key))
                .key(this.gen_key(&key.account, key.route))
                .arg(epoch)
                .arg(generation)
                .arg(this.entry_base(&key.account, key.route))
                .arg(format!(":{}", key.id))
                .arg(encode_entry(&entry))
                .arg(px(entry.retain_for()))
                .arg(fence)
                .arg(COUNTER_TTL_MS);
            match this
                .fleet
                .run("cache_put", |mut c| async move {
                    inv.invoke_async::<i64>(&mut c).await
                })
                .await
            {
                Ok(0) => false,
                _ => {
                    this.put_l1_unless_invalidated(key, entry, seq).await;
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
            let _ = this
                .fleet
                .run("cache_lock", |mut c| async move {
                    inv.invoke_async::<i64>(&mut c).await
                })
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
            let (origin, _, back) = decode_message(&msg, &RouteTable::default()).expect("decodes");
            assert_eq!(origin, "me");
            assert_eq!(back, what);
        }
        assert!(decode_message("garbage", &RouteTable::default()).is_none());
    }
}
