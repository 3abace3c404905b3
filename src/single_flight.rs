//! Single-flight: concurrent requests for one key make one call, and all of them get its result.
//!
//! The call runs in a task of its own, so it finishes even when every caller has gone away (a
//! client that disconnects never cancels a fetch others are waiting for, and a create already sent
//! upstream always runs to its end). States of a flight, as a caller sees them:
//! - *leader*: this caller started the call;
//! - *joined*: a call for the key was already running, and this caller waits for it;
//! - *done*: the result, shared with every caller;
//! - *lost*: the task ended without a result (it panicked); callers get `None` and decide.
//!
//! The key leaves the table when the task ends, however it ends, so no key is ever stuck. A flight
//! can also be *detached* before then (its result is no longer what a new caller wants): it runs
//! on for the callers it has, knows it was detached, and the next caller of its key starts anew.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Whether this caller started the flight or joined one already running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Leader,
    Joined,
}

/// A running flight: how to wait for it, and whether it was detached.
struct Slot<V> {
    rx: watch::Receiver<Option<V>>,
    detached: Detached,
}

type Table<K, V> = Arc<Mutex<HashMap<K, Slot<V>>>>;

/// Whether a flight was detached (see [`SingleFlight::detach`]), as its call sees it.
#[derive(Clone, Default)]
pub(crate) struct Detached(Arc<AtomicBool>);

impl Detached {
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

pub(crate) struct SingleFlight<K, V> {
    flights: Table<K, V>,
}

/// Clones share one table: a clone detaches the same flights.
impl<K, V> Clone for SingleFlight<K, V> {
    fn clone(&self) -> Self {
        SingleFlight {
            flights: self.flights.clone(),
        }
    }
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            flights: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// A caller's handle on a flight.
pub(crate) struct Flight<V> {
    pub(crate) role: Role,
    rx: watch::Receiver<Option<V>>,
}

impl<V: Clone> Flight<V> {
    /// The flight's result; `None` when its task died without one.
    pub(crate) async fn wait(mut self) -> Option<V> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        }
    }
}

/// Removes the key when the flight's task ends, normally or by panic, unless the flight was
/// detached and the key now belongs to a later one.
struct Land<K: Hash + Eq, V> {
    flights: Table<K, V>,
    key: Option<K>,
    rx: watch::Receiver<Option<V>>,
}

