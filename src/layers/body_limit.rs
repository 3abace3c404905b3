//! Reads the request body completely, up to `max_body_bytes`: larger bodies are answered 413
//! (envelope code 1007) without being read further. Every layer below sees a complete body, which
//! creates, de-duplication and retries after a 401 need anyway.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Limited};
use tower::{Layer, Service};

use crate::error::GatewayError;
use crate::layers::RequestId;
use crate::svc::{BoxError, Req, Resp, RespFuture};

#[derive(Clone)]
pub struct BodyLimitLayer {
    limit: usize,
}

impl BodyLimitLayer {
    pub fn new(limit: usize) -> Self {
        BodyLimitLayer { limit }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Clone)]
pub struct BodyLimit<S> {
    inner: S,
    limit: usize,
}

impl<S, B> Service<Request<B>> for BodyLimit<S>
where
    S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = RespFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> RespFuture {
        if req.body().is_end_stream() {
            // No body (a GET): nothing to read or wait for, so no need for a copy of the stack.
            let (parts, _) = req.into_parts();
            return Box::pin(self.inner.call(Request::from_parts(parts, Bytes::new())));
        }
        let limit = self.limit;
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let id = RequestId::of(&req);
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit as u64) {
                return Ok(GatewayError::PayloadTooLarge { limit }.into_response(id.as_str()));
            }
            let (parts, body) = req.into_parts();
            let bytes = match Limited::new(body, limit).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return Ok(GatewayError::PayloadTooLarge { limit }.into_response(id.as_str()));
                }
                Err(e) => {
                    let msg = format!("could not read the request body: {e}");
                    return Ok(
                        GatewayError::BadRequest { code: 1007, msg }.into_response(id.as_str())
                    );
                }
            };
            inner.call(Request::from_parts(parts, bytes)).await
        })
    }
}
