//! Rate-limits the routes that spend money, per account and (when configured) per client, with
//! GCRA reservations: a create over the rate waits for its slot up to `max_wait`, else it is
//! answered 429 with code 220025, `Retry-After` and the `RateLimit-Policy` / `RateLimit` headers of
//! the IETF httpapi ratelimit-headers draft. Successful creates carry those headers too.
//!
//! When the upstream itself answers 220025 (too frequent; it did nothing), the create is sent again
//! at its next slot while `max_wait` lasts, so the client does not see the upstream's refusal.
//! An upstream `Retry-After` is believed only up to `max_wait`: a retry waits for it when it ends
//! within `max_wait` (else the create is refused at once), and a `Retry-After` passed back to the
//! client never says more than `max_wait`.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, header};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::admitted::Spend;
use crate::clock::{retry_secs, secs_ceil};
use crate::envelope::EnvelopeHead;
use crate::error::{GatewayError, GatewayFuture, RateLimitHeaders};
use crate::layers::trace::{RequestSpan, child_span};
use crate::metrics::Metrics;
use crate::protect::gcra::{Decision, Limit, RateLimiter, Scope, Standing};
use crate::protect::policy::CreateSettings;
use crate::svc::Resp;
use crate::swap::Swap;
use crate::telemetry::server_timing::Timing;

/// The upstream's "too frequent, try later" code.
pub(crate) use crate::error::TOO_FREQUENT;

#[derive(Clone)]
pub(crate) struct RateLimitLayer {
    limiter: Arc<dyn RateLimiter>,
    /// Swapped by a reload; a create keeps the policy it started with.
    settings: Arc<Swap<CreateSettings>>,
    metrics: Arc<Metrics>,
}

