//! Idempotency and de-duplication records (Stripe-style): what happened to a create, kept for a
//! while so that a retry or a duplicate gets the first answer instead of buying again.
//!
//! States of a record, and their ways out:
//! - *in flight*: the create is being carried out → *done*, *unknown*, or removed (the upstream
//!   failed without doing anything, so a retry may run again);
//! - *done*: a final answer, replayed to repeats until the record expires;
//! - *unknown*: the request went upstream and no answer came back (timeout, reset, garbage): the
//!   purchase may exist. A repeat reconciles (see `crate::protect::create`) or is refused; never re-sent blindly.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::cache::answer::Answer;
use crate::cache::size::{ARC_HEADER, malloc_size};
use crate::store::error::Stored;
use crate::store::memory::MOKA_PER_ENTRY;
use crate::svc::BoxFuture;

#[derive(Debug, Clone)]
pub enum State {
    /// Being carried out since `started_ms` (epoch milliseconds). The replica carrying it out
    /// renews `lease_until_ms` while it runs (a heartbeat); once that has passed, whoever carried
    /// it out is gone and the record reads as unknown (see [`Record::settled_state`]). `None`: a
    /// record written without a lease (an older version), read as lost after the caller's
    /// `max_age`.
    InFlight {
        started_ms: u64,
        lease_until_ms: Option<u64>,
    },
    Done(Arc<Answer>),
    /// Sent at this time (epoch milliseconds), outcome unknown.
    Unknown {
        sent_at_ms: u64,
    },
}

#[derive(Debug, Clone)]
pub struct Record {
    /// The canonical request (route and body) the record belongs to.
    pub fingerprint: Arc<str>,
    pub state: State,
    /// How long the record lives from its last change.
    pub ttl: Duration,
}

impl Record {
    /// The state, with an in-flight record whose lease lapsed (or, without a lease, older than
    /// `max_age`) read as unknown: whoever carried it out is gone (a replica that crashed), and
    /// the upstream may have done it.
    pub(crate) fn settled_state(&self, max_age: Duration, now_ms: u64) -> State {
        match self.state {
            State::InFlight {
                started_ms,
                lease_until_ms,
            } if lease_until_ms.map_or(
                now_ms.saturating_sub(started_ms) > max_age.as_millis() as u64,
                |until| now_ms > until,
            ) =>
            {
                State::Unknown {
                    sent_at_ms: started_ms,
                }
            }
            ref s => s.clone(),
        }
    }

    /// The same in-flight record with its lease renewed to `lease_until_ms`; `None` when the
    /// record is not in flight.
    pub fn renewed(&self, lease_until_ms: u64) -> Option<Record> {
        match self.state {
            State::InFlight { started_ms, .. } => Some(Record {
                state: State::InFlight {
                    started_ms,
                    lease_until_ms: Some(lease_until_ms),
                },
                ..self.clone()
            }),
            _ => None,
        }
    }

    /// Bytes the record holds in memory: what memory bounds weigh. Its fields, its fingerprint,
    /// the kept answer, and what its client's count of records keeps of it ([`Owners`]).
    pub(crate) fn weight(&self) -> usize {
        // The answer's `Arc` is one block; what the answer holds besides its fields, others.
        let answer = std::mem::size_of::<Answer>();
        let held = match &self.state {
            State::Done(a) => malloc_size(answer + ARC_HEADER) + a.held_bytes() - answer,
            _ => 0,
        };
        std::mem::size_of::<Record>() + malloc_size(self.fingerprint.len() + ARC_HEADER) + held
    }
}

/// Bytes a record's key costs where records are kept in memory: the key, moka's entry for it, and
/// the client's count of it ([`Owners`]: its expiry by key and by time, sharing one copy).
pub(crate) fn key_weight(key: &str) -> usize {
    malloc_size(key.len())
        + std::mem::size_of::<String>()
        + MOKA_PER_ENTRY
        + OWNED_PER_KEY
        + malloc_size(key.len() + ARC_HEADER)
}

