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

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower::{Layer, Service, ServiceExt};

use crate::cache::entry::Answer;
use crate::cache::key::canonical_json;
use crate::envelope::{EnvelopeHead, error_response};
use crate::error::GatewayError;
use crate::fleet::now_ms;
use crate::layers::rate_limit::TOO_FREQUENT;
use crate::layers::{Caller, OutcomeUnknown, RequestId};
use crate::metrics::Metrics;
use crate::protect::policy::{CreatePolicy, CreateSettings, DedupScope, collapses_in_flight};
use crate::protect::records::{Begin, Hold, Record, RecordStore, State, in_flight, marker};
use crate::protect::validate::{DiskOrder, Order};
use crate::reload::Swap;
use crate::routes::{Route, RouteMatch};
use crate::single_flight::{Role, SingleFlight};
use crate::svc::{Req, Resp, RespFuture};

use crate::work::WorkTracker;

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Longest `Idempotency-Key` accepted (Stripe's limit).
const MAX_KEY_LEN: usize = 255;

/// Time for an execution that reached its limit to write its outcome.
const LEASE_SLACK: Duration = Duration::from_secs(2);

/// The answer to a create refused because its client holds too many live records.
const RECORDS_FULL: i64 = TOO_FREQUENT;

/// Reconciliation reads the account's disk list this many at a time, and at most this many pages.
const RECONCILE_PAGE: u64 = 100;
const RECONCILE_MAX_PAGES: u64 = 100;

/// How far before the attempt a disk's `createTime` may lie and still match it (clock skew).
const RECONCILE_SLACK_MS: u64 = 60_000;

/// The marker record saying that a disk already belongs to a purchase, so that reconciliation
/// never hands one disk to two intents.
/// The disks in `listed` that a create of `order` sent at `sent_at_ms` may have made, earliest
/// first: the same area and size, mounted on its host (on none when it did not mount), created no
/// earlier than the attempt less the clock slack.
fn candidates(listed: &[Value], order: &DiskOrder, sent_at_ms: u64) -> Vec<String> {
    let as_i64 = |v: &Value| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    let host = |d: &Value| {
        d["pveId"]
            .as_str()
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
    };
    let mut matches: Vec<(i64, String)> = listed
        .iter()
        .filter(|d| as_i64(&d["memory"]) == Some(order.memory_gb))
        .filter(|d| as_i64(&d["area"]) == Some(order.area))
        .filter(|d| host(d) == order.pve_id)
        .filter_map(|d| Some((as_i64(&d["createTime"])?, d["id"].as_str()?.to_owned())))
        .filter(|(t, _)| (*t).max(0) as u64 + RECONCILE_SLACK_MS >= sent_at_ms)
        .collect();
    matches.sort();
    matches.into_iter().map(|(_, id)| id).collect()
}

/// The purchases of one order (by its fingerprint) being made in the account: their disks exist
/// upstream before they are claimed, so a reconciliation of an identical order waits for them.
fn making_key(account: &str, fingerprint: &str) -> String {
    format!("{account}|making:{fingerprint}")
}

fn claim_key(account: &str, disk: &str) -> String {
    format!("claimed|{account}|{disk}")
}

/// The new disk's id in a successful create answer.
fn created_disk(answer: &Answer) -> Option<String> {
    if !answer.is_storable() {
        return None;
    }
    let v: Value = serde_json::from_slice(&answer.body).ok()?;
    v.get("data")?.as_str().map(str::to_string)
}

/// What became of one execution, shared with everyone who waited for it.
#[derive(Debug)]
struct Outcome {
    answer: Answer,
    unknown: bool,
}

impl Outcome {
    /// A final answer: the upstream decided (success or a business error). Not a failure that did
    /// nothing (5xx, connection refused, no token, rate-limited) and not an unknown outcome.
    fn is_final(&self) -> bool {
        !self.unknown
            && !self.answer.is_failure()
            && self.answer.status != StatusCode::TOO_MANY_REQUESTS
            && self.answer.status != StatusCode::UNAUTHORIZED
            && self
                .answer
                .head
                .as_ref()
                .is_some_and(|h| h.code != Some(TOO_FREQUENT) && h.code != Some(401))
    }
}

#[derive(Clone)]
pub struct DedupLayer {
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
    flights: SingleFlight<String, Arc<Outcome>>,
    /// Swapped by a reload; a create keeps the settings it started with (see [`Ctx`]).
    settings: Arc<Swap<CreateSettings>>,
    metrics: Arc<Metrics>,
    work: Arc<WorkTracker>,
}

impl DedupLayer {
    pub fn new(
        records: Arc<dyn RecordStore>,
        limit: Duration,
        settings: Arc<Swap<CreateSettings>>,
        metrics: Arc<Metrics>,
        work: Arc<WorkTracker>,
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
pub struct Dedup<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Marks an answer made from a record (a replay, or a refusal about the record): the record
/// stays as it is.
#[derive(Debug, Clone, Copy)]
struct FromRecord;

fn replay(answer: &Answer) -> Resp {
    let mut resp = answer.to_response();
    resp.headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    resp.extensions_mut().insert(FromRecord);
    resp
}

/// The answer while the shared records cannot be read or written.
fn records_down(route: Route, request_id: &str) -> Resp {
    let mut resp = GatewayError::SharedStateDown(route.as_str()).into_response(request_id);
    resp.extensions_mut().insert(FromRecord);
    resp
}

/// The answer to a create that finds no record while Redis's data was lost a moment ago: it may
/// be the retry of a create whose record went with it.
fn records_lost(route: Route, request_id: &str, left: Duration) -> Resp {
    let secs = left.as_secs_f64().ceil().max(1.0) as u64;
    let msg = format!(
        "the gateway's shared store (Redis) lost its data a moment ago, so it cannot tell whether this {route} \
         is a retry of one already made: nothing was sent upstream. Check the disk list if this may be a \
         retry, or send it again in {secs}s"
    );
    let mut resp = error_response(StatusCode::SERVICE_UNAVAILABLE, 1005, &msg, request_id);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp.extensions_mut().insert(FromRecord);
    resp
}

/// The answer to a create whose client already holds its maximum of live records.
fn records_full(route: Route, request_id: &str, max: u64, frees_at_ms: u64) -> Resp {
    let secs = (frees_at_ms.saturating_sub(now_ms()).div_ceil(1000)).max(1);
    let msg = format!(
        "this client holds {max} live idempotency and de-duplication records (create.max_records_per_client): \
         nothing was sent upstream. Retry {route} in {secs}s, when the oldest expires, or repeat earlier \
         Idempotency-Keys instead of new ones"
    );
    let mut resp = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        RECORDS_FULL,
        &msg,
        request_id,
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp.extensions_mut().insert(FromRecord);
    resp
}

/// Runs `work` (a disk create on its way upstream) while `rkey` counts among the purchases of its
/// order being made, renewed every third of `lease`: if this replica dies, it stops counting
/// within `lease`.
async fn while_making<F: std::future::Future>(
    records: Arc<dyn RecordStore>,
    making: &str,
    rkey: &str,
    lease: Duration,
    work: F,
) -> F::Output {
    let mark = || records.hold(making, rkey, now_ms() + lease.as_millis() as u64, u64::MAX);
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
async fn with_lease<F: std::future::Future>(
    records: Arc<dyn RecordStore>,
    rkey: String,
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
            match records.renew(&rkey, next.clone()).await {
                Ok(true) => current = next,
                Ok(false) => {
                    tracing::warn!(
                        "a create's record changed while it ran (its lease had lapsed); no longer renewing it"
                    );
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew a running create's lease; another replica may take it for lost")
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

/// The answer to a create whose outcome is unknown.
fn unknown_answer(route: Route, request_id: &str, keyed: bool) -> Resp {
    let how = if keyed {
        "retry with the same Idempotency-Key"
    } else {
        "retry the same request"
    };
    let msg = format!(
        "the upstream did not answer after {route} was sent: the purchase may exist. Do not create again: \
         {how}, and the gateway will find it or, if it was not made, make it"
    );
    error_response(StatusCode::GATEWAY_TIMEOUT, 1005, &msg, request_id)
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
                let client = req
                    .extensions()
                    .get::<Caller>()
                    .map_or("-".into(), |c| c.client.to_string());
                match idempotency_key(req.headers()) {
                    Ok(Some(key)) => {
                        let rkey =
                            format!("idem|{}|{client}|{}|{key}", ctx.account, m.route.as_str());
                        Ok(ctx.keyed(inner, req, rkey, fingerprint, &policy).await)
                    }
                    Ok(None) => {
                        let rkey =
                            dedup_key(&ctx.account, &client, policy.dedup_scope, &fingerprint);
                        Ok(ctx.unkeyed(inner, req, rkey, fingerprint, &policy).await)
                    }
                    Err(msg) => Ok(error_response(
                        StatusCode::BAD_REQUEST,
                        1007,
                        &msg,
                        ctx.request_id.as_str(),
                    )),
                }
            } else if collapses_in_flight(m.route) {
                let rkey = format!("inflight|{}|{fingerprint}", ctx.account);
                let (role, outcome) = ctx.execute(inner, req, rkey, None).await;
                Ok(ctx.answer(role, &outcome, false))
            } else {
                inner.oneshot(req).await
            }
        })
    }
}

/// The request's identity: a SHA-256 digest (hex) of its route, path parameter and canonical
/// body. A create's canonical body is its validated order's ([`Order::body`]), so key order,
/// whitespace and `"0"` for `0` do not make two intents of one; other mutations use their
/// canonical JSON. Records and their keys hold this digest, never a body.
fn fingerprint(m: &RouteMatch, req: &Req) -> String {
    let body = match req.extensions().get::<Order>() {
        Some(order) => order.body(),
        None => canonical_json(req.body())
            .unwrap_or_else(|| String::from_utf8_lossy(req.body()).into_owned()),
    };
    let mut digest = Sha256::new();
    // Route names and path parameters never contain `|`.
    for part in [m.route.as_str(), "|", m.param.as_deref().unwrap_or(""), "|"] {
        digest.update(part.as_bytes());
    }
    digest.update(body.as_bytes());
    hex::encode(digest.finalize())
}

/// The record of a key-less create: per client unless the route's `dedup_scope` is `account`.
/// The two forms cannot meet: `c=` marks a client's.
fn dedup_key(account: &str, client: &str, scope: DedupScope, fingerprint: &str) -> String {
    match scope {
        DedupScope::Client => format!("dedup|{account}|c={client}|{fingerprint}"),
        DedupScope::Account => format!("dedup|{account}|{fingerprint}"),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some(v) = headers.get(&IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .map_err(|_| "Idempotency-Key must be printable ASCII".to_string())?
        .trim();
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} characters"
        ));
    }
    Ok(Some(key.to_string()))
}

/// Where the record of an execution goes when it ends.
struct Keep {
    rkey: String,
    fingerprint: Arc<str>,
    /// Lifetime of a final answer's record.
    final_ttl: Duration,
    unknown_ttl: Duration,
    /// The in-flight record this execution holds, whose lease it renews while it runs (`None`
    /// when the execution claims its record itself, see [`ClaimFirst`]).
    leased: Option<Record>,
    /// The client the record counts for (`account|client`).
    owner: String,
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

    /// Runs the request once for everyone asking under `rkey`, in a task that outlives them all.
    async fn execute<S>(
        &self,
        inner: S,
        req: Req,
        rkey: String,
        keep: Option<Keep>,
    ) -> (Role, Option<Arc<Outcome>>)
    where
        S: Service<Req, Response = Resp, Error = Infallible> + Send + 'static,
        S::Future: Send,
    {
        let records = self.shared.records.clone();
        let guard = self.shared.work.start();
        let (route, account, lease) = (self.route, self.account.clone(), self.shared.lease);
        let flight = self.shared.flights.join_or_start(rkey, move || async move {
            let _guard = guard;
            let sent_at_ms = now_ms();
            let leased = keep.as_ref().and_then(|k| Some((k.rkey.clone(), k.leased.clone()?)));
            let work = async {
                match leased {
                    Some((rkey, record)) => {
                        with_lease(records.clone(), rkey, record, lease, inner.oneshot(req)).await
                    }
                    None => inner.oneshot(req).await,
                }
            };
            // A disk create counts as being made until its disk is claimed, below.
            let making = keep
                .as_ref()
                .filter(|_| route == Route::DiskCreate)
                .map(|k| (making_key(&account, &k.fingerprint), k.rkey.clone()));
            let resp = match &making {
                Some((making, rkey)) => {
                    while_making(records.clone(), making, rkey, lease, work).await
                }
                None => work.await,
            }
            .unwrap_or_else(|e| match e {});
            let unknown = resp.extensions().get::<OutcomeUnknown>().is_some();
            let from_record = resp.extensions().get::<FromRecord>().is_some();
            let outcome = Outcome {
                answer: Answer::from_response(resp),
                unknown,
            };
            // Whether the disk this create made (if any) is claimed, so that no reconciliation
            // can take it any more.
            let mut claimed = true;
            if let Some(keep) = keep.filter(|_| !from_record) {
                if route == Route::DiskCreate
                    && let Some(disk) = created_disk(&outcome.answer)
                {
                    claimed = records
                        .begin(
                            &claim_key(&account, &disk),
                            marker("claimed", keep.unknown_ttl),
                        )
                        .await
                        .is_ok();
                }
                let record = |state, ttl| Record {
                    fingerprint: keep.fingerprint.clone(),
                    state,
                    ttl,
                };
                // The client's count follows the record: its new lifetime, or its removal.
                let hold = |ttl: Duration| {
                    let until = now_ms() + ttl.as_millis() as u64;
                    records.hold(&keep.owner, &keep.rkey, until, u64::MAX)
                };
                let kept = if outcome.is_final() {
                    let done = State::Done(Arc::new(outcome.answer.compacted()));
                    let _ = hold(keep.final_ttl).await;
                    records.set(&keep.rkey, record(done, keep.final_ttl)).await
                } else if outcome.unknown {
                    let unknown = State::Unknown { sent_at_ms };
                    let _ = hold(keep.unknown_ttl).await;
                    records.set(&keep.rkey, record(unknown, keep.unknown_ttl)).await
                } else {
                    let _ = records.release(&keep.owner, &keep.rkey).await;
                    records.remove(&keep.rkey).await
                };
                if let Err(e) = kept {
                    tracing::warn!(route = %route, error = %e, "could not record the outcome of a create; a retry may not find it");
                }
            }
            // Its disk is claimed: a reconciliation no longer needs to wait for it. Unclaimed (the
            // store failed), the mark stays until its lease lapses, and reconciliations wait.
            if let Some((making, rkey)) = making.as_ref().filter(|_| claimed) {
                let _ = records.release(making, rkey).await;
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

    /// The answer for one caller of an execution.
    fn answer(&self, role: Role, outcome: &Option<Arc<Outcome>>, keyed: bool) -> Resp {
        let Some(outcome) = outcome else {
            // The task died: we cannot know whether the upstream was reached.
            return unknown_answer(self.route, self.request_id.as_str(), keyed);
        };
        if outcome.unknown && crate::protect::policy::spends_money(self.route) {
            return unknown_answer(self.route, self.request_id.as_str(), keyed);
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
    fn owner(&self, req: &Req) -> String {
        let client = req
            .extensions()
            .get::<Caller>()
            .map_or("-".into(), |c| c.client.to_string());
        format!("{}|{client}", self.account)
    }

    /// Counts a new record `rkey` for `owner` until `ttl` from now; the refusal when the owner
    /// holds its maximum already.
    async fn hold(&self, owner: &str, rkey: &str, ttl: Duration) -> Result<(), Resp> {
        let id = self.request_id.as_str();
        let max = self.settings.max_records_per_client;
        let until = now_ms() + ttl.as_millis() as u64;
        match self.shared.records.hold(owner, rkey, until, max).await {
            Ok(Hold::Held) => Ok(()),
            Ok(Hold::Full { frees_at_ms }) => {
                tracing::warn!(route = %self.route, max, "a client holds its maximum of live create records; refusing");
                Err(records_full(self.route, id, max, frees_at_ms))
            }
            Err(_) => Err(records_down(self.route, id)),
        }
    }

    /// After a loss of Redis's data: how long creates that find no record are still refused.
    async fn lost_data(&self) -> Result<Option<Duration>, Resp> {
        self.shared
            .records
            .lost_data()
            .await
            .map_err(|_| records_down(self.route, self.request_id.as_str()))
    }

    async fn keyed<S>(
        &self,
        inner: S,
        req: Req,
        rkey: String,
        fingerprint: String,
        policy: &CreatePolicy,
    ) -> Resp
    where
        S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send,
    {
        let records = &self.shared.records;
        let id = self.request_id.as_str();
        let owner = self.owner(&req);
        let lost = match self.lost_data().await {
            Ok(lost) => lost,
            Err(resp) => return resp,
        };
        let started = in_flight(&fingerprint, policy.idempotency_ttl, self.shared.lease);
        let mut leased = Some(started.clone());
        let begun = match lost {
            // Only a record that survived may be answered; none is made meanwhile.
            Some(left) => match records.get(&rkey).await {
                Err(_) => return records_down(self.route, id),
                Ok(None) => return records_lost(self.route, id, left),
                Ok(Some(r)) => Ok(Begin::Exists(r)),
            },
            None => records.begin(&rkey, started).await,
        };
        let record = match begun {
            Err(_) => return records_down(self.route, id),
            Ok(Begin::Started) => None,
            Ok(Begin::Exists(r)) => Some(r),
        };
        if record.is_none()
            && let Err(resp) = self.hold(&owner, &rkey, policy.idempotency_ttl).await
        {
            // Refused before anything was sent: the record goes, as if never begun.
            let _ = records.remove(&rkey).await;
            return resp;
        }
        if let Some(record) = record {
            if *record.fingerprint != *fingerprint {
                self.count("mismatch");
                let msg = "this Idempotency-Key was used with a different request; use a new key for a new purchase";
                return error_response(StatusCode::UNPROCESSABLE_ENTITY, 1003, msg, id);
            }
            match record.settled_state(self.shared.max_age, now_ms()) {
                State::InFlight { .. } => {
                    self.count("conflict");
                    let msg = "a request with this Idempotency-Key is still being processed; retry shortly";
                    return still_in_flight(msg, id);
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
            let _ = self.shared.records.set(&rkey, unknown).await;
        }
        self.answer(role, &outcome, true)
    }

    async fn unkeyed<S>(
        &self,
        inner: S,
        req: Req,
        rkey: String,
        fingerprint: String,
        policy: &CreatePolicy,
    ) -> Resp
    where
        S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send,
    {
        let records = &self.shared.records;
        let id = self.request_id.as_str();
        let owner = self.owner(&req);
        let lost = match self.lost_data().await {
            Ok(lost) => lost,
            Err(resp) => return resp,
        };
        let record = match records.get(&rkey).await {
            Ok(r) => r,
            Err(_) => return records_down(self.route, id),
        };
        if let (None, Some(left)) = (&record, lost) {
            return records_lost(self.route, id, left);
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
            ctx: ClaimCtx {
                records: records.clone(),
                rkey: rkey.clone(),
                fingerprint,
                ttl: policy.idempotency_ttl,
                max_age: self.shared.max_age,
                lease: self.shared.lease,
                owner,
                max_records: self.settings.max_records_per_client,
                route: self.route,
                request_id: self.request_id.clone(),
            }
            .into(),
            inner: self.bounded(inner),
        };
        let (role, outcome) = self.execute(claimed, req, rkey, Some(keep)).await;
        if let Some(o) = &outcome
            && o.answer.headers.contains_key(&REPLAYED)
        {
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
        let id = self.request_id.as_str();
        let guard = format!("settle|{}", unknown.rkey);
        match self
            .shared
            .records
            .begin(&guard, marker("settle", self.shared.max_age))
            .await
        {
            Err(_) => return Settled::Answer(records_down(self.route, id)),
            Ok(Begin::Exists(_)) => {
                self.count("conflict");
                let msg = "an earlier attempt of this request has an unknown outcome and is being checked; retry shortly";
                return Settled::Answer(still_in_flight(msg, id));
            }
            Ok(Begin::Started) => {}
        }
        let settled = self.settle_locked(inner, req, unknown).await;
        let _ = self.shared.records.remove(&guard).await;
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
        let id = self.request_id.as_str();
        let still_unknown = match records.get(rkey).await {
            Err(_) => return Settled::Answer(records_down(self.route, id)),
            Ok(r) => r.is_some_and(|r| {
                matches!(r.settled_state(self.shared.max_age, now_ms()),
                    State::Unknown { sent_at_ms: at } if at == sent_at_ms)
            }),
        };
        if !still_unknown {
            self.count("conflict");
            let msg =
                "an earlier attempt of this request was settled meanwhile; retry to get its answer";
            return Settled::Answer(still_in_flight(msg, id));
        }
        // The settle guard lives for `max_age`: the search (up to a hundred list pages) must end
        // well within it, or a second retry could take the guard and settle this record too.
        let search = self.reconcile(inner, req, unknown, policy.idempotency_ttl);
        let reconciled = tokio::time::timeout(self.shared.max_age / 2, search)
            .await
            .unwrap_or_else(|_| {
                let msg = "an earlier create with this request has an unknown outcome, and the \
                           search for its disk took too long; retry shortly";
                Reconciled::Refused(error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    1005,
                    msg,
                    id,
                ))
            });
        match reconciled {
            Reconciled::Found(answer) => {
                self.count("reconciled");
                let done = Record {
                    fingerprint: fingerprint.into(),
                    state: State::Done(Arc::new(answer.clone())),
                    ttl: done_ttl,
                };
                if records.set(rkey, done).await.is_err()
                    && let Some(disk) = created_disk(&answer)
                {
                    // Unrecorded, the claim would hide the disk from the next retry's search.
                    let _ = records.remove(&claim_key(&self.account, &disk)).await;
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
                        .set(rkey, record.clone())
                        .await
                        .map(|()| Some(record))
                } else {
                    records.remove(rkey).await.map(|()| None)
                };
                match reopened {
                    Ok(record) => Settled::NotMade(record),
                    Err(_) => Settled::Answer(records_down(self.route, id)),
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
        let id = self.request_id.as_str();
        let sent_at_ms = unknown.sent_at_ms;
        // Set by the validate layer for (valid) disk creates only.
        let order = match req.extensions().get::<DiskOrder>() {
            Some(order) => order.clone(),
            None => {
                let msg = format!(
                    "an earlier {} with this request has an unknown outcome: check the host list (mypage) before \
                     buying again; this record expires after the idempotency lifetime",
                    self.route
                );
                return Reconciled::Refused(error_response(StatusCode::CONFLICT, 1005, &msg, id));
            }
        };
        // Every page: the new disk may be on any of them, whatever order the list is in.
        let mut disks: Vec<Value> = Vec::new();
        for page in 1..=RECONCILE_MAX_PAGES {
            let body =
                serde_json::json!({"page": page, "pageSize": RECONCILE_PAGE, "area": order.area});
            let mut list = Req::new(Bytes::from(body.to_string()));
            *list.method_mut() = Method::POST;
            *list.uri_mut() = http::Uri::try_from(Route::DiskList.path_template())
                .expect("a route's path is a URI");
            list.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            *list.extensions_mut() = req.extensions().clone();
            list.extensions_mut().insert(RouteMatch {
                route: Route::DiskList,
                param: None,
            });
            let answer = Answer::from_response(
                inner
                    .clone()
                    .oneshot(list)
                    .await
                    .unwrap_or_else(|e| match e {}),
            );
            if !answer.is_storable() {
                let msg = "an earlier create with this request has an unknown outcome, and the disk list could not be \
                           read to find it; retry shortly";
                return Reconciled::Refused(error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    1005,
                    msg,
                    id,
                ));
            }
            let mut listed: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
            let total = listed["data"]["totalCounts"].as_u64().unwrap_or(0);
            let got = match listed["data"]["data"].take() {
                Value::Array(items) => items,
                _ => Vec::new(),
            };
            let last = got.is_empty();
            disks.extend(got);
            if last || disks.len() as u64 >= total {
                break;
            }
        }
        let matches = candidates(&disks, &order, sent_at_ms);
        // An identical order still being made may own one of these disks without having claimed
        // it yet (its answer is on its way): wait for it rather than take its disk. Asked after
        // the list was read, so a disk listed here is either claimed already or still marked.
        let making = making_key(&self.account, unknown.fingerprint);
        match self.shared.records.holds_other(&making, unknown.rkey).await {
            Ok(false) => {}
            Ok(true) => {
                self.count("conflict");
                let msg = "an earlier create with this request has an unknown outcome, and an identical \
                           purchase is still being made; retry shortly";
                return Reconciled::Refused(still_in_flight(msg, id));
            }
            Err(_) => return Reconciled::Refused(records_down(self.route, id)),
        }
        // The earliest match no other purchase owns yet.
        let mut found = None;
        for disk in matches {
            match self
                .shared
                .records
                .begin(&claim_key(&self.account, &disk), marker("claimed", ttl))
                .await
            {
                Ok(Begin::Started) => {
                    found = Some(disk);
                    break;
                }
                Ok(Begin::Exists(_)) => {}
                Err(_) => return Reconciled::Refused(records_down(self.route, id)),
            }
        }
        match found {
            Some(disk) => {
                tracing::info!(route = %self.route, disk = %disk, "reconciled an unknown-outcome create");
                let body = serde_json::json!({"code": 0, "success": true, "msg": "success", "data": disk, "traceId": id});
                let body = Bytes::from(body.to_string());
                let mut headers = HeaderMap::new();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Reconciled::Found(Answer {
                    status: StatusCode::OK,
                    headers,
                    head: EnvelopeHead::parse(&body),
                    body,
                })
            }
            None => Reconciled::NotMade,
        }
    }
}

enum Settled {
    Answer(Resp),
    /// Nothing was made; keyed, the record reopened in flight (its lease to renew).
    NotMade(Option<Record>),
}

/// A 409 (code 1005) asking to retry shortly.
fn still_in_flight(msg: &str, request_id: &str) -> Resp {
    let mut resp = error_response(StatusCode::CONFLICT, 1005, msg, request_id);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

enum Reconciled {
    Found(Answer),
    NotMade,
    Refused(Resp),
}

/// A record whose create has an unknown outcome, as a repeat of that create finds it.
#[derive(Clone, Copy)]
struct Unknown<'a> {
    rkey: &'a str,
    fingerprint: &'a str,
    /// When the create was sent (the record's `Unknown` state).
    sent_at_ms: u64,
    /// How long a reconciled answer is kept: the idempotency lifetime, or the de-dup window.
    done_ttl: Duration,
    policy: &'a CreatePolicy,
    /// Under an `Idempotency-Key` (reopened in place when nothing was made) or key-less.
    keyed: bool,
}

/// An execution cut off at its limit: the request may have reached the upstream, so the outcome
/// is unknown, and is recorded as such before any other replica may take it for lost.
#[derive(Clone)]
struct Bounded<S> {
    inner: S,
    limit: Duration,
    route: Route,
    request_id: RequestId,
}

impl<S> Service<Req> for Bounded<S>
where
    S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = RespFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> RespFuture {
        let this = self.clone();
        Box::pin(async move {
            match tokio::time::timeout(this.limit, this.inner.oneshot(req)).await {
                Ok(resp) => resp,
                Err(_) => {
                    tracing::warn!(route = %this.route, limit = ?this.limit, "a create ran past its limit; its outcome is unknown");
                    let mut resp = unknown_answer(this.route, this.request_id.as_str(), false);
                    resp.extensions_mut().insert(OutcomeUnknown);
                    Ok(resp)
                }
            }
        })
    }
}

/// What the one execution of an unkeyed create needs to claim its record first.
struct ClaimCtx {
    records: Arc<dyn RecordStore>,
    rkey: String,
    fingerprint: String,
    ttl: Duration,
    max_age: Duration,
    lease: Duration,
    /// The client the record counts for, and how many it may hold.
    owner: String,
    max_records: u64,
    route: Route,
    request_id: RequestId,
}

/// Claims the record before calling: answers from a record that landed since the caller looked,
/// and waits for an execution in flight on another replica to land, instead of calling again.
struct ClaimFirst<S> {
    ctx: Arc<ClaimCtx>,
    inner: S,
}

impl ClaimCtx {
    /// The in-flight record when this execution holds it and may call; otherwise the answer.
    async fn claim(&self) -> Result<Record, Resp> {
        let id = self.request_id.as_str();
        let mut pause = Duration::from_millis(10);
        loop {
            let record = in_flight(&self.fingerprint, self.ttl, self.lease);
            let found = match self.records.begin(&self.rkey, record.clone()).await {
                Err(_) => return Err(records_down(self.route, id)),
                Ok(Begin::Started) => {
                    let until = now_ms() + self.ttl.as_millis() as u64;
                    let held = self
                        .records
                        .hold(&self.owner, &self.rkey, until, self.max_records)
                        .await;
                    let refusal = match held {
                        Ok(Hold::Held) => return Ok(record),
                        Ok(Hold::Full { frees_at_ms }) => {
                            records_full(self.route, id, self.max_records, frees_at_ms)
                        }
                        Err(_) => records_down(self.route, id),
                    };
                    // Refused before anything was sent: the record goes, as if never claimed.
                    let _ = self.records.remove(&self.rkey).await;
                    return Err(refusal);
                }
                Ok(Begin::Exists(record)) => record,
            };
            match found.settled_state(self.max_age, now_ms()) {
                State::Done(answer) => return Err(replay(&answer)),
                State::Unknown { .. } => {
                    let mut resp = unknown_answer(self.route, id, false);
                    resp.extensions_mut().insert(FromRecord);
                    return Err(resp);
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

impl<S> Service<Req> for ClaimFirst<S>
where
    S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = RespFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> RespFuture {
        let ctx = self.ctx.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            match ctx.claim().await {
                Ok(record) => {
                    let work = inner.oneshot(req);
                    with_lease(
                        ctx.records.clone(),
                        ctx.rkey.clone(),
                        record,
                        ctx.lease,
                        work,
                    )
                    .await
                }
                Err(resp) => Ok(resp),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SENT: u64 = 1_800_000_000_000;

    fn disk(id: &str, area: i64, memory: i64, host: Option<&str>, created: u64) -> Value {
        json!({"id": id, "area": area.to_string(), "memory": memory, "pveId": host,
               "createTime": created, "status": "0"})
    }

    fn order(area: i64, memory_gb: i64, host: Option<&str>) -> DiskOrder {
        DiskOrder {
            area,
            memory_gb,
            pve_id: host.map(str::to_owned),
        }
    }

    #[test]
    fn reconciliation_takes_only_what_the_order_could_have_made() {
        let listed = vec![
            disk("right", 0, 20, None, SENT + 500),
            disk("wrong-area", 1, 20, None, SENT + 100),
            disk("wrong-size", 0, 21, None, SENT + 100),
            disk("mounted", 0, 20, Some("h1"), SENT + 100),
            disk(
                "before-the-attempt",
                0,
                20,
                None,
                SENT - RECONCILE_SLACK_MS - 1,
            ),
            disk(
                "within-the-slack",
                0,
                20,
                None,
                SENT - RECONCILE_SLACK_MS + 1,
            ),
            json!({"id": "no-time", "area": 0, "memory": 20, "pveId": null}),
            json!({"area": 0, "memory": 20, "pveId": null, "createTime": SENT}),
        ];
        let table: [(DiskOrder, &[&str]); 5] = [
            (order(0, 20, None), &["within-the-slack", "right"]),
            (order(0, 20, Some("h1")), &["mounted"]),
            (order(0, 20, Some("h2")), &[]),
            (order(1, 20, None), &["wrong-area"]),
            (order(2, 20, None), &[]),
        ];
        for (order, want) in table {
            assert_eq!(candidates(&listed, &order, SENT), want, "{order:?}");
        }
    }

    #[test]
    fn an_empty_or_odd_list_gives_nothing() {
        assert!(candidates(&[], &order(0, 20, None), SENT).is_empty());
        let odd = vec![
            json!(null),
            json!("x"),
            json!({"id": 7, "area": 0, "memory": 20}),
        ];
        assert!(candidates(&odd, &order(0, 20, None), SENT).is_empty());
    }
}
