//! The in-memory cache store: moka, bounded by bytes (a weigher over body, headers and key), each
//! entry kept only as long as it can still be served (its TTL plus the longer of its stale windows).

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::cache::entry::Entry;
use crate::cache::key::CacheKey;
use crate::store::{CacheStore, Invalidation, Usage};
use crate::svc::BoxFuture;

/// What moka keeps per entry besides the key and the value: its hash table's bucket, the entry's
/// shared state, the access- and write-order queue nodes and the expiry timer's node (measured
/// with `resident_growth_per_entry` below).
pub const MOKA_PER_ENTRY: usize = 400;

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
                (k.weight() + v.weight() + MOKA_PER_ENTRY).min(u32::MAX as usize) as u32
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

    /// Resident growth per entry against the accounted bytes, in this process, before any hit
    /// (run alone: `cargo test --lib resident_growth -- --ignored --nocapture`).
    #[tokio::test]
    #[ignore]
    async fn resident_growth_per_entry() {
        fn rss() -> u64 {
            let s = std::fs::read_to_string("/proc/self/status").unwrap();
            let kb: u64 = s
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap();
            kb * 1024
        }
        let store = MemoryStore::new(1 << 30);
        let n = 100_000;
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert("content-length", "315".parse().unwrap());
        headers.insert("date", "Mon, 30 Nov 2026 07:34:02 GMT".parse().unwrap());
        let before = rss();
        for i in 0..n {
            let answer = Answer {
                status: StatusCode::OK,
                headers: headers.clone(),
                body: Bytes::from(vec![b'x'; 315]),
                head: None,
            };
            let policy = CachePolicy {
                ttl: Duration::from_secs(600),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                status_ttl: Default::default(),
            };
            let e = Entry::new(
                Route::DiskInfo,
                answer,
                &policy,
                tokio::time::Instant::now(),
            );
            store
                .put(
                    CacheKey::new("default", Route::DiskInfo, format!("{i:010}")),
                    Arc::new(e),
                )
                .await;
        }
        let usage = store.usage();
        let after = rss();
        // Each served once: the hit keeps its headers with the entry.
        for i in 0..n {
            let key = CacheKey::new("default", Route::DiskInfo, format!("{i:010}"));
            let entry = store.peek(&key).unwrap();
            drop(crate::layers::cache::bare_hit(
                &entry,
                tokio::time::Instant::now(),
            ));
        }
        let served = rss();
        eprintln!(
            "per entry: {} resident, {} once served, {} accounted",
            (after - before) / n,
            (served - before) / n,
            usage.bytes / n
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
