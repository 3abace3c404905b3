//! `X-Request-Id`: kept when the client sends a sane one, generated otherwise; set on the request
//! (so it travels upstream), in the request's extensions, and on the answer.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use rand::Rng;
use tower::{Layer, Service};

use crate::admitted::RequestId;
use crate::svc::{Resp, RespFuture};

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longer ids, or ids with other characters, are replaced: they end up in logs and envelopes.
const MAX_LEN: usize = 128;

#[derive(Clone, Default)]
pub(crate) struct SetRequestIdLayer;

impl<S> Layer<S> for SetRequestIdLayer {
    type Service = SetRequestId<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SetRequestId { inner }
    }
}

#[derive(Clone)]
pub(crate) struct SetRequestId<S> {
    inner: S,
}

fn acceptable(v: &HeaderValue) -> Option<&str> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= MAX_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then_some(s)
}

/// 128 random bits in hex, the shape of a W3C trace id.
fn random_hex() -> [u8; 32] {
    // By hand: `format!("{:032x}")` was a tenth of the request-id layer's work on a cache hit.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n: u128 = rand::rng().random();
    let mut out = [0u8; 32];
    for (pair, byte) in out.chunks_exact_mut(2).zip(n.to_be_bytes()) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    out
}

/// A new request id (the answers' ids are made by [`pick`]).
#[cfg(test)]
fn generate() -> String {
    random_hex().iter().map(|&d| d as char).collect()
}

/// The request's id as a header value: the client's own when it sent a sane one, else a new one.
pub(crate) fn pick(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(v) if acceptable(v).is_some() => v.clone(),
        _ => HeaderValue::from_bytes(&random_hex()).expect("hex digits are a valid header"),
    }
}

impl<S, B> Service<Request<B>> for SetRequestId<S>
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

    fn call(&mut self, mut req: Request<B>) -> RespFuture {
        let value = pick(req.headers());
        let id = value.to_str().expect("a picked id is visible ASCII");
        req.extensions_mut().insert(RequestId(Arc::from(id)));
        req.headers_mut().insert(X_REQUEST_ID, value.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            resp.headers_mut().insert(X_REQUEST_ID, value);
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_and_replaces_others() {
        assert_eq!(
            acceptable(&HeaderValue::from_static("abc-123")),
            Some("abc-123")
        );
        assert!(acceptable(&HeaderValue::from_static("a b")).is_none());
        assert!(acceptable(&HeaderValue::from_str(&"x".repeat(200)).unwrap()).is_none());
        let (a, b) = (generate(), generate());
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
        assert_ne!(a, b);
    }
}
