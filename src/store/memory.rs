//! The in-memory cache store: moka, bounded by bytes (a weigher over body, headers and key), each
//! entry kept only as long as it can still be served (its TTL plus the longer of its stale windows).
//!
//! Dropping all of a route's entries (every create drops its account's `disk.list` pages) moves
//! that route's *generation*; an entry stored under an older one is never served again and goes
//! at its next read. Constant work per invalidation and per read, however many entries or
//! invalidations there are: moka's invalidation closures, which this replaced, are checked by
//! every read until a background scan retires them, and a steady rate of creates made each
//! cache hit 70 times slower (1,000 pending closures over 20,000 entries: 0.7 µs → 50 µs a read).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::cache::entry::Entry;
use crate::cache::key::CacheKey;
use crate::routes::Route;
use crate::store::{CacheStore, Invalidation, Usage};
use crate::svc::BoxFuture;

/// What moka keeps per entry besides the key and the value: the hash table's bucket and slot, the
/// entry's shared state and lock, the access-order queue node and the expiry timer's node (about
/// 280 B in mimalloc's size classes, counted allocation by allocation over 20,000 entries), and
/// the entry's share of the allocator's partly filled pages. The end-to-end `memory_bound` test
/// holds the real binary's resident memory per entry to within 1.5× of what the weigher counts
/// (measured: within 15%).
pub(crate) const MOKA_PER_ENTRY: usize = 400;

pub(crate) struct MemoryStore {
    entries: Cache<CacheKey, Stamped>,
    generations: Generations,
}

/// An entry with the generations it was stored under.
#[derive(Clone)]
struct Stamped {
    entry: Arc<Entry>,
    stamp: Stamp,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    /// Route-wide invalidations of any kind so far: when unchanged, nothing else need be read.
    moves: u64,
    /// The generation of the entry's route in its account, and of the route in every account.
    of_account: u64,
    of_route: u64,
}

/// Generations of routes (per account, and across accounts), moved by route-wide invalidations.
/// Keys are routes and accounts of the configuration, so the maps stay small.
#[derive(Default)]
struct Generations {
    moves: AtomicU64,
    /// Per route: its generation in every account, and in each account that moved it alone.
    routes: RwLock<HashMap<Route, RouteGenerations>>,
}

#[derive(Default)]
struct RouteGenerations {
    all: u64,
    of_account: HashMap<Arc<str>, u64>,
}

impl Generations {
    fn stamp(&self, key: &CacheKey) -> Stamp {
        // Read before the maps: a move between the two reads makes the stamp older, never newer.
        let moves = self.moves.load(Ordering::Acquire);
        let (of_account, of_route) = read(&self.routes).get(&key.route).map_or((0, 0), |g| {
            (g.of_account.get(&*key.account).copied().unwrap_or(0), g.all)
        });
        Stamp {
            moves,
            of_account,
            of_route,
        }
    }

    /// Whether an entry stamped `stamp` under `key` is still of the current generations.
    fn current(&self, key: &CacheKey, stamp: &Stamp) -> bool {
        stamp.moves == self.moves.load(Ordering::Acquire) || {
            let now = self.stamp(key);
            now.of_account == stamp.of_account && now.of_route == stamp.of_route
        }
    }

    fn move_account_route(&self, account: Arc<str>, route: Route) {
        *write(&self.routes)
            .entry(route)
            .or_default()
            .of_account
            .entry(account)
            .or_default() += 1;
        self.moves.fetch_add(1, Ordering::AcqRel);
    }

    fn move_route(&self, route: Route) {
        write(&self.routes).entry(route).or_default().all += 1;
        self.moves.fetch_add(1, Ordering::AcqRel);
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Expires each entry when it is of no use any more; moka's clock only bounds memory here.
struct RetainFor;

impl moka::Expiry<CacheKey, Stamped> for RetainFor {
    fn expire_after_create(&self, _: &CacheKey, stamped: &Stamped, _: Instant) -> Option<Duration> {
        Some(stamped.entry.retain_for())
    }
}

impl MemoryStore {
    pub(crate) fn new(max_bytes: u64) -> MemoryStore {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &CacheKey, v: &Stamped| {
                let stamp = std::mem::size_of::<Stamp>();
                (k.weight() + v.entry.weight() + stamp + MOKA_PER_ENTRY).min(u32::MAX as usize)
                    as u32
            })
            .expire_after(RetainFor)
            .build();
        MemoryStore {
            entries,
            generations: Generations::default(),
        }
    }

    fn lookup(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let stamped = self.entries.get(key)?;
        if self.generations.current(key, &stamped.stamp) {
            return Some(stamped.entry);
        }
        self.entries.invalidate(key);
        None
    }
}

impl CacheStore for MemoryStore {
    fn get(&self, key: &CacheKey) -> BoxFuture<Option<Arc<Entry>>> {
        Box::pin(std::future::ready(self.lookup(key)))
    }

    fn peek(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.lookup(key)
    }

