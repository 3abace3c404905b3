//! The purchase ledger's layer in the spend pipeline (CONTRACT.md, `GET /admin/purchases`): every
//! spend that passed validation opens an entry before anything below can reach the upstream, and
//! settles it with how it ended. An entry that cannot be written refuses the create (503, code
//! 1005) unless `[ledger] on_failure = "allow"`.
//!
//! It sits above the de-duplication layer, so replays and joins get entries too, pointing at the
//! entry that bought (the `Finovy-Purchase-Id` the recorded answer carries). The work after the
//! answer runs in a task of its own: a caller that hangs up, or the request timeout, does not leave
//! the entry open. A settle that fails is retried until it lands; a disk bought has its price read
//! afterwards, through the gateway's own cache.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use serde_json::Value;
use tokio_util::task::TaskTracker;
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;

use crate::admitted::{Call, FlowAnswer, PURCHASE_ID, PurchaseId, RequestId, Spend};
use crate::cache::answer::Answer;
use crate::clock::now_ms;
use crate::config::OnFailure;
use crate::envelope::EnvelopeHead;
use crate::error::{GatewayError, GatewayFuture};
use crate::layers::switch::RoutePipeline;
use crate::layers::trace::{RequestSpan, child_span};
use crate::ledger::{Ledger, LedgerError, NewEntry, Outcome, Settlement, StoredAnswer, new_id};
use crate::metrics::Metrics;
use crate::protect::create::{Intent, Priors, fingerprint};
use crate::protect::records::{Record, State};
use crate::routes::Route;
use crate::svc::{BoxFuture, Resp};
use crate::webhooks::Notifier;
use crate::webhooks::events::{Event, Purchase};

/// How long an answer may wait for its entry's outcome to be written; past it the write goes on
/// in the background.
const QUICK: Duration = Duration::from_millis(250);

/// Longest a stored answer may be: create answers are a small envelope around an id.
const MAX_STORED_ANSWER: usize = 16 * 1024;

/// The ledger and what writing to it needs, shared by the layer, the priors and the sweep.
pub(crate) struct Books {
    pub(crate) ledger: Ledger,
    pub(crate) on_failure: OnFailure,
    /// This replica's name in the entries it writes.
    pub(crate) replica: Arc<str>,
    pub(crate) metrics: Arc<Metrics>,
    /// Settles and price reads still running: the drain waits for them.
    pub(crate) work: TaskTracker,
    /// How long a write may take before it counts as failed.
    pub(crate) timeout: Duration,
    /// An entry open longer than this belongs to a replica that stopped (its execution limit,
    /// plus the records' lease): it reads as unknown.
    pub(crate) max_open: Duration,
    /// Whether a bought disk's price is read and recorded (`[ledger] record_amount`).
    pub(crate) record_amount: bool,
    /// When this process started (epoch ms): an entry this replica left open before it was
    /// written by a process that is gone.
    pub(crate) started_ms: u64,
    /// Whether replicas share their records (Redis).
    pub(crate) shared: bool,
    /// Where settled purchases are told (`purchase.*` webhooks).
    pub(crate) notify: Notifier,
}

impl Books {
    /// Whether an open entry may still be running somewhere, so that only the records can tell:
    /// in a fleet, a young one (another replica may be carrying it out); on a single replica, one
    /// this process opened (a request racing this one under the same key). One a single replica
    /// opened before it started again was left by a process that is gone.
    fn may_be_running(&self, at_ms: u64, now_ms: u64) -> bool {
        if self.shared {
            now_ms.saturating_sub(at_ms) < self.max_open.as_millis() as u64
        } else {
            at_ms >= self.started_ms
        }
    }
}

