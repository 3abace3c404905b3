//! The one function that builds the data plane's tower stack. Read top to bottom, it is the path
//! a request takes.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::cache::Cache;
use crate::config::Settings;
use crate::layers::access_log::{AccessLogLayer, Recorder};
use crate::layers::auth::{AuthLayer, SharedAuthenticator};
use crate::layers::body_limit::BodyLimitLayer;
use crate::layers::budget::BudgetGuardLayer;
use crate::layers::cache::CachingLayer;
use crate::layers::cache_hit::{CacheHit, CacheHitLayer};
use crate::layers::client_limit::ClientLimitLayer;
use crate::layers::collapse::CollapseLayer;
use crate::layers::dedup::DedupLayer;
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
    pub(crate) collapse: CollapseLayer,
    pub(crate) budget: BudgetGuardLayer,
    pub(crate) rate_limit: RateLimitLayer,
}

/// The stack below the cache-hit layer, as one service over requests with body `B` (hyper's
/// `Incoming` when served).
pub(crate) type StackService<B> = BoxCloneSyncService<Request<B>, Resp, Infallible>;

/// The data plane: the whole stack, fresh hits answered by its outermost layer.
pub(crate) type Edge<B> = CacheHit<StackService<B>>;

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
    // Counts and logs every answer, the hits' and the stack's alike.
    let recorder = Arc::new(Recorder::new(metrics.clone(), &routes));
    // After the body is read and a concurrency slot taken: plain `Req` → `Resp` services.
    let inner = GatewayService::new(
        ServiceBuilder::new()
            // The gateway's own endpoints (`/_gateway/token`): answered here, never forwarded.
            .layer(TokenLeaseLayer::new(metrics.clone()))
            // Cached routes answered from the account's entries; mutations drop what they change.
            .layer(CachingLayer::new(cache.clone()))
            // Creates with a bad body are refused before anything is spent (400).
            .layer(ValidateLayer)
            // One purchase per intent: Idempotency-Key replay, identical creates collapsed.
            .layer(protection.dedup)
            // Identical mounts, unmounts and power changes in flight go upstream once.
            .layer(protection.collapse)
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
    ServiceBuilder::new()
        // A fresh hit, the bulk of the traffic, is answered here at once; the rest goes on down.
        .layer(CacheHitLayer::new(
            auth.clone(),
            cache,
            recorder.clone(),
            routes.clone(),
        ))
        .layer_fn(StackService::new)
        // Every answer made below (our own errors too) is logged and counted.
        .layer(AccessLogLayer::new(recorder))
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
        .service(inner)
}
