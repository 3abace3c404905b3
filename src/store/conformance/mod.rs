//! One conformance suite for every store trait, run against both implementations: this replica's
//! memory and Redis for a fleet. Each test is written once, as a function of [`Stores`], and
//! [`conformance!`] runs it twice: `memory::name` and `redis::name`, the latter against a real
//! `redis-server` started for it on a free port (a missing binary fails, never skips).
//!
//! A store handle stands for one replica: the memory side hands out the one store it has, the Redis
//! side a new store on a connection of its own each time, over one server and key prefix. So
//! "what one handle writes another reads" holds for one replica and for a fleet alike.
//!
//! - `records`: [`crate::protect::records::RecordStore`] (idempotency and de-dup records);
//! - `cache`: [`crate::store::CacheStore`] (cache entries and fill claims);
//! - `limiter`: [`crate::protect::gcra::RateLimiter`] (the create rate);
//! - `tally`: [`crate::protect::budget::tally::Tally`] (the spending guard's counters);
//! - `redis_server`: the `redis-server` child process;
//! - `postgres_server`: a PostgreSQL server of its own, for the purchase ledger's tests
//!   (`crate::ledger`), the end-to-end harness and the ledger bench.

pub(crate) mod postgres_server;
mod redis_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::RedisConfig;
use crate::fleet::Fleet;
use crate::fleet::cache::TwoLevel;
use crate::fleet::limiter::RedisLimiter;
use crate::fleet::records::RedisRecords;
use crate::fleet::tally::RedisTally;
use crate::metrics::Metrics;
use crate::protect::budget::tally::{MemoryTally, Tally};
use crate::protect::gcra::{MemoryLimiter, RateLimiter};
use crate::protect::records::{MemoryRecords, RecordStore};
use crate::routes::RouteTable;
use crate::store::CacheStore;
use crate::store::memory::MemoryStore;
use redis_server::RedisServer;

/// The accounts a test's cache entries belong to (a shared cache drops across the accounts it
/// is configured with).
const ACCOUNTS: [&str; 2] = ["acct-a", "acct-b"];

/// Bytes the cache stores may hold: far more than any test stores.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// The stores under test, and how to get another handle onto them.
enum Stores {
    Memory {
        records: Arc<MemoryRecords>,
        limiter: Arc<MemoryLimiter>,
        tally: Arc<MemoryTally>,
        cache: Arc<MemoryStore>,
    },
    Redis {
        server: RedisServer,
        prefix: String,
    },
}

impl Stores {
    fn memory() -> Stores {
        Stores::Memory {
            records: Arc::new(MemoryRecords::default()),
            limiter: Arc::new(MemoryLimiter::new()),
            tally: Arc::new(MemoryTally::default()),
            cache: Arc::new(MemoryStore::new(CACHE_BYTES)),
        }
    }

    fn redis() -> Stores {
        static N: AtomicU64 = AtomicU64::new(0);
        Stores::Redis {
            server: RedisServer::start(),
            prefix: format!("fgw-conf-{}:", N.fetch_add(1, Ordering::SeqCst)),
        }
    }

    /// A new replica's connection to the server: every Redis store handle has its own.
    fn fleet(server: &RedisServer, prefix: &str) -> (Arc<Fleet>, Arc<Metrics>) {
        let cfg = RedisConfig {
            url: server.url(),
            prefix: prefix.to_string(),
            // Generous: the suite runs beside others on small machines; a timeout is a failure.
            timeout: Duration::from_secs(5),
            ..RedisConfig::default()
        };
        let metrics = Arc::new(Metrics::new());
        let fleet = Fleet::new(&cfg, metrics.clone()).expect("a fleet for the test server");
        (fleet, metrics)
    }

    fn records(&self) -> Arc<dyn RecordStore> {
        match self {
            Stores::Memory { records, .. } => records.clone(),
            Stores::Redis { server, prefix } => {
                Arc::new(RedisRecords::new(Self::fleet(server, prefix).0, false))
            }
        }
    }

    fn limiter(&self) -> Arc<dyn RateLimiter> {
        match self {
            Stores::Memory { limiter, .. } => limiter.clone(),
            Stores::Redis { server, prefix } => {
                Arc::new(RedisLimiter::new(Self::fleet(server, prefix).0, false))
            }
        }
    }

    fn tally(&self) -> Arc<dyn Tally> {
        match self {
            Stores::Memory { tally, .. } => tally.clone(),
            Stores::Redis { server, prefix } => {
                Arc::new(RedisTally::new(Self::fleet(server, prefix).0, false))
            }
        }
    }

    fn cache(&self) -> Arc<dyn CacheStore> {
        match self {
            Stores::Memory { cache, .. } => cache.clone(),
            Stores::Redis { server, prefix } => {
                let (fleet, metrics) = Self::fleet(server, prefix);
                let accounts = ACCOUNTS.iter().map(|a| Arc::from(*a)).collect();
                let routes = Arc::new(RouteTable::default());
                Arc::new(TwoLevel::new(fleet, accounts, routes, CACHE_BYTES, metrics))
            }
        }
    }
}

/// Runs each named test function (`async fn name(stores: &Stores)`, in the invoking module)
/// against both implementations: as `memory::name` and `redis::name`.
macro_rules! conformance {
    ($($test:ident),+ $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(&$crate::store::conformance::Stores::memory()).await;
                }
            )+
        }

        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(&$crate::store::conformance::Stores::redis()).await;
                }
            )+
        }
    };
}

mod cache;
mod limiter;
mod records;
mod tally;
