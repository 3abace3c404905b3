//! One purchase per intent. For the routes that spend money:
//! - with an `Idempotency-Key` (scoped per client): the first request runs and its final answer is
//!   kept for `idempotency_ttl`; a repeat with the same body replays it (`Idempotent-Replayed:
//!   true`), with another body gets 422 (code 1003), and while the first is in flight gets 409
//!   (code 1005) with `Retry-After`;
//! - without one: requests of one client (of one account with `dedup_scope = "account"`) with
//!   equal canonical bodies collapse: while one is in flight the others wait for its answer, and
//!   for `dedup_window` after it a repeat gets it too.
//!
//! Other mutations (mount, unmount, power) get the in-flight collapse only, from their own layer
//! (`crate::layers::collapse`).
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
//! This is the flow apart from its layer (`crate::layers::dedup` reads the request and renders
//! the answer): the flow takes an [`Intent`] and the inner service, and answers
//! `Result<Resp, GatewayError>`; it reads nothing from the request but what telemetry its steps
//! add to (the request's span, its `Server-Timing`). In parts, each one concern:
//! [`intent`] is the prologue both flows share (the one reader of the request); this module runs
//! an execution and answers its callers; [`keyed`] and [`unkeyed`] are the two flows; [`settle`]
//! settles unknown outcomes (reconciliation against the disk list, under a lock); [`keys`] names
//! the records and the request's identity; [`protocol`] is the record protocol against the
//! [`RecordStore`] (claim, lease, outcome, per-client counts); [`reconcile`] is the pure matching
//! of listed disks to an unknown-outcome create; [`services`] holds the two services an execution
//! runs through.

mod intent;
mod keyed;
mod keys;
mod prior;
mod protocol;
mod reconcile;
mod replay;
mod services;
mod settle;
mod unkeyed;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

use crate::admitted::{FlowAnswer, OutcomeUnknown};
use crate::cache::answer::Answer;
use crate::clock::now_ms;
use crate::counters::Refused;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::protect::records::{Begin, RecordStore};
use crate::routes::Route;
use crate::single_flight::{Role, SingleFlight};
use crate::svc::{Req, Resp};
use crate::telemetry::server_timing::Timing;

pub(crate) use intent::{Intent, Keying, Parts};
pub(crate) use keys::{RecordKey, fingerprint};
pub(crate) use prior::Priors;

use protocol::{Keep, Outcome, record_outcome, records_lost, while_making};
pub(crate) use replay::REPLAYED;
use replay::{FromRecord, Replayed, replay};
use services::{Bounded, Stopped};

/// Time for an execution that reached its limit to write its outcome.
const LEASE_SLACK: Duration = Duration::from_secs(2);

/// The create flow's state, shared by every spend.
pub(crate) struct Flow {
    records: Arc<dyn RecordStore>,
    /// How long an execution may run before its outcome counts as unknown.
    limit: Duration,
    /// An in-flight record without a lease (written by an older version) older than this was lost
    /// with its replica (the limit, plus slack for writing the outcome); also the settle lock's
    /// lifetime.
    max_age: Duration,
    /// How long an in-flight record stays claimed without its replica renewing it.
    lease: Duration,
    flights: SingleFlight<RecordKey, Arc<Outcome>>,
    /// The purchase ledger, asked when a keyed create finds no record.
    priors: Option<Arc<dyn Priors>>,
    metrics: Arc<Metrics>,
    work: TaskTracker,
}

/// The refusal while the shared records cannot be read or written.
fn records_down(route: Route) -> GatewayError {
    GatewayError::SharedStateDown(route.as_str())
}

/// The refusal of a create whose record's absence proves nothing ([`Begin::Lost`],
/// [`Begin::MayEvict`]): it may be the retry of a purchase whose record is gone.
fn unvouched(route: Route, begun: &Begin) -> GatewayError {
    match begun {
        Begin::Lost(left) => records_lost(route, *left),
        Begin::MayEvict(policy) => GatewayError::MayEvict {
            route: route.as_str(),
            policy: policy.clone(),
        },
        Begin::Started | Begin::Exists(_) => records_down(route),
    }
}

/// Marks the answer of a request that carried out again a purchase whose unknown outcome was
/// found not made (the ledger settles the original as failed).
fn retried_unknown(mut resp: Resp, retried: bool) -> Resp {
    if retried {
        resp.extensions_mut().insert(FlowAnswer::RetriedUnknown);
    }
    resp
}

/// What an execution's service must be: answers from below, or why it stopped.
trait Execution: Service<Req, Response = Resp, Error = Stopped> + Send + 'static {}
impl<S: Service<Req, Response = Resp, Error = Stopped> + Send + 'static> Execution for S {}

impl Flow {
    /// `limit`: how long an execution may run before its outcome counts as unknown; `lease`: how
    /// long an in-flight record stays claimed without its replica renewing it.
    pub(crate) fn new(
        records: Arc<dyn RecordStore>,
        limit: Duration,
        lease: Duration,
        metrics: Arc<Metrics>,
        work: TaskTracker,
    ) -> Flow {
        Flow {
            records,
            limit,
            max_age: limit + LEASE_SLACK,
            lease,
            flights: SingleFlight::new(),
            priors: None,
            metrics,
            work,
        }
    }

    /// Where a keyed create whose record is gone finds its earlier request (the ledger).
    pub(crate) fn with_priors(mut self, priors: Option<Arc<dyn Priors>>) -> Flow {
        self.priors = priors;
        self
    }

