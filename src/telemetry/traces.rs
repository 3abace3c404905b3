//! Traces exported over OTLP (HTTP/protobuf), off unless `[telemetry]` names a collector (see
//! [`crate::config::TraceSettings`]). The gateway's spans are `tracing` spans of one target
//! ([`TRACE_TARGET`]); `tracing-opentelemetry` turns them into OpenTelemetry spans, sampled
//! parent-based by the SDK, and [`Queue`] hands the sampled ones to the exporter.
//!
//! A request never waits on a collector: a finished span goes into a bounded queue with a
//! `try_send`; a full queue drops it, and so does an export that fails (a collector that is down
//! or slow), each counted in `finovy_gateway_spans_dropped_total`. The export runs on a thread of
//! its own with a small runtime, over hyper (the HTTP stack the gateway already has).
//!
//! Whether spans are made at all is [`on`], one relaxed load: with tracing off, no layer makes a
//! span, so a cache hit costs what it did without tracing. With tracing on, a fresh hit decides
//! its sampling before it makes a span ([`sample_hit`], the same rule as the SDK's sampler): an
//! unsampled hit, most of them at a small ratio, makes none, and a sampled one is not sampled a
//! second time by its trace id ([`Decided`]).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use prometheus::IntCounter;
use tokio::sync::mpsc;

use crate::config::{Sampling, TraceSettings};

/// The target of every span the gateway makes for traces; only these reach the exporter, and the
/// log lines never show them.
pub(crate) const TRACE_TARGET: &str = "finovy_gateway::trace";

/// Finished spans waiting for export (the OpenTelemetry SDK's default queue size).
const QUEUE: usize = 2048;
/// Spans per export request.
const BATCH: usize = 512;
/// One export's whole time (connect, send, answer).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a shutdown waits for the last batch.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

static ON: AtomicBool = AtomicBool::new(false);

/// The sampling the exporter was built with, for the hits' own decision ([`sample_hit`]).
static SAMPLING: OnceLock<Sampling> = OnceLock::new();

thread_local! {
    /// Set while a span whose sampling was decided already starts ([`decided`]).
    static DECIDED: Cell<bool> = const { Cell::new(false) };
}

/// Whether a fresh hit with these headers is sampled, decided before any span is made: by a
/// caller's `traceparent` when sampling is parent-based, else by the ratio. The SDK's sampler
/// answers the same, but only for a span already made.
pub(crate) fn sample_hit(headers: &HeaderMap) -> bool {
    let Some(s) = SAMPLING.get() else {
        return false;
    };
    if s.parent_based && headers.contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let parent = cx.span().span_context().clone();
        if parent.is_valid() {
            return parent.is_sampled();
        }
    }
    s.ratio >= 1.0 || (s.ratio > 0.0 && rand::random::<f64>() < s.ratio)
}

/// Runs `f`, which makes a span and ends it, with that span's sampling decided: sampled
/// ([`sample_hit`] said so). The span starts, and is sampled, as it ends, on this thread.
pub(crate) fn decided<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            DECIDED.with(|d| d.set(false));
        }
    }
    DECIDED.with(|d| d.set(true));
    let _reset = Reset;
    f()
}

/// Whether this process exports traces (so its layers make spans).
#[inline]
pub(crate) fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// `finovy_gateway_spans_dropped_total`: one per process, as the exporter is; every
/// [`crate::metrics::Metrics`] registers it.
pub(crate) static SPANS_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "finovy_gateway_spans_dropped_total",
        "Spans not exported: the queue was full or the collector did not take them.",
    )
    .expect("a valid metric")
});

/// The exporter's pipeline, built by [`crate::telemetry::init_for`]; [`on`] from then on.
pub(crate) fn provider(settings: &TraceSettings) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(HyperExport::new()?)
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = Resource::builder();
    // The standard variables name the service and add attributes (the SDK reads them); without
    // a name of its own, the service is the gateway.
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name("finovy-gateway");
    }
    let _ = SAMPLING.set(settings.sampling);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Queue::start(exporter)?)
        .with_sampler(Decided(sampler(settings.sampling)))
        .with_resource(resource.build())
        .build();
    ON.store(true, Ordering::Relaxed);
    Ok(provider)
}

