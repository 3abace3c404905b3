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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::Method;
    use http_body_util::combinators::UnsyncBoxBody;
    use http_body_util::{Empty, Full};
    use tokio::time::Instant;
    use tower::service_fn;

    use super::*;
    use crate::layers::testing::{self, Log};

    const LIMIT: usize = 16;
    const TIMEOUT: Duration = Duration::from_secs(2);
    const CREATE: &str = "/v1/PveMachineHardDisk/open/create";

    /// The layer (16 bytes, 2 s) around an inner service that logs the body it got.
    fn limited<B>() -> (
        impl Service<AdmittedRequest<B>, Response = Resp, Error = GatewayError>,
        Log<Bytes>,
    )
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let log = Log::default();
        let seen = log.clone();
        let svc = BodyLimitLayer::new(LIMIT, TIMEOUT).layer(service_fn(
            move |entry: AdmittedRequest<Bytes>| {
                seen.push(entry.req.into_body());
                std::future::ready(Ok::<_, GatewayError>(testing::ok()))
            },
        ));
        (svc, log)
    }

    fn admitted<B>(method: Method, body: B) -> AdmittedRequest<B> {
        let caller = testing::caller("alpha", &testing::account("acct"));
        let uri = if method == Method::GET {
            "/v1/PveMachineHardDisk/open/info/d1"
        } else {
            CREATE
        };
        testing::admitted(&caller, testing::request(method, uri, body))
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_unread() {
        let (svc, log) = limited();
        let mut entry = admitted(Method::POST, Full::new(Bytes::from_static(b"{}")));
        entry
            .req
            .headers_mut()
            .insert(header::CONTENT_LENGTH, (LIMIT + 1).into());
        let got = svc.oneshot(entry).await;
        assert!(
            matches!(got, Err(GatewayError::PayloadTooLarge { limit: LIMIT })),
            "body_limit: a declared oversize body was not refused: {got:?}"
        );
        assert_eq!(log.len(), 0, "body_limit: the inner service was called");
    }

    #[tokio::test]
    async fn a_streamed_body_over_the_limit_is_refused() {
        let (svc, log) = limited();
        let body = testing::streamed(&["0123456789", "0123456789"], false);
        let got = svc.oneshot(admitted(Method::POST, body)).await;
        assert!(
            matches!(got, Err(GatewayError::PayloadTooLarge { limit: LIMIT })),
            "body_limit: a streamed oversize body was not refused: {got:?}"
        );
        assert_eq!(log.len(), 0, "body_limit: the inner service was called");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out_after_body_timeout() {
        let (svc, log) = limited::<UnsyncBoxBody<Bytes, Infallible>>();
        let started = Instant::now();
        let body = testing::streamed(&["{\"a"], true);
        let got = testing::within("body_limit", svc.oneshot(admitted(Method::POST, body))).await;
        assert!(
            matches!(got, Err(GatewayError::BodyTimeout(t)) if t == TIMEOUT),
            "body_limit: a stalled body did not time out: {got:?}"
        );
        assert_eq!(
            started.elapsed(),
            TIMEOUT,
            "body_limit: not after body_timeout"
        );
        assert_eq!(log.len(), 0);
    }

    #[tokio::test]
    async fn a_get_passes_with_an_empty_body() {
        let (svc, log) = limited();
        let got = svc
            .oneshot(admitted(Method::GET, Empty::<Bytes>::new()))
            .await;
        assert!(got.is_ok(), "body_limit: a GET was refused: {got:?}");
        assert_eq!(log.all(), [Bytes::new()]);
    }

    #[tokio::test]
    async fn the_inner_service_sees_the_whole_body() {
        let (svc, log) = limited();
        let body = testing::streamed(&["{\"memory\":", "20}"], false);
        let got = svc.oneshot(admitted(Method::POST, body)).await;
        assert!(got.is_ok(), "body_limit: a small body was refused: {got:?}");
        assert_eq!(
            log.all(),
            [Bytes::from_static(b"{\"memory\":20}")],
            "body_limit: the inner service did not get the whole body"
        );
    }
}