    /// The record an earlier request under this keyed intent's key left, from the ledger.
    async fn prior(&self, intent: &Intent) -> Option<crate::protect::records::Record> {
        match &self.priors {
            Some(p) => p.find(intent).await,
            None => None,
        }
    }

    /// Carries out one spend through `inner`: keyed or key-less, after the opening both share
    /// (the records-lost grace check). A refusal is the error; the caller renders it.
    pub(crate) async fn run<S>(
        &self,
        inner: S,
        req: Req,
        intent: &Intent,
    ) -> Result<Resp, GatewayError>
    where
        S: Service<Req, Response = Resp, Error = std::convert::Infallible> + Clone + Send + 'static,
        S::Future: Send,
    {
        // After a loss of Redis's data: how long creates that find no record are still refused.
        // (A store that may evict records refuses those in the record's begin: a record that is
        // still there is answered as ever.)
        let lost = self
            .records
            .lost_data()
            .await
            .map_err(|_| records_down(intent.route))?;
        match &intent.keying {
            Keying::Keyed(rkey) => self.keyed(inner, req, intent, rkey, lost).await,
            Keying::Unkeyed(rkey) => self.unkeyed(inner, req, intent, rkey, lost).await,
        }
    }

    fn count(&self, intent: &Intent, result: &str) {
        self.metrics
            .dedup
            .with_label_values(&[intent.route.as_str(), result])
            .inc();
    }

    /// `inner`, cut off at the execution limit with an unknown outcome.
    fn bounded<S>(&self, inner: S, intent: &Intent) -> Bounded<S> {
        Bounded {
            inner,
            limit: self.limit,
            route: intent.route,
        }
    }

    /// Runs the request once for everyone asking under `rkey`, in a task that outlives them all.
    async fn execute<S>(
        &self,
        intent: &Intent,
        inner: S,
        req: Req,
        rkey: RecordKey,
        keep: Keep,
    ) -> (Role, Option<Arc<Outcome>>)
    where
        S: Execution,
        S::Future: Send,
    {
        let records = self.records.clone();
        let guard = self.work.token();
        let (route, account, lease) = (intent.route, intent.account.clone(), self.lease);
        // A request joined to another's execution waited for it (its `Server-Timing` says so).
        let timing = Timing::of(&req).cloned();
        let joined_at = tokio::time::Instant::now();
        let flight = self.flights.join_or_start(rkey, move || async move {
            let _guard = guard;
            let sent_at_ms = now_ms();
            let leased = keep.leased.clone().map(|r| (keep.rkey.clone(), r));
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
            let making = route.settles_by_disk_list().then(|| {
                (
                    RecordKey::making(&account, &keep.fingerprint),
                    keep.rkey.clone(),
                )
            });
            let ran = match &making {
                Some((making, rkey)) => {
                    while_making(records.clone(), making, rkey, lease, work).await
                }
                None => work.await,
            };
            let outcome = match ran {
                Ok(resp) => {
                    let unknown = resp.extensions().get::<OutcomeUnknown>().is_some();
                    let from_record = resp.extensions().get::<FromRecord>().is_some();
                    let replayed = resp.extensions().get::<Replayed>().is_some();
                    let refused = resp.extensions().get::<Refused>().copied();
                    Outcome {
                        answer: Ok(Answer::from_response(resp)),
                        unknown,
                        replayed,
                        from_record,
                        refused,
                    }
                }
                Err(Stopped::TimedOut) => Outcome {
                    answer: Err(GatewayError::OutcomeUnknown {
                        route: route.as_str(),
                        keyed: false,
                    }),
                    unknown: true,
                    replayed: false,
                    from_record: false,
                    refused: None,
                },
                Err(Stopped::Refused(err)) => Outcome {
                    answer: Err(err),
                    unknown: false,
                    replayed: false,
                    from_record: true,
                    refused: None,
                },
            };
            // Whether the disk this create made (if any) is claimed, so that no reconciliation
            // can take it any more.
            let mut claimed = true;
            if !outcome.from_record {
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
        let role = flight.role;
        let outcome = flight.wait().await;
        if let (Some(t), Role::Joined) = (timing, role) {
            t.waited(joined_at.elapsed());
        }
        (role, outcome)
    }

    /// The answer for one caller of an execution.
    fn answer(
        &self,
        intent: &Intent,
        role: Role,
        outcome: Option<&Outcome>,
        keyed: bool,
    ) -> Result<Resp, GatewayError> {
        let unknown = || GatewayError::OutcomeUnknown {
            route: intent.route.as_str(),
            keyed,
        };
        // No outcome: the task died, and we cannot know whether the upstream was reached.
        let Some(outcome) = outcome else {
            return Err(unknown());
        };
        if outcome.unknown && intent.route.spends_money() {
            return Err(unknown());
        }
        let mut resp = match role {
            Role::Leader => outcome
                .answer
                .as_ref()
                .map(Answer::to_response)
                .map_err(Clone::clone)?,
            Role::Joined => {
                self.count(intent, "joined");
                let answer = outcome.answer.as_ref().map_err(Clone::clone)?;
                let mut resp = replay(answer);
                resp.extensions_mut().insert(FlowAnswer::Joined);
                resp
            }
        };
        // A refusal made below stays one for whoever gets it.
        if let Some(refused) = outcome.refused {
            resp.extensions_mut().insert(refused);
        }
        Ok(resp)
    }
}
