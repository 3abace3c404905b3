//! Where shared state lives, behind small traits so that the in-memory store of one replica and a
//! shared store for a fleet are interchangeable without touching the layers that use them.

pub mod memory;

use std::sync::Arc;

use crate::cache::entry::Entry;
use crate::cache::key::CacheKey;
use crate::routes::Route;
use crate::svc::BoxFuture;

pub use memory::MemoryStore;

/// What to drop from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// One entry.
    Key(CacheKey),
    /// Every entry of one route of one account (e.g. all `disk.list` pages).
    Route { account: Arc<str>, route: Route },
    /// Every entry of one route, all accounts.
    AnyAccount(Route),
    /// Everything.
    All,
}

impl Invalidation {
    pub fn matches(&self, key: &CacheKey) -> bool {
        match self {
            Invalidation::Key(k) => k == key,
            Invalidation::Route { account, route } => {
                key.account == *account && key.route == *route
            }
            Invalidation::AnyAccount(route) => key.route == *route,
            Invalidation::All => true,
        }
    }
}

/// Entries and bytes held, for the cache gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub entries: u64,
    pub bytes: u64,
}

/// The cache's storage. Coalescing of fills is the cache's own (see [`crate::cache::Cache`]).
pub trait CacheStore: Send + Sync + 'static {
    fn get(&self, key: &CacheKey) -> BoxFuture<Option<Arc<Entry>>>;
    /// What this replica holds in its own memory for `key`, without I/O (a shared store answers
    /// from its local level); `get` is the full lookup.
    fn peek(&self, key: &CacheKey) -> Option<Arc<Entry>>;
    fn put(&self, key: CacheKey, entry: Arc<Entry>) -> BoxFuture<()>;
    fn invalidate(&self, what: Invalidation) -> BoxFuture<()>;
    fn usage(&self) -> Usage;
}