impl Books {
    /// One write, timed and counted.
    async fn write<T>(
        &self,
        write: impl Future<Output = Result<T, LedgerError>>,
    ) -> Result<T, LedgerError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, write).await {
            Ok(r) => r,
            Err(_) => Err(LedgerError::Invalid("write timed out".into())),
        };
        self.metrics
            .ledger_write_seconds
            .observe(started.elapsed().as_secs_f64());
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics.ledger_writes.with_label_values(&[label]).inc();
        result
    }

    /// Writes `settlement` to entry `id` now if the ledger answers within [`QUICK`]; else in the
    /// background, retrying until it lands.
    async fn settle_soon(self: &Arc<Self>, id: Arc<str>, settlement: Settlement) {
        let first = tokio::time::timeout(QUICK, self.write(self.ledger.settle(&id, &settlement)));
        if !matches!(first.await, Ok(Ok(()))) {
            let books = self.clone();
            self.work.spawn(books.settle(id, settlement));
        }
    }

    /// Writes `settlement` to entry `id`, retrying (backing off up to a minute) until it lands.
    async fn settle(self: Arc<Self>, id: Arc<str>, settlement: Settlement) {
        let mut pause = Duration::from_millis(100);
        loop {
            match self.write(self.ledger.settle(&id, &settlement)).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(entry = %id, error = %e, "ledger: settling an entry failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
}

#[derive(Clone)]
pub(crate) struct LedgerLayer {
    books: Arc<Books>,
    /// Where a bought disk's price is read: the read pipeline (cache, token, upstream).
    read: Option<RoutePipeline>,
}

impl LedgerLayer {
    pub(crate) fn new(books: Arc<Books>) -> LedgerLayer {
        LedgerLayer { books, read: None }
    }

    /// Reads a bought disk's price through `read` (when the books say so).
    pub(crate) fn with_read(mut self, read: RoutePipeline) -> LedgerLayer {
        self.read = self.books.record_amount.then_some(read);
        self
    }
}

impl<S> Layer<S> for LedgerLayer {
    type Service = Recorded<S>;
    fn layer(&self, inner: S) -> Recorded<S> {
        Recorded {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Recorded<S> {
    inner: S,
    layer: LedgerLayer,
}

/// The entry a spend opens: its order as sent, never anything else of its body or headers.
fn new_entry(spend: &Spend, id: &str, replica: &str) -> NewEntry {
    let call = &spend.call;
    let headers = call.req.headers();
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    NewEntry {
        id: id.to_owned(),
        at_ms: now_ms(),
        account: call.caller.account.name.to_string(),
        client: call.caller.client.to_string(),
        route: call.route().as_str().to_owned(),
        order: spend.order.body(),
        gb: spend.order.disk().map(|d| d.memory_gb.max(0) as u64),
        idempotency_key: text("idempotency-key"),
        fingerprint: fingerprint(&call.route, Some(&spend.order), call.req.body()),
        request_id: call.id.as_str().to_owned(),
        traceparent: text("traceparent"),
        replica: replica.to_owned(),
    }
}

impl<S> Service<Spend> for Recorded<S>
where
    S: Service<Spend, Response = Resp, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = GatewayError;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut spend: Spend) -> GatewayFuture {
        let inner = self.inner.clone();
        let layer = self.layer.clone();
        Box::pin(async move {
            let books = layer.books.clone();
            let route = spend.call.route();
            let id: Arc<str> = new_id(now_ms()).into();
            let entry = new_entry(&spend, &id, &books.replica);
            let span = RequestSpan::of(&spend.call.req).map(|p| child_span!(p, "ledger.write"));
            let opened = books.write(books.ledger.open(&entry)).await;
            drop(span);
            if let Err(e) = opened {
                tracing::error!(route = %route, error = %e, "ledger: cannot open an entry");
                return match books.on_failure {
                    OnFailure::Refuse => Err(GatewayError::LedgerDown(route.as_str())),
                    OnFailure::Allow => inner.oneshot(spend).await,
                };
            }
            spend
                .call
                .req
                .extensions_mut()
                .insert(PurchaseId(id.clone()));
            let caller = spend.call.caller.clone();
            // The rest runs to its end whoever still waits for it.
            let work = books.work.clone();
            // The request's span stays current for the spend (not for the settling after it).
            let current = crate::telemetry::span::current();
            let task = work.spawn(async move {
                let result = inner.oneshot(spend).instrument(current).await;
                let (mut settlement, flow) = settlement(&id, &result, now_ms());
                let bought = settlement.outcome() == Outcome::Bought;
                let resource = settlement.resource_id.clone();
                let related = related(&books, &entry, &mut settlement, flow, &id).await;
                let told = books
                    .notify
                    .is_on()
                    .then(|| {
                        Event::purchase(&Purchase {
                            id: &id,
                            account: &entry.account,
                            client: Some(&entry.client),
                            route: &entry.route,
                            settlement: &settlement,
                        })
                    })
                    .flatten();
                // The answer never waits on a ledger that is down: one quick try, then in the
                // background until it lands.
                books.settle_soon(id.clone(), settlement).await;
                if let Some(event) = told {
                    books.notify.send(event);
                }
                for (other, s) in related {
                    // The original is another request's entry: its client is not this one's.
                    let told = Event::purchase(&Purchase {
                        id: &other,
                        account: &entry.account,
                        client: None,
                        route: &entry.route,
                        settlement: &s,
                    });
                    books.settle_soon(other.into(), s).await;
                    if let Some(event) = told {
                        books.notify.send(event);
                    }
                }
                if let (true, Some(disk), Some(read)) = (bought, resource, layer.read)
                    && route == Route::DiskCreate
                {
                    let books = books.clone();
                    books
                        .work
                        .clone()
                        .spawn(price(books, read, caller, id.clone(), disk));
                }
                result.map(|mut resp| {
                    if !resp.headers().contains_key(PURCHASE_ID)
                        && let Ok(v) = HeaderValue::from_str(&id)
                    {
                        resp.headers_mut().insert(PURCHASE_ID, v);
                    }
                    resp
                })
            });
            task.await
                .unwrap_or_else(|_| Err(GatewayError::LedgerDown(route.as_str())))
        })
    }
}

/// Other entries this one's outcome settles: the unknown original a reconciliation found (it
/// bought the disk, and this request is answered from it), or the one it found not made
/// (nothing bought).
async fn related(
    books: &Books,
    entry: &NewEntry,
    own: &mut Settlement,
    flow: Option<FlowAnswer>,
    id: &str,
) -> Vec<(String, Settlement)> {
    let Some(flow) = flow else {
        return Vec::new();
    };
    let since = entry.at_ms.saturating_sub(86_400_000 * 7);
    let find = books
        .ledger
        .unsettled_original(&entry.account, &entry.fingerprint, since, id);
    let original = tokio::time::timeout(QUICK, find)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let Some(original) = original else {
        return Vec::new();
    };
    let mut s = match flow {
        FlowAnswer::Reconciled => {
            let mut s = Settlement::new(Outcome::Reconciled, own.settled_at_ms);
            s.resource_id.clone_from(&own.resource_id);
            s.reason = Some(format!("reconciled by {id}: the disk it made was found"));
            own.outcome = Some(Outcome::Replayed);
            own.bought_by = Some(original.clone());
            own.reason = Some("answered by reconciling an earlier attempt".into());
            s
        }
        FlowAnswer::RetriedUnknown => {
            let mut s = Settlement::new(Outcome::Failed, own.settled_at_ms);
            s.reason = Some(format!("not made: {id}'s reconciliation found no disk"));
            s
        }
        FlowAnswer::Joined => return Vec::new(),
    };
    s.settled_at_ms = own.settled_at_ms;
    vec![(original, s)]
}

/// The envelope's `code`, `msg` and `data` of an answer body.
fn envelope(body: &Bytes) -> (Option<i64>, Option<String>, Option<Value>) {
    let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(body) else {
        return (None, None, None);
    };
    let code = o.get("code").and_then(|c| {
        c.as_i64()
            .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
    });
    let msg = o.get("msg").and_then(Value::as_str).map(str::to_owned);
    (code, msg, o.remove("data"))
}

/// A resource id as the upstream wrote it: a string, or a number's digits.
fn resource_id(data: Option<&Value>) -> Option<String> {
    match data? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// How a spend ended, from what the pipeline below answered `id`'s request, and how the create
/// flow answered it.
pub(crate) fn settlement(
    id: &str,
    result: &Result<Resp, GatewayError>,
    now: u64,
) -> (Settlement, Option<FlowAnswer>) {
    let resp = match result {
        Err(e) => return (refusal(e, now), None),
        Ok(resp) => resp,
    };
    let flow = resp.extensions().get::<FlowAnswer>().copied();
    (outcome_of(id, resp, flow, now), flow)
}

fn outcome_of(id: &str, resp: &Resp, flow: Option<FlowAnswer>, now: u64) -> Settlement {
    let named = resp
        .headers()
        .get(PURCHASE_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let replayed = resp
        .headers()
        .contains_key(crate::protect::create::REPLAYED);
    let (code, msg, data) = envelope(resp.body());
    let mut s = Settlement::new(Outcome::Open, now);
    let from_another = named.as_deref().is_some_and(|n| n != id);
    if flow == Some(FlowAnswer::Reconciled) {
        s.outcome = Some(Outcome::Reconciled);
        s.resource_id = resource_id(data.as_ref());
        return s;
    }
    if from_another || replayed {
        s.outcome = Some(if flow == Some(FlowAnswer::Joined) {
            Outcome::Joined
        } else {
            Outcome::Replayed
        });
        s.bought_by = named.filter(|n| n != id);
        s.resource_id = resource_id(data.as_ref()).filter(|_| code == Some(0));
        return s;
    }
    let status = resp.status();
    match (status, code) {
        (StatusCode::OK, Some(0)) => {
            s.outcome = Some(Outcome::Bought);
            s.resource_id = resource_id(data.as_ref());
            if resp.body().len() <= MAX_STORED_ANSWER
                && let Ok(body) = std::str::from_utf8(resp.body())
            {
                s.answer = Some(StoredAnswer {
                    status: status.as_u16(),
                    body: body.to_owned(),
                });
            }
        }
        // The upstream's own refusal: its code and message.
        (StatusCode::OK, Some(code)) => {
            s.outcome = Some(Outcome::Refused);
            s.upstream_code = Some(code);
            s.reason = msg;
        }
        (status, _) if status == StatusCode::GATEWAY_TIMEOUT && code == Some(1005) => {
            s.outcome = Some(Outcome::Unknown);
            s.reason = msg;
        }
        (status, _) if status.is_server_error() => {
            s.outcome = Some(Outcome::Failed);
            s.reason = msg.or_else(|| Some(format!("upstream answered HTTP {status}")));
        }
        _ => {
            s.outcome = Some(Outcome::Refused);
            s.reason = msg.or_else(|| Some(format!("HTTP {status}")));
        }
    }
    s
}

/// A spend the gateway refused or could not carry out, from its error.
fn refusal(e: &GatewayError, now: u64) -> Settlement {
    use GatewayError as E;
    let outcome = match e {
        E::OutcomeUnknown { .. }
        | E::UpstreamUnavailable { sent: true, .. }
        | E::UpstreamTimeout => Outcome::Unknown,
        E::UpstreamUnavailable { sent: false, .. } | E::NoToken(_) => Outcome::Failed,
        _ => Outcome::Refused,
    };
    let mut s = Settlement::new(outcome, now);
    s.reason = Some(e.to_string());
    if let E::UpstreamTooFrequent { .. } = e {
        s.upstream_code = Some(crate::error::TOO_FREQUENT);
    }
    s
}

/// Reads a bought disk's info through the read pipeline (a cache fill: one upstream call at most)
/// and records its price as the upstream wrote it.
async fn price(
    books: Arc<Books>,
    read: RoutePipeline,
    caller: crate::admitted::Caller,
    id: Arc<str>,
    disk: String,
) {
    if !disk
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return;
    }
    let path = format!("/v1/PveMachineHardDisk/open/info/{disk}");
    let Some(route) = crate::routes::classify(&Method::GET, &path) else {
        return;
    };
    let Ok(req) = Request::get(&path).body(Bytes::new()) else {
        return;
    };
    let call = Call {
        id: RequestId(format!("{id}-price").into()),
        route,
        caller,
        cache_key: None,
        req,
    };
    let Ok(resp) = read.oneshot(call).await else {
        return;
    };
    let (code, _, data) = envelope(resp.body());
    let amount = match data.as_ref().and_then(|d| d.get("amount")) {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return,
    };
    if code != Some(0) {
        return;
    }
    if let Err(e) = books.write(books.ledger.set_amount(&id, &amount)).await {
        tracing::warn!(entry = %id, error = %e, "ledger: recording a disk's price failed");
    }
}

/// The ledger as the create flow's memory of keys whose records were lost.
pub(crate) struct LedgerPriors(pub(crate) Arc<Books>);

impl Priors for LedgerPriors {
    fn find(&self, intent: &Intent) -> BoxFuture<Option<Record>> {
        let books = self.0.clone();
        let key = intent.key.clone();
        let (client, route) = (intent.client.clone(), intent.route);
        let own = intent.purchase.clone();
        let ttl = intent.policy.idempotency_ttl;
        Box::pin(async move {
            let key = key?;
            let now = now_ms();
            let since = now.saturating_sub(ttl.as_millis() as u64);
            let prior = books
                .ledger
                .prior(&client, route.as_str(), &key, since)
                .await
                .map_err(|e| tracing::warn!(error = %e, "ledger: cannot read an earlier key"))
                .ok()??;
            if own.as_deref() == Some(prior.id.as_str()) {
                return None;
            }
            let at = prior.at_ms.max(0) as u64;
            let state = match (prior.outcome, prior.answer) {
                (Outcome::Bought | Outcome::Reconciled, Some(answer)) => {
                    State::Done(Arc::new(stored_answer(&prior.id, &answer)))
                }
                // Still open and young: it may be running right now, elsewhere; the records
                // decide (this is no loss of them).
                (Outcome::Open, _) if books.may_be_running(at, now) => {
                    return None;
                }
                _ => State::Unknown { sent_at_ms: at },
            };
            let left = ttl.saturating_sub(Duration::from_millis(now.saturating_sub(at)));
            Some(Record {
                fingerprint: prior.fingerprint.into(),
                state,
                ttl: left.max(Duration::from_secs(1)),
            })
        })
    }
}

/// A stored answer as the record would have kept it, naming the entry that bought.
fn stored_answer(id: &str, stored: &StoredAnswer) -> Answer {
    let body = Bytes::from(stored.body.clone());
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert(PURCHASE_ID, v);
    }
    Answer {
        status: StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK),
        headers,
        head: EnvelopeHead::parse(&body),
        body,
    }
}

/// `purchase.unknown` for the entries the sweep marked: the replica whose update marked them
/// tells, once.
fn tell_unknown(books: &Books, swept: &[crate::ledger::Swept]) {
    if !books.notify.is_on() {
        return;
    }
    for e in swept {
        let mut s = Settlement::new(Outcome::Unknown, now_ms());
        s.reason.clone_from(&e.reason);
        let event = Event::purchase(&Purchase {
            id: &e.id,
            account: &e.account,
            client: Some(&e.client),
            route: &e.route,
            settlement: &s,
        });
        if let Some(event) = event {
            books.notify.send(event);
        }
    }
}

/// Every while: entries left open by a replica that stopped read as unknown; entries past the
/// retention go; the open-entries gauge follows.
pub(crate) async fn sweep(books: Arc<Books>, retention: Duration, stop: impl Future<Output = ()>) {
    let every = (books.max_open / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut next_retention = Instant::now();
    tokio::pin!(stop);
    // What this replica left open before it started again was never settled: unknown, at once.
    // A single replica's own ledger holds only its own entries, whatever its name was then.
    let left_open = if books.shared {
        books
            .ledger
            .mark_unknown_of(&books.replica, books.started_ms, now_ms())
            .await
    } else {
        books.ledger.mark_unknown(books.started_ms, now_ms()).await
    };
    match left_open {
        Ok(swept) if !swept.is_empty() => {
            tracing::warn!(
                entries = swept.len(),
                "ledger: entries this replica left open when it stopped are now unknown"
            );
            tell_unknown(&books, &swept);
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "ledger: cannot read the entries left open"),
    }
    loop {
        let now = now_ms();
        let before = now.saturating_sub(books.max_open.as_millis() as u64);
        if let Ok(swept) = books.ledger.mark_unknown(before, now).await
            && !swept.is_empty()
        {
            tracing::warn!(
                entries = swept.len(),
                "ledger: entries left open by a stopped replica are now unknown"
            );
            tell_unknown(&books, &swept);
        }
        if let Ok(open) = books.ledger.open_count().await {
            books.metrics.ledger_open_entries.set(open);
        }
        if Instant::now() >= next_retention {
            let cut = now.saturating_sub(retention.as_millis() as u64);
            match books.ledger.remove_before(cut).await {
                Ok(n) if n > 0 => {
                    tracing::info!(entries = n, "ledger: removed entries past retention");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "ledger: retention sweep failed"),
            }
            next_retention = Instant::now() + Duration::from_secs(3600);
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