impl RateLimitLayer {
    pub(crate) fn new(
        limiter: Arc<dyn RateLimiter>,
        settings: Arc<Swap<CreateSettings>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        RateLimitLayer {
            limiter,
            settings,
            metrics,
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers, structured fields).
fn set_headers(resp: &mut Resp, standing: &[Standing]) {
    ratelimit_headers(standing).apply(resp);
}

/// The `RateLimit-Policy` and `RateLimit` headers of `standing`.
fn ratelimit_headers(standing: &[Standing]) -> RateLimitHeaders {
    let policy: Vec<String> = standing
        .iter()
        .map(|s| {
            format!(
                "\"{}\";q={};w={}",
                s.scope.as_str(),
                s.rate.count,
                secs_ceil(s.rate.period)
            )
        })
        .collect();
    let state: Vec<String> = standing
        .iter()
        .map(|s| {
            format!(
                "\"{}\";r={};t={}",
                s.scope.as_str(),
                s.remaining,
                secs_ceil(s.reset)
            )
        })
        .collect();
    RateLimitHeaders {
        policy: HeaderValue::from_str(&policy.join(", ")).ok(),
        state: HeaderValue::from_str(&state.join(", ")).ok(),
    }
}

/// The upstream's `Retry-After` in seconds; a value that is not a number of seconds (an HTTP
/// date, or garbage) reads as "longer than anyone waits".
fn upstream_retry_after(resp: &Resp) -> Option<Duration> {
    let v = resp.headers().get(header::RETRY_AFTER)?;
    Some(
        v.to_str()
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .map_or(Duration::MAX, Duration::from_secs),
    )
}

/// The span of a wait for a slot, when traces are on.
fn wait_span(spend: &Spend) -> Option<tracing::Span> {
    RequestSpan::of(&spend.call.req).map(|p| child_span!(p, "rate_limit.wait"))
}

/// Adds a wait for a slot to the request's `Server-Timing`.
fn waited(spend: &Spend, since: Instant) {
    if let Some(t) = Timing::of(&spend.call.req) {
        t.waited(since.elapsed());
    }
}

/// Caps an upstream `Retry-After` passed back to the client at `max_wait` (at least 1 s).
fn clamp_retry_after(resp: &mut Resp, max_wait: Duration) {
    if let Some(told) = upstream_retry_after(resp) {
        let secs = retry_secs(told.min(max_wait));
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
}

fn too_frequent(resp: &Resp) -> bool {
    resp.extensions()
        .get::<EnvelopeHead>()
        .is_some_and(|h| h.code == Some(TOO_FREQUENT))
}

impl<S> Service<Spend> for RateLimit<S>
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
        let route = spend.call.route();
        // A spend route without a `[create.routes]` policy is not limited. A create keeps the
        // policy it started with, whatever a reload does meanwhile.
        let Some(policy) = self.layer.settings.load().routes.get(&route).cloned() else {
            return Box::pin(self.inner.call(spend));
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let account = spend.call.caller.account.clone();
            let client = Some(spend.call.caller.client.clone());
            let mut limits = vec![Limit {
                account: account.name.to_string(),
                key: format!("{}|{}", account.name, route.as_str()),
                scope: Scope::Account,
                rate: policy.rate,
            }];
            if let (Some(rate), Some(client)) = (policy.client_rate, &client) {
                limits.push(Limit {
                    account: account.name.to_string(),
                    key: format!("{}|{}|{client}", account.name, route.as_str()),
                    scope: Scope::Client,
                    rate,
                });
            }
            let deadline = Instant::now() + policy.max_wait;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(decision) = layer.limiter.reserve(limits.clone(), left).await else {
                    return Err(GatewayError::SharedStateDown(route.as_str()));
                };
                match decision {
                    Decision::Refused {
                        scope,
                        retry_after,
                        standing,
                    } => {
                        layer
                            .metrics
                            .rate_limited
                            .with_label_values(&[route.as_str(), scope.as_str()])
                            .inc();
                        let rate = standing.iter().find(|s| s.scope == scope).map(|s| s.rate);
                        let err = GatewayError::RateLimited {
                            route: route.as_str(),
                            scope: if scope == Scope::Account {
                                "account"
                            } else {
                                "client"
                            },
                            count: rate.map_or(0, |r| r.count),
                            period: rate.map_or(Duration::ZERO, |r| r.period),
                            retry_after: retry_secs(retry_after),
                            headers: Box::new(ratelimit_headers(&standing)),
                        };
                        return Err(err);
                    }
                    Decision::Granted { wait, standing } => {
                        // Even a zero sleep would wait for the timer's next tick (a millisecond).
                        if !wait.is_zero() {
                            let slept = Instant::now();
                            let span = wait_span(&spend);
                            tokio::time::sleep(wait).await;
                            drop(span);
                            waited(&spend, slept);
                        }
                        let mut resp = inner.clone().oneshot(spend.clone()).await?;
                        if too_frequent(&resp) {
                            let told = upstream_retry_after(&resp);
                            // When the upstream asks for a pause, the retry waits for it, if it
                            // ends before the deadline.
                            let retry_at = told
                                .map_or(Some(Instant::now()), |d| Instant::now().checked_add(d));
                            if let Some(at) = retry_at.filter(|at| *at < deadline) {
                                // The upstream did nothing: try again at the next slot.
                                tracing::debug!(route = %route, "upstream answered 220025; retrying at the next slot");
                                if told.is_some() {
                                    let slept = Instant::now();
                                    let span = wait_span(&spend);
                                    tokio::time::sleep_until(at).await;
                                    drop(span);
                                    waited(&spend, slept);
                                }
                                continue;
                            }
                            layer
                                .metrics
                                .rate_limited
                                .with_label_values(&[route.as_str(), "upstream"])
                                .inc();
                            let told = told.map_or(0, |d| secs_ceil(d.min(policy.max_wait)));
                            let wait = secs_ceil(policy.rate.interval()).max(told).max(1);
                            let err = GatewayError::UpstreamTooFrequent {
                                route: route.as_str(),
                                max_wait: policy.max_wait,
                                retry_after: wait,
                                headers: Box::new(ratelimit_headers(&standing)),
                            };
                            return Err(err);
                        }
                        clamp_retry_after(&mut resp, policy.max_wait);
                        set_headers(&mut resp, &standing);
                        return Ok(resp);
                    }
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
    use crate::layers::testing::{self, Log, header};
    use crate::protect::gcra::MemoryLimiter;
    use crate::protect::policy::{CreateConfig, Rate};
    use crate::routes::{Route, RouteTable};

    #[test]
    fn seconds_round_up() {
        assert_eq!(secs_ceil(Duration::ZERO), 0);
        assert_eq!(secs_ceil(Duration::from_millis(1)), 1);
        assert_eq!(secs_ceil(Duration::from_millis(1500)), 2);
        assert_eq!(secs_ceil(Duration::from_secs(2)), 2);
    }

    fn with_retry_after(value: Option<&str>) -> Resp {
        let mut resp = testing::answer(StatusCode::OK, TOO_FREQUENT);
        if let Some(v) = value {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        }
        resp
    }

    #[test]
    fn the_upstreams_retry_after_is_seconds_or_longer_than_anyone_waits() {
        assert_eq!(upstream_retry_after(&with_retry_after(None)), None);
        assert_eq!(
            upstream_retry_after(&with_retry_after(Some(" 3 "))),
            Some(Duration::from_secs(3))
        );
        for odd in ["Wed, 21 Oct 2026 07:28:00 GMT", "soon", "-1"] {
            assert_eq!(
                upstream_retry_after(&with_retry_after(Some(odd))),
                Some(Duration::MAX),
                "{odd}"
            );
        }
    }

    #[test]
    fn a_retry_after_passed_back_never_says_more_than_max_wait() {
        let max_wait = Duration::from_millis(1500);
        for (told, said) in [(Some("60"), "2"), (Some("0"), "1"), (Some("date"), "2")] {
            let mut resp = with_retry_after(told);
            clamp_retry_after(&mut resp, max_wait);
            assert_eq!(header(&resp, "retry-after"), said, "{told:?}");
        }
        let mut none = with_retry_after(None);
        clamp_retry_after(&mut none, max_wait);
        assert!(none.headers().get(header::RETRY_AFTER).is_none());
    }

    fn rate(count: u32, secs: u64, burst: u32) -> Rate {
        Rate {
            count,
            period: Duration::from_secs(secs),
            burst,
        }
    }

    /// The default create settings, with `disk.create`'s rate, client rate and `max_wait` set
    /// (`None`: no policy for it).
    fn settings(policy: Option<(Rate, Option<Rate>, Duration)>) -> CreateSettings {
        let mut settings = CreateConfig::default()
            .resolve(&RouteTable::default())
            .expect("the default create settings");
        match policy {
            Some((rate, client_rate, max_wait)) => {
                let p = settings.routes.get_mut(&Route::DiskCreate).unwrap();
                p.rate = rate;
                p.client_rate = client_rate;
                p.max_wait = max_wait;
            }
            None => {
                settings.routes.remove(&Route::DiskCreate);
            }
        }
        settings
    }

    /// The layer with the in-memory limiter around an inner service that logs when it was
    /// called and answers `answers[n]` (a code) to its n-th call, 0 past the end.
    fn limited(
        settings: CreateSettings,
        answers: &'static [i64],
    ) -> (
        impl Service<Spend, Response = Resp, Error = GatewayError, Future = GatewayFuture> + Clone,
        Log<Instant>,
    ) {
        let layer = RateLimitLayer::new(
            Arc::new(MemoryLimiter::new()),
            Arc::new(Swap::new(settings)),
            Arc::new(Metrics::new()),
        );
        let log = Log::default();
        let seen = log.clone();
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = layer.layer(service_fn(move |_: Spend| {
            seen.push(Instant::now());
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let code = answers.get(n).copied().unwrap_or(0);
            std::future::ready(Ok::<_, GatewayError>(testing::answer(StatusCode::OK, code)))
        }));
        (svc, log)
    }

    fn spend(client: &str) -> Spend {
        testing::spend(&testing::caller(client, &testing::account("acct")))
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_goes_at_once_and_the_next_waits_for_its_slot() {
        let (svc, log) = limited(
            settings(Some((rate(1, 1, 2), None, Duration::from_secs(5)))),
            &[],
        );
        let start = Instant::now();
        let (a, b, c) = tokio::join!(
            svc.clone().oneshot(spend("alpha")),
            svc.clone().oneshot(spend("alpha")),
            svc.clone().oneshot(spend("alpha")),
        );
        for got in [&a, &b, &c] {
            assert!(got.is_ok(), "rate_limit: refused within max_wait: {got:?}");
        }
        let at: Vec<_> = log.all().iter().map(|t| *t - start).collect();
        assert_eq!(
            at,
            [Duration::ZERO, Duration::ZERO, Duration::from_secs(1)],
            "rate_limit: the burst or the next slot is wrong"
        );
        let a = a.unwrap();
        assert!(
            header(&a, "ratelimit-policy").contains("q=1;w=1"),
            "rate_limit: no RateLimit-Policy on a success"
        );
        assert!(header(&a, "ratelimit").starts_with("\"tenant\";r="));
    }

    #[tokio::test(start_paused = true)]
    async fn past_max_wait_the_create_is_refused_with_retry_after_and_ratelimit_headers() {
        let (svc, log) = limited(
            settings(Some((rate(1, 1, 1), None, Duration::from_secs(2)))),
            &[],
        );
        let start = Instant::now();
        let (a, b, c, d) = tokio::join!(
            svc.clone().oneshot(spend("alpha")),
            svc.clone().oneshot(spend("alpha")),
            svc.clone().oneshot(spend("alpha")),
            svc.clone().oneshot(spend("alpha")),
        );
        assert!(
            a.is_ok() && b.is_ok() && c.is_ok(),
            "rate_limit: refused within max_wait"
        );
        let last = log.all().last().map(|t| *t - start);
        assert_eq!(
            last,
            Some(Duration::from_secs(2)),
            "rate_limit: waited past max_wait"
        );
        let Err(
            err @ GatewayError::RateLimited {
                scope: "account", ..
            },
        ) = d
        else {
            panic!("rate_limit: the fourth create was not refused: {d:?}");
        };
        assert_eq!(
            log.len(),
            3,
            "rate_limit: a refused create reached the inner"
        );
        let resp = err.into_response(testing::REQUEST_ID);
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&resp, "retry-after"), "1");
        assert!(header(&resp, "ratelimit-policy").contains("\"tenant\";q=1;w=1"));
        assert!(header(&resp, "ratelimit").contains("\"tenant\";r=0"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_client_rate_holds_back_one_client_alone() {
        let (svc, log) = limited(
            settings(Some((
                rate(100, 1, 100),
                Some(rate(1, 1, 1)),
                Duration::ZERO,
            ))),
            &[],
        );
        assert!(svc.clone().oneshot(spend("alpha")).await.is_ok());
        let again = svc.clone().oneshot(spend("alpha")).await;
        assert!(
            matches!(
                again,
                Err(GatewayError::RateLimited {
                    scope: "client",
                    count: 1,
                    period,
                    ..
                }) if period == Duration::from_secs(1)
            ),
            "rate_limit: the client rate did not refuse, naming its own rate: {again:?}"
        );
        let other = svc.clone().oneshot(spend("beta")).await;
        assert!(
            other.is_ok(),
            "rate_limit: another client was held back: {other:?}"
        );
        assert_eq!(log.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_too_frequent_is_retried_at_the_next_slot_unseen() {
        let (svc, log) = limited(
            settings(Some((rate(1, 1, 1), None, Duration::from_secs(5)))),
            &[TOO_FREQUENT],
        );
        let start = Instant::now();
        let resp = svc.oneshot(spend("alpha")).await;
        let resp = resp.expect("rate_limit: the retried create failed");
        assert_eq!(
            resp.extensions().get::<EnvelopeHead>().and_then(|h| h.code),
            Some(0),
            "rate_limit: the upstream's 220025 reached the client"
        );
        let at: Vec<_> = log.all().iter().map(|t| *t - start).collect();
        assert_eq!(
            at,
            [Duration::ZERO, Duration::from_secs(1)],
            "rate_limit: not retried once, at the next slot"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_without_a_policy_passes_straight_through() {
        let (svc, log) = limited(settings(None), &[]);
        let start = Instant::now();
        for _ in 0..5 {
            let resp = svc.clone().oneshot(spend("alpha")).await.unwrap();
            assert_eq!(
                header(&resp, "ratelimit"),
                "",
                "rate_limit: an unlimited route got headers"
            );
        }
        assert_eq!(log.len(), 5);
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "rate_limit: an unlimited route waited"
        );
    }
}
