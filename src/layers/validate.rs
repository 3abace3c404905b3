//! Checks the body of a create before anything is spent (see [`crate::protect::validate`]): a bad
//! create is answered 400 with the upstream's own code and never goes further. A valid disk create
//! carries its parsed [`validate::DiskOrder`] on in the request's extensions, so that no layer below parses
//! the body again.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::error::GatewayError;
use crate::layers::RequestId;
use crate::protect::validate;
use crate::routes::RouteMatch;
use crate::svc::{Req, Resp, RespFuture};

#[derive(Clone, Default)]
pub struct ValidateLayer;

impl<S> Layer<S> for ValidateLayer {
    type Service = Validate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Validate { inner }
    }
}

#[derive(Clone)]
pub struct Validate<S> {
    inner: S,
}

impl<S> Service<Req> for Validate<S>
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
        let checked = match req.extensions().get::<RouteMatch>() {
            Some(m) => validate::check(m.route, req.body()),
            None => Ok(None),
        };
        match checked {
            Ok(order) => {
                if let Some(order) = order {
                    req.extensions_mut().insert(order);
                }
                Box::pin(self.inner.call(req))
            }
            Err(invalid) => {
                let id = RequestId::of(&req);
                let err = GatewayError::BadRequest {
                    code: invalid.code,
                    msg: invalid.msg,
                };
                Box::pin(async move { Ok(err.into_response(id.as_str())) })
            }
        }
    }
}
