//! Token injection: asks the account's broker for its upstream token and hands it to the upstream
//! call. When the upstream answers 401 (HTTP 401, or envelope code 401) the token is dropped, a new
//! one is obtained (once for all requests that saw the same rejection) and the request is sent once
//! more. A 401 means the upstream did nothing, so even a create is safe to send again.

use std::convert::Infallible;

use std::task::{Context, Poll};

use http::StatusCode;
use tower::{Layer, Service, ServiceExt};

use crate::admitted::Caller;
use crate::admitted::{RequestId, UpstreamToken};
use crate::envelope::EnvelopeHead;
use crate::error::GatewayError;
use crate::svc::{Req, Resp, RespFuture, duplicate};

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

impl<S> Service<Req> for Token<S>
where
    S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = RespFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> RespFuture {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let id = RequestId::of(&req);
            let Some(account) = req.extensions().get::<Caller>().map(|c| c.account.clone()) else {
                return Ok(GatewayError::Unauthorized.into_response(id.as_str()));
            };
            let token = match account.broker.get().await {
                Ok(t) => t,
                Err(e) => return Ok(GatewayError::NoToken(e).into_response(id.as_str())),
            };
            let mut retry = duplicate(&req);
            req.extensions_mut().insert(UpstreamToken(token.clone()));
            let resp = inner.clone().oneshot(req).await?;
            if !rejected(&resp) {
                return Ok(resp);
            }
            account.broker.invalidate(&token).await;
            let fresh = match account.broker.get().await {
                Ok(t) => t,
                Err(e) => return Ok(GatewayError::NoToken(e).into_response(id.as_str())),
            };
            retry.extensions_mut().insert(UpstreamToken(fresh));
            inner.oneshot(retry).await
        })
    }
}