    fn put(&self, key: CacheKey, entry: Arc<Entry>) -> BoxFuture<()> {
        let stamp = self.generations.stamp(&key);
        self.entries.insert(key, Stamped { entry, stamp });
        Box::pin(std::future::ready(()))
    }

    fn invalidate(&self, what: Invalidation) -> BoxFuture<()> {
        match what {
            Invalidation::Key(k) => self.entries.invalidate(&k),
            Invalidation::All => self.entries.invalidate_all(),
            Invalidation::Route { account, route } => {
                self.generations.move_account_route(account, route);
            }
            Invalidation::AnyAccount(route) => self.generations.move_route(route),
        }
        Box::pin(std::future::ready(()))
    }

    fn usage(&self) -> Usage {
        self.entries.run_pending_tasks();
        Usage {
            entries: self.entries.entry_count(),
            bytes: self.entries.weighted_size(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::answer::Answer;
    use crate::cache::policy::CachePolicy;
    use crate::routes::Route;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    fn entry(body_len: usize) -> Arc<Entry> {
        let answer = Answer {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(vec![b'x'; body_len]),
            head: None,
        };
        let policy = CachePolicy {
            ttl: Duration::from_secs(60),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            status_ttl: std::collections::BTreeMap::default(),
        };
        Arc::new(Entry::new(
            Route::DiskInfo,
            &answer,
            &policy,
            tokio::time::Instant::now(),
        ))
    }

    #[tokio::test]
    async fn the_byte_bound_holds_over_100k_distinct_keys() {
        let max = 1024 * 1024;
        let store = MemoryStore::new(max);
        for i in 0..100_000 {
            store
                .put(
                    CacheKey::new("default", Route::DiskInfo, format!("disk{i:06}")),
                    entry(400),
                )
                .await;
        }
        let usage = store.usage();
        assert!(usage.bytes <= max, "{usage:?}");
        assert!(
            usage.entries > 100 && usage.entries < 100_000,
            "entries were evicted: {usage:?}"
        );
    }

    #[tokio::test]
    async fn invalidation_by_route_spares_other_accounts_and_routes() {
        let store = MemoryStore::new(1 << 20);
        let a = CacheKey::new("a", Route::DiskList, "{}");
        let b = CacheKey::new("b", Route::DiskList, "{}");
        let c = CacheKey::new("a", Route::DiskInfo, "x");
        for k in [&a, &b, &c] {
            store.put(k.clone(), entry(10)).await;
        }
        store
            .invalidate(Invalidation::Route {
                account: "a".into(),
                route: Route::DiskList,
            })
            .await;
        assert!(store.get(&a).await.is_none());
        assert!(store.get(&b).await.is_some());
        assert!(store.get(&c).await.is_some());
    }

    #[tokio::test]
    async fn an_entry_stored_after_a_route_is_dropped_is_served_and_any_account_drops_all() {
        let store = MemoryStore::new(1 << 20);
        let a = CacheKey::new("a", Route::DiskList, "{}");
        let b = CacheKey::new("b", Route::DiskList, "{}");
        let drop_a = || Invalidation::Route {
            account: "a".into(),
            route: Route::DiskList,
        };
        store.invalidate(drop_a()).await;
        store.put(a.clone(), entry(10)).await;
        assert!(store.get(&a).await.is_some(), "stored after the drop");
        store.invalidate(drop_a()).await;
        assert!(store.get(&a).await.is_none());
        assert!(store.peek(&a).is_none(), "peek sees the drop too");
        store.put(a.clone(), entry(10)).await;
        store.put(b.clone(), entry(10)).await;
        store
            .invalidate(Invalidation::AnyAccount(Route::DiskList))
            .await;
        assert!(store.get(&a).await.is_none());
        assert!(store.get(&b).await.is_none());
        store.put(b.clone(), entry(10)).await;
        assert!(
            store.get(&b).await.is_some(),
            "stored after the drop of every account's"
        );
    }

    #[tokio::test]
    async fn route_drops_keep_no_state_per_drop() {
        let store = MemoryStore::new(1 << 20);
        let keep = CacheKey::new("a", Route::DiskInfo, "x");
        store.put(keep.clone(), entry(10)).await;
        for _ in 0..10_000 {
            store
                .invalidate(Invalidation::Route {
                    account: "a".into(),
                    route: Route::DiskList,
                })
                .await;
            store
                .invalidate(Invalidation::AnyAccount(Route::DiskMemoryTotal))
                .await;
        }
        // One generation per (account, route), whatever the number of drops: nothing builds up
        // for a read to go through (moka's invalidation closures did, one per drop).
        {
            let routes = read(&store.generations.routes);
            assert_eq!(routes.len(), 2, "disk.list and disk.memory_total");
            assert_eq!(routes[&Route::DiskList].of_account.len(), 1);
            assert!(routes[&Route::DiskMemoryTotal].of_account.is_empty());
        }
        assert!(
            store.get(&keep).await.is_some(),
            "other routes' entries stay"
        );
    }
}
