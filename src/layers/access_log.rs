//! One access-log line and the request metrics per data-plane request: route, method, status,
//! duration, client name and the upstream's `traceId`. It sits outermost so that every answer,
//! the gateway's own errors included, is counted. It reads what inner layers learned from the
//! answer's extensions; it never logs a header or a body.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Method, Request};
use prometheus::IntGauge;
use tower::{Layer, Service};

use crate::envelope::EnvelopeHead;
use crate::layers::ClientName;
use crate::layers::request_id::X_REQUEST_ID;
use crate::metrics::Metrics;
use crate::routes::Route;
use crate::svc::{Resp, RespFuture};

#[derive(Clone)]
pub struct AccessLogLayer {
    metrics: Arc<Metrics>,
}

impl AccessLogLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        AccessLogLayer { metrics }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AccessLog<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Counts a request in flight for as long as it lives, cancelled ones included.
struct InFlight(IntGauge);

impl InFlight {
    fn enter(g: &IntGauge) -> InFlight {
        g.inc();
        InFlight(g.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Methods as a bounded label set.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl<S, B> Service<Request<B>> for AccessLog<S>
where
    S: Service<Request<B>, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = RespFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> RespFuture {
        let started = Instant::now();
        let method = method_label(req.method());
        let inflight = InFlight::enter(&self.metrics.inflight);
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            drop(inflight);
            let elapsed = started.elapsed();
            let route = resp
                .extensions()
                .get::<Route>()
                .map_or("unknown", |r| r.as_str());
            let status = resp.status();
            metrics
                .requests
                .with_label_values(&[route, method, status.as_str()])
                .inc();
            metrics
                .request_duration
                .with_label_values(&[route])
                .observe(elapsed.as_secs_f64());
            let request_id = resp
                .headers()
                .get(X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            let client = resp.extensions().get::<ClientName>().map_or("-", |c| &c.0);
            let upstream_trace = resp
                .extensions()
                .get::<EnvelopeHead>()
                .and_then(|h| h.trace_id.as_deref())
                .unwrap_or("-");
            tracing::info!(
                target: "finovy_gateway::access",
                // Display (`%`), not Debug: no quoting or escaping work per line.
                request_id = %request_id,
                method = %method,
                route = %route,
                status = status.as_u16(),
                duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3,
                client = %client,
                upstream_trace_id = %upstream_trace,
                "request"
            );
            Ok(resp)
        })
    }
}
