//! Idempotency and de-duplication records (Stripe-style): what happened to a create, kept for a
//! while so that a retry or a duplicate gets the first answer instead of buying again.
//!
//! States of a record, and their ways out:
//! - *in flight*: the create is being carried out → *done*, *unknown*, or removed (the upstream
//!   failed without doing anything, so a retry may run again);
//! - *done*: a final answer, replayed to repeats until the record expires;
//! - *unknown*: the request went upstream and no answer came back (timeout, reset, garbage): the
//!   purchase may exist. A repeat reconciles (see the dedup layer) or is refused; never re-sent blindly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::cache::entry::Answer;
use crate::fleet::StoreError;
use crate::svc::BoxFuture;

#[derive(Debug, Clone)]
pub enum State {
    /// Being carried out since this time (epoch milliseconds). One that outlives its lease was
    /// lost with its replica: it counts as unknown (see [`Record::settled_state`]).
    InFlight {
        started_ms: u64,
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
    /// The state, with an in-flight record older than `lease` read as unknown: whoever carried
    /// it out is gone (a replica that crashed), and the upstream may have done it.
    pub fn settled_state(&self, lease: Duration, now_ms: u64) -> State {
        match self.state {
            State::InFlight { started_ms }
                if now_ms.saturating_sub(started_ms) > lease.as_millis() as u64 =>
            {
                State::Unknown {
                    sent_at_ms: started_ms,
                }
            }
            ref s => s.clone(),
        }
    }
}

/// The outcome of [`RecordStore::begin`].
#[derive(Debug, Clone)]
pub enum Begin {
    /// No record existed; an in-flight one now does, and the caller carries out the request.
    Started,
    /// A record exists; the caller answers from it.
    Exists(Record),
}

pub type Stored<T> = Result<T, StoreError>;

pub trait RecordStore: Send + Sync + 'static {
    /// Creates an in-flight record for `key` (started now) unless one exists, atomically.
    fn begin(&self, key: &str, fingerprint: &str, ttl: Duration) -> BoxFuture<Stored<Begin>>;
    fn get(&self, key: &str) -> BoxFuture<Stored<Option<Record>>>;
    fn set(&self, key: &str, record: Record) -> BoxFuture<Stored<()>>;
    fn remove(&self, key: &str) -> BoxFuture<Stored<()>>;
}

/// A new in-flight record, started now.
pub fn in_flight(fingerprint: &str, ttl: Duration) -> Record {
    Record {
        fingerprint: fingerprint.into(),
        state: State::InFlight {
            started_ms: crate::fleet::now_ms(),
        },
        ttl,
    }
}

/// Records in memory, each expiring `ttl` after its last change.
pub struct MemoryRecords {
    records: Cache<String, Record>,
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
        MemoryRecords {
            records: Cache::builder()
                .max_capacity(1_000_000)
                .expire_after(ByTtl)
                .build(),
        }
    }
}

impl RecordStore for MemoryRecords {
    fn begin(&self, key: &str, fingerprint: &str, ttl: Duration) -> BoxFuture<Stored<Begin>> {
        let entry = self
            .records
            .entry(key.to_string())
            .or_insert_with(|| in_flight(fingerprint, ttl));
        let begin = if entry.is_fresh() {
            Begin::Started
        } else {
            Begin::Exists(entry.into_value())
        };
        Box::pin(std::future::ready(Ok(begin)))
    }

    fn get(&self, key: &str) -> BoxFuture<Stored<Option<Record>>> {
        Box::pin(std::future::ready(Ok(self.records.get(key))))
    }

    fn set(&self, key: &str, record: Record) -> BoxFuture<Stored<()>> {
        self.records.insert(key.to_string(), record);
        Box::pin(std::future::ready(Ok(())))
    }

    fn remove(&self, key: &str) -> BoxFuture<Stored<()>> {
        self.records.invalidate(key);
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn begin_is_atomic_and_remove_allows_a_new_start() {
        let r = MemoryRecords::default();
        let ttl = Duration::from_secs(60);
        assert!(matches!(r.begin("k", "f", ttl).await, Ok(Begin::Started)));
        match r.begin("k", "other", ttl).await {
            Ok(Begin::Exists(rec)) => {
                assert_eq!(&*rec.fingerprint, "f");
                assert!(matches!(rec.state, State::InFlight { .. }));
            }
            other => panic!("{other:?}"),
        }
        r.remove("k").await.unwrap();
        assert!(matches!(r.begin("k", "f", ttl).await, Ok(Begin::Started)));
    }

    #[test]
    fn an_in_flight_record_past_its_lease_reads_as_unknown() {
        let rec = Record {
            fingerprint: "f".into(),
            state: State::InFlight { started_ms: 1_000 },
            ttl: Duration::from_secs(60),
        };
        let lease = Duration::from_secs(30);
        assert!(matches!(
            rec.settled_state(lease, 20_000),
            State::InFlight { .. }
        ));
        assert!(matches!(
            rec.settled_state(lease, 40_000),
            State::Unknown { sent_at_ms: 1_000 }
        ));
    }
}
