//! The response cache: which routes are cached and how (`policy`), what identifies an entry
//! (`key`), the upstream's answer (`answer`), an entry's freshness (`entry`) and compact form
//! (`stored`), what they weigh in memory (`size`), a route's policy as written (`written`), and [`Cache`], which ties a store to single-flight
//! fills and invalidation. It knows keys, answers and durations; the HTTP side is
//! [`crate::layers::cache`].
//!
//! Invalidation and fills race safely: an invalidation (this replica's own, or in shared mode
//! another's, as its message arrives) detaches the fills in flight for the keys it covers. A
//! detached fill still answers the requests that joined it, but stores nothing, and the next
//! request for its key starts a fill of its own. So after a mutation through the gateway, no
//! answer fetched before it is ever served as fresh, while fills of other keys (another disk, or
//! another account) go on undisturbed.
//!
//! An answer that is not stored leaves nothing behind: its fill's claim is freed, and dropping
//! the entry it says is gone touches the store only where the store holds something of the key
//! ([`CacheStore::drop_if_held`]). A forced refresh (`Cache-Control: no-cache`) is a fill like
//! any other: a request that asks for one while a fill of its key is in flight joins that fill
//! rather than starting another. That fill began at most one upstream call before the request and
//! after any invalidation of the key (invalidations detach the fills before them), so its answer is
//! as current as a call of the request's own, and a client that always sends `no-cache` cannot
//! multiply upstream calls. A refresh that starts a fill drops the stored entry first.

pub(crate) mod answer;
pub(crate) mod entry;
pub(crate) mod hit_values;
pub(crate) mod key;
pub(crate) mod policy;
pub(crate) mod size;
pub(crate) mod stored;
pub(crate) mod written;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use tokio::time::Instant;

use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::routes::Route;
use crate::single_flight::{Flight, SingleFlight};
use crate::store::{CacheStore, Claim, Invalidation, Ticket, Usage};
use crate::swap::Swap;
use answer::Answer;
use entry::Entry;
use key::CacheKey;
use policy::{CachePolicy, CacheSettings};

/// The result of a fill, shared by everyone who waited for it.
#[derive(Debug)]
pub(crate) enum Filled {
    /// The upstream's answer (or why there is none), and whether it was stored.
    Fetched {
        answer: Result<Answer, GatewayError>,
        stored: bool,
    },
    /// A fresh entry was stored between the caller's lookup and the fill: no call was needed.
    Found(Arc<Entry>),
}

pub(crate) struct Cache {
    store: Arc<dyn CacheStore>,
    /// Swapped whole by a reload; a fill stores under the policies current when it began.
    policies: Swap<BTreeMap<Route, CachePolicy>>,
    flights: SingleFlight<CacheKey, Arc<Filled>>,
    metrics: Arc<Metrics>,
}

/// Why entries were dropped (the `reason` label of the invalidations metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// A mutation through the gateway changed what the entry describes.
    Mutation,
    /// An operator's `POST /admin/cache/purge`.
    Purge,
    /// A client's `Cache-Control: no-cache`.
    NoCache,
    /// The upstream said the thing no longer exists.
    Gone,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Mutation => "mutation",
            Reason::Purge => "purge",
            Reason::NoCache => "no_cache",
            Reason::Gone => "gone",
        }
    }
}

pub(crate) use crate::routes::Stale;

fn label(what: &Invalidation) -> &'static str {
    match what {
        Invalidation::Key(k) => k.route.as_str(),
        Invalidation::Route { route, .. } | Invalidation::AnyAccount(route) => route.as_str(),
        Invalidation::All => "all",
    }
}

impl Cache {
    pub(crate) fn new(
        settings: &CacheSettings,
        store: Arc<dyn CacheStore>,
        metrics: Arc<Metrics>,
    ) -> Cache {
        let flights = SingleFlight::new();
        let detach = flights.clone();
        // Another replica's invalidation detaches this replica's fills just as its own do.
        store.on_remote_invalidation(Box::new(move |what: &Invalidation| {
            detach.detach(|key| what.matches(key));
        }));
        Cache {
            store,
            policies: Swap::new(settings.routes.clone()),
            flights,
            metrics,
        }
    }

    /// Whether `route` is cached now.
    pub(crate) fn caches(&self, route: Route) -> bool {
        self.policies.with(|p| p.contains_key(&route))
    }

    /// The current policies of every cached route.
    pub(crate) fn policies(&self) -> Arc<BTreeMap<Route, CachePolicy>> {
        self.policies.load()
    }

    /// Puts new policies in place (a reload); fills in flight keep the ones they began with.
    pub(crate) fn set_policies(&self, policies: BTreeMap<Route, CachePolicy>) {
        self.policies.store(policies);
    }

    /// A fresh entry this replica holds in memory, looked up without waiting on anything.
    pub(crate) fn peek_fresh(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let entry = self.store.peek(key)?;
        entry.is_fresh(Instant::now()).then_some(entry)
    }

    /// The stored entry, if it is still of any use.
    pub(crate) async fn lookup(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let entry = self.store.get(key).await?;
        entry.freshness(Instant::now()).map(|_| entry)
    }

