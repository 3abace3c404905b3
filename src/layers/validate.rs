//! Checks the body of a create before anything is spent (see [`crate::protect::validate`]): a bad
//! create (or one that is not `application/json`) is answered 400 with the upstream's own code and
//! never goes further. A valid create goes on with its body replaced by its order's canonical
//! form, so that the layers below count and de-duplicate, and the upstream receives, exactly what
//! was checked. The order travels on beside the request ([`Spend`]), so that no layer below parses
//! the body again.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, header};
use tower::{Layer, Service};

use crate::admitted::{Call, Spend};
use crate::error::{GatewayError, GatewayFuture};
use crate::protect::validate::{self, Invalid, Order};
use crate::svc::Resp;

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

/// The order of a create, or why it is refused.
fn order_of(call: &Call) -> Result<Order, Invalid> {
    let route = call.route();
    // No query can carry part of an order: creates declare no query parameters, so admission
    // has refused any.
    let mut types = call.req.headers().get_all(header::CONTENT_TYPE).iter();
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
    // Every spend route has an order schema (configured routes cannot spend).
    validate::check(route, call.req.body())?.ok_or_else(|| Invalid {
        code: 1007,
        msg: format!("route {route} has no order to check"),
    })
}

impl<S> Service<Call> for Validate<S>
where
    S: Service<Spend, Response = Resp, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = Resp;
    type Error = GatewayError;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call) -> Self::Future {
        let order = match order_of(&call) {
            Ok(order) => order,
            Err(invalid) => {
                let err = GatewayError::BadRequest {
                    code: invalid.code,
                    msg: invalid.msg,
                };
                return Box::pin(std::future::ready(Err(err)));
            }
        };
        // The client's bytes stop here: from now on the request is its order.
        *call.req.body_mut() = Bytes::from(order.body());
        let headers = call.req.headers_mut();
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Box::pin(self.inner.call(Spend { call, order }))
    }
}
