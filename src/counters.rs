//! What the operator console counts per client and per account that the metrics do not (they keep
//! client names out of most labels): requests answered, create attempts, token leases, refusals by
//! reason, and each account's last token and its failures. Counted since the process started,
//! on this replica only.
//!
//! Kept off the hit path's budget: each client's [`ClientCounters`] is made once (when the
//! configuration names the client) and travels with the request's caller, so counting an answer
//! is one relaxed atomic add, never a lookup by name. A leaf: the layers, the token broker and the
//! console read it; it imports none of them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub(crate) use crate::refusal::{Refusal, Refused};

/// One client's counts.
#[derive(Debug, Default)]
pub(crate) struct ClientCounters {
    requests: AtomicU64,
    creates: AtomicU64,
    token_leases: AtomicU64,
    refusals: [AtomicU64; Refusal::ALL.len()],
}

/// What kind of request an answer was to: what it counts as besides a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    /// A read, a mutation or a gateway endpoint: a request only.
    Request,
    /// A spend route: also a create attempt, when it reached the upstream or a replay.
    Create,
}

/// A snapshot of one client's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClientCounts {
    pub(crate) requests: u64,
    pub(crate) creates: u64,
    pub(crate) token_leases: u64,
    /// By [`Refusal::ALL`]'s order.
    pub(crate) refusals: [u64; Refusal::ALL.len()],
}

impl ClientCounters {
    /// A fresh cache hit: one request, answered.
    pub(crate) fn hit(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// An answer the stack made: a request, its refusal's reason if it was one, and a create
    /// attempt for a spend that was not refused before it reached the upstream.
    pub(crate) fn answered(&self, kind: Counted, refused: Option<Refused>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(r) = refused {
            self.refusals[r.reason.index()].fetch_add(1, Ordering::Relaxed);
        }
        if kind == Counted::Create && refused.is_none_or(|r| r.sent) {
            self.creates.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A token leased at `/_gateway/token`.
    pub(crate) fn leased(&self) {
        self.token_leases.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ClientCounts {
        ClientCounts {
            requests: self.requests.load(Ordering::Relaxed),
            creates: self.creates.load(Ordering::Relaxed),
            token_leases: self.token_leases.load(Ordering::Relaxed),
            refusals: std::array::from_fn(|i| self.refusals[i].load(Ordering::Relaxed)),
        }
    }
}

/// Every client's counters by name, kept across reloads: a client a reload keeps keeps its
/// counts, one it adds starts at 0. Read only when an authenticator is built (start, reload),
/// never per request.
#[derive(Debug, Default)]
pub(crate) struct ClientRegistry {
    by_name: Mutex<BTreeMap<Arc<str>, Arc<ClientCounters>>>,
}

impl ClientRegistry {
    /// The counters of the client called `name`, made at its first mention.
    pub(crate) fn of(&self, name: &str) -> Arc<ClientCounters> {
        let mut map = self.by_name.lock().expect("client counters");
        if let Some(c) = map.get(name) {
            return c.clone();
        }
        let c = Arc::new(ClientCounters::default());
        map.insert(name.into(), c.clone());
        c
    }
}

/// One upstream account's token history, kept by its broker.
#[derive(Debug, Default)]
pub(crate) struct AccountCounters {
    /// Epoch ms of the last token obtained (by `getToken`, or taken from the fleet); 0: none.
    last_token_ms: AtomicU64,
    leases: AtomicU64,
    /// `getToken` answers that refused the credentials.
    refusals: AtomicU64,
}

/// A snapshot of one account's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AccountCounts {
    pub(crate) last_token_ms: Option<u64>,
    pub(crate) leases: u64,
    pub(crate) refusals: u64,
}

impl AccountCounters {
    pub(crate) fn obtained(&self, now_ms: u64) {
        self.last_token_ms.store(now_ms, Ordering::Relaxed);
    }

    pub(crate) fn leased(&self) {
        self.leases.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> AccountCounts {
        let last = self.last_token_ms.load(Ordering::Relaxed);
        AccountCounts {
            last_token_ms: (last > 0).then_some(last),
            leases: self.leases.load(Ordering::Relaxed),
            refusals: self.refusals.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(reason: Refusal, sent: bool) -> Refused {
        Refused { reason, sent }
    }

    #[test]
    fn a_create_counts_when_it_reached_the_upstream_or_a_replay() {
        let c = ClientCounters::default();
        c.answered(Counted::Create, None);
        c.answered(Counted::Create, Some(refused(Refusal::Other, true)));
        c.answered(Counted::Create, Some(refused(Refusal::Budget, false)));
        c.answered(Counted::Request, None);
        c.hit();
        c.leased();
        let s = c.snapshot();
        assert_eq!((s.requests, s.creates, s.token_leases), (5, 2, 1));
        assert_eq!(s.refusals[Refusal::Budget.index()], 1);
        assert_eq!(s.refusals[Refusal::Other.index()], 1);
        assert_eq!(s.refusals.iter().sum::<u64>(), 2);
    }

    #[test]
    fn a_client_keeps_its_counters_across_lookups() {
        let r = ClientRegistry::default();
        r.of("a").hit();
        r.of("a").hit();
        r.of("b").hit();
        assert_eq!(r.of("a").snapshot().requests, 2);
        assert_eq!(r.of("b").snapshot().requests, 1);
    }

    #[test]
    fn reasons_have_distinct_keys_in_order() {
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let keys: std::collections::BTreeSet<_> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(keys.len(), Refusal::ALL.len());
    }

    #[test]
    fn an_account_without_a_token_says_none() {
        let a = AccountCounters::default();
        assert_eq!(a.snapshot().last_token_ms, None);
        a.obtained(1_765_000_000_000);
        a.leased();
        a.refused();
        assert_eq!(
            a.snapshot(),
            AccountCounts {
                last_token_ms: Some(1_765_000_000_000),
                leases: 1,
                refusals: 1
            }
        );
    }
}
