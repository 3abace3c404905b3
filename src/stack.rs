//! The one function that builds the data plane's tower stack. Read top to bottom, it is the path
//! a request takes.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::Either;
use http::Request;
use std::future::{Ready, ready};
use tower::util::{BoxCloneSyncService, Oneshot};
use tower::{ServiceBuilder, ServiceExt};

use crate::cache::Cache;
use crate::config::Settings;
use crate::layers::access_log::AccessLogLayer;
use crate::layers::auth::{AuthLayer, SharedAuthenticator};
use crate::layers::body_limit::BodyLimitLayer;
use crate::layers::budget::BudgetGuardLayer;
use crate::layers::cache::CachingLayer;
use crate::layers::client_limit::ClientLimitLayer;
use crate::layers::dedup::DedupLayer;
use crate::layers::fast_hit::FastHit;
use crate::layers::rate_limit::RateLimitLayer;
use crate::layers::request_id::SetRequestIdLayer;
use crate::layers::rescue::RescueLayer;
use crate::layers::route::ClassifyLayer;
use crate::layers::token::TokenLayer;
use crate::layers::token_lease::TokenLeaseLayer;
use crate::layers::validate::ValidateLayer;
use crate::metrics::Metrics;
use crate::svc::{BoxError, GatewayService, Resp};
use crate::upstream::UpstreamClient;
use crate::upstream::forward::Forward;

/// The create-protection layers, built around their state by the server.
pub(crate) struct Protection {
    pub(crate) dedup: DedupLayer,
    pub(crate) budget: BudgetGuardLayer,
    pub(crate) rate_limit: RateLimitLayer,
}

/// The whole stack as one service over requests with body `B` (hyper's `Incoming` when served).
pub(crate) type EdgeService<B> = BoxCloneSyncService<Request<B>, Resp, Infallible>;

/// The data plane: fresh cache hits answered at once by [`FastHit`], everything else by the stack.
pub(crate) struct Edge<B> {
    hits: FastHit,
    stack: EdgeService<B>,
}

/// What [`Edge::serve`] returns: a ready hit, or the stack's answer to come.
pub(crate) type EdgeFuture<B> =
    Either<Ready<Result<Resp, Infallible>>, Oneshot<EdgeService<B>, Request<B>>>;

impl<B: http_body::Body> Edge<B> {
    pub(crate) fn serve(&self, req: Request<B>) -> EdgeFuture<B> {
        match self.hits.answer(&req) {
            Some(resp) => Either::Left(ready(Ok(resp))),
            None => Either::Right(self.stack.clone().oneshot(req)),
        }
    }
}

pub(crate) fn build<B>(
    settings: &Settings,
    metrics: Arc<Metrics>,
    auth: SharedAuthenticator,
    cache: Arc<Cache>,
    protection: Protection,
    client: UpstreamClient,
) -> Edge<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let cfg = &settings.server;
    let routes = settings.routes.clone();
    // In front of everything: a fresh hit, the bulk of the traffic, never enters the stack.
    let hits = FastHit::new(auth.clone(), cache.clone(), metrics.clone(), routes.clone());
    // After the body is read and a concurrency slot taken: plain `Req` → `Resp` services.
    let inner = GatewayService::new(
        ServiceBuilder::new()
            // The gateway's own endpoints (`/_gateway/token`): answered here, never forwarded.
            .layer(TokenLeaseLayer::new(metrics.clone()))
            // Cached routes answered from the account's entries; mutations drop what they change.
            .layer(CachingLayer::new(cache))
            // Creates with a bad body are refused before anything is spent (400).
            .layer(ValidateLayer)
            // One purchase per intent: Idempotency-Key replay, identical creates collapsed.
            .layer(protection.dedup)
            // The spending guard's caps (off unless configured): 429 before anything is spent.
            .layer(protection.budget)
            // Creates within the rate the upstream accepts: wait for a slot, else 429.
            .layer(protection.rate_limit)
            // The account's upstream token; one retry with a fresh token when the upstream says 401.
            .layer(TokenLayer)
            // The upstream call itself, with only allow-listed headers.
            .service(Forward::new(client)),
    );
    let per_client = ClientLimitLayer::new(
        auth.load().caller_names(),
        settings.max_inflight_per_client(),
    );
    let stack = EdgeService::new(
        ServiceBuilder::new()
            // Outermost, so every answer (our own errors too) is logged and counted.
            .layer(AccessLogLayer::new(metrics))
            // Before anything can fail, so every error envelope carries the request's id.
            .layer(SetRequestIdLayer)
            // Classify once; unknown routes (404) end here.
            .layer(ClassifyLayer(routes))
            // Who is calling (401), as which account, and may they call this route (403); then
            // its query (400 for an undeclared parameter): from the head alone, so a caller
            // without a key never holds a slot or a body buffer, nor learns a route's parameters.
            .layer(AuthLayer::new(auth))
            // One client's share of the requests in flight (503 with Retry-After beyond it).
            .layer(per_client)
            // Read the body within `body_timeout` (408) up to the limit (413), before a slot is
            // taken: a slow upload holds no concurrency slot. Every layer below sees it whole.
            .layer(BodyLimitLayer::new(cfg.max_body_bytes, cfg.body_timeout))
            // Overload and timeout errors of the tower layers below become 503/504 envelopes.
            .layer(RescueLayer)
            // Answer 503 at once when `max_concurrency` requests are in flight, rather than queueing.
            .load_shed()
            .concurrency_limit(cfg.max_concurrency)
            // The request's work once its body is here: cache, protection, the upstream call.
            .timeout(cfg.request_timeout)
            .service(inner),
    );
    Edge { hits, stack }
}