/// An owner's hash-table slot and ordered-set slot for one key, with their share of nodes.
const OWNED_PER_KEY: usize = 96;

/// The outcome of [`RecordStore::begin`].
#[derive(Debug, Clone)]
pub enum Begin {
    /// No record existed; an in-flight one now does, and the caller carries out the request.
    Started,
    /// A record exists; the caller answers from it.
    Exists(Record),
    /// None exists, and none was written: the store lost its data a moment ago (Redis found
    /// without the fleet marker), so the record may have been there; creates that find no record
    /// are refused for this long still.
    Lost(Duration),
    /// None exists, and none was written: the store may drop records by itself (Redis's
    /// `maxmemory-policy`, named here), so the record may have been there.
    MayEvict(String),
}

/// The outcome of [`RecordStore::hold`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Held,
    /// The owner already holds its maximum of live records; the soonest of them expires at this
    /// time (epoch milliseconds).
    Full {
        frees_at_ms: u64,
    },
}

/// Proof of holding a lock taken with [`RecordStore::try_lock`]: only its holder can release it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockToken(pub(crate) String);

impl LockToken {
    /// A token no other holder has (128 random bits).
    pub(crate) fn new() -> LockToken {
        LockToken(format!("{:032x}", rand::random::<u128>()))
    }
}

/// The outcome of [`RecordStore::try_lock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lock {
    /// The caller holds the lock until it unlocks or the lock expires.
    Held(LockToken),
    /// Another holder has it, until that one unlocks or its lock expires (it died).
    Taken,
    /// Not taken: the store lost its data a moment ago (as [`Begin::Lost`]), so a holder's lock
    /// may have gone with it.
    Lost(Duration),
    /// Not taken: the store may drop keys by itself (as [`Begin::MayEvict`]), the lock among them.
    MayEvict(String),
}

pub trait RecordStore: Send + Sync + 'static {
    /// Writes `record` (in flight, started now) for `key` unless one exists, atomically; unless
    /// the store cannot vouch that none existed ([`Begin::Lost`], [`Begin::MayEvict`]).
    fn begin(&self, key: &str, record: Record) -> BoxFuture<Stored<Begin>>;
    fn get(&self, key: &str) -> BoxFuture<Stored<Option<Record>>>;
    fn set(&self, key: &str, record: Record) -> BoxFuture<Stored<()>>;
    fn remove(&self, key: &str) -> BoxFuture<Stored<()>>;
    /// The heartbeat: replaces the stored record with `renewed` only if the stored one is still
    /// the same in-flight record (same fingerprint, TTL and start; only the lease differs), so
    /// that a record that was finished, settled or reopened meanwhile is never brought back.
    /// `false` when it was not the same.
    fn renew(&self, key: &str, renewed: Record) -> BoxFuture<Stored<bool>>;
    /// Counts `key` among the live records of `owner` until `until_ms` (a key it already holds
    /// only has its time moved), unless the owner already holds `max` others.
    fn hold(&self, owner: &str, key: &str, until_ms: u64, max: u64) -> BoxFuture<Stored<Hold>>;
    /// Takes the lock `key` for `ttl` unless another holder has it, atomically. The expiry
    /// bounds a holder that dies: its lock goes after `ttl` without it.
    fn try_lock(&self, key: &str, ttl: Duration) -> BoxFuture<Stored<Lock>>;
    /// Releases the lock `key` if `token` still holds it: a lock that expired and was taken by
    /// another since is left alone. Whether it was released.
    fn unlock(&self, key: &str, token: &LockToken) -> BoxFuture<Stored<bool>>;
    /// `key` no longer counts for `owner`.
    fn release(&self, owner: &str, key: &str) -> BoxFuture<Stored<()>>;
    /// Whether `owner` holds a live key other than `key`.
    fn holds_other(&self, owner: &str, key: &str) -> BoxFuture<Stored<bool>>;
    /// Records held in this process's memory and their bytes (as `records_max_bytes` counts
    /// them); `None` where another process (Redis) holds them.
    fn usage(&self) -> Option<(u64, u64)> {
        None
    }
    /// After the shared store lost its data (Redis restarted empty, flushed): how long creates
    /// that find no record are still refused, since they may be retries of lost ones.
    fn lost_data(&self) -> BoxFuture<Stored<Option<Duration>>> {
        Box::pin(std::future::ready(Ok(None)))
    }
}

