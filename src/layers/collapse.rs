//! The in-flight collapse of mutations that do not spend (mount, unmount, power: routes whose
//! `collapses_in_flight()` is true and that have no create policy): identical requests (same
//! route, path parameter and canonical body, in one account) in flight at once are sent upstream
//! once, and every caller gets its answer; the joiners' carry `Idempotent-Replayed: true`. The
//! call runs in a task of its own to its end, even if every caller goes away. Nothing is kept
//! after it: a repeat once it ended runs again. Spends are [`super::dedup`]'s.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderValue;
use tokio_util::task::TaskTracker;
use tower::{Layer, Service, ServiceExt};

use crate::admitted::{Caller, OutcomeUnknown, RequestId};
use crate::cache::entry::Answer;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::protect::create::{REPLAYED, RecordKey, fingerprint};
use crate::protect::policy::{CreateSettings, collapses_in_flight, spends_money};
use crate::protect::validate::Order;
use crate::reload::Swap;
use crate::routes::{Route, RouteMatch};
use crate::single_flight::{Role, SingleFlight};
use crate::svc::{Req, Resp, RespFuture};

/// What one collapsed call got: its answer, and whether it was sent without an answer.
struct Outcome {
    answer: Answer,
    unknown: bool,
}

#[derive(Clone)]
pub(crate) struct CollapseLayer {
    shared: Arc<Shared>,
}

struct Shared {
    flights: SingleFlight<RecordKey, Arc<Outcome>>,
    /// Which routes have a create policy (those are the de-dup layer's); swapped by a reload.
    settings: Arc<Swap<CreateSettings>>,
    metrics: Arc<Metrics>,
    work: TaskTracker,
}

impl CollapseLayer {
    pub(crate) fn new(
        settings: Arc<Swap<CreateSettings>>,
        metrics: Arc<Metrics>,
        work: TaskTracker,
    ) -> Self {
        CollapseLayer {
            shared: Arc::new(Shared {
                flights: SingleFlight::new(),
                settings,
                metrics,
                work,
            }),
        }
    }
}

impl<S> Layer<S> for CollapseLayer {
    type Service = Collapse<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Collapse {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Collapse<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Req> for Collapse<S>
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
        let (Some(m), Some(caller)) = (
            req.extensions().get::<RouteMatch>(),
            req.extensions().get::<Caller>(),
        ) else {
            return Box::pin(self.inner.call(req));
        };
        let route = m.route;
        let spend = self.shared.settings.load().routes.contains_key(&route);
        if spend || !collapses_in_flight(route) {
            return Box::pin(self.inner.call(req));
        }
        let print = fingerprint(m, req.extensions().get::<Order>(), req.body());
        let rkey = RecordKey::in_flight(&caller.account.name, &print);
        let id = RequestId::of(&req);
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let guard = shared.work.token();
            let flight = shared.flights.join_or_start(rkey, move || async move {
                let _guard = guard;
                let resp = inner.oneshot(req).await.unwrap_or_else(|e| match e {});
                let unknown = resp.extensions().get::<OutcomeUnknown>().is_some();
                Arc::new(Outcome {
                    answer: Answer::from_response(resp),
                    unknown,
                })
            });
            let role = flight.role;
            let answered = answer(&shared, route, role, flight.wait().await.as_deref());
            Ok(answered.unwrap_or_else(|err| err.into_response(id.as_str())))
        })
    }
}

/// The answer for one caller of a collapsed call.
fn answer(
    shared: &Shared,
    route: Route,
    role: Role,
    outcome: Option<&Outcome>,
) -> Result<Resp, GatewayError> {
    let unknown = || GatewayError::OutcomeUnknown {
        route: route.as_str(),
        keyed: false,
    };
    // No outcome: the task died, and we cannot know whether the upstream was reached.
    let Some(outcome) = outcome else {
        return Err(unknown());
    };
    if outcome.unknown && spends_money(route) {
        return Err(unknown());
    }
    Ok(match role {
        Role::Leader => outcome.answer.to_response(),
        Role::Joined => {
            shared
                .metrics
                .dedup
                .with_label_values(&[route.as_str(), "joined"])
                .inc();
            let mut resp = outcome.answer.to_response();
            resp.headers_mut()
                .insert(REPLAYED, HeaderValue::from_static("true"));
            resp
        }
    })
}
