//! One purchase per intent. For the routes that spend money:
//! - with an `Idempotency-Key` (scoped per client): the first request runs and its final answer is
//!   kept for `idempotency_ttl`; a repeat with the same body replays it (`Idempotent-Replayed:
//!   true`), with another body gets 422 (code 1003), and while the first is in flight gets 409
//!   (code 1005) with `Retry-After`;
//! - without one: requests of one client (of one account with `dedup_scope = "account"`) with
//!   equal canonical bodies collapse: while one is in flight the others wait for its answer, and
//!   for `dedup_window` after it a repeat gets it too.
//!
//! Other mutations (mount, unmount, power) get the in-flight collapse only.
//!
//! A create, once started, runs in a task of its own to its end, even if the client disconnects;
//! its answer is kept so that the retry gets it. Only final answers are kept: an upstream 5xx or a
//! refused connection did nothing, so a retry runs again. A create sent upstream without an answer
//! (timeout, reset, garbage) has an *unknown* outcome: the client gets 504 (code 1005), and the
//! record stays. A retry of a disk create then *reconciles*: the account's disks created since the
//! attempt are listed, and the earliest one matching its area and size (and host) that no other
//! purchase owns is answered as the purchase (every disk a create made, or a reconciliation
//! handed out, is claimed by a marker record); when none matches the create did not happen and
//! runs again. Host creates are refused (409, code
//! 1005) until the record expires, since hosts cannot be matched safely.
//!
//! While a create runs, its replica renews the in-flight record's lease (a heartbeat every third
//! of `[create] lease`): a record whose lease lapsed belongs to a replica that died, and reads as
//! unknown. Each client holds at most `max_records_per_client` live records (429 over it), and
//! after Redis lost its data, creates that find no record are refused for a grace window (503,
//! code 1005), since they may be retries of creates whose records were lost.

//!
//! In parts, each one concern: this module is the layer (who gets which record, and the answers);
//! [`keys`] names the records and the request's identity; [`protocol`] is the record protocol
//! against the [`RecordStore`] (claim, lease, outcome, per-client counts); [`reconcile`] is the
//! pure matching of listed disks to an unknown-outcome create; [`services`] holds the two services
//! an execution runs through. Every refusal is a [`GatewayError`].

mod keys;
mod protocol;
mod reconcile;
mod services;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tower::{Layer, Service, ServiceExt};

use crate::admitted::{Caller, OutcomeUnknown, RequestId};
use crate::cache::answer::Answer;
use crate::clock::now_ms;
use crate::error::{GatewayError, SearchFailed, StillRunning};
use crate::metrics::Metrics;
use crate::protect::policy::{CreatePolicy, CreateSettings, collapses_in_flight};
use crate::protect::records::{Begin, Record, RecordStore, State, in_flight, marker};
use crate::protect::validate::DiskOrder;
use crate::routes::{Route, RouteMatch};
use crate::single_flight::{Role, SingleFlight};
use crate::svc::{Req, Resp, RespFuture};
use crate::swap::Swap;
use tokio_util::task::TaskTracker;

use keys::{RecordKey, fingerprint, idempotency_key};
use protocol::{Claim, Keep, Outcome, record_outcome, records_lost, while_making};
use reconcile::{candidates, created_disk, last_page, list_request, read_page};
use services::{Bounded, ClaimFirst};

pub(crate) const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Time for an execution that reached its limit to write its outcome.
const LEASE_SLACK: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub(crate) struct DedupLayer {
    shared: Arc<Shared>,
}

struct Shared {
    records: Arc<dyn RecordStore>,
    /// How long an execution may run before its outcome counts as unknown.
    limit: Duration,
    /// An in-flight record without a lease (written by an older version) older than this was lost
    /// with its replica (the limit, plus slack for writing the outcome); also the settle guard's
    /// lifetime.
    max_age: Duration,
    /// How long an in-flight record stays claimed without its replica renewing it.
    lease: Duration,
    flights: SingleFlight<RecordKey, Arc<Outcome>>,
    /// Swapped by a reload; a create keeps the settings it started with (see [`Ctx`]).
    settings: Arc<Swap<CreateSettings>>,
    metrics: Arc<Metrics>,
    work: TaskTracker,
}

