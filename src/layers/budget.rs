//! The spending guard on the data plane (see [`crate::protect::budget`]): a create over a cap is
//! answered 429 with code 220025, a message naming the cap, and `Retry-After` until it resets,
//! before it reaches the upstream. A create that bought nothing gives its admission back.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use tower::{Layer, Service, ServiceExt};

use crate::envelope::EnvelopeHead;
use crate::error::GatewayError;
use crate::layers::{Caller, OutcomeUnknown, RequestId};
use crate::metrics::Metrics;
use crate::protect::budget::Budget;
use crate::protect::validate::Order;
use crate::routes::{Route, RouteMatch};
use crate::svc::{Req, Resp, RespFuture};

#[derive(Clone)]
pub(crate) struct BudgetGuardLayer {
    budget: Arc<Budget>,
    metrics: Arc<Metrics>,
}

impl BudgetGuardLayer {
    pub(crate) fn new(budget: Arc<Budget>, metrics: Arc<Metrics>) -> Self {
        BudgetGuardLayer { budget, metrics }
    }
}

impl<S> Layer<S> for BudgetGuardLayer {
    type Service = BudgetGuard<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BudgetGuard {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct BudgetGuard<S> {
    inner: S,
    layer: BudgetGuardLayer,
}

/// Whether the create may have bought something (a success, or an unknown outcome).
fn may_have_spent(resp: &Resp) -> bool {
    resp.extensions().get::<OutcomeUnknown>().is_some()
        || resp
            .extensions()
            .get::<EnvelopeHead>()
            .is_some_and(EnvelopeHead::is_success)
}

impl<S> Service<Req> for BudgetGuard<S>
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
        if !self.layer.budget.enabled() || !route.is_some_and(Route::spends_money) {
            return Box::pin(self.inner.call(req));
        }
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let Some(account) = req.extensions().get::<Caller>().map(|c| c.account.clone()) else {
                return inner.oneshot(req).await;
            };
            let client = req
                .extensions()
                .get::<Caller>()
                .map_or("-".into(), |c| c.client.to_string());
            // The validated order, which is what the upstream receives (the validate layer sent
            // it in place of the client's body): one disk of its size, or one host (no GB).
            let gb = req
                .extensions()
                .get::<Order>()
                .and_then(Order::disk)
                .map_or(0, |o| o.memory_gb.max(0) as u64);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let id = RequestId::of(&req);
            let route = req
                .extensions()
                .get::<RouteMatch>()
                .map_or("create", |m| m.route.as_str());
            match layer.budget.admit(&account.name, &client, gb, now).await {
                Err(_) => Ok(GatewayError::SharedStateDown(route).into_response(id.as_str())),
                Ok(Ok(admission)) => {
                    let resp = inner.oneshot(req).await?;
                    if !may_have_spent(&resp) {
                        // A refund lost to a Redis failure only makes the guard stricter.
                        let _ = layer.budget.refund(admission).await;
                    }
                    Ok(resp)
                }
                Ok(Err(over)) => {
                    layer
                        .metrics
                        .budget_refused
                        .with_label_values(&[over.scope, over.cap])
                        .inc();
                    let err = GatewayError::SpendingCap {
                        cap: over.cap,
                        limit: over.limit,
                        scope: over.scope,
                        who: over.who,
                        retry_after: over.resets_in.as_secs().max(1),
                    };
                    Ok(err.into_response(id.as_str()))
                }
            }
        })
    }
}
