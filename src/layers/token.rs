//! Token injection: asks the account's broker for its upstream token and hands it to the upstream
//! call. When the upstream answers 401 (HTTP 401, or envelope code 401) the token is dropped, a new
//! one is obtained (once for all requests that saw the same rejection) and the request is sent once
//! more. A 401 means the upstream did nothing, so even a create is safe to send again.

use std::task::{Context, Poll};

use http::StatusCode;
use tower::{Layer, Service, ServiceExt};

use crate::admitted::{Call, Outbound};
use crate::envelope::EnvelopeHead;
use crate::error::{GatewayError, GatewayFuture};
use crate::svc::Resp;

#[derive(Clone, Default)]
pub(crate) struct TokenLayer;

impl<S> Layer<S> for TokenLayer {
    type Service = Token<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Token { inner }
    }
}

#[derive(Clone)]
pub(crate) struct Token<S> {
    inner: S,
}

/// The upstream refused the token.
fn rejected(resp: &Resp) -> bool {
    resp.status() == StatusCode::UNAUTHORIZED
        || resp
            .extensions()
            .get::<EnvelopeHead>()
            .is_some_and(|h| h.code == Some(401))
}

impl<S> Service<Call> for Token<S>
where
    S: Service<Outbound, Response = Resp, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = GatewayError;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let account = call.caller.account.clone();
            let broker = &account.broker;
            let token = broker.get().await.map_err(GatewayError::NoToken)?;
            let retry = call.clone();
            let resp = inner
                .clone()
                .oneshot(Outbound {
                    call,
                    token: token.clone(),
                })
                .await?;
            if !rejected(&resp) {
                return Ok(resp);
            }
            broker.invalidate(&token).await;
            let fresh = broker.get().await.map_err(GatewayError::NoToken)?;
            inner
                .oneshot(Outbound {
                    call: retry,
                    token: fresh,
                })
                .await
        })
    }
}
