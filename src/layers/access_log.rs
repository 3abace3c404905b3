//! One access-log line and the request metrics per data-plane request: route, method, status,
//! duration, client name and the upstream's `traceId` (and the account, on the answers that name
//! one: token leases). It sits right below the cache-hit layer, so that every answer the stack
//! makes, the gateway's own errors included, is counted; fresh hits are counted and logged by the
//! same [`Recorder`]. It reads what inner layers learned from the answer's extensions; it never
//! logs a header or a body.
//!
//! Every field value is escaped (see [`push_value`]): a client name, request id or upstream
//! `traceId` holding a newline, a quote or `key=value` text cannot forge a line or a field.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Method, Request, StatusCode};
use prometheus::{Histogram, IntCounter, IntGauge};
use tower::{Layer, Service};

use crate::admitted::{AccountName, ClientName};
use crate::config::LogFormat;
use crate::envelope::EnvelopeHead;
use crate::layers::request_id::X_REQUEST_ID;
use crate::metrics::Metrics;
use crate::routes::{GatewayRoute, Route, RouteTable};
use crate::svc::{Resp, RespFuture};
use crate::telemetry::{self, ACCESS_TARGET};

/// One access line's fields.
pub(crate) struct Line<'a> {
    pub(crate) request_id: &'a str,
    pub(crate) method: &'static str,
    pub(crate) route: &'static str,
    pub(crate) status: u16,
    pub(crate) micros: u64,
    pub(crate) client: &'a str,
    /// Written only when set (a token lease names the account it leased).
    pub(crate) account: Option<&'a str>,
    pub(crate) upstream_trace: &'a str,
}

thread_local! {
    /// The current second's timestamp text (`YYYY-MM-DDTHH:MM:SS`), which every line of that
    /// second shares.
    static STAMP: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    /// A line being formatted, reused so that formatting allocates nothing.
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (UTC), from the days-to-civil algorithm.
fn second_text(unix: u64) -> [u8; 19] {
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
    let mut out = Vec::with_capacity(19);
    push_padded(&mut out, year.max(0) as u64, 4);
    for (sep, n) in [
        (b'-', month as u64),
        (b'-', day as u64),
        (b'T', secs / 3600),
        (b':', secs / 60 % 60),
        (b':', secs % 60),
    ] {
        out.push(sep);
        push_padded(&mut out, n, 2);
    }
    out.try_into().unwrap_or([b'?'; 19])
}

/// `n` in decimal, zero-padded to at least `width` digits.
fn push_padded(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    while n > 0 || digits.len() - i < width {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[i..]);
}

/// Microseconds as milliseconds with three decimals (`1.234`).
fn push_millis(out: &mut Vec<u8>, micros: u64) {
    push_padded(out, micros / 1000, 1);
    out.push(b'.');
    push_padded(out, micros % 1000, 3);
}

/// A string as a JSON string literal.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(serde_json::Value::from(s).to_string().as_bytes());
    }
}

/// Whether `s` can be written as it is in a human line: visible ASCII without `"`, `\\` or `=`.
/// The check is one pass over the bytes, so ordinary values are copied with no other work.
fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' && b != b'=')
}

/// A field value of a human line: as it is when [`plain`], else quoted, with quotes, backslashes,
/// control and other non-printable characters escaped (`\n`, `\"`, `\u{1b}`), so it stays one
/// field of one line.
fn push_value(out: &mut Vec<u8>, s: &str) {
    if plain(s) {
        out.extend_from_slice(s.as_bytes());
    } else {
        use std::io::Write;
        let _ = write!(out, "\"{}\"", s.escape_debug());
    }
}

/// [`push_value`] as text, for lines that go through `tracing` instead.
fn escaped(s: &str) -> std::borrow::Cow<'_, str> {
    if plain(s) {
        std::borrow::Cow::Borrowed(s)
    } else {
        std::borrow::Cow::Owned(format!("\"{}\"", s.escape_debug()))
    }
}

