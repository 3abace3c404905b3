//! The record protocol against a [`RecordStore`]: claiming a record before a create runs, keeping
//! its lease alive while it runs, writing what became of it, and counting records per client.
//! Everything here speaks in records and typed errors; the layer turns them into answers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::cache::answer::Answer;
use crate::clock::{now_ms, retry_secs};
use crate::counters::Refused;
use crate::error::{GatewayError, TOO_FREQUENT};
use crate::protect::records::{Begin, Hold, Record, RecordStore, State, in_flight, marker};
use crate::routes::Route;

use super::keys::RecordKey;
use super::reconcile::created_disk;

/// What became of one execution, shared with everyone who waited for it.
#[derive(Debug)]
pub(super) struct Outcome {
    /// What came back from below, or why nothing was called (a refusal about the record, or
    /// the execution cut off at its limit).
    pub(crate) answer: Result<Answer, GatewayError>,
    /// Sent upstream, no answer: the purchase may exist.
    pub(crate) unknown: bool,
    /// Answered from a record another execution wrote (not run here).
    pub(crate) replayed: bool,
    /// Made from the record (a replay, or a refusal about it): the record stays as it is.
    pub(crate) from_record: bool,
    /// A refusal the gateway made below, and why: the answer's mark for the per-client counts.
    pub(crate) refused: Option<Refused>,
}

impl Outcome {
    /// What came back from below, the upstream's answer or one the gateway made below.
    #[cfg(test)]
    pub(super) fn answered(answer: Answer, unknown: bool) -> Outcome {
        Outcome {
            answer: Ok(answer),
            unknown,
            replayed: false,
            from_record: false,
            refused: None,
        }
    }

    /// A final answer: the upstream decided (success or a business error). Not a failure that did
    /// nothing (5xx, connection refused, no token, rate-limited) and not an unknown outcome.
    pub(super) fn is_final(&self) -> bool {
        let Ok(answer) = &self.answer else {
            return false;
        };
        !self.unknown
            && !answer.is_failure()
            && answer.status != StatusCode::TOO_MANY_REQUESTS
            && answer.status != StatusCode::UNAUTHORIZED
            && answer
                .head
                .as_ref()
                .is_some_and(|h| h.code != Some(TOO_FREQUENT) && h.code != Some(401))
    }

    /// The disk a successful disk create made.
    fn created_disk(&self) -> Option<String> {
        self.answer.as_ref().ok().and_then(created_disk)
    }
}

/// Where the record of an execution goes when it ends.
pub(super) struct Keep {
    pub(crate) rkey: RecordKey,
    pub(crate) fingerprint: Arc<str>,
    /// Lifetime of a final answer's record.
    pub(crate) final_ttl: Duration,
    pub(crate) unknown_ttl: Duration,
    /// The in-flight record this execution holds, whose lease it renews while it runs (`None`
    /// when the execution claims its record itself, see [`claim`]).
    pub(crate) leased: Option<Record>,
    /// The client the record counts for.
    pub(crate) owner: RecordKey,
}

/// Writes what became of an execution that ran here: a final answer is kept for `final_ttl`, an
/// unknown outcome for `unknown_ttl`, anything else (it did nothing) removes the record. A disk
/// the create made is claimed first, so that no reconciliation can hand it out. Returns whether
/// that disk (if any) is claimed.
pub(super) async fn record_outcome(
    records: &dyn RecordStore,
    keep: &Keep,
    route: Route,
    account: &str,
    sent_at_ms: u64,
    outcome: &Outcome,
) -> bool {
    let mut claimed = true;
    if route.settles_by_disk_list()
        && let Some(disk) = outcome.created_disk()
    {
        let claim = RecordKey::claim(account, &disk);
        let mark = marker("claimed", keep.unknown_ttl);
        claimed = match records.begin(claim.as_str(), mark.clone()).await {
            Ok(Begin::Started | Begin::Exists(_)) => true,
            // The store would not vouch for an absent claim, but this disk was just bought: it is
            // claimed all the same.
            Ok(Begin::Lost(_) | Begin::MayEvict(_)) => {
                records.set(claim.as_str(), mark).await.is_ok()
            }
            Err(_) => false,
        };
    }
    let record = |state, ttl| Record {
        fingerprint: keep.fingerprint.clone(),
        state,
        ttl,
    };
    // The client's count follows the record: its new lifetime, or its removal.
    let (owner, rkey) = (keep.owner.as_str(), keep.rkey.as_str());
    let hold = |ttl: Duration| {
        let until = now_ms() + ttl.as_millis() as u64;
        records.hold(owner, rkey, until, u64::MAX)
    };
    let kept = if let (true, Ok(answer)) = (outcome.is_final(), &outcome.answer) {
        let done = State::Done(Arc::new(answer.compacted()));
        let _ = hold(keep.final_ttl).await;
        records.set(rkey, record(done, keep.final_ttl)).await
    } else if outcome.unknown {
        let unknown = State::Unknown { sent_at_ms };
        let _ = hold(keep.unknown_ttl).await;
        records.set(rkey, record(unknown, keep.unknown_ttl)).await
    } else {
        let _ = records.release(owner, rkey).await;
        records.remove(rkey).await
    };
    if let Err(e) = kept {
        tracing::warn!(route = %route, error = %e, "could not record the outcome of a create; a retry may not find it");
    }
    claimed
}

