//! Checks the body of a create before anything is spent (see [`crate::protect::validate`]): a bad
//! create (or one that is not `application/json`) is answered 400 with the upstream's own code and
//! never goes further. A valid create goes on with its body replaced by its order's canonical
//! form, so that the layers below count and de-duplicate, and the upstream receives, exactly what
//! was checked. The order rides in the request's extensions ([`validate::Order`], and for a disk
//! its [`validate::DiskOrder`]), so that no layer below parses the body again.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, header};
use tower::{Layer, Service};

use crate::error::GatewayError;
use crate::layers::RequestId;
use crate::protect::validate::{self, Invalid, Order};
use crate::routes::RouteMatch;
use crate::svc::{Req, Resp, RespFuture};

#[derive(Clone, Default)]
pub(crate) struct ValidateLayer;

impl<S> Layer<S> for ValidateLayer {
    type Service = Validate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Validate { inner }
    }
}

#[derive(Clone)]
pub(crate) struct Validate<S> {
    inner: S,
}

/// The order of a create, or why it is refused; `None` for other routes.
fn order_of(req: &Req) -> Result<Option<Order>, Invalid> {
    let Some(route) = req.extensions().get::<RouteMatch>().map(|m| m.route) else {
        return Ok(None);
    };
    if !route.spends_money() {
        return Ok(None);
    }
    // No query can carry part of an order: creates declare no query parameters, so the route
    // layer has refused any.
    let mut types = req.headers().get_all(header::CONTENT_TYPE).iter();
    let json = match (types.next(), types.next()) {
        (Some(v), None) => v.to_str().is_ok_and(validate::is_json_content_type),
        _ => false,
    };
    if !json {
        return Err(Invalid {
            code: 1007,
            msg: format!("the body of {route} must be sent as Content-Type: application/json"),
        });
    }
    validate::check(route, req.body())
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
        match order_of(&req) {
            Ok(None) => Box::pin(self.inner.call(req)),
            Ok(Some(order)) => {
                // The client's bytes stop here: from now on the request is its order.
                *req.body_mut() = Bytes::from(order.body());
                let headers = req.headers_mut();
                headers.remove(header::CONTENT_LENGTH);
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                if let Some(disk) = order.disk() {
                    req.extensions_mut().insert(disk.clone());
                }
                req.extensions_mut().insert(order);
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
