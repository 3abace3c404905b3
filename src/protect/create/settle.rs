//! Settling an unknown outcome: a repeat of a create sent upstream without an answer looks for
//! what it made before anything runs again. A disk create is reconciled against the account's
//! disk list (the earliest matching disk no other purchase owns is answered as the purchase); a
//! host create cannot be matched safely and is refused. One repeat at a time settles a record,
//! fleet-wide: it holds the record's settle lock ([`RecordStore::try_lock`]), whose expiry bounds
//! a settler that died.
//!
//! [`RecordStore::try_lock`]: crate::protect::records::RecordStore::try_lock

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tower::{Service, ServiceExt};
use tracing::field::Empty;
use tracing::{Instrument, Span};

use crate::admitted::FlowAnswer;
use crate::cache::answer::Answer;
use crate::clock::now_ms;
use crate::error::{GatewayError, SearchFailed, StillRunning};
use crate::protect::records::{Begin, Lock, Record, State, in_flight, marker};
use crate::svc::{Req, Resp};
use crate::telemetry::span::{RequestSpan, child_span};

use super::protocol::records_lost;
use super::reconcile::{self, candidates, created_disk, last_page, list_request, read_page};
use super::{Flow, Intent, RecordKey, records_down, replay, unvouched};

/// What settling found, when it did not refuse.
pub(super) enum Settled {
    /// The answer: the disk it made, recorded as done.
    Answer(Resp),
    /// Nothing was made; keyed, the record reopened in flight (its lease to renew).
    NotMade(Option<Record>),
}

enum Reconciled {
    Found(Answer),
    NotMade,
}

/// The reconciliation's span, a child of the request's, when traces are on: what the search read
/// and found, never a key, fingerprint or disk id.
fn reconcile_span(req: &Req) -> Option<Span> {
    RequestSpan::of(req).map(|parent| {
        child_span!(
            parent,
            "reconcile",
            otel.status_code = Empty,
            error.type = Empty,
            reconcile.pages = Empty,
            reconcile.disks_listed = Empty,
            reconcile.candidates = Empty,
            reconcile.found = Empty,
        )
    })
}

/// How the search ended, on its span: found or not, or why it could not look.
fn record_outcome(span: &Span, reconciled: &Result<Reconciled, GatewayError>) {
    match reconciled {
        Ok(r) => {
            span.record("reconcile.found", matches!(r, Reconciled::Found(_)));
        }
        Err(GatewayError::SearchFailed(why)) => {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", why.as_str());
        }
        // Refused, not failed: another retry settles it, or the records are down.
        Err(_) => {
            span.record("error.type", "refused");
        }
    }
}

/// A record whose create has an unknown outcome, as a repeat of that create finds it.
#[derive(Clone, Copy)]
pub(super) struct Unknown<'a> {
    pub(super) rkey: &'a RecordKey,
    /// When the create was sent (the record's `Unknown` state).
    pub(super) sent_at_ms: u64,
    /// How long a reconciled answer is kept: the idempotency lifetime, or the de-dup window.
    pub(super) done_ttl: Duration,
    /// Under an `Idempotency-Key` (reopened in place when nothing was made) or key-less.
    pub(super) keyed: bool,
}

impl Flow {
    /// Answers a repeat of a create whose outcome is unknown: with the disk it made (recorded as
    /// done for `done_ttl`), with a refusal, or [`Settled::NotMade`] when it made nothing and
    /// may run again. One repeat at a time settles a record, fleet-wide.
    pub(super) async fn settle_unknown<S>(
        &self,
        inner: S,
        req: &Req,
        intent: &Intent,
        unknown: &Unknown<'_>,
    ) -> Result<Settled, GatewayError>
    where
        S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send,
    {
        let route = intent.route;
        let lock = RecordKey::settle(unknown.rkey);
        let token = match self.records.try_lock(lock.as_str(), self.max_age).await {
            Err(_) => return Err(records_down(route)),
            Ok(Lock::Held(token)) => token,
            Ok(Lock::Taken) => {
                self.count(intent, "conflict");
                return Err(GatewayError::StillRunning(StillRunning::BeingChecked));
            }
            // A settlement may make the create again.
            Ok(Lock::Lost(left)) => return Err(records_lost(route, left)),
            Ok(Lock::MayEvict(policy)) => {
                return Err(GatewayError::MayEvict {
                    route: route.as_str(),
                    policy,
                });
            }
        };
        let settled = self.settle_locked(inner, req, intent, unknown).await;
        let _ = self.records.unlock(lock.as_str(), &token).await;
        settled
    }

