//! The one function that builds the data plane's tower stack. Read top to bottom, it is the path
//! a request takes: the edge every request crosses, then, below the concurrency slot, one short
//! pipeline per kind of route (see [`crate::layers::switch`]).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::admitted::Spend;
use crate::cache::Cache;
use crate::config::Settings;
use crate::error::GatewayError;
use crate::layers::access_log::{AccessLogLayer, Recorder};
use crate::layers::admit::AdmitLayer;
use crate::layers::auth::SharedAuthenticator;
use crate::layers::body_limit::BodyLimitLayer;
use crate::layers::budget::BudgetGuardLayer;
use crate::layers::cache::CachingLayer;
use crate::layers::cache_hit::{CacheHit, CacheHitLayer};
use crate::layers::client_limit::ClientLimitLayer;
use crate::layers::collapse::CollapseLayer;
use crate::layers::dedup::{DedupLayer, Plain};
use crate::layers::invalidate::InvalidateLayer;
use crate::layers::ledger::LedgerLayer;
use crate::layers::rate_limit::RateLimitLayer;
use crate::layers::request_id::SetRequestIdLayer;
use crate::layers::switch::{OwnPipeline, Pipelines, RoutePipeline};
use crate::layers::token::TokenLayer;
use crate::layers::token_lease::TokenLease;
use crate::layers::trace::TraceLayer;
use crate::layers::validate::ValidateLayer;
use crate::metrics::Metrics;
use crate::svc::{BoxError, Resp};
use crate::telemetry::server_timing::ServerTimingLayer;
use crate::upstream::UpstreamClient;
use crate::upstream::forward::Forward;

/// The create-protection layers, built around their state by the server.
pub(crate) struct Protection {
    pub(crate) ledger: LedgerLayer,
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

/// The pipelines below the concurrency slot, one per kind of route.
fn pipelines(
    metrics: &Arc<Metrics>,
    cache: &Arc<Cache>,
    protection: Protection,
    client: UpstreamClient,
) -> Pipelines {
    // Every pipeline ends the same way: the account's upstream token (one retry with a fresh
    // token when the upstream says 401), then the upstream call with only allow-listed headers.
    let upstream = Plain::new(
        ServiceBuilder::new()
            .layer(TokenLayer)
            .service(Forward::new(client)),
    );
    // The gateway's own endpoints (`/_gateway/token`): answered here, never forwarded.
    let own = OwnPipeline::new(TokenLease::new(metrics.clone()));
    let read = RoutePipeline::new(
        ServiceBuilder::new()
            // Answered from the account's entries when the route is cached.
            .layer(CachingLayer::new(cache.clone()))
            .service(upstream.clone()),
    );
    let mutation = RoutePipeline::new(
        ServiceBuilder::new()
            // A success drops the cached entries it made wrong.
            .layer(InvalidateLayer::new(cache.clone()))
            // Identical mutations in flight are sent once (mount, unmount, power).
            .layer(protection.collapse)
            .service(upstream.clone()),
    );
    let spend = RoutePipeline::new(
        ServiceBuilder::new()
            .layer(InvalidateLayer::new(cache.clone()))
            // A bad body is refused before anything is spent (400); what is checked is sent.
            .layer(ValidateLayer)
            // Every spend on record before anything is sent: an entry opens here and settles
            // with the outcome (503 when it cannot be written). A bought disk's price is read
            // through the read pipeline.
            .layer(protection.ledger.with_read(read.clone()))
            // One purchase per intent: Idempotency-Key replay, identical creates collapsed. Its
            // own calls (a reconciliation's disk list) go straight to the upstream.
            .layer(protection.dedup.with_plain(upstream.clone()))
            // The spending guard's caps (off unless configured): 429 before anything is spent.
            .layer(protection.budget)
            // Creates within the rate the upstream accepts: wait for a slot, else 429.
            .layer(protection.rate_limit)
            .map_request(|spend: Spend| spend.call)
            .service(upstream),
    );
    Pipelines {
        own,
        read,
        mutation,
        spend,
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
    // Counts and logs every answer, the hits' and the stack's alike.
    let recorder = Arc::new(Recorder::new(metrics.clone(), &routes));
    let per_client = ClientLimitLayer::new(
        auth.load().caller_names(),
        settings.max_inflight_per_client(),
    );
    let pipelines = pipelines(&metrics, &cache, protection, client);
    ServiceBuilder::new()
        // A fresh hit, the bulk of the traffic, is answered here at once; the rest goes on down,
        // with what this layer learned of it.
        .layer(CacheHitLayer::new(
            auth.clone(),
            cache,
            recorder.clone(),
            routes.clone(),
            cfg.server_timing,
        ))
        .layer_fn(StackService::new)
        // The request's span, its parent the caller's `traceparent`, when traces are exported.
        .option_layer(crate::telemetry::traces_on().then(|| TraceLayer::new(routes.clone())))
        // `Server-Timing` on every answer made below, when on: what the steps below add to it.
        .option_layer(cfg.server_timing.then_some(ServerTimingLayer))
        // Every answer made below (our own errors too) is logged and counted.
        .layer(AccessLogLayer::new(recorder))
        // Before anything can fail, so every error envelope carries the request's id.
        .layer(SetRequestIdLayer)
        // What the request is (404), who calls (401), may they (403), with which query (400):
        // from the head alone, so a caller without a key never holds a slot or a body buffer.
        // Every refusal from here down is rendered here, once.
        .layer(AdmitLayer::new(routes, auth))
        // One client's share of the requests in flight (503 with Retry-After beyond it).
        .layer(per_client)
        // Read the body within `body_timeout` (408) up to the limit (413), before a slot is
        // taken: a slow upload holds no concurrency slot. Every layer below sees it whole.
        .layer(BodyLimitLayer::new(cfg.max_body_bytes, cfg.body_timeout))
        // Overload and timeout errors of the tower layers below become the gateway's (503/504).
        .map_err(GatewayError::from_tower)
        // Answer 503 at once when `max_concurrency` requests are in flight, rather than queueing.
        .load_shed()
        .concurrency_limit(cfg.max_concurrency)
        // The request's work once its body is here: cache, protection, the upstream call.
        .timeout(cfg.request_timeout)
        .service(pipelines)
}
