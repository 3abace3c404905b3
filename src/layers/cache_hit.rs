//! The stack's outermost layer: fresh cache hits, the bulk of the gateway's traffic, answered at
//! once. A bodiless request to a cached route whose entry this replica holds fresh in memory gets
//! its answer here, synchronously (the future is a ready one); everything else, a miss included,
//! goes down the stack below, with what this layer learned of it ([`HeadStart`]: route, caller,
//! key) so that admission and the cache do not learn it again.
//!
//! For a hit it does what the layers below would, with their own functions: the request id
//! ([`request_id::pick`]), the route ([`RouteTable::classify`]), the caller
//! ([`Authenticator::caller`](crate::layers::auth::Authenticator::caller)), the key and the entry
//! ([`key_of`], [`bare_hit`]), and the metrics, in-flight gauge and access line ([`Recorder`], the
//! access-log layer's own). A request they would refuse (401, 403, 404, an undeclared query
//! parameter's 400) is left to them, and so answered by them.
//! Hits take no concurrency slot and no request timeout: they never wait. So this layer never
//! waits for the stack's readiness either; a miss drives the stack with `oneshot`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{Request, StatusCode};
use prometheus::IntCounter;
use tower::util::Oneshot;
use tower::{Layer, Service, ServiceExt};

use crate::admitted::HeadStart;
use crate::cache::Cache;
use crate::layers::access_log::{Line, Recorder, method_label};
use crate::layers::auth::SharedAuthenticator;
use crate::layers::cache::{bare_hit, key_of, no_cache};
use crate::layers::request_id::{self, X_REQUEST_ID};
use crate::layers::trace;
use crate::routes::{Route, RouteTable, check_query};
use crate::svc::Resp;
use crate::telemetry::server_timing::{self, SERVER_TIMING};

#[derive(Clone)]
pub(crate) struct CacheHitLayer {
    shared: Arc<Shared>,
}

/// What every clone of the layer's service shares.
struct Shared {
    auth: SharedAuthenticator,
    cache: Arc<Cache>,
    recorder: Arc<Recorder>,
    routes: Arc<RouteTable>,
    /// `cache_lookups{route, "hit"}` by route index, resolved on the route's first hit.
    lookups: Vec<OnceLock<IntCounter>>,
    /// `[server] server_timing`: a hit's answer says `cache;desc=hit` and its time.
    server_timing: bool,
    /// Whether this process exports traces: a hit makes its span.
    traces: bool,
}

impl CacheHitLayer {
    pub(crate) fn new(
        auth: SharedAuthenticator,
        cache: Arc<Cache>,
        recorder: Arc<Recorder>,
        routes: Arc<RouteTable>,
        server_timing: bool,
    ) -> CacheHitLayer {
        CacheHitLayer {
            shared: Arc::new(Shared {
                auth,
                cache,
                recorder,
                lookups: routes.iter().map(|_| OnceLock::new()).collect(),
                routes,
                server_timing,
                traces: crate::telemetry::traces_on(),
            }),
        }
    }
}

impl<S> Layer<S> for CacheHitLayer {
    type Service = CacheHit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CacheHit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct CacheHit<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// A hit's ready answer, or the stack's answer to come.
pub(crate) type CacheHitFuture<S, R> = Either<Ready<Result<Resp, Infallible>>, Oneshot<S, R>>;

impl Shared {
    fn lookups_of(&self, route: Route) -> &IntCounter {
        self.lookups[route.index()].get_or_init(|| {
            self.recorder
                .metrics()
                .cache_lookups
                .with_label_values(&[route.as_str(), "hit"])
        })
    }

    /// The answer to `req` when it is a fresh hit; `Err` sends it down the stack, with what this
    /// layer learned of it when it got as far as the cache.
    fn answer<B: http_body::Body>(&self, req: &Request<B>) -> Result<Resp, Option<HeadStart>> {
        // One clock read serves the entry's age and the answer's duration: tokio's clock is the
        // system's monotonic one except in tests, where it is paused and the duration reads 0.
        let started = tokio::time::Instant::now();
        // A body is read (with its limit) by the stack; cached routes that matter have none.
        if !req.body().is_end_stream() {
            return Err(None);
        }
        let matched = self
            .routes
            .classify(req.method(), req.uri().path())
            .ok_or(None)?;
        let route = matched.route;
        if route.body_keyed() || !self.cache.caches(route) || no_cache(req.headers()) {
            return Err(None);
        }
        // An undeclared query parameter is the stack's 400, never a hit.
        check_query(route, req.uri().query()).map_err(|_| None)?;
        let caller = self
            .auth
            .with(|a| a.caller(req.headers(), Some(route)))
            .map_err(|_| None)?;
        let key = key_of(&caller.account, &matched, req.uri().query());
        let fresh = self
            .cache
            .peek_fresh(&key)
            // Only 200s are stored; the check keeps the metric's status label true by construction.
            .filter(|entry| entry.answer.status == StatusCode::OK);
        let Some(entry) = fresh else {
            return Err(Some(HeadStart {
                matched,
                caller,
                key,
            }));
        };

        let in_flight = self.recorder.in_flight();
        let mut resp = bare_hit(&entry, started, usize::from(self.server_timing));
        let id = request_id::pick(req.headers());
        self.lookups_of(route).inc();
        caller.counts.hit();
        drop(in_flight);
        let upstream_trace = entry
            .answer
            .head
            .as_ref()
            .and_then(|h| h.trace_id.as_deref());
        let line = Line {
            request_id: id.to_str().unwrap_or("-"),
            // A route is one method (see `routes`), so this is the request's.
            method: method_label(route.method()),
            route: route.as_str(),
            status: 200,
            micros: started.elapsed().as_micros() as u64,
            client: &caller.client,
            account: None,
            upstream_trace: upstream_trace.unwrap_or("-"),
        };
        self.recorder.finish(Some(route), StatusCode::OK, &line);
        resp.headers_mut().insert(X_REQUEST_ID, id);
        if self.traces {
            trace::hit(
                req.headers(),
                route,
                &caller.client,
                &caller.account.name,
                upstream_trace,
            );
        }
        if self.server_timing {
            resp.headers_mut()
                .insert(SERVER_TIMING, server_timing::hit(started.elapsed()));
        }
        Ok(resp)
    }
}

impl<S: Clone> CacheHit<S> {
    /// Answers `req`, from `&self`: the server calls this once per request without cloning the
    /// service, and [`Service::call`] is this.
    pub(crate) fn serve<B>(&self, mut req: Request<B>) -> CacheHitFuture<S, Request<B>>
    where
        B: http_body::Body,
        S: Service<Request<B>, Response = Resp, Error = Infallible>,
    {
        match self.shared.answer(&req) {
            Ok(resp) => Either::Left(ready(Ok(resp))),
            Err(head) => {
                if let Some(head) = head {
                    req.extensions_mut().insert(head);
                }
                Either::Right(self.inner.clone().oneshot(req))
            }
        }
    }
}

impl<S: Clone, B: http_body::Body> Service<Request<B>> for CacheHit<S>
where
    S: Service<Request<B>, Response = Resp, Error = Infallible>,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = CacheHitFuture<S, Request<B>>;

    /// Always ready: a hit never waits on the stack, and a miss waits inside its own future.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.serve(req)
    }
}
