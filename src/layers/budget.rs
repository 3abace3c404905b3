//! The spending guard on the data plane (see [`crate::protect::budget`]): a create over a cap is
//! answered 429 with code 220025, a message naming the cap, and `Retry-After` until it resets,
//! before it reaches the upstream. A create that bought nothing gives its admission back.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use tower::{Layer, Service, ServiceExt};

use crate::admitted::Spend;
use crate::envelope::EnvelopeHead;
use crate::error::{GatewayError, GatewayFuture};
use crate::metrics::Metrics;
use crate::protect::budget::Budget;
use crate::svc::Resp;

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
fn may_have_spent(result: &Result<Resp, GatewayError>) -> bool {
    match result {
        Ok(resp) => resp
            .extensions()
            .get::<EnvelopeHead>()
            .is_some_and(EnvelopeHead::is_success),
        Err(e) => e.outcome_unknown(),
    }
}

impl<S> Service<Spend> for BudgetGuard<S>
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

    fn call(&mut self, spend: Spend) -> Self::Future {
        if !self.layer.budget.enabled() {
            return Box::pin(self.inner.call(spend));
        }
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let route = spend.call.route().as_str();
            let account = spend.call.caller.account.name.clone();
            let client = spend.call.caller.client.to_string();
            // The validated order, which is what the upstream receives (the validate layer sent
            // it in place of the client's body): one disk of its size, or one host (no GB).
            let gb = spend.order.disk().map_or(0, |o| o.memory_gb.max(0) as u64);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            match layer.budget.admit(&account, &client, gb, now).await {
                Err(_) => Err(GatewayError::SharedStateDown(route)),
                Ok(Ok(admission)) => {
                    let result = inner.oneshot(spend).await;
                    if !may_have_spent(&result) {
                        // A refund lost to a Redis failure only makes the guard stricter.
                        let _ = layer.budget.refund(admission).await;
                    }
                    result
                }
                Ok(Err(over)) => {
                    layer
                        .metrics
                        .budget_refused
                        .with_label_values(&[over.scope, over.cap])
                        .inc();
                    Err(GatewayError::SpendingCap {
                        cap: over.cap,
                        limit: over.limit,
                        scope: over.scope,
                        who: over.who,
                        retry_after: over.resets_in.as_secs().max(1),
                    })
                }
            }
        })
    }
}
