//! The in-flight collapse of mutations that do not spend (mount, unmount, power: routes whose
//! `collapses_in_flight()` is true and that have no create policy): identical requests (same
//! route, path parameter and canonical body, in one account) in flight at once are sent upstream
//! once, and every caller gets its answer; the joiners' carry `Idempotent-Replayed: true`. The
//! call runs in a task of its own to its end, even if every caller goes away. Nothing is kept
//! after it: a repeat once it ended runs again. A joiner's `Server-Timing` has the time it waited
//! (`wait;dur=`). Spends are [`super::dedup`]'s.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderValue;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tower::{Layer, Service, ServiceExt};

use crate::admitted::Call;
use crate::cache::answer::Answer;
use crate::error::{GatewayError, GatewayFuture};
use crate::metrics::Metrics;
use crate::protect::create::{REPLAYED, RecordKey, fingerprint};
use crate::routes::Route;
use crate::single_flight::{Role, SingleFlight};
use crate::svc::Resp;
use crate::telemetry::server_timing::Timing;

/// What one collapsed call got: the upstream's answer, or why there is none.
type Outcome = Result<Answer, GatewayError>;

#[derive(Clone)]
pub(crate) struct CollapseLayer {
    shared: Arc<Shared>,
}

struct Shared {
    flights: SingleFlight<RecordKey, Arc<Outcome>>,
    metrics: Arc<Metrics>,
    work: TaskTracker,
}

impl CollapseLayer {
    pub(crate) fn new(metrics: Arc<Metrics>, work: TaskTracker) -> Self {
        CollapseLayer {
            shared: Arc::new(Shared {
                flights: SingleFlight::new(),
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

impl<S> Service<Call> for Collapse<S>
where
    S: Service<Call, Response = Resp, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = GatewayError;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> GatewayFuture {
        let route = call.route();
        // A configured mutation is not known to be idempotent: each goes on its own.
        if !route.collapses_in_flight() {
            return Box::pin(self.inner.call(call));
        }
        let print = fingerprint(&call.route, None, call.req.body());
        let rkey = RecordKey::in_flight(&call.caller.account.name, &print);
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        // A joiner waited for the call it joined (its `Server-Timing` says so).
        let timing = Timing::of(&call.req).cloned();
        Box::pin(async move {
            let guard = shared.work.token();
            let joined_at = Instant::now();
            let flight = shared.flights.join_or_start(rkey, move || async move {
                let _guard = guard;
                Arc::new(inner.oneshot(call).await.map(Answer::from_response))
            });
            let role = flight.role;
            let outcome = flight.wait().await;
            if let (Some(t), Role::Joined) = (timing, role) {
                t.waited(joined_at.elapsed());
            }
            answer(&shared, route, role, outcome.as_deref())
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
    // No outcome: the task died, and we cannot know whether the upstream was reached.
    let Some(outcome) = outcome else {
        return Err(GatewayError::OutcomeUnknown {
            route: route.as_str(),
            keyed: false,
        });
    };
    // Each caller's own refusal, with its own request id.
    let answer = outcome.as_ref().map_err(Clone::clone)?;
    Ok(match role {
        Role::Leader => answer.to_response(),
        Role::Joined => {
            shared
                .metrics
                .dedup
                .with_label_values(&[route.as_str(), "joined"])
                .inc();
            let mut resp = answer.to_response();
            resp.headers_mut()
                .insert(REPLAYED, HeaderValue::from_static("true"));
            resp
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use http::{Method, StatusCode};
    use tower::service_fn;

    use super::*;
    use crate::layers::testing::{self, header, within};

    const MOUNT: &str = "/v1/PveMachineHardDisk/open/pveCreate";

    /// The layer around an inner service that counts its calls, takes 50 ms and answers `ok`
    /// (a success) or a timeout after sending.
    fn collapsing(
        ok: bool,
    ) -> (
        impl Service<Call, Response = Resp, Error = GatewayError, Future = GatewayFuture> + Clone,
        Arc<AtomicUsize>,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let layer = CollapseLayer::new(Arc::new(Metrics::new()), TaskTracker::new());
        let svc = layer.layer(service_fn(move |_: Call| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if ok {
                    Ok(testing::answer(StatusCode::OK, 0))
                } else {
                    Err(GatewayError::UpstreamTimeout)
                }
            }
        }));
        (svc, calls)
    }

    fn mount(disk: &str) -> Call {
        let caller = testing::caller("svc", &testing::account("default"));
        let body = format!(r#"{{"id":"{disk}","pveId":"h1"}}"#);
        testing::call(&caller, Method::POST, MOUNT, &body)
    }

    #[tokio::test(start_paused = true)]
    async fn identical_mutations_in_flight_are_sent_once() {
        let (svc, calls) = collapsing(true);
        let (a, b) = within("collapse", async {
            tokio::join!(
                svc.clone().oneshot(mount("d1")),
                svc.clone().oneshot(mount("d1"))
            )
        })
        .await;
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "collapse: sent twice");
        let replayed = [&a, &b]
            .iter()
            .filter(|r| header(r, "idempotent-replayed") == "true")
            .count();
        assert_eq!(
            replayed, 1,
            "collapse: the joiner's answer is marked replayed"
        );
        assert_eq!(testing::code_of(&a), 0);
        assert_eq!(testing::code_of(&b), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn different_mutations_and_later_repeats_each_go_upstream() {
        let (svc, calls) = collapsing(true);
        let (a, b) = within("collapse", async {
            tokio::join!(
                svc.clone().oneshot(mount("d1")),
                svc.clone().oneshot(mount("d2"))
            )
        })
        .await;
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "collapse: two disks are two calls"
        );
        let again = within("collapse", svc.clone().oneshot(mount("d1"))).await;
        assert!(again.is_ok());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "collapse: nothing is kept once it ended"
        );
        assert_eq!(header(&again.unwrap(), "idempotent-replayed"), "");
    }

    #[tokio::test(start_paused = true)]
    async fn every_caller_of_a_failed_mutation_gets_the_error() {
        let (svc, calls) = collapsing(false);
        let (a, b) = within("collapse", async {
            tokio::join!(
                svc.clone().oneshot(mount("d1")),
                svc.clone().oneshot(mount("d1"))
            )
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        for result in [a, b] {
            let err = result.unwrap_err();
            assert!(err.outcome_unknown(), "{err:?}");
        }
    }
}