impl DedupLayer {
    pub(crate) fn new(
        records: Arc<dyn RecordStore>,
        limit: Duration,
        settings: Arc<Swap<CreateSettings>>,
        metrics: Arc<Metrics>,
        work: TaskTracker,
    ) -> Self {
        // Fixed at start: records already leased were written with it.
        let lease = settings.load().lease;
        DedupLayer {
            shared: Arc::new(Shared {
                records,
                limit,
                max_age: limit + LEASE_SLACK,
                lease,
                flights: SingleFlight::new(),
                settings,
                metrics,
                work,
            }),
        }
    }
}

impl<S> Layer<S> for DedupLayer {
    type Service = Dedup<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Dedup {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Dedup<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Marks an answer made from a record (a replay, or a refusal about the record): the record
/// stays as it is.
#[derive(Debug, Clone, Copy)]
struct FromRecord;

/// Marks a replay of a record another execution wrote: the explicit flag an [`Outcome`] carries.
#[derive(Debug, Clone, Copy)]
struct Replayed;

/// A stored answer, replayed.
fn replay(answer: &Answer) -> Resp {
    let mut resp = answer.to_response();
    resp.headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    resp.extensions_mut().insert(FromRecord);
    resp.extensions_mut().insert(Replayed);
    resp
}

/// A refusal about the record (the store is down, lost its data, is full for this client, or
/// says the outcome is unknown): the record stays as it is.
fn refusal(err: GatewayError, request_id: &str) -> Resp {
    let mut resp = err.into_response(request_id);
    resp.extensions_mut().insert(FromRecord);
    resp
}

impl<S> Service<Req> for Dedup<S>
where
    S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = RespFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> RespFuture {
        let route = req.extensions().get::<RouteMatch>().map(|m| m.route);
        let settings = self.shared.settings.load();
        let applies =
            route.is_some_and(|r| settings.routes.contains_key(&r) || collapses_in_flight(r));
        if !applies {
            return Box::pin(self.inner.call(req));
        }
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let (Some(m), Some(account)) = (
                req.extensions().get::<RouteMatch>().cloned(),
                req.extensions().get::<Caller>().map(|c| c.account.clone()),
            ) else {
                return inner.oneshot(req).await;
            };
            let ctx = Ctx {
                shared,
                settings,
                route: m.route,
                account: account.name.to_string(),
                request_id: RequestId::of(&req),
            };
            let fingerprint = fingerprint(&m, &req);
            if let Some(policy) = ctx.settings.routes.get(&m.route).cloned() {
                let client = client_of(&req);
                match idempotency_key(req.headers()) {
                    Ok(Some(key)) => {
                        let rkey = RecordKey::idempotent(&ctx.account, &client, m.route, &key);
                        Ok(ctx.keyed(inner, req, rkey, fingerprint, &policy).await)
                    }
                    Ok(None) => {
                        let rkey = RecordKey::dedup(
                            &ctx.account,
                            &client,
                            policy.dedup_scope,
                            &fingerprint,
                        );
                        Ok(ctx.unkeyed(inner, req, rkey, fingerprint, &policy).await)
                    }
                    Err(msg) => Ok(GatewayError::BadRequest { code: 1007, msg }
                        .into_response(ctx.request_id.as_str())),
                }
            } else if collapses_in_flight(m.route) {
                let rkey = RecordKey::in_flight(&ctx.account, &fingerprint);
                let (role, outcome) = ctx.execute(inner, req, rkey, None).await;
                Ok(ctx.answer(role, &outcome, false))
            } else {
                inner.oneshot(req).await
            }
        })
    }
}

/// The caller's client name (`-` when anonymous).
fn client_of(req: &Req) -> String {
    req.extensions()
        .get::<Caller>()
        .map_or("-".into(), |c| c.client.to_string())
}

struct Ctx {
    shared: Arc<Shared>,
    /// The create settings current when the request began.
    settings: Arc<CreateSettings>,
    route: Route,
    account: String,
    request_id: RequestId,
}

impl Ctx {
    fn count(&self, result: &str) {
        self.shared
            .metrics
            .dedup
            .with_label_values(&[self.route.as_str(), result])
            .inc();
    }

    fn id(&self) -> &str {
        self.request_id.as_str()
    }