impl Line<'_> {
    /// Logs the line: into the log buffer when this process's subscriber is installed and the
    /// access target is enabled, else through plain `tracing`.
    pub(crate) fn emit(&self) {
        match telemetry::access_sink() {
            // Formatted into this thread's scratch buffer, outside the log buffer's lock, which
            // every thread's lines go through.
            Some(sink) if sink.enabled.load(std::sync::atomic::Ordering::Relaxed) => {
                LINE.with(|line| {
                    let mut line = line.borrow_mut();
                    line.clear();
                    self.write(&mut line, sink.format == LogFormat::Json);
                    let _ = sink.writer.append(&line);
                });
            }
            Some(_) => {}
            // No subscriber of ours (a test, or an embedding program): plain `tracing`.
            None => tracing::info!(
                target: ACCESS_TARGET,
                request_id = %escaped(self.request_id),
                method = %self.method,
                route = %self.route,
                status = self.status,
                duration_ms = self.micros as f64 / 1e3,
                client = %escaped(self.client),
                account = self.account.map(escaped).as_deref(),
                upstream_trace_id = %escaped(self.upstream_trace),
                "request"
            ),
        }
    }

    /// Writes the line as the subscriber would (same fields, order and timestamp format). Pieces
    /// are pushed one by one: `write!` with many arguments was most of a line's cost.
    fn write(&self, line: &mut Vec<u8>, json: bool) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let stamp = STAMP.with(|cell| {
            let (second, text) = cell.get();
            if second == now.as_secs() {
                return text;
            }
            let text = second_text(now.as_secs());
            cell.set((now.as_secs(), text));
            text
        });
        if json {
            line.extend_from_slice(b"{\"timestamp\":\"");
        }
        line.extend_from_slice(&stamp);
        line.push(b'.');
        push_padded(line, u64::from(now.subsec_micros()), 6);
        if json {
            line.extend_from_slice(
                b"Z\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":",
            );
            json_str(line, self.request_id);
            line.extend_from_slice(b",\"method\":\"");
            line.extend_from_slice(self.method.as_bytes());
            line.extend_from_slice(b"\",\"route\":\"");
            line.extend_from_slice(self.route.as_bytes());
            line.extend_from_slice(b"\",\"status\":");
            push_padded(line, u64::from(self.status), 1);
            line.extend_from_slice(b",\"duration_ms\":");
            push_millis(line, self.micros);
            line.extend_from_slice(b",\"client\":");
            json_str(line, self.client);
            if let Some(account) = self.account {
                line.extend_from_slice(b",\"account\":");
                json_str(line, account);
            }
            line.extend_from_slice(b",\"upstream_trace_id\":");
            json_str(line, self.upstream_trace);
            line.extend_from_slice(b",\"target\":\"");
            line.extend_from_slice(ACCESS_TARGET.as_bytes());
            line.extend_from_slice(b"\"}\n");
        } else {
            line.extend_from_slice(b"Z  INFO ");
            line.extend_from_slice(ACCESS_TARGET.as_bytes());
            line.extend_from_slice(b": request request_id=");
            push_value(line, self.request_id);
            line.extend_from_slice(b" method=");
            line.extend_from_slice(self.method.as_bytes());
            line.extend_from_slice(b" route=");
            line.extend_from_slice(self.route.as_bytes());
            line.extend_from_slice(b" status=");
            push_padded(line, u64::from(self.status), 1);
            line.extend_from_slice(b" duration_ms=");
            push_millis(line, self.micros);
            line.extend_from_slice(b" client=");
            push_value(line, self.client);
            if let Some(account) = self.account {
                line.extend_from_slice(b" account=");
                push_value(line, account);
            }
            line.extend_from_slice(b" upstream_trace_id=");
            push_value(line, self.upstream_trace);
            line.push(b'\n');
        }
    }
}

/// A route's series for its usual answer (its own method, status 200), resolved on first use:
/// resolving a labelled series hashes its label values, which was a tenth of a hit's work.
struct RouteSeries {
    ok: IntCounter,
    duration: Histogram,
}

/// The one place where an answer is counted and logged, whichever path made it: the stack's
/// answers ([`AccessLog`]) and fresh cache hits ([`crate::layers::cache_hit`]) alike, so the two
/// can never count, time or log differently.
pub(crate) struct Recorder {
    metrics: Arc<Metrics>,
    /// By route index.
    per_route: Vec<OnceLock<RouteSeries>>,
}

