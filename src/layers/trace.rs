//! The request's span (issue 23, CONTRACT.md `[telemetry]`), when this process exports traces: one
//! `request` span per data-plane request, its parent the caller's `traceparent` (W3C trace
//! context), with the route, client, account, status, cache status, de-duplication result and
//! the upstream's `traceId` as attributes. The steps below make their own spans as its children
//! ([`child_span!`]): they find it in the request's extensions ([`RequestSpan`]), which travel
//! with the call into the tasks a fill or a create runs in.
//!
//! The request's future is polled inside its span, so a step that makes no span of its own
//! (a Redis command, when its spans are asked for: [`crate::telemetry::span::redis`]) finds it
//! current.
//!
//! With traces off this layer is not in the stack and no request carries a [`RequestSpan`], so
//! no step makes a span; a fresh hit asks one `bool` ([`hit`] is called only when on).

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Request};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tower::{Layer, Service};
use tracing::field::Empty;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::admitted::{AccountName, ClientName, FlowAnswer};
use crate::envelope::EnvelopeHead;
use crate::layers::access_log::method_label;
use crate::routes::{GatewayRoute, Route, RouteTable};
use crate::svc::{Resp, RespFuture};
use crate::telemetry::TRACE_TARGET;

pub(crate) use crate::telemetry::span::{RequestSpan, child_span};

/// A new `request` span named `METHOD route` (the name is fixed once the span starts), the
/// caller's `traceparent` its parent when it names a valid one.
fn request_span(headers: &HeaderMap, method: &'static str, route: Option<&'static str>) -> Span {
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        "request",
        otel.name = %SpanName(method, route),
        http.route = route,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.response.status_code = Empty,
        client = Empty,
        account = Empty,
        cache = Empty,
        dedup = Empty,
        upstream.trace_id = Empty,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    span
}

/// `METHOD route`, or the method alone for a path no route matches (OpenTelemetry's HTTP server
/// span name).
struct SpanName(&'static str, Option<&'static str>);

impl std::fmt::Display for SpanName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1 {
            Some(route) => write!(f, "{} {route}", self.0),
            None => f.write_str(self.0),
        }
    }
}

fn record_status(span: &Span, status: u16) {
    span.record("http.response.status_code", status);
    // A server span's error is a 5xx (OpenTelemetry's HTTP conventions); a 4xx is the caller's.
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// A fresh hit's span, made and ended at once, when the hit is sampled: its sampling is decided
/// first ([`crate::telemetry::sample_hit`]), so an unsampled hit makes no span at all.
pub(crate) fn hit(
    headers: &HeaderMap,
    route: Route,
    client: &str,
    account: &str,
    upstream_trace: Option<&str>,
) {
    if crate::telemetry::sample_hit(headers) {
        crate::telemetry::decided(|| sampled_hit(headers, route, client, account, upstream_trace));
    }
}

fn sampled_hit(
    headers: &HeaderMap,
    route: Route,
    client: &str,
    account: &str,
    upstream_trace: Option<&str>,
) {
    let method = method_label(route.method());
    let span = request_span(headers, method, Some(route.as_str()));
    record_status(&span, 200);
    span.record("client", client);
    span.record("account", account);
    span.record("cache", "hit");
    if let Some(t) = upstream_trace {
        span.record("upstream.trace_id", t);
    }
}

/// What the answer says about the request, on its span.
fn finish(span: &Span, resp: &Resp) {
    let ext = resp.extensions();
    if let Some(own) = ext.get::<GatewayRoute>() {
        span.record("http.route", own.as_str());
    }
    record_status(span, resp.status().as_u16());
    if let Some(c) = ext.get::<ClientName>() {
        span.record("client", &*c.0);
    }
    if let Some(a) = ext.get::<AccountName>() {
        span.record("account", &*a.0);
    }
    let dedup = match ext.get::<FlowAnswer>() {
        Some(FlowAnswer::Joined) => Some("joined"),
        Some(FlowAnswer::Reconciled) => Some("reconciled"),
        Some(FlowAnswer::RetriedUnknown) => Some("retried_unknown"),
        None if resp.headers().contains_key("idempotent-replayed") => Some("replayed"),
        None => None,
    };
    if let Some(d) = dedup {
        span.record("dedup", d);
    }
    if let Some(t) = ext
        .get::<EnvelopeHead>()
        .and_then(|h| h.trace_id.as_deref())
    {
        span.record("upstream.trace_id", t);
    }
}

// === impl TraceLayer ===

/// Gives each request its span, and records its answer on it.
#[derive(Clone)]
pub(crate) struct TraceLayer {
    /// To name the span by its route from the start (the route is matched again, with traces on
    /// only: the span's name cannot change once it started).
    routes: Arc<RouteTable>,
}

impl TraceLayer {
    pub(crate) fn new(routes: Arc<RouteTable>) -> TraceLayer {
        TraceLayer { routes }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Trace {
            inner,
            routes: self.routes.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Trace<S> {
    inner: S,
    routes: Arc<RouteTable>,
}

impl<S, B> Service<Request<B>> for Trace<S>
where
    S: Service<Request<B>, Response = Resp, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = Resp;
    type Error = std::convert::Infallible;
    type Future = RespFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> RespFuture {
        let method = method_label(req.method());
        let route = self
            .routes
            .classify(req.method(), req.uri().path())
            .map(|m| m.route.as_str());
        let span = request_span(req.headers(), method, route);
        req.extensions_mut().insert(RequestSpan(span.clone()));
        let fut = self.inner.call(req);
        // Polled inside its span: what runs in the request's own task and makes no child of its
        // own finds it current (a Redis command's span, when asked for).
        let current = span.clone();
        Box::pin(
            async move {
                let resp = fut.await?;
                finish(&span, &resp);
                Ok(resp)
            }
            .instrument(current),
        )
    }
}
