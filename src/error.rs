//! What can go wrong in a request the gateway handles, and how each is answered (CONTRACT.md,
//! "Errors the gateway itself produces"). Rendered into the envelope in exactly one place:
//! [`GatewayError::into_response`].

use http::StatusCode;

use crate::envelope::error_response;
use crate::svc::Resp;

#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("missing or unknown client key: send Authorization: Bearer <key>")]
    Unauthorized,
    #[error("this client may not call route {0}")]
    Forbidden(&'static str),
    #[error("not a route of this gateway: {0}")]
    NotFound(String),
    #[error("{msg}")]
    BadRequest { code: i64, msg: String },
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("gateway overloaded: too many requests in flight, retry shortly")]
    Overloaded,
    #[error("request took longer than the gateway's request timeout")]
    RequestTimeout,
    #[error("no upstream token: {0}")]
    NoToken(crate::upstream::token::TokenError),
    #[error("upstream unreachable or answered badly: {0}")]
    UpstreamUnavailable(String),
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    #[error(
        "the fleet's shared state (Redis) is unavailable, so this {0} is refused: without the shared \
         records a duplicate purchase cannot be ruled out; nothing was sent upstream, retry shortly"
    )]
    SharedStateDown(&'static str),
    #[error("request body not received within {0:?}: send the whole body promptly")]
    BodyTimeout(std::time::Duration),
    #[error(
        "this client has {0} requests in flight, its share of the gateway: retry after the \
         current ones finish"
    )]
    ClientOverloaded(usize),
    #[error(
        "this client may not lease the upstream token: its [[clients]] entry needs \
         token_lease = true"
    )]
    LeaseNotGranted,
}

/// What a client over its in-flight share is told to wait, in seconds.
pub const CLIENT_OVERLOADED_RETRY_AFTER: &str = "1";

impl GatewayError {
    /// The HTTP status and envelope code of CONTRACT.md.
    pub fn status_and_code(&self) -> (StatusCode, i64) {
        match self {
            GatewayError::Unauthorized => (StatusCode::UNAUTHORIZED, 401),
            GatewayError::Forbidden(_) => (StatusCode::FORBIDDEN, 1001),
            GatewayError::NotFound(_) => (StatusCode::NOT_FOUND, 404),
            GatewayError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, *code),
            GatewayError::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, 1007),
            GatewayError::Overloaded
            | GatewayError::NoToken(_)
            | GatewayError::SharedStateDown(_) => (StatusCode::SERVICE_UNAVAILABLE, 503),
            GatewayError::RequestTimeout | GatewayError::UpstreamTimeout => {
                (StatusCode::GATEWAY_TIMEOUT, 503)
            }
            GatewayError::UpstreamUnavailable(_) => (StatusCode::BAD_GATEWAY, 503),
            GatewayError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, 1007),
            GatewayError::ClientOverloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, 503),
            GatewayError::LeaseNotGranted => (StatusCode::FORBIDDEN, 1001),
        }
    }

    /// The envelope answer; `request_id` becomes its `traceId`.
    pub fn into_response(self, request_id: &str) -> Resp {
        let (status, code) = self.status_and_code();
        let mut resp = error_response(status, code, &self.to_string(), request_id);
        if let GatewayError::ClientOverloaded(_) = self {
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static(CLIENT_OVERLOADED_RETRY_AFTER),
            );
        }
        resp
    }
}
