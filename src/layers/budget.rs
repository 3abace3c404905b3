//! The spending guard on the data plane (see [`crate::protect::budget`]): a create over a cap is
//! answered 429 with code 220025, a message naming the cap, and `Retry-After` until it resets,
//! before it reaches the upstream. A create that bought nothing gives its admission back. What the
//! guard reports (a soft threshold reached, a cap spent) is raised in [`raise`]: logged, counted,
//! and the one place an alert sink (the `budget.threshold` and `budget.exhausted` webhooks) hooks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use tower::{Layer, Service, ServiceExt};

use crate::admitted::Spend;
use crate::envelope::EnvelopeHead;
use crate::error::{GatewayError, GatewayFuture};
use crate::layers::trace::{RequestSpan, child_span};
use crate::metrics::Metrics;
use crate::protect::budget::{Budget, BudgetEvent};
use crate::svc::Resp;
use crate::webhooks::{Event, Notifier};

/// One cap of one account or client: its scope, whose, and which.
type CapKey = (&'static str, String, &'static str);

#[derive(Clone)]
pub(crate) struct BudgetGuardLayer {
    budget: Arc<Budget>,
    metrics: Arc<Metrics>,
    /// Where thresholds and spent caps are told (`budget.*` webhooks).
    notify: Notifier,
    /// Spent caps already told, until their windows reset (epoch seconds).
    exhausted_told: Arc<Mutex<HashMap<CapKey, u64>>>,
}

impl BudgetGuardLayer {
    pub(crate) fn new(budget: Arc<Budget>, metrics: Arc<Metrics>) -> Self {
        BudgetGuardLayer {
            budget,
            metrics,
            notify: Notifier::default(),
            exhausted_told: Arc::default(),
        }
    }

    /// Tells `notify` what the guard reports.
    pub(crate) fn with_notify(mut self, notify: Notifier) -> Self {
        self.notify = notify;
        self
    }

