//! One purchase per intent, for the routes that spend money (CONTRACT.md: `Idempotency-Key`,
//! `Idempotent-Replayed`, the 409, 422, 503 and 504 rows of code 1005 and 1003): the spend
//! pipeline's layer around [`crate::protect::create`]'s flow. It builds the spend's [`Intent`]
//! (the flow's prologue) from the typed [`Spend`], and hands it to the flow with the rest of the
//! pipeline below. A spend route without a create policy goes straight on.
//!
//! The flow keeps whole answers in its records, to replay them exactly, so it runs over requests
//! whose facts ride in their extensions and answers that are already rendered: [`Below`] is that
//! boundary, the one place under admission where an error value becomes an answer, because the
//! answer is what is recorded (and replayed, its `traceId` the first request's).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_util::task::TaskTracker;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use crate::admitted::{Call, Caller, OutcomeUnknown, PURCHASE_ID, PurchaseId, RequestId, Spend};
use crate::error::{GatewayError, GatewayFuture};
use crate::metrics::Metrics;
use crate::protect::create::{Flow, Intent, Parts};
use crate::protect::policy::CreateSettings;
use crate::protect::records::RecordStore;
use crate::protect::validate::{DiskOrder, Order};
use crate::routes::RouteMatch;
use crate::svc::{BoxFuture, Req, Resp};
use crate::swap::Swap;

/// The token and the forwarder: where the flow's own calls (a reconciliation's disk list) go.
pub(crate) type Plain = BoxCloneSyncService<Call, Resp, GatewayError>;

#[derive(Clone)]
pub(crate) struct DedupLayer {
    flow: Arc<Flow>,
    /// Swapped by a reload; a create keeps the settings it started with (its [`Intent`]).
    settings: Arc<Swap<CreateSettings>>,
    plain: Option<Plain>,
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
            flow: Arc::new(Flow::new(records, limit, lease, metrics, work)),
            settings,
            plain: None,
        }
    }

    /// Where a keyed create whose record is gone finds its earlier request (the ledger).
    pub(crate) fn with_priors(mut self, priors: Arc<dyn crate::protect::create::Priors>) -> Self {
        let flow = Arc::try_unwrap(self.flow)
            .unwrap_or_else(|_| unreachable!("set while the layer is built, before any clone"));
        self.flow = Arc::new(flow.with_priors(Some(priors)));
        self
    }

    /// Where the flow's own upstream calls go (the stack sets it when it builds the pipelines).
    pub(crate) fn with_plain(mut self, plain: Plain) -> Self {
        self.plain = Some(plain);
        self
    }
}

impl<S> Layer<S> for DedupLayer {
    type Service = Dedup<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Dedup {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Dedup<S> {
    inner: S,
    layer: DedupLayer,
}

impl<S> Service<Spend> for Dedup<S>
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

    fn call(&mut self, spend: Spend) -> GatewayFuture {
        let settings = self.layer.settings.load();
        let call = &spend.call;
        let intent = Intent::new(
            &Parts {
                route: &call.route,
                account: &call.caller.account.name,
                client: &call.caller.client,
                request_id: call.id.clone(),
                purchase: call
                    .req
                    .extensions()
                    .get::<PurchaseId>()
                    .map(|p| p.0.clone()),
                order: Some(&spend.order),
                disk: spend.order.disk(),
                headers: call.req.headers(),
                body: call.req.body(),
            },
            &settings,
        );
        let (Some(intent), Some(plain)) = (intent, self.layer.plain.clone()) else {
            return Box::pin(self.inner.call(spend));
        };
        let below = Below {
            spend: self.inner.clone(),
            plain,
        };
        let flow = self.layer.flow.clone();
        Box::pin(async move {
            let intent = intent?;
            let req = into_req(spend.call, Some(spend.order));
            flow.run(below, req, &intent).await
        })
    }
}

/// A call's facts as the request's extensions, for the flow.
fn into_req(call: Call, order: Option<Order>) -> Req {
    let Call {
        id,
        route,
        caller,
        cache_key: _,
        mut req,
    } = call;
    let ext = req.extensions_mut();
    ext.insert(id);
    ext.insert(route);
    ext.insert(caller);
    if let Some(order) = order {
        if let Some(disk) = order.disk() {
            ext.insert(disk.clone());
        }
        ext.insert(order);
    }
    req
}

/// The facts back out of the extensions of a request the flow sends down.
fn from_req(mut req: Req) -> Option<(Call, Option<Order>)> {
    let ext = req.extensions_mut();
    let id = ext.remove::<RequestId>()?;
    let route = ext.remove::<RouteMatch>()?;
    let caller = ext.remove::<Caller>()?;
    ext.remove::<DiskOrder>();
    let order = ext.remove::<Order>();
    let call = Call {
        id,
        route,
        caller,
        cache_key: None,
        req,
    };
    Some((call, order))
}

/// Below the flow: the create goes on down the spend pipeline, the flow's own calls to the token
/// and the forwarder. The answer is rendered here since the flow records it; an upstream call
/// that broke after sending is marked [`OutcomeUnknown`] for it.
#[derive(Clone)]
struct Below<S> {
    spend: S,
    plain: Plain,
}

impl<S> Service<Req> for Below<S>
where
    S: Service<Spend, Response = Resp, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = BoxFuture<Result<Resp, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let id = RequestId::of(&req);
            let purchase = req.extensions().get::<PurchaseId>().cloned();
            let result = match from_req(req) {
                Some((call, Some(order))) => this.spend.oneshot(Spend { call, order }).await,
                Some((call, None)) => this.plain.oneshot(call).await,
                None => Err(GatewayError::NotFound("unclassified request".into())),
            };
            let mut resp = result.unwrap_or_else(|e| {
                let unknown = e.outcome_unknown();
                let mut resp = e.into_response(id.as_str());
                if unknown {
                    resp.extensions_mut().insert(OutcomeUnknown);
                }
                resp
            });
            // The entry that carried it out, recorded with the answer: a replay or a join of it
            // names the same entry.
            if let Some(PurchaseId(p)) = purchase
                && let Ok(v) = http::HeaderValue::from_str(&p)
            {
                resp.headers_mut().insert(PURCHASE_ID, v);
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, StatusCode};
    use tower::service_fn;