/// The `tracing` layer that makes OpenTelemetry spans of the gateway's.
pub(crate) fn layer<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("finovy-gateway"))
        // Only the fields the spans declare: no code locations, thread names or log events.
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
}

fn sampler(s: Sampling) -> Sampler {
    let root = if s.ratio >= 1.0 {
        Sampler::AlwaysOn
    } else if s.ratio <= 0.0 {
        Sampler::AlwaysOff
    } else {
        Sampler::TraceIdRatioBased(s.ratio)
    };
    if s.parent_based {
        Sampler::ParentBased(Box::new(root))
    } else {
        root
    }
}

// === impl Decided ===

/// The configured sampler, except for a span whose sampling was decided before it was made
/// ([`decided`]): that one is sampled, with its parent's trace state.
#[derive(Debug, Clone)]
struct Decided(Sampler);

impl ShouldSample for Decided {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if DECIDED.with(Cell::get) {
            let trace_state = parent_context
                .map(|cx| cx.span().span_context().trace_state().clone())
                .unwrap_or_default();
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state,
            };
        }
        self.0
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

// === impl Queue ===

enum Msg {
    Span(Box<SpanData>),
    Resource(Resource),
    /// Answered once everything sent before it was exported (or dropped).
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// The bounded queue between finished spans and the export thread.
#[derive(Debug)]
struct Queue {
    tx: mpsc::Sender<Msg>,
}

impl Queue {
    fn start(exporter: opentelemetry_otlp::SpanExporter) -> Result<Queue, String> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        std::thread::Builder::new()
            .name("trace-export".into())
            .spawn(move || rt.block_on(export(exporter, rx)))
            .map_err(|e| e.to_string())?;
        Ok(Queue { tx })
    }

    fn flush(&self, wait: Duration) -> OTelSdkResult {
        let (done, finished) = std::sync::mpsc::sync_channel(1);
        self.tx
            .try_send(Msg::Flush(done))
            .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
        finished
            .recv_timeout(wait)
            .map_err(|_| OTelSdkError::Timeout(wait))
    }
}

/// Exports what the queue holds, a batch at a time, until every sender is gone.
async fn export(exporter: opentelemetry_otlp::SpanExporter, mut rx: mpsc::Receiver<Msg>) {
    let mut exporter = exporter;
    let mut msgs = Vec::with_capacity(BATCH);
    let mut failing = false;
    while rx.recv_many(&mut msgs, BATCH).await > 0 {
        let mut batch = Vec::with_capacity(msgs.len());
        let mut flushes = Vec::new();
        for msg in msgs.drain(..) {
            match msg {
                Msg::Span(span) => batch.push(*span),
                Msg::Resource(r) => exporter.set_resource(&r),
                Msg::Flush(done) => flushes.push(done),
            }
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            match exporter.export(batch).await {
                Ok(()) => failing = false,
                Err(e) => {
                    SPANS_DROPPED.inc_by(n);
                    // Once per outage, not once per batch.
                    if !failing {
                        tracing::warn!(error = %e, "trace export failed; spans are dropped until it works");
                    }
                    failing = true;
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.tx.try_send(Msg::Span(Box::new(span))).is_err() {
            SPANS_DROPPED.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.flush(EXPORT_TIMEOUT)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.flush(timeout.min(SHUTDOWN_WAIT))
    }

    fn set_resource(&mut self, resource: &Resource) {
        let _ = self.tx.try_send(Msg::Resource(resource.clone()));
    }
}

// === impl HyperExport ===

/// The exporter's HTTP client: hyper, with rustls and the web PKI roots for `https`.
#[derive(Debug, Clone)]
struct HyperExport {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HyperExport {
    fn new() -> Result<HyperExport, String> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| e.to_string())?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(HyperExport {
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let answer = self.client.request(request.map(Full::new)).await?;
        let (parts, body) = answer.into_parts();
        // A collector's answer is small; a huge one is not read whole.
        let body = Limited::new(body, 1 << 20).collect().await?.to_bytes();
        Ok(Response::from_parts(parts, body))
    }
}

impl HttpClient for HyperExport {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            tokio::time::timeout(EXPORT_TIMEOUT, self.send(request))
                .await
                .map_err(|_| HttpError::from("the collector did not answer in time"))?
        })
    }
}
