//! `X-Request-Id`: kept when the client sends a sane one, generated otherwise; set on the request
//! (so it travels upstream), in the request's extensions, and on the answer.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request};
use rand::Rng;
use tower::{Layer, Service};

use crate::layers::RequestId;
use crate::svc::{Resp, RespFuture};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longer ids, or ids with other characters, are replaced: they end up in logs and envelopes.
const MAX_LEN: usize = 128;

#[derive(Clone, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

#[derive(Clone)]
pub struct RequestIdService<S> {
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
pub fn generate() -> String {
    // By hand: `format!("{:032x}")` was a tenth of the request-id layer's work on a cache hit.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n: u128 = rand::rng().random();
    let mut out = String::with_capacity(32);
    for shift in (0..32).rev() {
        out.push(HEX[(n >> (shift * 4)) as usize & 0xf] as char);
    }
    out
}

impl<S, B> Service<Request<B>> for RequestIdService<S>
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
        let id: String = match req.headers().get(&X_REQUEST_ID).and_then(acceptable) {
            Some(s) => s.to_string(),
            None => generate(),
        };
        let value = HeaderValue::from_str(&id).expect("checked or generated id is a valid header");
        req.headers_mut().insert(X_REQUEST_ID, value.clone());
        req.extensions_mut().insert(RequestId(Arc::from(id)));
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