    /// [`raise`], and the webhooks told: a threshold as it comes (once per window and cap, for
    /// the fleet); a spent cap once per window and cap on this replica, however many creates it
    /// refuses meanwhile.
    fn report(&self, event: &BudgetEvent) {
        raise(&self.metrics, event);
        if !self.notify.is_on() {
            return;
        }
        if let BudgetEvent::Exhausted(cap) = event {
            let now = crate::clock::now_secs();
            let mut told = self.exhausted_told.lock().expect("exhausted caps told");
            told.retain(|_, until| *until > now);
            let key = (cap.scope, cap.who.clone(), cap.cap);
            if told.contains_key(&key) {
                return;
            }
            told.insert(key, now + cap.resets_in.as_secs().max(1));
        }
        self.notify.send(Event::budget(event));
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

/// Reports what the guard has to say: a threshold as a warning, once per window and cap (the
/// counters see to that), and counted; a spent cap is counted (its answer says the rest).
pub(crate) fn raise(metrics: &Metrics, event: &BudgetEvent) {
    match event {
        BudgetEvent::Threshold { cap, used } => {
            tracing::warn!(
                scope = cap.scope,
                name = %cap.who,
                cap = cap.cap,
                used,
                limit = cap.limit,
                resets_in_s = cap.resets_in.as_secs(),
                "a spending cap reached its warning threshold (create.budget.warn_at)"
            );
            metrics
                .budget_warnings
                .with_label_values(&[cap.scope, cap.cap])
                .inc();
        }
        BudgetEvent::Exhausted(cap) => {
            metrics
                .budget_refused
                .with_label_values(&[cap.scope, cap.cap])
                .inc();
        }
    }
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
            let span = RequestSpan::of(&spend.call.req).map(|p| child_span!(p, "budget.admit"));
            let admitted = layer.budget.admit(&account, &client, gb, now).await;
            drop(span);
            match admitted {
                Err(_) => Err(GatewayError::SharedStateDown(route)),
                Ok(Ok(admission)) => {
                    for event in &admission.events {
                        layer.report(event);
                    }
                    let result = inner.oneshot(spend).await;
                    if !may_have_spent(&result) {
                        // A refund lost to a Redis failure only makes the guard stricter.
                        let _ = layer.budget.refund(admission).await;
                    }
                    result
                }
                Ok(Err(over)) => {
                    let retry_after = over.resets_in.as_secs().max(1);
                    let (cap, limit, scope) = (over.cap, over.limit, over.scope);
                    let who = over.who.clone();
                    layer.report(&BudgetEvent::Exhausted(over));
                    Err(GatewayError::SpendingCap {
                        cap,
                        limit,
                        scope,
                        who,
                        retry_after,
                    })
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::StatusCode;
    use tower::service_fn;

    use super::*;
    use crate::layers::testing::{self, within};
    use crate::protect::budget::settings::{BudgetSettings, Caps};
    use crate::protect::budget::tally::MemoryTally;

    /// A guard allowing `per_day` creates a day to each client (0: no cap, the guard off).
    fn guard(per_day: u64) -> (BudgetGuardLayer, Arc<Metrics>) {
        guard_with(BudgetSettings {
            client: Caps {
                creates_per_day: per_day,
                ..Caps::default()
            },
            ..BudgetSettings::default()
        })
    }

    fn guard_with(settings: BudgetSettings) -> (BudgetGuardLayer, Arc<Metrics>) {
        let budget = Arc::new(Budget::new(settings, Arc::new(MemoryTally::default())));
        let metrics = Arc::new(Metrics::new());
        (BudgetGuardLayer::new(budget, metrics.clone()), metrics)
    }

    /// An inner service that counts its calls and answers with what `answer` makes.
    fn inner(
        calls: &Arc<AtomicUsize>,
        answer: fn() -> Result<Resp, GatewayError>,
    ) -> impl Service<Spend, Response = Resp, Error = GatewayError, Future: Send> + Clone + Send + use<>
    {
        let calls = calls.clone();
        service_fn(move |_: Spend| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(answer())
        })
    }

    // Answers of the fake inner service, so of its result type.
    #[allow(clippy::unnecessary_wraps)]
    fn refused() -> Result<Resp, GatewayError> {
        Ok(testing::answer(StatusCode::OK, 220_025))
    }

    #[allow(clippy::unnecessary_wraps)]
    fn bought() -> Result<Resp, GatewayError> {
        Ok(testing::ok())
    }

    fn unknown() -> Result<Resp, GatewayError> {
        Err(GatewayError::UpstreamTimeout)
    }

    async fn send<S>(svc: &S, caller: &crate::admitted::Caller) -> Result<Resp, GatewayError>
    where
        S: Service<Spend, Response = Resp, Error = GatewayError> + Clone,
    {
        within("budget", svc.clone().oneshot(testing::spend(caller))).await
    }

    #[tokio::test]
    async fn a_create_over_the_cap_is_refused_before_the_inner_service() {
        let (layer, metrics) = guard(2);
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = layer.layer(inner(&calls, bought));
        let caller = testing::caller("svc", &testing::account("default"));
        for _ in 0..2 {
            assert!(send(&svc, &caller).await.is_ok());
        }
        let err = send(&svc, &caller).await.unwrap_err();
        assert!(
            matches!(
                err,
                GatewayError::SpendingCap {
                    cap: "creates_per_day",
                    limit: 2,
                    scope: "client",
                    retry_after,
                    ..
                } if retry_after >= 1
            ),
            "{err:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the third never went on");
        let refused = metrics
            .budget_refused
            .with_label_values(&["client", "creates_per_day"])
            .get();
        assert_eq!(refused, 1);
        let other = testing::caller("other", &testing::account("default"));
        assert!(
            send(&svc, &other).await.is_ok(),
            "another client has its own cap"
        );
    }

    #[tokio::test]
    async fn a_create_that_bought_nothing_gives_its_admission_back() {
        let (layer, _) = guard(1);
        let calls = Arc::new(AtomicUsize::new(0));
        let caller = testing::caller("svc", &testing::account("default"));
        // The upstream refused it (220025): nothing was bought, the cap is not spent.
        let refusing = layer.clone().layer(inner(&calls, refused));
        for _ in 0..3 {
            assert!(send(&refusing, &caller).await.is_ok());
        }
        let buying = layer.layer(inner(&calls, bought));
        assert!(send(&buying, &caller).await.is_ok(), "the cap is whole");
        assert!(send(&buying, &caller).await.is_err(), "and now spent");
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_create_of_unknown_outcome_keeps_its_admission() {
        let (layer, _) = guard(1);
        let calls = Arc::new(AtomicUsize::new(0));
        let caller = testing::caller("svc", &testing::account("default"));
        let timing_out = layer.clone().layer(inner(&calls, unknown));
        let err = send(&timing_out, &caller).await.unwrap_err();
        assert!(err.outcome_unknown(), "{err:?}");
        // It may have bought a disk: it counts.
        let buying = layer.layer(inner(&calls, bought));
        let err = send(&buying, &caller).await.unwrap_err();
        assert!(matches!(err, GatewayError::SpendingCap { .. }), "{err:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn without_caps_the_guard_passes_everything() {
        let (layer, _) = guard(0);
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = layer.layer(inner(&calls, bought));
        let caller = testing::caller("svc", &testing::account("default"));
        for _ in 0..5 {
            assert!(send(&svc, &caller).await.is_ok());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn reaching_warn_at_counts_once_per_window() {
        let (layer, metrics) = guard_with(BudgetSettings {
            warn_at: Some(0.5),
            client: Caps {
                creates_per_day: 4,
                ..Caps::default()
            },
            ..BudgetSettings::default()
        });
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = layer.layer(inner(&calls, bought));
        let caller = testing::caller("svc", &testing::account("default"));
        let warned = || {
            metrics
                .budget_warnings
                .with_label_values(&["client", "creates_per_day"])
                .get()
        };
        assert!(send(&svc, &caller).await.is_ok());
        assert_eq!(warned(), 0);
        for _ in 0..2 {
            assert!(send(&svc, &caller).await.is_ok());
            assert_eq!(
                warned(),
                1,
                "the second reached 2 of 4; the third adds nothing"
            );
        }
        let other = testing::caller("other", &testing::account("default"));
        for _ in 0..2 {
            assert!(send(&svc, &other).await.is_ok());
        }
        assert_eq!(warned(), 2, "another client's cap has its own threshold");
    }
}
