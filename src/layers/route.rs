//! Classifies each request once (method and raw path, see [`crate::routes`]): a known route goes on
//! with its [`RouteMatch`] in the extensions; anything else is answered 404 here and never forwarded.
//! (A query parameter the route does not declare is answered 400 by the auth layer, once the
//! caller is known.) The route is stamped on every answer, so the access log labels
//! errors of inner layers too. The gateway's own endpoints ([`GatewayRoute`], `/_gateway/...`)
//! go on the same way with their [`GatewayRoute`] instead; they take no query parameters.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use crate::admitted::RequestId;
use crate::error::GatewayError;
use crate::routes::{GatewayRoute, Route, RouteTable};
use crate::svc::{Resp, RespFuture};

/// Classifies against one config's route table.
#[derive(Clone)]
pub(crate) struct ClassifyLayer(pub Arc<RouteTable>);

impl<S> Layer<S> for ClassifyLayer {
    type Service = Classify<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Classify {
            inner,
            routes: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Classify<S> {
    inner: S,
    routes: Arc<RouteTable>,
}

impl<S, B> Service<Request<B>> for Classify<S>
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
        // The gateway's own endpoints first: no table route can stand in for them.
        if let Some(own) = GatewayRoute::classify(req.method(), req.uri().path()) {
            return self.own(own, req);
        }
        let Some(matched) = self.routes.classify(req.method(), req.uri().path()) else {
            let id = RequestId::of(&req);
            let shown: String = req.uri().path().chars().take(200).collect();
            let err = GatewayError::NotFound(format!("{} {shown}", req.method()));
            return Box::pin(async move { Ok(err.into_response(id.as_str())) });
        };
        let route: Route = matched.route;
        req.extensions_mut().insert(matched);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            resp.extensions_mut().insert(route);
            Ok(resp)
        })
    }
}

impl<S> Classify<S> {
    /// One of the gateway's own endpoints: handed on with its [`GatewayRoute`], stamped on the answer.
    fn own<B>(&mut self, own: GatewayRoute, mut req: Request<B>) -> RespFuture
    where
        S: Service<Request<B>, Response = Resp, Error = Infallible>,
        S::Future: Send + 'static,
    {
        req.extensions_mut().insert(own);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            resp.extensions_mut().insert(own);
            Ok(resp)
        })
    }
}
