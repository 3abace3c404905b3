//! Reads the request body completely, up to `max_body_bytes` and within `body_timeout`: larger
//! bodies are answered 413 (envelope code 1007) without being read further, bodies that do not
//! arrive in time 408 (code 1007). Every layer below sees a complete body, which creates,
//! de-duplication and retries after a 401 need anyway.
//!
//! The body is read before the layers below are asked for readiness, so the concurrency limit's
//! slot is taken only once the body is here: a slow upload holds no slot, only its client's
//! in-flight share (see [`crate::layers::client_limit`]).

use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Limited};
use tower::{Layer, Service, ServiceExt};

use crate::admitted::AdmittedRequest;
use crate::error::{GatewayError, GatewayFuture};
use crate::svc::{BoxError, Resp};

#[derive(Clone)]
pub(crate) struct BodyLimitLayer {
    limit: usize,
    timeout: Duration,
}

impl BodyLimitLayer {
    pub(crate) fn new(limit: usize, timeout: Duration) -> Self {
        BodyLimitLayer { limit, timeout }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit {
            inner,
            limit: self.limit,
            timeout: self.timeout,
        }
    }
}

#[derive(Clone)]
pub(crate) struct BodyLimit<S> {
    inner: S,
    limit: usize,
    timeout: Duration,
}

impl<S, B> Service<AdmittedRequest<B>> for BodyLimit<S>
where
    S: Service<AdmittedRequest<Bytes>, Response = Resp, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Resp;
    type Error = GatewayError;
    type Future = GatewayFuture;

    /// Always ready: the layers below are asked only once the body is read (see the module doc).
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, entry: AdmittedRequest<B>) -> Self::Future {
        let inner = self.inner.clone();
        let AdmittedRequest { admitted, req } = entry;
        if req.body().is_end_stream() {
            // No body (a GET): nothing to read or wait for.
            let (parts, _) = req.into_parts();
            let req = Request::from_parts(parts, Bytes::new());
            return Box::pin(inner.oneshot(AdmittedRequest { admitted, req }));
        }
        let (limit, timeout) = (self.limit, self.timeout);
        Box::pin(async move {
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit as u64) {
                return Err(GatewayError::PayloadTooLarge { limit });
            }
            let (parts, body) = req.into_parts();
            let read = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
            let bytes = match read {
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    return Err(GatewayError::PayloadTooLarge { limit });
                }
                Ok(Err(e)) => {
                    let msg = format!("could not read the request body: {e}");
                    return Err(GatewayError::BadRequest { code: 1007, msg });
                }
                // The rest of the body may still come: the answer closes the connection (see
                // `GatewayError::abandons_body`).
                Err(_) => return Err(GatewayError::BodyTimeout(timeout)),
            };
            let req = Request::from_parts(parts, bytes);
            inner.oneshot(AdmittedRequest { admitted, req }).await
        })
    }
}
