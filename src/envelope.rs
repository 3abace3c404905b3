//! The upstream's JSON envelope: reading the head of an upstream answer, and writing the gateway's
//! own errors in the same shape so existing client code keeps working (CONTRACT.md, "Errors").

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};

use crate::svc::Resp;

/// The parts of an upstream answer the gateway acts on. Parsing into it also checks that the
/// whole body is JSON (serde validates what it skips).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EnvelopeHead {
    pub(crate) code: Option<i64>,
    /// Shared: every cached answer's copy points at one string.
    pub(crate) trace_id: Option<std::sync::Arc<str>>,
}

#[derive(Deserialize)]
struct RawHead<'a> {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default, rename = "traceId", borrow)]
    trace_id: Option<std::borrow::Cow<'a, str>>,
}

impl EnvelopeHead {
    /// `None` when the body is not JSON at all; a JSON body of another shape gives an empty head.
    pub(crate) fn parse(body: &[u8]) -> Option<EnvelopeHead> {
        match serde_json::from_slice::<RawHead<'_>>(body) {
            Ok(raw) => Some(EnvelopeHead {
                code: raw.code.and_then(|c| {
                    c.as_i64()
                        .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
                }),
                trace_id: raw.trace_id.map(|t| t.as_ref().into()),
            }),
            Err(e) if e.is_data() => {
                // Valid JSON that is not an object (an array, a string): still an answer.
                serde_json::from_slice::<serde::de::IgnoredAny>(body)
                    .ok()
                    .map(|_| EnvelopeHead::default())
            }
            Err(_) => None,
        }
    }

    pub(crate) fn is_success(&self) -> bool {
        self.code == Some(0)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: i64,
    success: bool,
    msg: &'a str,
    data: Option<()>,
    #[serde(rename = "traceId")]
    trace_id: &'a str,
}

/// A success the gateway answers itself, in the upstream's envelope (`code` 0): `msg`, `data`,
/// and `trace_id` as its `traceId`. The one builder of the gateway's own successes.
pub(crate) fn success_response(msg: &str, data: serde_json::Value, trace_id: &str) -> Resp {
    let body = serde_json::json!({
        "code": 0,
        "success": true,
        "msg": msg,
        "data": data,
        "traceId": trace_id,
    });
    let mut resp = Resp::new(Bytes::from(body.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Renders one of the gateway's own errors.
pub(crate) fn error_response(status: StatusCode, code: i64, msg: &str, trace_id: &str) -> Resp {
    let body = serde_json::to_vec(&ErrorBody {
        code,
        success: false,
        msg,
        data: None,
        trace_id,
    })
    .expect("the error body always serialises");
    let mut resp = Resp::new(Bytes::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_of_an_envelope() {
        let h = EnvelopeHead::parse(
            br#"{"code":401,"success":false,"msg":"x","data":null,"traceId":"t1"}"#,
        )
        .unwrap();
        assert_eq!(h.code, Some(401));
        assert_eq!(h.trace_id.as_deref(), Some("t1"));
    }

    #[test]
    fn not_json_is_none() {
        assert!(EnvelopeHead::parse(b"<html>").is_none());
        assert!(EnvelopeHead::parse(br#"{"code":0"#).is_none());
        assert_eq!(EnvelopeHead::parse(b"[1,2]"), Some(EnvelopeHead::default()));
    }

    #[test]
    fn a_success_is_the_envelope_with_code_0() {
        let r = success_response("ok", serde_json::json!({"n": 1}), "rid");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["code"], 0);
        assert_eq!(v["success"], true);
        assert_eq!(v["msg"], "ok");
        assert_eq!(v["data"]["n"], 1);
        assert_eq!(v["traceId"], "rid");
    }

    #[test]
    fn error_body_has_the_envelope_fields() {
        let r = error_response(StatusCode::NOT_FOUND, 404, "no such route", "rid");
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["code"], 404);
        assert_eq!(v["success"], false);
        assert_eq!(v["traceId"], "rid");
        assert!(v["data"].is_null());
    }
}
