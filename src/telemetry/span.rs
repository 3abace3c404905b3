//! The request's span as the steps below the edge see it: a request extension ([`RequestSpan`])
//! that travels with the call into the tasks a fill or a create runs in, the macro each step makes
//! its child span with ([`child_span!`]), and the upstream request's `traceparent` ([`inject`]).
//! The layer that makes the request's span is `crate::layers::trace`.
//!
//! Redis commands are spans only on request ([`redis`]): one per command would outnumber the
//! request's own spans, so they are made only while the log filter enables debug for
//! [`REDIS_SPANS_TARGET`], under the span current when the command runs (the request's, whose
//! future runs inside it, or a step's that runs its commands inside its own, like `reconcile`).

use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, Request};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_http::HeaderInjector;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A child of `parent` (a [`Span`]) named `name`, with more fields as `tracing` takes them.
macro_rules! child_span {
    ($parent:expr, $name:literal $(, $($fields:tt)*)?) => {
        tracing::info_span!(
            target: $crate::telemetry::TRACE_TARGET,
            parent: $parent,
            $name
            $(, $($fields)*)?
        )
    };
}
pub(crate) use child_span;

/// The request's span, a request extension.
#[derive(Clone)]
pub(crate) struct RequestSpan(pub(crate) Span);

impl RequestSpan {
    /// The request's span, when traces are on.
    pub(crate) fn of<B>(req: &Request<B>) -> Option<&Span> {
        req.extensions().get::<RequestSpan>().map(|s| &s.0)
    }

    /// [`RequestSpan::of`] a request taken apart.
    pub(crate) fn of_parts(parts: &http::request::Parts) -> Option<&Span> {
        parts.extensions.get::<RequestSpan>().map(|s| &s.0)
    }
}

/// The module whose debug level turns Redis spans on (`[log] level` or `RUST_LOG`, e.g.
/// `info,finovy_gateway::fleet=debug`), as long as traces are on.
pub(crate) const REDIS_SPANS_TARGET: &str = "finovy_gateway::fleet";

/// Whether the log filter enables debug for [`REDIS_SPANS_TARGET`]: set when logging starts and
/// again when a reload changes the level.
static REDIS_SPANS: AtomicBool = AtomicBool::new(false);

pub(crate) fn set_redis_spans(on: bool) {
    REDIS_SPANS.store(on, Ordering::Relaxed);
}

/// The span of one Redis operation `op` (`redis <op>`, OpenTelemetry's database client
/// conventions), when traces are on, Redis spans are asked for, and a span is current to be its
/// parent: a command run outside any request (the fleet marker's check) makes no trace of its own.
pub(crate) fn redis(op: &'static str) -> Option<Span> {
    if !crate::telemetry::traces_on() || !REDIS_SPANS.load(Ordering::Relaxed) {
        return None;
    }
    let parent = Span::current();
    if parent.is_none() {
        return None;
    }
    Some(tracing::debug_span!(
        target: crate::telemetry::TRACE_TARGET,
        parent: &parent,
        "redis",
        otel.name = %RedisName(op),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        db.system.name = "redis",
        db.operation.name = op,
        error.type = tracing::field::Empty,
    ))
}

/// The span current now, when traces are on (else none): for work a request hands to a task of
/// its own to find it current there (`tracing::Instrument`).
pub(crate) fn current() -> Span {
    if crate::telemetry::traces_on() {
        Span::current()
    } else {
        Span::none()
    }
}

/// `redis <op>`, the span's name.
struct RedisName(&'static str);

impl std::fmt::Display for RedisName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis {}", self.0)
    }
}

/// Writes `span` as the upstream request's parent (`traceparent`); the caller's `tracestate`
/// travels on, as the span's context carries it.
pub(crate) fn inject(span: &Span, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}
