//! Where shared state lives, behind small traits so that the in-memory store of one replica and a
//! shared store for a fleet are interchangeable without touching the layers that use them.

#[cfg(test)]
pub(crate) mod conformance;
pub(crate) mod error;
pub(crate) mod memory;

use std::sync::Arc;

use crate::cache::entry::Entry;
use crate::cache::key::CacheKey;
use crate::routes::Route;
use crate::svc::BoxFuture;

/// What to drop from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Invalidation {
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
    pub(crate) fn matches(&self, key: &CacheKey) -> bool {
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
pub(crate) struct Usage {
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
}

/// The right to fill one key for the whole fleet, and what the store needs to finish the fill.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ticket {
    /// The store's invalidation count when the fill began: a fill overtaken by an invalidation
    /// is not stored.
    pub(crate) epoch: Option<i64>,
    /// The generation of the key's route when the fill began (a shared store's entries carry it).
    pub(crate) generation: Option<i64>,
    /// Names this holder's lock, so that it frees only its own.
    pub(crate) fence: Option<String>,
}

/// The outcome of [`CacheStore::claim_fill`].
#[derive(Debug, Clone)]
pub(crate) enum Claim {
    /// This caller fetches, and ends with `put_filled` or `release_fill`.
    Claimed(Ticket),
    /// Another replica is fetching this key; wait for its entry.
    Busy,
}

/// See [`CacheStore::on_remote_invalidation`].
pub(crate) type RemoteHook = Box<dyn Fn(&Invalidation) + Send + Sync>;

/// The cache's storage. Coalescing of fills within a replica is the cache's own (see
/// [`crate::cache::Cache`]); a shared store also coalesces them across the fleet (`claim_fill`).
pub(crate) trait CacheStore: Send + Sync + 'static {
    fn get(&self, key: &CacheKey) -> BoxFuture<Option<Arc<Entry>>>;
    /// What this replica holds in its own memory for `key`, without I/O (a shared store answers
    /// from its local level); `get` is the full lookup.
    fn peek(&self, key: &CacheKey) -> Option<Arc<Entry>>;
    fn put(&self, key: CacheKey, entry: Arc<Entry>) -> BoxFuture<()>;
    fn invalidate(&self, what: Invalidation) -> BoxFuture<()>;
    fn usage(&self) -> Usage;

    /// Has `hook` told of every invalidation this store applies on another replica's behalf (a
    /// shared store's messages), before it applies it, so that the cache detaches its fills of
    /// those keys as it does for its own. A store of one replica has none.
    fn on_remote_invalidation(&self, _hook: RemoteHook) {}

    /// Drops `key`'s entry where one may be held. Unlike [`CacheStore::invalidate`], a shared store
    /// writes and publishes nothing when it holds no trace of the key (no entry, no fill lock, no
    /// epoch): an answer that was never stored (a disk that does not exist) leaves no state.
    fn drop_if_held(&self, key: CacheKey) -> BoxFuture<()> {
        self.invalidate(Invalidation::Key(key))
    }

    /// Claims the fill of `key` for the fleet. A store of one replica has nothing to coordinate.
    fn claim_fill(&self, _key: &CacheKey) -> BoxFuture<Claim> {
        Box::pin(std::future::ready(Claim::Claimed(Ticket::default())))
    }

    /// What a fill that does not take the lock (a forced refresh, or one that waited long enough)
    /// needs so that an invalidation during its fetch still keeps it from being stored.
    fn observe(&self, _key: &CacheKey) -> BoxFuture<Ticket> {
        Box::pin(std::future::ready(Ticket::default()))
    }

    /// Stores the entry of a claimed fill (unless an invalidation overtook it: `false`) and frees
    /// the claim.
    fn put_filled(&self, key: CacheKey, entry: Arc<Entry>, _ticket: Ticket) -> BoxFuture<bool> {
        let put = self.put(key, entry);
        Box::pin(async move {
            put.await;
            true
        })
    }

    /// Frees a claim without storing anything (the upstream failed).
    fn release_fill(&self, _key: &CacheKey, _ticket: Ticket) -> BoxFuture<()> {
        Box::pin(std::future::ready(()))
    }

    /// How long a caller waits for another replica's fill before fetching itself.
    fn fill_wait(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}