/// A new in-flight record, started now, whose executor holds it for `lease`.
pub fn in_flight(fingerprint: &str, ttl: Duration, lease: Duration) -> Record {
    let now = crate::clock::now_ms();
    Record {
        fingerprint: fingerprint.into(),
        state: State::InFlight {
            started_ms: now,
            lease_until_ms: Some(now + lease.as_millis() as u64),
        },
        ttl,
    }
}

/// A record that only marks a key as taken (a disk's claim): its state is never
/// read, so it needs no lease.
pub(crate) fn marker(what: &str, ttl: Duration) -> Record {
    Record {
        fingerprint: what.into(),
        state: State::InFlight {
            started_ms: crate::clock::now_ms(),
            lease_until_ms: None,
        },
        ttl,
    }
}

/// True when `stored` is the in-flight record `renewed` renews.
pub(crate) fn same_flight(stored: &Record, renewed: &Record) -> bool {
    match (&stored.state, &renewed.state) {
        (State::InFlight { started_ms: a, .. }, State::InFlight { started_ms: b, .. }) => {
            a == b && stored.fingerprint == renewed.fingerprint && stored.ttl == renewed.ttl
        }
        _ => false,
    }
}

/// Default bound of the memory records, in bytes.
pub(crate) const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Records in memory, each expiring `ttl` after its last change, weighed by what they hold.
pub(crate) struct MemoryRecords {
    records: Cache<String, Record>,
    owners: Owners,
    locks: Locks,
}

struct ByTtl;

impl moka::Expiry<String, Record> for ByTtl {
    fn expire_after_create(&self, _: &String, r: &Record, _: Instant) -> Option<Duration> {
        Some(r.ttl)
    }
    fn expire_after_update(
        &self,
        _: &String,
        r: &Record,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(r.ttl)
    }
}

impl Default for MemoryRecords {
    fn default() -> Self {
        MemoryRecords::new(DEFAULT_MAX_BYTES)
    }
}

impl MemoryRecords {
    /// Records weighing at most `max_bytes` together (keys included).
    pub(crate) fn new(max_bytes: u64) -> Self {
        MemoryRecords {
            records: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|k: &String, r: &Record| {
                    u32::try_from(key_weight(k) + r.weight()).unwrap_or(u32::MAX)
                })
                .expire_after(ByTtl)
                .build(),
            owners: Owners::default(),
            locks: Locks::default(),
        }
    }
}

/// Locks held in this process, each with its holder's token and its expiry on tokio's clock (so
/// that tests with paused time can let a dead holder's lock lapse). Few: one per settlement.
#[derive(Default)]
pub(crate) struct Locks(Mutex<HashMap<String, (LockToken, tokio::time::Instant)>>);

impl Locks {
    pub(crate) fn try_lock(&self, key: &str, ttl: Duration) -> Lock {
        let now = tokio::time::Instant::now();
        let mut locks = self.0.lock().expect("record locks");
        // The expired go here, so that the table holds only live locks.
        locks.retain(|_, (_, until)| *until > now);
        if locks.contains_key(key) {
            return Lock::Taken;
        }
        let token = LockToken::new();
        locks.insert(key.to_string(), (token.clone(), now + ttl));
        Lock::Held(token)
    }

    pub(crate) fn unlock(&self, key: &str, token: &LockToken) -> bool {
        let now = tokio::time::Instant::now();
        let mut locks = self.0.lock().expect("record locks");
        let held = locks
            .get(key)
            .is_some_and(|(t, until)| t == token && *until > now);
        if held {
            locks.remove(key);
        }
        held
    }
}

