//! One access-log line and the request metrics per data-plane request: route, method, status,
//! duration, client name and the upstream's `traceId`. It sits outermost so that every answer,
//! the gateway's own errors included, is counted. It reads what inner layers learned from the
//! answer's extensions; it never logs a header or a body.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Method, Request};
use prometheus::IntGauge;
use tower::{Layer, Service};

use crate::config::LogFormat;
use crate::envelope::EnvelopeHead;
use crate::layers::ClientName;
use crate::layers::request_id::X_REQUEST_ID;
use crate::metrics::Metrics;
use crate::routes::Route;
use crate::svc::{Resp, RespFuture};
use crate::telemetry::{self, AccessSink};

const ACCESS_TARGET: &str = "finovy_gateway::access";

/// One access line's fields.
struct Line<'a> {
    request_id: &'a str,
    method: &'static str,
    route: &'static str,
    status: u16,
    micros: u64,
    client: &'a str,
    upstream_trace: &'a str,
}

thread_local! {
    /// A line being formatted, reused so that formatting allocates nothing; and the current
    /// second's timestamp text, which every line of that second shares.
    static SCRATCH: std::cell::RefCell<(String, u64, String)> =
        const { std::cell::RefCell::new((String::new(), u64::MAX, String::new())) };
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (UTC), from the days-to-civil algorithm.
fn second_text(unix: u64, out: &mut String) {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    out.clear();
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
}

/// `n` in decimal, zero-padded to at least `width` digits.
fn push_padded(out: &mut String, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    while n > 0 || digits.len() - i < width {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend(digits[i..].iter().map(|&d| d as char));
}

/// Microseconds as milliseconds with three decimals (`1.234`).
fn push_millis(out: &mut String, micros: u64) {
    push_padded(out, micros / 1000, 1);
    out.push('.');
    push_padded(out, micros % 1000, 3);
}

/// A string as a JSON string literal.
fn json_str(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::Value::from(s).to_string());
    }
}

impl Line<'_> {
    /// Writes the line as the subscriber would (same fields, order and timestamp format), into
    /// its buffer.
    fn write(&self, sink: &AccessSink) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let (line, second, stamp) = &mut *scratch;
            if *second != now.as_secs() {
                *second = now.as_secs();
                second_text(now.as_secs(), stamp);
            }
            line.clear();
            // Pieces pushed one by one: `write!` with many arguments was most of a line's cost.
            let json = sink.format == LogFormat::Json;
            if json {
                line.push_str("{\"timestamp\":\"");
            }
            line.push_str(stamp);
            line.push('.');
            push_padded(line, u64::from(now.subsec_micros()), 6);
            if json {
                line.push_str("Z\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":");
                json_str(line, self.request_id);
                line.push_str(",\"method\":\"");
                line.push_str(self.method);
                line.push_str("\",\"route\":\"");
                line.push_str(self.route);
                line.push_str("\",\"status\":");
                push_padded(line, u64::from(self.status), 1);
                line.push_str(",\"duration_ms\":");
                push_millis(line, self.micros);
                line.push_str(",\"client\":");
                json_str(line, self.client);
                line.push_str(",\"upstream_trace_id\":");
                json_str(line, self.upstream_trace);
                line.push_str(",\"target\":\"");
                line.push_str(ACCESS_TARGET);
                line.push_str("\"}\n");
            } else {
                line.push_str("Z  INFO ");
                line.push_str(ACCESS_TARGET);
                line.push_str(": request request_id=");
                line.push_str(self.request_id);
                line.push_str(" method=");
                line.push_str(self.method);
                line.push_str(" route=");
                line.push_str(self.route);
                line.push_str(" status=");
                push_padded(line, u64::from(self.status), 1);
                line.push_str(" duration_ms=");
                push_millis(line, self.micros);
                line.push_str(" client=");
                line.push_str(self.client);
                line.push_str(" upstream_trace_id=");
                line.push_str(self.upstream_trace);
                line.push('\n');
            }
            let _ = sink.writer.append(line.as_bytes());
        });
    }
}

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
            let route: &'static str = resp
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
            let client: &str = resp.extensions().get::<ClientName>().map_or("-", |c| &c.0);
            let upstream_trace = resp
                .extensions()
                .get::<EnvelopeHead>()
                .and_then(|h| h.trace_id.as_deref())
                .unwrap_or("-");
            let line = Line {
                request_id,
                method,
                route,
                status: status.as_u16(),
                micros: elapsed.as_micros() as u64,
                client,
                upstream_trace,
            };
            match telemetry::access_sink() {
                Some(sink) if tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) => {
                    line.write(sink)
                }
                Some(_) => {}
                // No subscriber of ours (a test, or an embedding program): plain `tracing`.
                None => tracing::info!(
                    target: ACCESS_TARGET,
                    request_id = %request_id,
                    method = %method,
                    route = %route,
                    status = status.as_u16(),
                    duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3,
                    client = %client,
                    upstream_trace_id = %upstream_trace,
                    "request"
                ),
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_seconds() {
        let mut s = String::new();
        for (unix, text) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_795_490_535, "2026-11-24T03:22:15"),
            (4_102_444_799, "2099-12-31T23:59:59"),
        ] {
            second_text(unix, &mut s);
            assert_eq!(s, text);
        }
    }

    #[test]
    fn numbers_are_padded_and_millis_have_three_decimals() {
        let mut s = String::new();
        push_padded(&mut s, 0, 1);
        s.push(' ');
        push_padded(&mut s, 42, 6);
        s.push(' ');
        push_padded(&mut s, 200, 1);
        s.push(' ');
        push_millis(&mut s, 1_234_005);
        s.push(' ');
        push_millis(&mut s, 30);
        assert_eq!(s, "0 000042 200 1234.005 0.030");
    }

    #[test]
    fn json_strings_are_escaped_when_needed() {
        let mut s = String::new();
        json_str(&mut s, "plain-id");
        json_str(&mut s, "a\"b\\c\n");
        assert_eq!(s, r#""plain-id""a\"b\\c\n""#);
    }
}