    /// Runs `fetch` once for all concurrent callers of `key`; a storable answer is stored unless an
    /// invalidation happened meanwhile. The fetch runs to its end even if every caller goes away.
    /// Unless `force`, a fresh entry stored since the caller looked (by a fill that landed in
    /// between) is used instead of calling again; with `force` (a client's refresh) a fill that
    /// starts drops the stored entry first, and one already in flight is joined.
    pub(crate) fn fill<F>(
        self: &Arc<Self>,
        key: CacheKey,
        force: bool,
        fetch: F,
    ) -> Flight<Arc<Filled>>
    where
        F: Future<Output = Result<Answer, GatewayError>> + Send + 'static,
    {
        let cache = self.clone();
        self.flights
            .join_or_start_with(key.clone(), move |detached| async move {
                // The policies current when the fill begins (a reload may change them meanwhile);
                // callers that join it never read them.
                let policies = cache.policies();
                // A fill of this replica that landed since the caller looked is in its own memory;
                // one of another replica's is found by the claim below.
                if !force
                    && let Some(entry) = cache.store.peek(&key)
                    && entry.is_fresh(Instant::now())
                {
                    return Arc::new(Filled::Found(entry));
                }
                let ticket = if force {
                    cache.record_invalidation(key.route.as_str(), Reason::NoCache);
                    cache.store.drop_if_held(key.clone()).await;
                    cache.store.observe(&key).await
                } else {
                    match cache.claim(&key).await {
                        Ok(ticket) => ticket,
                        Err(entry) => return Arc::new(Filled::Found(entry)),
                    }
                };
                let answer = fetch.await;
                let policy = policies
                    .get(&key.route)
                    .filter(|_| answer.as_ref().is_ok_and(Answer::is_storable))
                    .filter(|_| !detached.is_set());
                let mut stored = false;
                if let (Some(policy), Ok(answer)) = (policy, &answer) {
                    let entry = Entry::new(key.route, answer, policy, Instant::now());
                    stored = cache
                        .store
                        .put_filled(key.clone(), Arc::new(entry), ticket)
                        .await;
                    // Detached while storing: the invalidation may have run before the entry
                    // landed, so it is dropped here (at worst a later fill's entry with it).
                    if stored && detached.is_set() {
                        cache.store.invalidate(Invalidation::Key(key)).await;
                        stored = false;
                    }
                } else {
                    cache.store.release_fill(&key, ticket).await;
                    if answer.as_ref().is_ok_and(Answer::is_gone) {
                        cache.flights.detach_key(&key);
                        cache.record_invalidation(key.route.as_str(), Reason::Gone);
                        cache.store.drop_if_held(key).await;
                    }
                }
                Arc::new(Filled::Fetched { answer, stored })
            })
    }

    /// The fleet's right to fill `key`; while another replica holds it, waits for that replica's
    /// entry (`Err`), up to the store's wait, after which this replica fetches on its own.
    async fn claim(&self, key: &CacheKey) -> Result<Ticket, Arc<Entry>> {
        let deadline = Instant::now() + self.store.fill_wait();
        let mut pause = std::time::Duration::from_millis(5);
        loop {
            match self.store.claim_fill(key).await {
                // Another replica may have stored the entry between our look and the claim.
                Claim::Claimed(ticket) if ticket.fence.is_some() => {
                    if let Some(entry) = self.store.get(key).await
                        && entry.is_fresh(Instant::now())
                    {
                        self.store.release_fill(key, ticket).await;
                        return Err(entry);
                    }
                    return Ok(ticket);
                }
                Claim::Claimed(ticket) => return Ok(ticket),
                Claim::Busy if Instant::now() >= deadline => {
                    return Ok(self.store.observe(key).await);
                }
                Claim::Busy => {}
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(50));
            if let Some(entry) = self.store.get(key).await
                && entry.is_fresh(Instant::now())
            {
                return Err(entry);
            }
        }
    }

    pub(crate) async fn invalidate(&self, what: Invalidation, reason: Reason) {
        // Before the store drops the entries: a fill that stores after this sees itself detached.
        self.flights.detach(|key| what.matches(key));
        self.record_invalidation(label(&what), reason);
        self.store.invalidate(what).await;
    }

    fn record_invalidation(&self, route: &str, reason: Reason) {
        self.metrics
            .cache_invalidations
            .with_label_values(&[route, reason.as_str()])
            .inc();
    }

    /// Drops what a successful mutation of `route` (naming `id`, when it names one) made wrong.
    pub(crate) async fn after_mutation(&self, account: &str, route: Route, id: Option<&str>) {
        for stale in route.invalidates() {
            let what = match (stale, id) {
                (Stale::SameId(r), Some(id)) => Invalidation::Key(CacheKey::new(account, *r, id)),
                // Without the id we cannot tell which entry: drop the route's entries of this account.
                (Stale::SameId(r), None) | (Stale::WholeRoute(r), _) => Invalidation::Route {
                    account: account.into(),
                    route: *r,
                },
            };
            self.invalidate(what, Reason::Mutation).await;
        }
    }

    pub(crate) fn record_lookup(&self, route: Route, result: &str) {
        self.metrics
            .cache_lookups
            .with_label_values(&[route.as_str(), result])
            .inc();
    }

    /// Refreshes the entry and byte gauges.
    pub(crate) fn update_gauges(&self) -> Usage {
        let usage = self.store.usage();
        self.metrics.cache_entries.set(usage.entries as i64);
        self.metrics.cache_bytes.set(usage.bytes as i64);
        usage
    }
}
