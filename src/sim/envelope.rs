//! The upstream's answer envelope `{"code","success","msg","data","traceId"}` and the common codes.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use rand::Rng;
use serde_json::{Value, json};

/// Authentication failed: missing, unknown or expired token, or wrong credentials.
pub(crate) const UNAUTHORIZED: i64 = 401;
/// The path or method is not part of the API.
pub(crate) const NOT_FOUND: i64 = 404;
/// System error, as the upstream reports an internal failure.
pub(crate) const SYSTEM_ERROR: i64 = 500;
/// A business rule refused the request (used where the upstream documents no specific code).
pub(crate) const BUSINESS_ERROR: i64 = 1003;
/// A required parameter is missing or invalid.
pub(crate) const BAD_PARAM: i64 = 1007;

/// A refusal by the simulated upstream: a code and the message explaining it.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) code: i64,
    pub(crate) msg: String,
}

impl ApiError {
    pub(super) fn new(code: i64, msg: impl Into<String>) -> ApiError {
        ApiError {
            code,
            msg: msg.into(),
        }
    }

    /// Code 1007, the upstream's answer to a missing or malformed parameter.
    pub(super) fn bad_param(msg: impl Into<String>) -> ApiError {
        ApiError::new(BAD_PARAM, msg)
    }
}

/// A finished answer: an HTTP status and a body, ready to become a response.
pub(crate) struct Reply {
    status: StatusCode,
    body: Bytes,
}

impl Reply {
    /// Success with `data`.
    pub(super) fn ok(data: Value) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: envelope(0, "success", data),
        }
    }

    /// A bare JSON document without envelope, for the control endpoints that report state.
    pub(super) fn document(doc: &Value) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: Bytes::from(doc.to_string()),
        }
    }

    /// An error envelope with an explicit HTTP status.
    pub(super) fn error(status: StatusCode, code: i64, msg: &str) -> Reply {
        Reply {
            status,
            body: envelope(code, msg, Value::Null),
        }
    }

    /// A handler's outcome; business errors are HTTP 200 with a non-zero code, as upstream.
    pub(super) fn from_result(result: Result<Value, ApiError>) -> Reply {
        match result {
            Ok(data) => Reply::ok(data),
            Err(e) => Reply::error(StatusCode::OK, e.code, &e.msg),
        }
    }

    /// HTTP 404, code 404, naming what was asked for.
    pub(super) fn not_found(method: &http::Method, path: &str) -> Reply {
        let msg = format!("no such endpoint: {method} {path}");
        Reply::error(StatusCode::NOT_FOUND, NOT_FOUND, &msg)
    }

    /// HTTP 200 with a body that is not JSON, as a misbehaving proxy in front of the upstream might
    /// send. It is labelled `application/json` like every other answer, so only a client that really
    /// parses the body notices.
    pub(super) fn garbage() -> Reply {
        Reply {
            status: StatusCode::OK,
            body: Bytes::from_static(b"<html>upstream garbage</html>"),
        }
    }

    pub(super) fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// Serialises one envelope with a fresh trace id.
fn envelope(code: i64, msg: &str, data: Value) -> Bytes {
    let body = json!({
        "code": code,
        "success": code == 0,
        "msg": msg,
        "data": data,
        "traceId": trace_id(),
    });
    Bytes::from(body.to_string())
}

/// 32 random hex digits, the shape of the upstream's trace ids.
fn trace_id() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}
