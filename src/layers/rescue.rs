//! Turns the errors of tower's own middleware below it (load shedding, timeout) into envelope
//! answers. tower's `Timeout` and `LoadShed` fail with an error, which hyper would answer by
//! dropping the connection; CONTRACT.md owes the client a 503 or 504 in the envelope instead.

use std::convert::Infallible;
use std::task::{Context, Poll};

use http::Request;
use std::sync::Arc;

use tower::{Layer, Service};

use crate::admitted::RequestId;
use crate::error::GatewayError;
use crate::svc::{BoxError, Resp, RespFuture};

#[derive(Clone, Default)]
pub(crate) struct RescueLayer;

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rescue {
            inner,
            not_ready: None,
        }
    }
}

#[derive(Clone)]
pub(crate) struct Rescue<S> {
    inner: S,
    /// The error a `poll_ready` of the layers below returned, answered by the next `call`.
    not_ready: Option<Arc<BoxError>>,
}

/// Which of the gateway's errors a middleware error is.
fn classify(e: &BoxError) -> GatewayError {
    if e.is::<tower::timeout::error::Elapsed>() {
        GatewayError::RequestTimeout
    } else {
        // LoadShed's `Overloaded`, and anything else a tower layer might say: the service is unavailable.
        GatewayError::Overloaded
    }
}

impl<S, B> Service<Request<B>> for Rescue<S>
where
    S: Service<Request<B>, Response = Resp, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = RespFuture;

    /// `LoadShed` below is always ready (it answers `Overloaded` from `call` instead), so
    /// readiness passes straight through; an error here would be a tower layer's own, rendered by
    /// `call` like any other.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                self.not_ready = Some(Arc::new(e));
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, req: Request<B>) -> RespFuture {
        let id = RequestId::of(&req);
        if let Some(e) = self.not_ready.take() {
            let err = GatewayError::Overloaded;
            tracing::warn!(request_id = id.as_str(), error = %e, "request rescued");
            return Box::pin(async move { Ok(err.into_response(id.as_str())) });
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(resp) => Ok(resp),
                Err(e) => {
                    let err = classify(&e);
                    tracing::warn!(request_id = id.as_str(), error = %e, "request rescued");
                    Ok(err.into_response(id.as_str()))
                }
            }
        })
    }
}