    /// Runs the request once for everyone asking under `rkey`, in a task that outlives them all.
    async fn execute<S>(
        &self,
        inner: S,
        req: Req,
        rkey: RecordKey,
        keep: Option<Keep>,
    ) -> (Role, Option<Arc<Outcome>>)
    where
        S: Service<Req, Response = Resp, Error = Infallible> + Send + 'static,
        S::Future: Send,
    {
        let records = self.shared.records.clone();
        let guard = self.shared.work.token();
        let (route, account, lease) = (self.route, self.account.clone(), self.shared.lease);
        let flight = self.shared.flights.join_or_start(rkey, move || async move {
            let _guard = guard;
            let sent_at_ms = now_ms();
            let leased = keep
                .as_ref()
                .and_then(|k| Some((k.rkey.clone(), k.leased.clone()?)));
            let work = async {
                match leased {
                    Some((rkey, record)) => {
                        protocol::with_lease(
                            records.clone(),
                            rkey,
                            record,
                            lease,
                            inner.oneshot(req),
                        )
                        .await
                    }
                    None => inner.oneshot(req).await,
                }
            };
            // A disk create counts as being made until its disk is claimed, below.
            let making = keep
                .as_ref()
                .filter(|_| route.settles_by_disk_list())
                .map(|k| (RecordKey::making(&account, &k.fingerprint), k.rkey.clone()));
            let resp = match &making {
                Some((making, rkey)) => {
                    while_making(records.clone(), making, rkey, lease, work).await
                }
                None => work.await,
            }
            .unwrap_or_else(|e| match e {});
            let unknown = resp.extensions().get::<OutcomeUnknown>().is_some();
            let from_record = resp.extensions().get::<FromRecord>().is_some();
            let replayed = resp.extensions().get::<Replayed>().is_some();
            let outcome = Outcome {
                answer: Answer::from_response(resp),
                unknown,
                replayed,
            };
            // Whether the disk this create made (if any) is claimed, so that no reconciliation
            // can take it any more.
            let mut claimed = true;
            if let Some(keep) = keep.filter(|_| !from_record) {
                claimed =
                    record_outcome(&*records, &keep, route, &account, sent_at_ms, &outcome).await;
            }
            // Its disk is claimed: a reconciliation no longer needs to wait for it. Unclaimed (the
            // store failed), the mark stays until its lease lapses, and reconciliations wait.
            if let Some((making, rkey)) = making.as_ref().filter(|_| claimed) {
                let _ = records.release(making.as_str(), rkey.as_str()).await;
            }
            Arc::new(outcome)
        });
        (flight.role, flight.wait().await)
    }

    /// `inner`, cut off at the execution limit with an unknown outcome.
    fn bounded<S>(&self, inner: S) -> Bounded<S> {
        Bounded {
            inner,
            limit: self.shared.limit,
            route: self.route,
            request_id: self.request_id.clone(),
        }
    }

    /// The answer to a create whose outcome is unknown.
    fn unknown_answer(&self, keyed: bool) -> Resp {
        GatewayError::OutcomeUnknown {
            route: self.route.as_str(),
            keyed,
        }
        .into_response(self.id())
    }

    /// The answer for one caller of an execution.
    fn answer(&self, role: Role, outcome: &Option<Arc<Outcome>>, keyed: bool) -> Resp {
        let Some(outcome) = outcome else {
            // The task died: we cannot know whether the upstream was reached.
            return self.unknown_answer(keyed);
        };
        if outcome.unknown && crate::protect::policy::spends_money(self.route) {
            return self.unknown_answer(keyed);
        }
        match role {
            Role::Leader => outcome.answer.to_response(),
            Role::Joined => {
                self.count("joined");
                replay(&outcome.answer)
            }
        }
    }

    /// The client a record counts for.
    fn owner(&self, req: &Req) -> RecordKey {
        RecordKey::owner(&self.account, &client_of(req))
    }

    /// The refusal while the shared records cannot be read or written.
    fn records_down(&self) -> Resp {
        refusal(
            GatewayError::SharedStateDown(self.route.as_str()),
            self.id(),
        )
    }

    /// After a loss of Redis's data: how long creates that find no record are still refused.
    /// (A store that may evict records refuses those in the record's begin: a record that is
    /// still there is answered as ever.)
    async fn lost_data(&self) -> Result<Option<Duration>, Resp> {
        self.shared
            .records
            .lost_data()
            .await
            .map_err(|_| self.records_down())
    }

    /// The refusal of a create whose record's absence proves nothing ([`Begin::Lost`],
    /// [`Begin::MayEvict`]): it may be the retry of a purchase whose record is gone.
    fn unvouched(&self, begun: &Begin) -> Resp {
        let err = match begun {
            Begin::Lost(left) => records_lost(self.route, *left),
            Begin::MayEvict(policy) => GatewayError::MayEvict {
                route: self.route.as_str(),
                policy: policy.clone(),
            },
            Begin::Started | Begin::Exists(_) => return self.records_down(),
        };
        refusal(err, self.id())
    }