    /// [`Flow::settle_unknown`] once it holds the settle lock: the record is read again (another
    /// retry may have settled it since this one looked), and when nothing was made it is reopened
    /// before the lock is released, so that two retries never both make the create.
    async fn settle_locked<S>(
        &self,
        inner: S,
        req: &Req,
        intent: &Intent,
        unknown: &Unknown<'_>,
    ) -> Result<Settled, GatewayError>
    where
        S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send,
    {
        let Unknown {
            rkey,
            sent_at_ms,
            done_ttl,
            keyed,
        } = *unknown;
        let (records, route, fingerprint) = (&self.records, intent.route, &*intent.fingerprint);
        let still_unknown = match records.get(rkey.as_str()).await {
            Err(_) => return Err(records_down(route)),
            Ok(r) => r.is_some_and(|r| {
                matches!(r.settled_state(self.max_age, now_ms()),
                    State::Unknown { sent_at_ms: at } if at == sent_at_ms)
            }),
        };
        if !still_unknown {
            self.count(intent, "conflict");
            return Err(GatewayError::StillRunning(StillRunning::SettledMeanwhile));
        }
        // The settle lock lives for `max_age`: the search (up to a hundred list pages) must end
        // well within it, or a second retry could take the lock and settle this record too.
        let ttl = intent.policy.idempotency_ttl;
        let span = reconcile_span(req);
        let search = self.reconcile(inner, req, intent, unknown, ttl, span.as_ref());
        let search = tokio::time::timeout(self.max_age / 2, search);
        // Inside its span: the records it reads are its children (as Redis spans, when on).
        let reconciled = match &span {
            Some(s) => search.instrument(s.clone()).await,
            None => search.await,
        }
        .unwrap_or(Err(GatewayError::SearchFailed(SearchFailed::TookTooLong)));
        if let Some(s) = &span {
            record_outcome(s, &reconciled);
        }
        match reconciled? {
            Reconciled::Found(answer) => {
                self.count(intent, "reconciled");
                let done = Record {
                    fingerprint: fingerprint.into(),
                    state: State::Done(Arc::new(answer.clone())),
                    ttl: done_ttl,
                };
                if records.set(rkey.as_str(), done).await.is_err()
                    && let Some(disk) = created_disk(&answer)
                {
                    // Unrecorded, the claim would hide the disk from the next retry's search.
                    let _ = records
                        .remove(RecordKey::claim(&intent.account, &disk).as_str())
                        .await;
                }
                let mut resp = replay(&answer);
                resp.extensions_mut().insert(FlowAnswer::Reconciled);
                Ok(Settled::Answer(resp))
            }
            Reconciled::NotMade => {
                // Reopened: keyed, this request makes it under the same record; key-less, the
                // record goes and the claim of the next execution takes its place.
                let reopened = if keyed {
                    let record = in_flight(fingerprint, ttl, self.lease);
                    records
                        .set(rkey.as_str(), record.clone())
                        .await
                        .map(|()| Some(record))
                } else {
                    records.remove(rkey.as_str()).await.map(|()| None)
                };
                reopened
                    .map(Settled::NotMade)
                    .map_err(|_| records_down(route))
            }
        }
    }

    /// Looks for the disk an unknown-outcome create may have made; `span`, the reconciliation's
    /// when traces are on, is told what it read (never a key, fingerprint or disk id).
    async fn reconcile<S>(
        &self,
        inner: S,
        req: &Req,
        intent: &Intent,
        unknown: &Unknown<'_>,
        ttl: Duration,
        span: Option<&Span>,
    ) -> Result<Reconciled, GatewayError>
    where
        S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send,
    {
        let route = intent.route;
        let Some(order) = &intent.disk else {
            return Err(GatewayError::CannotReconcile(route.as_str()));
        };
        let (mut disks, mut pages, mut readable) = (Vec::new(), 0, true);
        for page in 1..=reconcile::MAX_PAGES {
            pages = page;
            let list = list_request(req, order, page, span);
            let answer = Answer::from_response(
                inner
                    .clone()
                    .oneshot(list)
                    .await
                    .unwrap_or_else(|e| match e {}),
            );
            let Some((got, total)) = read_page(&answer) else {
                readable = false;
                break;
            };
            let n = got.len();
            disks.extend(got);
            if last_page(n, disks.len(), total) {
                break;
            }
        }
        // Each recorded once: a field recorded again is one more attribute, not a new value.
        if let Some(s) = span {
            s.record("reconcile.pages", pages);
            s.record("reconcile.disks_listed", disks.len() as u64);
        }
        if !readable {
            return Err(GatewayError::SearchFailed(SearchFailed::ListUnreadable));
        }
        let matches = candidates(&disks, order, unknown.sent_at_ms);
        if let Some(s) = span {
            s.record("reconcile.candidates", matches.len() as u64);
        }
        // An identical order still being made may own one of these disks without having claimed
        // it yet (its answer is on its way): wait for it rather than take its disk. Asked after
        // the list was read, so a disk listed here is either claimed already or still marked.
        let making = RecordKey::making(&intent.account, &intent.fingerprint);
        let records = &self.records;
        match records
            .holds_other(making.as_str(), unknown.rkey.as_str())
            .await
        {
            Ok(false) => {}
            Ok(true) => {
                self.count(intent, "conflict");
                return Err(GatewayError::StillRunning(StillRunning::IdenticalBeingMade));
            }
            Err(_) => return Err(records_down(route)),
        }
        // The earliest match no other purchase owns yet.
        for disk in matches {
            let claim = RecordKey::claim(&intent.account, &disk);
            match records.begin(claim.as_str(), marker("claimed", ttl)).await {
                Ok(Begin::Started) => {
                    tracing::info!(route = %route, disk = %disk, "reconciled an unknown-outcome create");
                    let id = intent.request_id.as_str();
                    return Ok(Reconciled::Found(reconcile::found(&disk, id)));
                }
                Ok(Begin::Exists(_)) => {}
                // The disk's claim may be gone with it: it may belong to another purchase.
                Ok(unvouched_begin @ (Begin::Lost(_) | Begin::MayEvict(_))) => {
                    return Err(unvouched(route, &unvouched_begin));
                }
                Err(_) => return Err(records_down(route)),
            }
        }
        Ok(Reconciled::NotMade)
    }
}