/// Counts a new record `rkey` for `owner` until `ttl` from now, unless the owner holds `max`.
pub(super) async fn hold(
    records: &dyn RecordStore,
    route: Route,
    owner: &RecordKey,
    rkey: &RecordKey,
    ttl: Duration,
    max: u64,
) -> Result<(), GatewayError> {
    let until = now_ms() + ttl.as_millis() as u64;
    match records
        .hold(owner.as_str(), rkey.as_str(), until, max)
        .await
    {
        Ok(Hold::Held) => Ok(()),
        Ok(Hold::Full { frees_at_ms }) => {
            tracing::warn!(route = %route, max, "a client holds its maximum of live create records; refusing");
            Err(records_full(route, max, frees_at_ms))
        }
        Err(_) => Err(GatewayError::SharedStateDown(route.as_str())),
    }
}

/// The refusal of a create whose client holds its maximum of live records.
pub(super) fn records_full(route: Route, max: u64, frees_at_ms: u64) -> GatewayError {
    let wait = Duration::from_millis(frees_at_ms.saturating_sub(now_ms()));
    GatewayError::RecordsFull {
        route: route.as_str(),
        max,
        retry_after: retry_secs(wait),
    }
}

/// The refusal of a create that finds no record while Redis's data was lost `left` ago from the
/// end of the grace window: it may be the retry of a create whose record went with it.
pub(super) fn records_lost(route: Route, left: Duration) -> GatewayError {
    GatewayError::RecordsLost {
        route: route.as_str(),
        retry_after: left.as_secs_f64().ceil().max(1.0) as u64,
    }
}

/// What claiming a key-less create's record found.
#[derive(Debug)]
pub(super) enum Claimed {
    /// This execution holds the in-flight record and may call.
    Held(Record),
    /// Another execution's final answer landed meanwhile.
    Replay(Arc<Answer>),
    /// Refused before anything was sent (or the record says the outcome is unknown).
    Refused(GatewayError),
}

/// What claiming a key-less create's record needs.
pub(super) struct Claim {
    pub(crate) records: Arc<dyn RecordStore>,
    pub(crate) rkey: RecordKey,
    pub(crate) fingerprint: String,
    pub(crate) ttl: Duration,
    pub(crate) max_age: Duration,
    pub(crate) lease: Duration,
    /// The client the record counts for, and how many it may hold.
    pub(crate) owner: RecordKey,
    pub(crate) max_records: u64,
    pub(crate) route: Route,
}

impl Claim {
    /// Claims the record before calling: answers from a record that landed since the caller
    /// looked, and waits for an execution in flight on another replica to land, instead of
    /// calling again.
    pub(super) async fn claim(&self) -> Claimed {
        let route = self.route.as_str();
        let mut pause = Duration::from_millis(10);
        loop {
            let record = in_flight(&self.fingerprint, self.ttl, self.lease);
            let found = match self.records.begin(self.rkey.as_str(), record.clone()).await {
                Err(_) => return Claimed::Refused(GatewayError::SharedStateDown(route)),
                Ok(Begin::Started) => {
                    let held = hold(
                        &*self.records,
                        self.route,
                        &self.owner,
                        &self.rkey,
                        self.ttl,
                        self.max_records,
                    )
                    .await;
                    match held {
                        Ok(()) => return Claimed::Held(record),
                        Err(refusal) => {
                            // Refused before anything was sent: the record goes, as if never claimed.
                            let _ = self.records.remove(self.rkey.as_str()).await;
                            return Claimed::Refused(refusal);
                        }
                    }
                }
                Ok(Begin::Exists(record)) => record,
                Ok(Begin::Lost(left)) => return Claimed::Refused(records_lost(self.route, left)),
                Ok(Begin::MayEvict(policy)) => {
                    return Claimed::Refused(GatewayError::MayEvict { route, policy });
                }
            };
            match found.settled_state(self.max_age, now_ms()) {
                State::Done(answer) => return Claimed::Replay(answer),
                State::Unknown { .. } => {
                    return Claimed::Refused(GatewayError::OutcomeUnknown {
                        route,
                        keyed: false,
                    });
                }
                // Another replica is carrying it out: its answer lands in the record.
                State::InFlight { .. } => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
            }
        }
    }
}