    async fn keyed<S>(
        &self,
        inner: S,
        req: Req,
        rkey: RecordKey,
        fingerprint: String,
        policy: &CreatePolicy,
    ) -> Resp
    where
        S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send,
    {
        let records = &self.shared.records;
        let owner = self.owner(&req);
        let lost = match self.lost_data().await {
            Ok(lost) => lost,
            Err(resp) => return resp,
        };
        let started = in_flight(&fingerprint, policy.idempotency_ttl, self.shared.lease);
        let mut leased = Some(started.clone());
        let begun = match lost {
            // Only a record that survived may be answered; none is made meanwhile.
            Some(left) => match records.get(rkey.as_str()).await {
                Err(_) => return self.records_down(),
                Ok(None) => return refusal(records_lost(self.route, left), self.id()),
                Ok(Some(r)) => Ok(Begin::Exists(r)),
            },
            None => records.begin(rkey.as_str(), started).await,
        };
        let record = match begun {
            Err(_) => return self.records_down(),
            Ok(Begin::Started) => None,
            Ok(Begin::Exists(r)) => Some(r),
            Ok(unvouched @ (Begin::Lost(_) | Begin::MayEvict(_))) => {
                return self.unvouched(&unvouched);
            }
        };
        if record.is_none() {
            let max = self.settings.max_records_per_client;
            let ttl = policy.idempotency_ttl;
            if let Err(err) = protocol::hold(&**records, self.route, &owner, &rkey, ttl, max).await
            {
                // Refused before anything was sent: the record goes, as if never begun.
                let _ = records.remove(rkey.as_str()).await;
                return refusal(err, self.id());
            }
        }
        if let Some(record) = record {
            if *record.fingerprint != *fingerprint {
                self.count("mismatch");
                return GatewayError::IdempotencyMismatch.into_response(self.id());
            }
            match record.settled_state(self.shared.max_age, now_ms()) {
                State::InFlight { .. } => {
                    self.count("conflict");
                    return GatewayError::StillRunning(StillRunning::KeyInFlight)
                        .into_response(self.id());
                }
                State::Done(answer) => {
                    self.count("replayed");
                    return replay(&answer);
                }
                State::Unknown { sent_at_ms } => {
                    let unknown = Unknown {
                        rkey: &rkey,
                        fingerprint: &fingerprint,
                        sent_at_ms,
                        done_ttl: policy.idempotency_ttl,
                        policy,
                        keyed: true,
                    };
                    // Not made: the record is reopened, and this request makes it under it.
                    match self.settle_unknown(inner.clone(), &req, &unknown).await {
                        Settled::Answer(resp) => return resp,
                        Settled::NotMade(reopened) => leased = reopened,
                    }
                }
            }
        }
        let keep = Keep {
            rkey: rkey.clone(),
            fingerprint: fingerprint.as_str().into(),
            final_ttl: policy.idempotency_ttl,
            unknown_ttl: policy.idempotency_ttl,
            leased,
            owner,
        };
        let started_ms = now_ms();
        let bounded = self.bounded(inner);
        let (role, outcome) = self.execute(bounded, req, rkey.clone(), Some(keep)).await;
        if outcome.is_none() {
            // The task died mid-way: the purchase may or may not exist, and the record must not
            // stay "in flight" for its whole lifetime.
            let unknown = Record {
                fingerprint: fingerprint.as_str().into(),
                state: State::Unknown {
                    sent_at_ms: started_ms,
                },
                ttl: policy.idempotency_ttl,
            };
            let _ = self.shared.records.set(rkey.as_str(), unknown).await;
        }
        self.answer(role, &outcome, true)
    }

