//! The fast path for fresh cache hits. Not a tower layer: it sits in front of the stack (see
//! [`crate::stack::Edge`]) and answers, synchronously, the one request that dominates the gateway's
//! traffic: a bodiless request to a cached route whose entry this replica holds fresh in memory.
//! Everything else, a miss included, goes through the whole stack as if this did not exist.
//!
//! It does what the stack's layers would do for such a request, with their own functions: the
//! request id ([`request_id::pick`]), the route ([`classify`]), the caller
//! ([`Authenticator::caller`]), the key and the hit ([`cache`]), and the access line and metrics
//! ([`Line`]). A request they would refuse (401, 403, 404, an undeclared query parameter's 400)
//! is left to the stack, which answers it.
//! Load shedding and the request timeout do not apply: a hit holds no capacity and never waits.
//! The metric handles of each route's hits are resolved once, on its first hit.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http::Request;
use prometheus::{Histogram, IntCounter};

use crate::cache::Cache;
use crate::cache::key::body_keyed;
use crate::layers::access_log::{Line, method_label};
use crate::layers::auth::SharedAuthenticator;
use crate::layers::cache::{bare_hit, key_of, no_cache};
use crate::layers::request_id::{self, X_REQUEST_ID};
use crate::metrics::Metrics;
use crate::routes::{Route, RouteTable, check_query};
use crate::svc::Resp;

/// A route's hit metrics: the request counter (GET, 200), its duration, and the cache lookup.
struct HitMetrics {
    requests: IntCounter,
    duration: Histogram,
    lookups: IntCounter,
}

pub(crate) struct FastHit {
    auth: SharedAuthenticator,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    routes: Arc<RouteTable>,
    /// By route, resolved on the route's first hit (so no series appears before it is used).
    per_route: Vec<OnceLock<HitMetrics>>,
}

impl FastHit {
    pub(crate) fn new(
        auth: SharedAuthenticator,
        cache: Arc<Cache>,
        metrics: Arc<Metrics>,
        routes: Arc<RouteTable>,
    ) -> FastHit {
        FastHit {
            auth,
            cache,
            metrics,
            per_route: routes.iter().map(|_| OnceLock::new()).collect(),
            routes,
        }
    }

    fn metrics_of(&self, route: Route) -> &HitMetrics {
        self.per_route[route.index()].get_or_init(|| HitMetrics {
            requests: self.metrics.requests.with_label_values(&[
                route.as_str(),
                method_label(route.method()),
                "200",
            ]),
            duration: self
                .metrics
                .request_duration
                .with_label_values(&[route.as_str()]),
            lookups: self
                .metrics
                .cache_lookups
                .with_label_values(&[route.as_str(), "hit"]),
        })
    }

    /// The answer to `req` when it is a fresh hit; `None` sends it through the stack.
    pub(crate) fn answer<B: http_body::Body>(&self, req: &Request<B>) -> Option<Resp> {
        let started = Instant::now();
        // A body is read (with its limit) by the stack; cached routes that matter have none.
        if !req.body().is_end_stream() {
            return None;
        }
        let matched = self.routes.classify(req.method(), req.uri().path())?;
        let route = matched.route;
        if body_keyed(route) || !self.cache.caches(route) || no_cache(req.headers()) {
            return None;
        }
        // An undeclared query parameter is the stack's 400, never a hit.
        check_query(route, req.uri().query()).ok()?;
        let caller = self
            .auth
            .with(|a| a.caller(req.headers(), Some(route)))
            .ok()?;
        let key = key_of(&caller.account, &matched, req.uri().query());
        let entry = self.cache.peek_fresh(&key)?;
        // Only 200s are stored; the check keeps the metric's status label true by construction.
        if entry.answer.status != http::StatusCode::OK {
            return None;
        }

        let mut resp = bare_hit(&entry, tokio::time::Instant::now());
        let id = request_id::pick(req.headers());
        let metrics = self.metrics_of(route);
        metrics.lookups.inc();
        metrics.requests.inc();
        let elapsed = started.elapsed();
        metrics.duration.observe(elapsed.as_secs_f64());
        Line {
            request_id: id.to_str().unwrap_or("-"),
            // A route is one method (see `routes`), so this is the request's.
            method: method_label(route.method()),
            route: route.as_str(),
            status: 200,
            micros: elapsed.as_micros() as u64,
            client: &caller.client,
            account: None,
            upstream_trace: entry
                .answer
                .head
                .as_ref()
                .and_then(|h| h.trace_id.as_deref())
                .unwrap_or("-"),
        }
        .emit();
        resp.headers_mut().insert(X_REQUEST_ID, id);
        Some(resp)
    }
}