/// Which live records each owner (client) holds, by expiry: counting and pruning are
/// O(log n) per create.
#[derive(Default)]
pub(crate) struct Owners(Mutex<HashMap<String, Held>>);

/// One owner's keys, each kept once and shared by both indexes.
#[derive(Default)]
struct Held {
    until: HashMap<Arc<str>, u64>,
    by_time: BTreeSet<(u64, Arc<str>)>,
}

impl Owners {
    pub(crate) fn hold(
        &self,
        owner: &str,
        key: &str,
        until_ms: u64,
        max: u64,
        now_ms: u64,
    ) -> Hold {
        let mut owners = self.0.lock().expect("record owners");
        let held = owners.entry(owner.to_string()).or_default();
        while let Some((t, _)) = held.by_time.first() {
            if *t > now_ms {
                break;
            }
            if let Some((_, k)) = held.by_time.pop_first() {
                held.until.remove(&k);
            }
        }
        let key: Arc<str> = match held.until.remove_entry(key) {
            Some((k, old)) => {
                held.by_time.remove(&(old, k.clone()));
                k
            }
            None if held.until.len() as u64 >= max => {
                let frees_at_ms = held.by_time.first().map_or(now_ms, |(t, _)| *t);
                return Hold::Full { frees_at_ms };
            }
            None => key.into(),
        };
        held.until.insert(key.clone(), until_ms);
        held.by_time.insert((until_ms, key));
        Hold::Held
    }

    pub(crate) fn holds_other(&self, owner: &str, key: &str, now_ms: u64) -> bool {
        let owners = self.0.lock().expect("record owners");
        owners.get(owner).is_some_and(|held| {
            held.by_time
                .iter()
                .any(|(until, k)| *until > now_ms && &**k != key)
        })
    }

    pub(crate) fn release(&self, owner: &str, key: &str) {
        let mut owners = self.0.lock().expect("record owners");
        if let Some(held) = owners.get_mut(owner) {
            if let Some((k, t)) = held.until.remove_entry(key) {
                held.by_time.remove(&(t, k));
            }
            if held.until.is_empty() {
                owners.remove(owner);
            }
        }
    }
}

fn ready<T: Send + 'static>(v: T) -> BoxFuture<T> {
    Box::pin(std::future::ready(v))
}

impl RecordStore for MemoryRecords {
    fn begin(&self, key: &str, record: Record) -> BoxFuture<Stored<Begin>> {
        // `or_insert_with`, not `or_insert`: only the former coalesces concurrent calls so that
        // exactly one of them sees a fresh entry (moka-rs/moka#545); two would both start.
        let entry = self
            .records
            .entry(key.to_string())
            .or_insert_with(|| record);
        let begin = if entry.is_fresh() {
            Begin::Started
        } else {
            Begin::Exists(entry.into_value())
        };
        ready(Ok(begin))
    }

    fn get(&self, key: &str) -> BoxFuture<Stored<Option<Record>>> {
        ready(Ok(self.records.get(key)))
    }

    fn set(&self, key: &str, record: Record) -> BoxFuture<Stored<()>> {
        self.records.insert(key.to_string(), record);
        ready(Ok(()))
    }

    fn remove(&self, key: &str) -> BoxFuture<Stored<()>> {
        self.records.invalidate(key);
        ready(Ok(()))
    }

    fn renew(&self, key: &str, renewed: Record) -> BoxFuture<Stored<bool>> {
        use moka::ops::compute::Op;
        let mut ok = false;
        self.records
            .entry(key.to_string())
            .and_compute_with(|stored| match stored {
                Some(e) if same_flight(e.value(), &renewed) => {
                    ok = true;
                    Op::Put(renewed.clone())
                }
                _ => Op::Nop,
            });
        ready(Ok(ok))
    }

    fn hold(&self, owner: &str, key: &str, until_ms: u64, max: u64) -> BoxFuture<Stored<Hold>> {
        let now = crate::clock::now_ms();
        ready(Ok(self.owners.hold(owner, key, until_ms, max, now)))
    }