    async fn unkeyed<S>(
        &self,
        inner: S,
        req: Req,
        rkey: RecordKey,
        fingerprint: String,
        policy: &CreatePolicy,
    ) -> Resp
    where
        S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send,
    {
        let records = &self.shared.records;
        let owner = self.owner(&req);
        let lost = match self.lost_data().await {
            Ok(lost) => lost,
            Err(resp) => return resp,
        };
        let Ok(record) = records.get(rkey.as_str()).await else {
            return self.records_down();
        };
        if let (None, Some(left)) = (&record, lost) {
            return refusal(records_lost(self.route, left), self.id());
        }
        if let Some(record) = record {
            match record.settled_state(self.shared.max_age, now_ms()) {
                State::Done(answer) => {
                    self.count("replayed");
                    return replay(&answer);
                }
                State::Unknown { sent_at_ms } => {
                    let unknown = Unknown {
                        rkey: &rkey,
                        fingerprint: &fingerprint,
                        sent_at_ms,
                        done_ttl: policy.dedup_window,
                        policy,
                        keyed: false,
                    };
                    let settled = self.settle_unknown(inner.clone(), &req, &unknown).await;
                    // Not made: the record is gone, and this request makes it.
                    if let Settled::Answer(resp) = settled {
                        return resp;
                    }
                }
                // Being carried out here or on another replica: join it below.
                State::InFlight { .. } => {}
            }
        }
        let keep = Keep {
            rkey: rkey.clone(),
            fingerprint: fingerprint.as_str().into(),
            final_ttl: policy.dedup_window,
            unknown_ttl: policy.idempotency_ttl,
            leased: None,
            owner: owner.clone(),
        };
        // The record is claimed inside the flight, so that one execution in the fleet runs and
        // the others (here or on other replicas) get its answer.
        let claimed = ClaimFirst {
            claim: Claim {
                records: records.clone(),
                rkey: rkey.clone(),
                fingerprint,
                ttl: policy.idempotency_ttl,
                max_age: self.shared.max_age,
                lease: self.shared.lease,
                owner,
                max_records: self.settings.max_records_per_client,
                route: self.route,
            }
            .into(),
            request_id: self.request_id.clone(),
            inner: self.bounded(inner),
        };
        let (role, outcome) = self.execute(claimed, req, rkey, Some(keep)).await;
        if let Some(o) = outcome.as_ref().filter(|o| o.replayed) {
            self.count("replayed");
            return o.answer.to_response();
        }
        self.answer(role, &outcome, false)
    }