/// Runs `work` (a disk create on its way upstream) while `rkey` counts among the purchases of its
/// order being made, renewed every third of `lease`: if this replica dies, it stops counting
/// within `lease`.
pub(super) async fn while_making<F: std::future::Future>(
    records: Arc<dyn RecordStore>,
    making: &RecordKey,
    rkey: &RecordKey,
    lease: Duration,
    work: F,
) -> F::Output {
    let mark = || {
        records.hold(
            making.as_str(),
            rkey.as_str(),
            now_ms() + lease.as_millis() as u64,
            u64::MAX,
        )
    };
    if let Err(e) = mark().await {
        tracing::warn!(error = %e, "could not mark a create as being made");
    }
    let heartbeat = async {
        loop {
            tokio::time::sleep(lease / 3).await;
            let _ = mark().await;
        }
    };
    tokio::pin!(work);
    tokio::select! {
        out = &mut work => out,
        never = heartbeat => match never {},
    }
}

/// Runs `work` while renewing the lease of its in-flight `record` every third of `lease`. The
/// renewal stops when the record is no longer that in-flight record (finished, settled or
/// reopened elsewhere): it never brings one back.
pub(super) async fn with_lease<F: std::future::Future>(
    records: Arc<dyn RecordStore>,
    rkey: RecordKey,
    record: Record,
    lease: Duration,
    work: F,
) -> F::Output {
    let heartbeat = async {
        let mut current = record;
        loop {
            tokio::time::sleep(lease / 3).await;
            let Some(next) = current.renewed(now_ms() + lease.as_millis() as u64) else {
                break;
            };
            match records.renew(rkey.as_str(), next.clone()).await {
                Ok(true) => current = next,
                Ok(false) => {
                    tracing::warn!(
                        "a create's record changed while it ran (its lease had lapsed); no longer renewing it"
                    );
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew a running create's lease; another replica may take it for lost");
                }
            }
        }
        std::future::pending::<Infallible>().await
    };
    tokio::pin!(work);
    tokio::select! {
        out = &mut work => out,
        never = heartbeat => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::EnvelopeHead;
    use crate::protect::records::MemoryRecords;
    use bytes::Bytes;
    use http::HeaderMap;

    const TTL: Duration = Duration::from_secs(600);
    const LEASE: Duration = Duration::from_secs(3);

    fn answer(status: StatusCode, body: &str) -> Answer {
        let body = Bytes::from(body.to_string());
        Answer {
            status,
            headers: HeaderMap::new(),
            head: EnvelopeHead::parse(&body),
            body,
        }
    }

    fn claim(records: &Arc<MemoryRecords>, max_records: u64) -> Claim {
        Claim {
            records: records.clone(),
            rkey: RecordKey::dedup("a", "c", crate::protect::policy::DedupScope::Client, "fp"),
            fingerprint: "fp".into(),
            ttl: TTL,
            max_age: Duration::from_secs(60),
            lease: LEASE,
            owner: RecordKey::owner("a", "c"),
            max_records,
            route: Route::DiskCreate,
        }
    }

    async fn state(records: &MemoryRecords, key: &RecordKey) -> Option<State> {
        records.get(key.as_str()).await.unwrap().map(|r| r.state)
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_waits_for_another_replicas_execution_and_replays_its_answer() {
        let records = Arc::new(MemoryRecords::default());
        let c = claim(&records, 10);
        // Another replica holds the record, with a live lease.
        records
            .begin(
                c.rkey.as_str(),
                in_flight("fp", TTL, Duration::from_secs(3600)),
            )
            .await
            .unwrap();
        let landing = {
            let (records, rkey) = (records.clone(), c.rkey.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let done = Record {
                    fingerprint: "fp".into(),
                    state: State::Done(Arc::new(answer(
                        StatusCode::OK,
                        r#"{"code":0,"data":"d1"}"#,
                    ))),
                    ttl: TTL,
                };
                records.set(rkey.as_str(), done).await.unwrap();
            })
        };
        let started = tokio::time::Instant::now();
        match c.claim().await {
            Claimed::Replay(a) => assert_eq!(created_disk(&a).as_deref(), Some("d1")),
            other => panic!("expected the landed answer, got {other:?}"),
        }
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(2), "{waited:?}");
        // It polled at most every 100 ms: it did not sleep far past the landing.
        assert!(waited <= Duration::from_millis(2100), "{waited:?}");
        landing.await.unwrap();
    }

    #[tokio::test]
    async fn a_free_record_is_claimed_and_counted_for_its_client() {
        let records = Arc::new(MemoryRecords::default());
        let c = claim(&records, 1);
        assert!(matches!(c.claim().await, Claimed::Held(_)));
        assert!(matches!(
            state(&records, &c.rkey).await,
            Some(State::InFlight {
                lease_until_ms: Some(_),
                ..
            })
        ));
        // The client's one record is taken: another key is refused.
        let other = RecordKey::dedup("a", "c", crate::protect::policy::DedupScope::Client, "fp2");
        let held = hold(&*records, Route::DiskCreate, &c.owner, &other, TTL, 1).await;
        assert!(
            matches!(held, Err(GatewayError::RecordsFull { max: 1, .. })),
            "{held:?}"
        );
    }

    #[tokio::test]
    async fn a_client_at_its_maximum_is_refused_and_leaves_no_record() {
        let records = Arc::new(MemoryRecords::default());
        let c = claim(&records, 1);
        let until = now_ms() + 30_000;
        records
            .hold(c.owner.as_str(), "older", until, 1)
            .await
            .unwrap();
        match c.claim().await {
            Claimed::Refused(GatewayError::RecordsFull {
                max: 1,
                retry_after,
                ..
            }) => assert!((29..=30).contains(&retry_after), "{retry_after}"),
            other => panic!("expected RecordsFull, got {other:?}"),
        }
        assert!(state(&records, &c.rkey).await.is_none());
    }

    #[tokio::test]
    async fn a_claim_that_finds_an_unknown_outcome_refuses_to_call() {
        let records = Arc::new(MemoryRecords::default());
        let c = claim(&records, 10);
        let unknown = Record {
            fingerprint: "fp".into(),
            state: State::Unknown { sent_at_ms: 1 },
            ttl: TTL,
        };
        records.set(c.rkey.as_str(), unknown).await.unwrap();
        assert!(matches!(
            c.claim().await,
            Claimed::Refused(GatewayError::OutcomeUnknown { keyed: false, .. })
        ));
        // A lapsed lease reads as unknown too: its replica is gone.
        let lapsed = Record {
            fingerprint: "fp".into(),
            state: State::InFlight {
                started_ms: 1,
                lease_until_ms: Some(2),
            },
            ttl: TTL,
        };
        records.set(c.rkey.as_str(), lapsed).await.unwrap();
        assert!(matches!(
            c.claim().await,
            Claimed::Refused(GatewayError::OutcomeUnknown { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_lease_is_renewed_while_the_create_runs_and_never_brings_a_record_back() {
        let records = Arc::new(MemoryRecords::default());
        let rkey = RecordKey::in_flight("a", "fp");
        // A lease that would lapse in 10 ms without its heartbeat.
        let record = in_flight("fp", TTL, Duration::from_millis(10));
        let first_until = match record.state {
            State::InFlight { lease_until_ms, .. } => lease_until_ms.unwrap(),
            _ => unreachable!(),
        };
        records.set(rkey.as_str(), record.clone()).await.unwrap();
        let work = {
            let (records, rkey) = (records.clone(), rkey.clone());
            async move {
                // Past the first heartbeat (a third of the lease).
                tokio::time::sleep(LEASE / 3 + Duration::from_millis(10)).await;
                let renewed = state(&records, &rkey).await;
                // The create ends: its record is done.
                let done = Record {
                    fingerprint: "fp".into(),
                    state: State::Done(Arc::new(answer(StatusCode::OK, r#"{"code":0}"#))),
                    ttl: TTL,
                };
                records.set(rkey.as_str(), done).await.unwrap();
                // Several heartbeats more before the work returns.
                tokio::time::sleep(LEASE * 3).await;
                renewed
            }
        };
        let renewed = with_lease(records.clone(), rkey.clone(), record, LEASE, work).await;
        match renewed {
            Some(State::InFlight {
                lease_until_ms: Some(until),
                ..
            }) => assert!(
                until >= first_until + LEASE.as_millis() as u64 - 1_000,
                "renewed to {until}, was {first_until}"
            ),
            other => panic!("expected a renewed in-flight record, got {other:?}"),
        }
        assert!(matches!(state(&records, &rkey).await, Some(State::Done(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_counts_as_being_made_while_it_runs() {
        let records = Arc::new(MemoryRecords::default());
        let (making, rkey) = (
            RecordKey::making("a", "fp"),
            RecordKey::in_flight("a", "fp"),
        );
        let seen = {
            let (records, mark) = (records.clone(), making.clone());
            while_making(records.clone(), &making, &rkey, LEASE, async move {
                // Across several heartbeats, the mark stays.
                tokio::time::sleep(LEASE * 2).await;
                records.holds_other(mark.as_str(), "another").await.unwrap()
            })
            .await
        };
        assert!(seen);
    }

    fn keep(rkey: &RecordKey) -> Keep {
        Keep {
            rkey: rkey.clone(),
            fingerprint: "fp".into(),
            final_ttl: Duration::from_secs(60),
            unknown_ttl: TTL,
            leased: None,
            owner: RecordKey::owner("a", "c"),
        }
    }

    #[tokio::test]
    async fn what_became_of_a_create_decides_its_record() {
        // (answer, unknown, what the record then is)
        let table: [(Answer, bool, &str); 6] = [
            (
                answer(StatusCode::OK, r#"{"code":0,"data":"d1"}"#),
                false,
                "done",
            ),
            (answer(StatusCode::OK, r#"{"code":220013}"#), false, "done"),
            (
                answer(StatusCode::GATEWAY_TIMEOUT, r#"{"code":1005}"#),
                true,
                "unknown",
            ),
            (
                answer(StatusCode::BAD_GATEWAY, r#"{"code":503}"#),
                false,
                "gone",
            ),
            (answer(StatusCode::OK, r#"{"code":220025}"#), false, "gone"),
            (answer(StatusCode::OK, r#"{"code":401}"#), false, "gone"),
        ];
        for (answer, unknown, want) in table {
            let records = MemoryRecords::default();
            let rkey = RecordKey::dedup("a", "c", crate::protect::policy::DedupScope::Client, "fp");
            let keep = keep(&rkey);
            records
                .set(rkey.as_str(), in_flight("fp", TTL, LEASE))
                .await
                .unwrap();
            records
                .hold(keep.owner.as_str(), rkey.as_str(), now_ms() + 1000, 10)
                .await
                .unwrap();
            let outcome = Outcome::answered(answer, unknown);
            let claimed =
                record_outcome(&records, &keep, Route::DiskCreate, "a", 7, &outcome).await;
            assert!(claimed);
            let got = match state(&records, &rkey).await {
                Some(State::Done(_)) => "done",
                Some(State::Unknown { sent_at_ms: 7 }) => "unknown",
                None => "gone",
                Some(other) => panic!("{other:?}"),
            };
            assert_eq!(got, want, "{outcome:?}");
            // The client's count follows the record.
            let counted = records.holds_other(keep.owner.as_str(), "x").await.unwrap();
            assert_eq!(counted, want != "gone", "{outcome:?}");
        }
    }

    #[tokio::test]
    async fn the_disk_a_create_made_is_claimed_at_once() {
        let records = MemoryRecords::default();
        let rkey = RecordKey::idempotent("a", "c", Route::DiskCreate, "k");
        let outcome = Outcome::answered(answer(StatusCode::OK, r#"{"code":0,"data":"d9"}"#), false);
        assert!(record_outcome(&records, &keep(&rkey), Route::DiskCreate, "a", 1, &outcome).await);
        let claim = RecordKey::claim("a", "d9");
        assert!(matches!(
            records
                .begin(claim.as_str(), marker("claimed", TTL))
                .await
                .unwrap(),
            Begin::Exists(_)
        ));
        // A host create has no disk to claim.
        let other = MemoryRecords::default();
        record_outcome(
            &other,
            &keep(&rkey),
            Route::HostCreateRent,
            "a",
            1,
            &outcome,
        )
        .await;
        assert!(matches!(
            other
                .begin(claim.as_str(), marker("claimed", TTL))
                .await
                .unwrap(),
            Begin::Started
        ));
    }
}