impl Recorder {
    pub(crate) fn new(metrics: Arc<Metrics>, routes: &RouteTable) -> Recorder {
        Recorder {
            metrics,
            per_route: routes.iter().map(|_| OnceLock::new()).collect(),
        }
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts a request in flight until the guard is dropped (when its answer is made).
    pub(crate) fn in_flight(&self) -> InFlight {
        InFlight::enter(&self.metrics.inflight)
    }

    /// Counts the answer in the request metrics and writes its access line. `route` is the
    /// classified route, when there is one (`line.route` names it, or the gateway's own route).
    pub(crate) fn finish(&self, route: Option<Route>, status: StatusCode, line: &Line<'_>) {
        let seconds = line.micros as f64 / 1e6;
        let usual = route.filter(|r| {
            status == StatusCode::OK
                && line.method == method_label(r.method())
                && r.index() < self.per_route.len()
        });
        match usual {
            Some(r) => {
                let series = self.per_route[r.index()].get_or_init(|| RouteSeries {
                    ok: self
                        .metrics
                        .requests
                        .with_label_values(&[r.as_str(), line.method, "200"]),
                    duration: self
                        .metrics
                        .request_duration
                        .with_label_values(&[r.as_str()]),
                });
                series.ok.inc();
                series.duration.observe(seconds);
            }
            None => {
                self.metrics
                    .requests
                    .with_label_values(&[line.route, line.method, status.as_str()])
                    .inc();
                self.metrics
                    .request_duration
                    .with_label_values(&[line.route])
                    .observe(seconds);
            }
        }
        line.emit();
    }
}

#[derive(Clone)]
pub(crate) struct AccessLogLayer {
    recorder: Arc<Recorder>,
}

impl AccessLogLayer {
    pub(crate) fn new(recorder: Arc<Recorder>) -> Self {
        AccessLogLayer { recorder }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            recorder: self.recorder.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct AccessLog<S> {
    inner: S,
    recorder: Arc<Recorder>,
}

/// Counts a request in flight for as long as it lives, cancelled ones included.
pub(crate) struct InFlight(IntGauge);

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
pub(crate) fn method_label(m: &Method) -> &'static str {
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
        let inflight = self.recorder.in_flight();
        let recorder = self.recorder.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            drop(inflight);
            let elapsed = started.elapsed();
            let route = resp.extensions().get::<Route>().copied();
            let label: &'static str = match route {
                Some(r) => r.as_str(),
                None => resp
                    .extensions()
                    .get::<GatewayRoute>()
                    .map_or("unknown", |r| r.as_str()),
            };
            let request_id = resp
                .headers()
                .get(X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            let client: &str = resp.extensions().get::<ClientName>().map_or("-", |c| &c.0);
            let account = resp.extensions().get::<AccountName>().map(|a| &*a.0);
            let upstream_trace = resp
                .extensions()
                .get::<EnvelopeHead>()
                .and_then(|h| h.trace_id.as_deref())
                .unwrap_or("-");
            let line = Line {
                request_id,
                method,
                route: label,
                status: resp.status().as_u16(),
                micros: elapsed.as_micros() as u64,
                client,
                account,
                upstream_trace,
            };
            recorder.finish(route, resp.status(), &line);
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_seconds() {
        for (unix, text) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_795_490_535, "2026-11-24T03:22:15"),
            (4_102_444_799, "2099-12-31T23:59:59"),
        ] {
            assert_eq!(&second_text(unix), text.as_bytes());
        }
    }

    #[test]
    fn numbers_are_padded_and_millis_have_three_decimals() {
        let mut s = Vec::new();
        push_padded(&mut s, 0, 1);
        s.push(b' ');
        push_padded(&mut s, 42, 6);
        s.push(b' ');
        push_padded(&mut s, 200, 1);
        s.push(b' ');
        push_millis(&mut s, 1_234_005);
        s.push(b' ');
        push_millis(&mut s, 30);
        assert_eq!(s, b"0 000042 200 1234.005 0.030");
    }

    #[test]
    fn human_values_are_copied_when_plain_and_quoted_and_escaped_otherwise() {
        let mut s = Vec::new();
        for v in [
            "plain-id_1.2",
            "a\nb",
            "x\" status=500 y=\"",
            "back\\slash",
            "c\r\u{1b}[2J\u{7f}\u{2028}",
            "渲大师",
            "",
        ] {
            push_value(&mut s, v);
            s.push(b'|');
        }
        let text = String::from_utf8(s).unwrap();
        assert_eq!(
            text,
            r#"plain-id_1.2|"a\nb"|"x\" status=500 y=\""|"back\\slash"|"c\r\u{1b}[2J\u{7f}\u{2028}"|"渲大师"|""|"#
        );
        assert!(!text.contains('\n') && !text.contains('\r'));
        assert_eq!(escaped("id-1"), "id-1");
        assert_eq!(escaped("a b"), "\"a b\"");
    }

    #[test]
    fn json_strings_are_escaped_when_needed() {
        let mut s = Vec::new();
        json_str(&mut s, "plain-id");
        json_str(&mut s, "a\"b\\c\n");
        assert_eq!(s, br#""plain-id""a\"b\\c\n""#);
    }
}
