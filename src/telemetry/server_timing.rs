//! `Server-Timing` on every data-plane answer (CONTRACT.md, `[server] server_timing`, on by
//! default): where a cached route answered from (`cache;desc=hit|miss|stale`), the time spent in
//! upstream calls (`upstream;dur=`), the time waited for a rate-limit slot, for another
//! request's fill, or for an identical create or mutation in flight that it joined (`wait;dur=`),
//! and the whole (`total;dur=`), in milliseconds.
//!
//! A request below the cache-hit layer carries a [`Timing`] (a request extension, so it travels
//! with the call into the tasks a fill or a create runs in); the steps that know a part add to it
//! ([`Timing::upstream`], [`Timing::waited`], [`Timing::cache`]), and this layer writes the header
//! when the answer comes back. A fresh hit at the edge writes its header itself ([`hit`]), with no
//! [`Timing`] at all. With the header off, the layer is not in the stack, no request carries a
//! [`Timing`], and the steps' lookups find none.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::svc::{Resp, RespFuture};

pub(crate) const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// Where a cached route's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum CacheOutcome {
    Hit = 1,
    Miss = 2,
    Stale = 3,
}

impl CacheOutcome {
    pub(crate) fn desc(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Stale => "stale",
        }
    }
}

/// What one request's steps tell its `Server-Timing` header; shared by every clone of the
/// request's call (a fill or a create may run in a task of its own).
#[derive(Clone, Default)]
pub(crate) struct Timing(Arc<Parts>);

#[derive(Default)]
struct Parts {
    /// Microseconds in upstream calls, plus one so that a call of 0 µs still shows.
    upstream: AtomicU64,
    /// Microseconds waited, plus one (as `upstream`).
    wait: AtomicU64,
    /// A [`CacheOutcome`], 0 for none.
    cache: AtomicU8,
}

impl Timing {
    /// The request's timing, when the header is on.
    pub(crate) fn of<B>(req: &Request<B>) -> Option<&Timing> {
        req.extensions().get::<Timing>()
    }

    /// Adds an upstream call's time.
    pub(crate) fn upstream(&self, took: Duration) {
        add(&self.0.upstream, took);
    }

    /// Adds a wait (for a rate-limit slot, another's fill or flight).
    pub(crate) fn waited(&self, took: Duration) {
        add(&self.0.wait, took);
    }

    pub(crate) fn cache(&self, outcome: CacheOutcome) {
        self.0.cache.store(outcome as u8, Ordering::Relaxed);
    }

    /// The header's value, `total` the request's whole time.
    fn value(&self, total: Duration) -> HeaderValue {
        let mut out = Writer::default();
        match self.0.cache.load(Ordering::Relaxed) {
            1 => out.desc("cache", CacheOutcome::Hit.desc()),
            2 => out.desc("cache", CacheOutcome::Miss.desc()),
            3 => out.desc("cache", CacheOutcome::Stale.desc()),
            _ => {}
        }
        for (name, cell) in [("upstream", &self.0.upstream), ("wait", &self.0.wait)] {
            let micros = cell.load(Ordering::Relaxed);
            if micros > 0 {
                out.dur(name, micros - 1);
            }
        }
        out.dur("total", micros(total));
        out.header()
    }
}

fn add(cell: &AtomicU64, took: Duration) {
    // The first addition also sets the "was there" one.
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.max(1).saturating_add(micros(took)))
    });
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A fresh hit's header (`cache;desc=hit, total;dur=`): formatted on the stack, so the header's
/// value is the only allocation.
pub(crate) fn hit(total: Duration) -> HeaderValue {
    let mut out = Writer::default();
    out.desc("cache", "hit");
    out.dur("total", micros(total));
    out.header()
}

/// The header's text, written into a fixed buffer (its longest form is well under its size).
struct Writer {
    buf: [u8; 128],
    len: usize,
}

impl Default for Writer {
    fn default() -> Self {
        Writer {
            buf: [0; 128],
            len: 0,
        }
    }
}

impl Writer {
    fn push(&mut self, bytes: &[u8]) {
        let end = (self.len + bytes.len()).min(self.buf.len());
        let n = end - self.len;
        self.buf[self.len..end].copy_from_slice(&bytes[..n]);
        self.len = end;
    }

    fn sep(&mut self) {
        if self.len > 0 {
            self.push(b", ");
        }
    }

    fn desc(&mut self, name: &str, desc: &str) {
        self.sep();
        self.push(name.as_bytes());
        self.push(b";desc=");
        self.push(desc.as_bytes());
    }

    /// `name;dur=<ms>` with three decimals.
    fn dur(&mut self, name: &str, micros: u64) {
        self.sep();
        self.push(name.as_bytes());
        self.push(b";dur=");
        self.number(micros / 1000);
        let frac = micros % 1000;
        self.push(&[
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
    }

    fn number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn header(&self) -> HeaderValue {
        // Only ASCII letters, digits and `;=., ` are ever written.
        HeaderValue::from_bytes(&self.buf[..self.len])
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

// === impl ServerTimingLayer ===

/// Puts a [`Timing`] on each request and the header on its answer.
#[derive(Clone, Copy)]
pub(crate) struct ServerTimingLayer;

impl<S> Layer<S> for ServerTimingLayer {
    type Service = ServerTiming<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ServerTiming { inner }
    }
}

#[derive(Clone)]
pub(crate) struct ServerTiming<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for ServerTiming<S>
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
        let started = Instant::now();
        let timing = Timing::default();
        req.extensions_mut().insert(timing.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            let value = timing.value(started.elapsed());
            resp.headers_mut().insert(SERVER_TIMING, value);
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_names_only_the_parts_a_request_had() {
        let t = Timing::default();
        assert_eq!(t.value(Duration::from_micros(1500)), "total;dur=1.500");
        t.cache(CacheOutcome::Miss);
        t.upstream(Duration::from_micros(12_345));
        t.upstream(Duration::from_micros(5));
        t.waited(Duration::ZERO);
        assert_eq!(
            t.value(Duration::from_millis(20)),
            "cache;desc=miss, upstream;dur=12.350, wait;dur=0.000, total;dur=20.000"
        );
        assert_eq!(
            hit(Duration::from_micros(7)),
            "cache;desc=hit, total;dur=0.007"
        );
        let mut long = Writer::default();
        for _ in 0..20 {
            long.dur("upstream", u64::MAX);
        }
        assert_eq!(long.len, 128, "a longer text is cut, never a panic");
    }
}
