//! Turns the errors of tower's own middleware below it (load shedding, timeout) into envelope
//! answers. tower's `Timeout` and `LoadShed` fail with an error, which hyper would answer by
//! dropping the connection; CONTRACT.md owes the client a 503 or 504 in the envelope instead.

use std::convert::Infallible;
use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service, ServiceExt};

use crate::error::GatewayError;
use crate::layers::RequestId;
use crate::svc::{BoxError, Resp, RespFuture};

#[derive(Clone, Default)]
pub struct RescueLayer;

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rescue { inner }
    }
}

#[derive(Clone)]
pub struct Rescue<S> {
    inner: S,
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
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = RespFuture;

    /// Readiness is checked per request (in `call`), so that a not-ready inner service becomes an
    /// answer rather than back-pressure on the connection.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> RespFuture {
        let id = req
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_default();
        let inner = self.inner.clone();
        Box::pin(async move {
            match inner.oneshot(req).await {
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
