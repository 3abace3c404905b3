//! The in-memory cache store: moka, bounded by bytes (a weigher over body, headers and key), each
//! entry kept only as long as it can still be served (its TTL plus the longer of its stale windows).

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::cache::entry::Entry;
use crate::cache::key::CacheKey;
use crate::store::{CacheStore, Invalidation, Usage};
use crate::svc::BoxFuture;

pub struct MemoryStore {
    entries: Cache<CacheKey, Arc<Entry>>,
}

/// Expires each entry when it is of no use any more; moka's clock only bounds memory here.
struct RetainFor;

impl moka::Expiry<CacheKey, Arc<Entry>> for RetainFor {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        entry: &Arc<Entry>,
        _: Instant,
    ) -> Option<Duration> {
        Some(entry.retain_for())
    }
}

impl MemoryStore {
    pub fn new(max_bytes: u64) -> MemoryStore {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &CacheKey, v: &Arc<Entry>| {
                (k.weight() + v.weight()).min(u32::MAX as usize) as u32
            })
            .expire_after(RetainFor)
            .support_invalidation_closures()
            .build();
        MemoryStore { entries }
    }
}

impl CacheStore for MemoryStore {
    fn get(&self, key: &CacheKey) -> BoxFuture<Option<Arc<Entry>>> {
        Box::pin(std::future::ready(self.entries.get(key)))
    }

    fn peek(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.entries.get(key)
    }

    fn put(&self, key: CacheKey, entry: Arc<Entry>) -> BoxFuture<()> {
        self.entries.insert(key, entry);
        Box::pin(std::future::ready(()))
    }

    fn invalidate(&self, what: Invalidation) -> BoxFuture<()> {
        match what {
            Invalidation::Key(k) => self.entries.invalidate(&k),
            Invalidation::All => self.entries.invalidate_all(),
            other => {
                // Applied lazily by moka, but checked on every read: a matching entry is never served.
                let _ = self
                    .entries
                    .invalidate_entries_if(move |k, _| other.matches(k));
            }
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
    use crate::cache::entry::Answer;
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
            status_ttl: Default::default(),
        };
        Arc::new(Entry::new(
            Route::DiskInfo,
            answer,
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
}
