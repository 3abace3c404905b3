//! The request's span as the steps below the edge see it: a request extension ([`RequestSpan`])
//! that travels with the call into the tasks a fill or a create runs in, the macro each step makes
//! its child span with ([`child_span!`]), and the upstream request's `traceparent` ([`inject`]).
//! The layer that makes the request's span is `crate::layers::trace`.

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

/// Writes `span` as the upstream request's parent (`traceparent`); the caller's `tracestate`
/// travels on, as the span's context carries it.
pub(crate) fn inject(span: &Span, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}