    /// Answers a repeat of a create whose outcome is unknown: with the disk it made (recorded as
    /// done for `done_ttl`), with a refusal, or [`Settled::NotMade`] when it made nothing and
    /// may run again. One repeat at a time settles a record, fleet-wide.
    async fn settle_unknown<S>(&self, inner: S, req: &Req, unknown: &Unknown<'_>) -> Settled
    where
        S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send,
    {
        let guard = RecordKey::settle(unknown.rkey);
        match self
            .shared
            .records
            .begin(guard.as_str(), marker("settle", self.shared.max_age))
            .await
        {
            Err(_) => return Settled::Answer(self.records_down()),
            Ok(Begin::Exists(_)) => {
                self.count("conflict");
                let err = GatewayError::StillRunning(StillRunning::BeingChecked);
                return Settled::Answer(err.into_response(self.id()));
            }
            Ok(Begin::Started) => {}
            // A settlement may make the create again.
            Ok(unvouched @ (Begin::Lost(_) | Begin::MayEvict(_))) => {
                return Settled::Answer(self.unvouched(&unvouched));
            }
        }
        let settled = self.settle_locked(inner, req, unknown).await;
        let _ = self.shared.records.remove(guard.as_str()).await;
        settled
    }

    /// [`Ctx::settle_unknown`] once it holds the settle guard: the record is read again (another
    /// retry may have settled it since this one looked), and when nothing was made it is reopened
    /// before the guard is released, so that two retries never both make the create.
    async fn settle_locked<S>(&self, inner: S, req: &Req, unknown: &Unknown<'_>) -> Settled
    where
        S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send,
    {
        let Unknown {
            rkey,
            fingerprint,
            sent_at_ms,
            done_ttl,
            policy,
            keyed,
        } = *unknown;
        let records = &self.shared.records;
        let still_unknown = match records.get(rkey.as_str()).await {
            Err(_) => return Settled::Answer(self.records_down()),
            Ok(r) => r.is_some_and(|r| {
                matches!(r.settled_state(self.shared.max_age, now_ms()),
                    State::Unknown { sent_at_ms: at } if at == sent_at_ms)
            }),
        };
        if !still_unknown {
            self.count("conflict");
            let err = GatewayError::StillRunning(StillRunning::SettledMeanwhile);
            return Settled::Answer(err.into_response(self.id()));
        }
        // The settle guard lives for `max_age`: the search (up to a hundred list pages) must end
        // well within it, or a second retry could take the guard and settle this record too.
        let search = self.reconcile(inner, req, unknown, policy.idempotency_ttl);
        let reconciled = tokio::time::timeout(self.shared.max_age / 2, search)
            .await
            .unwrap_or_else(|_| {
                let err = GatewayError::SearchFailed(SearchFailed::TookTooLong);
                Reconciled::Refused(err.into_response(self.id()))
            });
        match reconciled {
            Reconciled::Found(answer) => {
                self.count("reconciled");
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
                        .remove(RecordKey::claim(&self.account, &disk).as_str())
                        .await;
                }
                Settled::Answer(replay(&answer))
            }
            Reconciled::NotMade => {
                // Reopened: keyed, this request makes it under the same record; key-less, the
                // record goes and the claim of the next execution takes its place.
                let lease = self.shared.lease;
                let reopened = if keyed {
                    let record = in_flight(fingerprint, policy.idempotency_ttl, lease);
                    records
                        .set(rkey.as_str(), record.clone())
                        .await
                        .map(|()| Some(record))
                } else {
                    records.remove(rkey.as_str()).await.map(|()| None)
                };
                match reopened {
                    Ok(record) => Settled::NotMade(record),
                    Err(_) => Settled::Answer(self.records_down()),
                }
            }
            Reconciled::Refused(resp) => Settled::Answer(resp),
        }
    }

    /// Looks for the disk an unknown-outcome create may have made.
    async fn reconcile<S>(
        &self,
        inner: S,
        req: &Req,
        unknown: &Unknown<'_>,
        ttl: Duration,
    ) -> Reconciled
    where
        S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send,
    {
        let refused = |err: GatewayError| Reconciled::Refused(err.into_response(self.id()));
        // Set by the validate layer for (valid) disk creates only.
        let Some(order) = req.extensions().get::<DiskOrder>().cloned() else {
            return refused(GatewayError::CannotReconcile(self.route.as_str()));
        };
        let mut disks = Vec::new();
        for page in 1..=reconcile::MAX_PAGES {
            let list = list_request(req, &order, page);
            let answer = Answer::from_response(
                inner
                    .clone()
                    .oneshot(list)
                    .await
                    .unwrap_or_else(|e| match e {}),
            );
            let Some((got, total)) = read_page(&answer) else {
                return refused(GatewayError::SearchFailed(SearchFailed::ListUnreadable));
            };
            let n = got.len();
            disks.extend(got);
            if last_page(n, disks.len(), total) {
                break;
            }
        }
        let matches = candidates(&disks, &order, unknown.sent_at_ms);
        // An identical order still being made may own one of these disks without having claimed
        // it yet (its answer is on its way): wait for it rather than take its disk. Asked after
        // the list was read, so a disk listed here is either claimed already or still marked.
        let making = RecordKey::making(&self.account, unknown.fingerprint);
        let records = &self.shared.records;
        match records
            .holds_other(making.as_str(), unknown.rkey.as_str())
            .await
        {
            Ok(false) => {}
            Ok(true) => {
                self.count("conflict");
                return refused(GatewayError::StillRunning(StillRunning::IdenticalBeingMade));
            }
            Err(_) => return Reconciled::Refused(self.records_down()),
        }
        // The earliest match no other purchase owns yet.
        for disk in matches {
            let claim = RecordKey::claim(&self.account, &disk);
            match records.begin(claim.as_str(), marker("claimed", ttl)).await {
                Ok(Begin::Started) => {
                    tracing::info!(route = %self.route, disk = %disk, "reconciled an unknown-outcome create");
                    return Reconciled::Found(reconcile::found(&disk, self.id()));
                }
                Ok(Begin::Exists(_)) => {}
                // The disk's claim may be gone with it: it may belong to another purchase.
                Ok(unvouched @ (Begin::Lost(_) | Begin::MayEvict(_))) => {
                    return Reconciled::Refused(self.unvouched(&unvouched));
                }
                Err(_) => return Reconciled::Refused(self.records_down()),
            }
        }
        Reconciled::NotMade
    }
}

enum Settled {
    Answer(Resp),
    /// Nothing was made; keyed, the record reopened in flight (its lease to renew).
    NotMade(Option<Record>),
}

enum Reconciled {
    Found(Answer),
    NotMade,
    Refused(Resp),
}

/// A record whose create has an unknown outcome, as a repeat of that create finds it.
#[derive(Clone, Copy)]
struct Unknown<'a> {
    rkey: &'a RecordKey,
    fingerprint: &'a str,
    /// When the create was sent (the record's `Unknown` state).
    sent_at_ms: u64,
    /// How long a reconciled answer is kept: the idempotency lifetime, or the de-dup window.
    done_ttl: Duration,
    policy: &'a CreatePolicy,
    /// Under an `Idempotency-Key` (reopened in place when nothing was made) or key-less.
    keyed: bool,
}
