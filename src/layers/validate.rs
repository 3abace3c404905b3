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

#[cfg(test)]
mod tests {
    use http::Method;
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::layers::testing::{self, Log, within};

    /// A create of `body`, sent as `content_type` (none when `None`), with a stale length.
    fn create(body: &str, content_type: Option<&str>) -> Call {
        let caller = testing::caller("svc", &testing::account("default"));
        let mut call = testing::call(
            &caller,
            Method::POST,
            "/v1/PveMachineHardDisk/open/create",
            body,
        );
        let headers = call.req.headers_mut();
        if let Some(t) = content_type {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(t).unwrap());
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        call
    }

    /// Runs `call` through the layer; what the inner service saw.
    async fn run(call: Call) -> (Result<Resp, GatewayError>, Vec<Spend>) {
        let seen = Log::default();
        let log = seen.clone();
        let svc = ValidateLayer.layer(service_fn(move |spend: Spend| {
            log.push(spend);
            std::future::ready(Ok::<_, GatewayError>(testing::ok()))
        }));
        let result = within("validate", svc.oneshot(call)).await;
        (result, seen.all())
    }

    #[tokio::test]
    async fn a_valid_create_goes_on_as_its_canonical_order() {
        let sent = r#"{ "isMount": 0, "memory": 20, "area": 0 }"#;
        let (result, seen) = run(create(sent, Some("application/json; charset=utf-8"))).await;
        assert!(result.is_ok());
        let [spend] = seen.as_slice() else {
            panic!("one call: {}", seen.len())
        };
        let body = std::str::from_utf8(spend.call.req.body()).unwrap();
        assert_eq!(body, spend.order.body(), "what was checked is what is sent");
        assert_ne!(body, sent, "the client's bytes stop here");
        let headers = spend.call.req.headers();
        assert!(headers.get(header::CONTENT_LENGTH).is_none(), "{headers:?}");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(spend.order.disk().map(|d| d.memory_gb), Some(20));
    }

    #[tokio::test]
    async fn a_bad_body_is_refused_before_the_inner_service() {
        let (result, seen) = run(create(
            r#"{"area":0,"memory":20}"#,
            Some("application/json"),
        ))
        .await;
        let err = result.unwrap_err();
        assert!(matches!(err, GatewayError::BadRequest { .. }), "{err:?}");
        assert!(seen.is_empty());
    }

    #[tokio::test]
    async fn a_body_not_sent_as_json_is_refused() {
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/json; charset=latin1"),
        ] {
            let (result, seen) = run(create(testing::DISK_CREATE_BODY, content_type)).await;
            let err = result.unwrap_err();
            assert!(
                matches!(&err, GatewayError::BadRequest { code: 1007, msg } if msg.contains("Content-Type")),
                "{content_type:?}: {err:?}"
            );
            assert!(seen.is_empty(), "{content_type:?}");
        }
    }
}