impl<K: Hash + Eq, V> Drop for Land<K, V> {
    fn drop(&mut self) {
        if let (Some(key), Ok(mut map)) = (self.key.take(), self.flights.lock())
            && map.get(&key).is_some_and(|s| s.rx.same_channel(&self.rx))
        {
            map.remove(&key);
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Joins the flight for `key`, or starts one running `call()` in a new task.
    pub(crate) fn join_or_start<F>(&self, key: K, call: impl FnOnce() -> F) -> Flight<V>
    where
        F: Future<Output = V> + Send + 'static,
    {
        self.join_or_start_with(key, |_| call())
    }

    /// [`Self::join_or_start`], where the call can tell whether its flight was detached.
    pub(crate) fn join_or_start_with<F>(
        &self,
        key: K,
        call: impl FnOnce(Detached) -> F,
    ) -> Flight<V>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut map = self.flights.lock().expect("single-flight table");
        if let Some(slot) = map.get(&key) {
            return Flight {
                role: Role::Joined,
                rx: slot.rx.clone(),
            };
        }
        let (tx, rx) = watch::channel(None);
        let detached = Detached::default();
        map.insert(
            key.clone(),
            Slot {
                rx: rx.clone(),
                detached: detached.clone(),
            },
        );
        drop(map);
        let land = Land {
            flights: self.flights.clone(),
            key: Some(key),
            rx: rx.clone(),
        };
        let fut = call(detached);
        // The flight runs in the span current now (a request's, when traces are on; else none,
        // since only traces make spans), so what it calls is traced under its request.
        let flight = async move {
            let _land = land;
            let value = fut.await;
            let _ = tx.send(Some(value));
        };
        tokio::spawn(tracing::Instrument::instrument(
            flight,
            tracing::Span::current(),
        ));
        Flight {
            role: Role::Leader,
            rx,
        }
    }

    /// Joins the flight for `key` if one is running; never starts one.
    pub(crate) fn join(&self, key: &K) -> Option<Flight<V>> {
        let map = self.flights.lock().expect("single-flight table");
        map.get(key).map(|slot| Flight {
            role: Role::Joined,
            rx: slot.rx.clone(),
        })
    }

    /// Detaches the running flights whose key `which` picks: each goes on for the callers it has
    /// and sees itself detached; the next caller of its key starts a new flight.
    pub(crate) fn detach(&self, mut which: impl FnMut(&K) -> bool) {
        let mut map = self.flights.lock().expect("single-flight table");
        map.retain(|key, slot| {
            let keep = !which(key);
            if !keep {
                slot.detached.0.store(true, Ordering::SeqCst);
            }
            keep
        });
    }

    /// [`SingleFlight::detach`] for one known key, without looking at the others.
    pub(crate) fn detach_key(&self, key: &K) {
        let mut map = self.flights.lock().expect("single-flight table");
        if let Some(slot) = map.remove(key) {
            slot.detached.0.store(true, Ordering::SeqCst);
        }
    }

    /// How many flights are running (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.flights.lock().map_or(0, |m| m.len())
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Notify;

    #[tokio::test]
    async fn concurrent_callers_share_one_call() {
        let sf: SingleFlight<&str, u32> = SingleFlight::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Notify::new());
        let mut flights = Vec::new();
        for _ in 0..10 {
            let (calls, gate) = (calls.clone(), gate.clone());
            flights.push(sf.join_or_start("k", move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                gate.notified().await;
                7
            }));
        }
        assert_eq!(flights.iter().filter(|f| f.role == Role::Leader).count(), 1);
        gate.notify_one();
        for f in flights {
            assert_eq!(f.wait().await, Some(7));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_flight_finishes_when_every_caller_is_gone() {
        let sf: SingleFlight<&str, u32> = SingleFlight::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        drop(sf.join_or_start("k", || async move {
            tokio::task::yield_now().await;
            let _ = done_tx.send(());
            1
        }));
        done_rx.await.expect("the call ran to its end");
    }

    #[tokio::test]
    async fn a_panicking_call_is_lost_and_leaves_no_key() {
        let sf: SingleFlight<&str, u32> = SingleFlight::new();
        let f = sf.join_or_start("k", || async { panic!("boom") });
        assert_eq!(f.wait().await, None);
        assert!(sf.is_empty());
        let again = sf.join_or_start("k", || async { 2 });
        assert_eq!(again.role, Role::Leader);
        assert_eq!(again.wait().await, Some(2));
    }

    #[tokio::test]
    async fn a_detached_flight_runs_on_for_its_callers_and_knows_it() {
        let sf: SingleFlight<&str, (u32, bool)> = SingleFlight::new();
        let gate = Arc::new(Notify::new());
        let g = gate.clone();
        let old = sf.join_or_start_with("k", move |detached| async move {
            g.notified().await;
            (1, detached.is_set())
        });
        let joined = sf.join_or_start("k", || async { unreachable!("joins the running flight") });
        assert_eq!(joined.role, Role::Joined);
        sf.detach(|k| *k == "other");
        assert_eq!(sf.len(), 1, "only the picked keys are detached");
        sf.detach(|k| *k == "k");
        assert!(sf.is_empty());
        // The next caller starts anew; the old flight's end must not remove the new one's key.
        let new_gate = Arc::new(Notify::new());
        let g = new_gate.clone();
        let new = sf.join_or_start_with("k", move |detached| async move {
            g.notified().await;
            (2, detached.is_set())
        });
        assert_eq!(new.role, Role::Leader);
        gate.notify_one();
        assert_eq!(old.wait().await, Some((1, true)));
        assert_eq!(joined.wait().await, Some((1, true)));
        assert_eq!(sf.len(), 1, "the new flight still runs");
        let third = sf.join_or_start("k", || async { unreachable!("joins the new flight") });
        new_gate.notify_one();
        assert_eq!(new.wait().await, Some((2, false)));
        assert_eq!(third.wait().await, Some((2, false)));
    }
}