    fn try_lock(&self, key: &str, ttl: Duration) -> BoxFuture<Stored<Lock>> {
        ready(Ok(self.locks.try_lock(key, ttl)))
    }

    fn unlock(&self, key: &str, token: &LockToken) -> BoxFuture<Stored<bool>> {
        ready(Ok(self.locks.unlock(key, token)))
    }

    fn release(&self, owner: &str, key: &str) -> BoxFuture<Stored<()>> {
        self.owners.release(owner, key);
        ready(Ok(()))
    }

    fn holds_other(&self, owner: &str, key: &str) -> BoxFuture<Stored<bool>> {
        let now = crate::clock::now_ms();
        ready(Ok(self.owners.holds_other(owner, key, now)))
    }

    fn usage(&self) -> Option<(u64, u64)> {
        self.records.run_pending_tasks();
        Some((self.records.entry_count(), self.records.weighted_size()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn begin_is_atomic_and_remove_allows_a_new_start() {
        let r = MemoryRecords::default();
        let ttl = Duration::from_secs(60);
        let begin = |fp: &str| r.begin("k", in_flight(fp, ttl, LEASE));
        assert!(matches!(begin("f").await, Ok(Begin::Started)));
        match begin("other").await {
            Ok(Begin::Exists(rec)) => {
                assert_eq!(&*rec.fingerprint, "f");
                assert!(matches!(rec.state, State::InFlight { .. }));
            }
            other => panic!("{other:?}"),
        }
        r.remove("k").await.unwrap();
        assert!(matches!(begin("f").await, Ok(Begin::Started)));
    }

    #[test]
    fn an_in_flight_record_reads_as_unknown_once_its_lease_lapsed() {
        let rec = |lease_until_ms| Record {
            fingerprint: "f".into(),
            state: State::InFlight {
                started_ms: 1_000,
                lease_until_ms,
            },
            ttl: Duration::from_secs(60),
        };
        let max_age = Duration::from_secs(30);
        // Leased: the lease decides, however young the record.
        assert!(matches!(
            rec(Some(6_000)).settled_state(max_age, 5_000),
            State::InFlight { .. }
        ));
        assert!(matches!(
            rec(Some(6_000)).settled_state(max_age, 6_001),
            State::Unknown { sent_at_ms: 1_000 }
        ));
        // Without a lease (an older writer): its age against `max_age`.
        assert!(matches!(
            rec(None).settled_state(max_age, 20_000),
            State::InFlight { .. }
        ));
        assert!(matches!(
            rec(None).settled_state(max_age, 40_000),
            State::Unknown { sent_at_ms: 1_000 }
        ));
    }

    #[tokio::test]
    async fn renewal_never_brings_back_a_finished_or_reopened_record() {
        let r = MemoryRecords::default();
        let ttl = Duration::from_secs(60);
        let first = in_flight("f", ttl, LEASE);
        r.begin("k", first.clone()).await.unwrap();
        let later = first.renewed(crate::clock::now_ms() + 60_000).unwrap();
        assert!(r.renew("k", later.clone()).await.unwrap());
        let got = r.get("k").await.unwrap().unwrap();
        assert!(matches!(
            got.settled_state(ttl, crate::clock::now_ms() + 30_000),
            State::InFlight { .. }
        ));
        // Finished: the heartbeat finds another record and leaves it.
        let done = Record {
            state: State::Unknown { sent_at_ms: 1 },
            ..first.clone()
        };
        r.set("k", done).await.unwrap();
        assert!(!r.renew("k", later.clone()).await.unwrap());
        assert!(matches!(
            r.get("k").await.unwrap().unwrap().state,
            State::Unknown { .. }
        ));
        // Gone, or reopened by another execution (another start): left alone too.
        r.remove("k").await.unwrap();
        assert!(!r.renew("k", later.clone()).await.unwrap());
        assert!(r.get("k").await.unwrap().is_none());
        let mut other = in_flight("f", ttl, LEASE);
        if let State::InFlight { started_ms, .. } = &mut other.state {
            *started_ms += 1;
        }
        r.set("k", other).await.unwrap();
        assert!(!r.renew("k", later).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lock_has_one_holder_until_it_unlocks() {
        let r = MemoryRecords::default();
        let ttl = Duration::from_secs(30);
        let Ok(Lock::Held(token)) = r.try_lock("l", ttl).await else {
            panic!("a free lock is taken");
        };
        assert_eq!(r.try_lock("l", ttl).await.unwrap(), Lock::Taken);
        // Another key is another lock.
        assert!(matches!(r.try_lock("m", ttl).await, Ok(Lock::Held(_))));
        // A stranger's token releases nothing.
        assert!(!r.unlock("l", &LockToken::new()).await.unwrap());
        assert_eq!(r.try_lock("l", ttl).await.unwrap(), Lock::Taken);
        assert!(r.unlock("l", &token).await.unwrap());
        assert!(matches!(r.try_lock("l", ttl).await, Ok(Lock::Held(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_holders_lock_expires_and_its_late_unlock_frees_nothing() {
        let r = MemoryRecords::default();
        let ttl = Duration::from_secs(30);
        let Ok(Lock::Held(dead)) = r.try_lock("l", ttl).await else {
            panic!("a free lock is taken");
        };
        tokio::time::advance(ttl - Duration::from_millis(1)).await;
        assert_eq!(r.try_lock("l", ttl).await.unwrap(), Lock::Taken);
        tokio::time::advance(Duration::from_millis(1)).await;
        let Ok(Lock::Held(next)) = r.try_lock("l", ttl).await else {
            panic!("an expired lock is taken anew");
        };
        // The first holder wakes up and unlocks: the second one's lock stays.
        assert!(!r.unlock("l", &dead).await.unwrap());
        assert_eq!(r.try_lock("l", ttl).await.unwrap(), Lock::Taken);
        assert!(r.unlock("l", &next).await.unwrap());
    }

    #[test]
    fn an_owner_holds_at_most_max_live_records() {
        let o = Owners::default();
        assert_eq!(o.hold("c", "a", 2_000, 2, 1_000), Hold::Held);
        assert_eq!(o.hold("c", "b", 3_000, 2, 1_000), Hold::Held);
        // Full: the soonest to expire says when room frees up; a held key is only moved.
        assert_eq!(
            o.hold("c", "x", 9_000, 2, 1_000),
            Hold::Full { frees_at_ms: 2_000 }
        );
        assert_eq!(o.hold("c", "a", 2_500, 2, 1_000), Hold::Held);
        // Another owner is not affected.
        assert_eq!(o.hold("d", "x", 9_000, 2, 1_000), Hold::Held);
        // Released, or expired: room again.
        o.release("c", "a");
        assert_eq!(o.hold("c", "x", 9_000, 2, 1_000), Hold::Held);
        assert_eq!(
            o.hold("c", "y", 9_000, 2, 1_000),
            Hold::Full { frees_at_ms: 3_000 }
        );
        assert_eq!(o.hold("c", "y", 9_000, 2, 3_000), Hold::Held);
    }

    #[test]
    fn memory_records_are_weighed_by_what_they_hold() {
        let r = MemoryRecords::new(50_000);
        let body = bytes::Bytes::from(vec![b'x'; 10_000]);
        let answer = Answer {
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            head: None,
            body,
        };
        for i in 0..20 {
            r.records.insert(
                format!("k{i}"),
                Record {
                    fingerprint: "f".into(),
                    state: State::Done(Arc::new(answer.clone())),
                    ttl: Duration::from_secs(60),
                },
            );
        }
        r.records.run_pending_tasks();
        assert!(
            r.records.weighted_size() <= 50_000,
            "{}",
            r.records.weighted_size()
        );
        assert!(r.records.entry_count() <= 5, "{}", r.records.entry_count());
    }
}