    use super::*;
    use crate::layers::testing::{self, Log, header, within};
    use crate::protect::policy::CreateConfig;
    use crate::protect::records::MemoryRecords;
    use crate::routes::{Route, RouteTable};

    /// The layer (default create settings, or none for `disk.create` when `policy` is false)
    /// around an inner service that logs the spends it got and answers a success; its own calls
    /// go to a plain service that logs the calls it got.
    fn dedup(
        policy: bool,
    ) -> (
        impl Service<Spend, Response = Resp, Error = GatewayError, Future = GatewayFuture> + Clone,
        Log<Spend>,
        Log<Call>,
    ) {
        let mut settings = CreateConfig::default()
            .resolve(&RouteTable::default())
            .expect("the default create settings");
        if !policy {
            settings.routes.remove(&Route::DiskCreate);
        }
        let (spends, calls) = (Log::default(), Log::default());
        let (seen_spends, seen_calls) = (spends.clone(), calls.clone());
        let plain = Plain::new(service_fn(move |call: Call| {
            seen_calls.push(call);
            std::future::ready(Ok::<_, GatewayError>(testing::ok()))
        }));
        let layer = DedupLayer::new(
            Arc::new(MemoryRecords::default()),
            Duration::from_secs(30),
            Arc::new(Swap::new(settings)),
            Arc::new(Metrics::new()),
            TaskTracker::new(),
        )
        .with_plain(plain);
        let svc = layer.layer(service_fn(move |spend: Spend| {
            seen_spends.push(spend);
            std::future::ready(Ok::<_, GatewayError>(testing::answer(StatusCode::OK, 0)))
        }));
        (svc, spends, calls)
    }

    fn keyed(key: &str) -> Spend {
        let mut spend = testing::spend(&testing::caller("svc", &testing::account("default")));
        spend
            .call
            .req
            .headers_mut()
            .insert("idempotency-key", HeaderValue::from_str(key).unwrap());
        spend
    }

    #[tokio::test]
    async fn a_repeat_under_one_key_is_replayed_and_sent_once() {
        let (svc, spends, calls) = dedup(true);
        let first = within("dedup", svc.clone().oneshot(keyed("k1")))
            .await
            .unwrap();
        let again = within("dedup", svc.clone().oneshot(keyed("k1")))
            .await
            .unwrap();
        assert_eq!(spends.len(), 1, "dedup: a repeat was sent again");
        assert_eq!(header(&first, "idempotent-replayed"), "");
        assert_eq!(header(&again, "idempotent-replayed"), "true");
        assert_eq!(
            first.body(),
            again.body(),
            "dedup: the replay is the first answer"
        );
        assert_eq!(calls.len(), 0, "nothing to look up");
        // What went down is the spend itself, its facts and its order intact.
        let all = spends.all();
        let [sent] = all.as_slice() else {
            panic!("one spend, not {}", all.len())
        };
        assert_eq!(sent.call.route.route, Route::DiskCreate);
        assert_eq!(&*sent.call.caller.client, "svc");
        assert_eq!(sent.call.id.as_str(), testing::REQUEST_ID);
        assert_eq!(sent.order.disk().map(|d| d.memory_gb), Some(20));
    }

    #[tokio::test]
    async fn a_bad_key_is_refused_and_nothing_is_sent() {
        let (svc, spends, _) = dedup(true);
        let err = within("dedup", svc.oneshot(keyed(&"k".repeat(300))))
            .await
            .unwrap_err();
        assert!(
            matches!(err, GatewayError::BadRequest { code: 1007, .. }),
            "{err:?}"
        );
        assert_eq!(spends.len(), 0);
    }

    #[tokio::test]
    async fn a_route_without_a_create_policy_goes_straight_on() {
        let (svc, spends, _) = dedup(false);
        for _ in 0..2 {
            let resp = within("dedup", svc.clone().oneshot(keyed("k1")))
                .await
                .unwrap();
            assert_eq!(header(&resp, "idempotent-replayed"), "");
        }
        assert_eq!(spends.len(), 2, "dedup: no policy, no records");
    }

    #[test]
    fn a_calls_facts_survive_the_trip_through_the_extensions() {
        let spend = keyed("k1");
        let (call, order) = (spend.call.clone(), spend.order.clone());
        let (back, back_order) = from_req(into_req(call, Some(order))).expect("facts");
        assert_eq!(back.id, spend.call.id);
        assert_eq!(back.route, spend.call.route);
        assert_eq!(back.caller.client, spend.call.caller.client);
        assert_eq!(back.req.body(), spend.call.req.body());
        assert_eq!(back_order.map(|o| o.body()), Some(spend.order.body()));
        let (plain, none) = from_req(into_req(spend.call, None)).expect("facts");
        assert!(none.is_none() && plain.req.extensions().get::<Order>().is_none());
        assert!(
            from_req(Req::new(bytes::Bytes::new())).is_none(),
            "no facts, no call"
        );
    }
}
