//! One HTTP request's way through the simulator: read the body, then either a control endpoint, or
//! count and log the API request, apply the fault in force, answer it and add the latency.

use std::sync::Arc;
use std::time::Duration;

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, LengthLimitError, Limited, StreamBody};
use hyper::body::Incoming;

use crate::sim::api::{self, ApiRequest};
use crate::sim::control;
use crate::sim::envelope::{BAD_PARAM, Reply, SYSTEM_ERROR};
use crate::sim::fault::Fault;
use crate::sim::state::Shared;

/// The largest request body accepted; the API's bodies are a few hundred bytes.
const MAX_BODY: usize = 1024 * 1024;

/// Returned from the service to make hyper drop the connection without answering: the `reset`
/// fault. A client sees a connection error, not an HTTP response.
#[derive(Debug, thiserror::Error)]
#[error("fault injection: connection closed without an answer")]
pub(crate) struct ConnectionReset;

/// An answer's body: whole, or streamed (the `huge` fault).
pub(crate) type SimBody = BoxBody<Bytes, Infallible>;

/// Serves one request.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<SimBody>, ConnectionReset> {
    let (parts, body) = req.into_parts();
    let body = read_body(body).await;
    let path = parts.uri.path();
    if path == "/_sim" || path.starts_with("/_sim/") {
        let reply = match body {
            Ok(bytes) => control::answer(&shared, &parts.method, path, &bytes),
            Err(reply) => reply,
        };
        return Ok(reply.into_response().map(BodyExt::boxed));
    }

    let route = api::route(&parts.method, path);
    let logged_body = body.as_deref().unwrap_or_default();
    let fault = {
        let mut state = shared.lock();
        state
            .stats
            .record(route.as_ref().map(|r| r.call), &parts, logged_body);
        state.fault
    };
    let reply = match fault {
        Fault::Reset => return Err(ConnectionReset),
        Fault::Error => Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            SYSTEM_ERROR,
            "system error (injected fault)",
        ),
        Fault::Garbage => Reply::garbage(),
        Fault::TooFrequent(_) => Reply::error(
            StatusCode::OK,
            crate::sim::disks::TOO_FREQUENT,
            "create request timed out: requests too frequent, try again later (injected fault)",
        ),
        Fault::None | Fault::Slow(_) | Fault::Huge { .. } => match body {
            Ok(bytes) => {
                let req = ApiRequest {
                    method: &parts.method,
                    path,
                    query: parts.uri.query().unwrap_or_default(),
                    headers: &parts.headers,
                    body: &bytes,
                };
                api::answer(&shared, route.as_ref(), &req)
            }
            Err(reply) => reply,
        },
    };
    let fault_delay = match fault {
        Fault::Slow(d) => d,
        _ => Duration::ZERO,
    };
    let delay = shared.cfg.latency.saturating_add(fault_delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut response = reply.into_response().map(BodyExt::boxed);
    match fault {
        Fault::Huge { size, announce } => {
            let (body, len) = huge_body(size);
            *response.body_mut() = body;
            if announce {
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
        }
        Fault::TooFrequent(d) => {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        _ => {}
    }
    Ok(response)
}

/// A success envelope of exactly `size` bytes (at least its frame), made chunk by chunk as it is
/// sent, so that the simulator never holds it whole; and its length.
fn huge_body(size: u64) -> (SimBody, u64) {
    const CHUNK: usize = 64 * 1024;
    let head = Bytes::from_static(
        br#"{"code":0,"success":true,"msg":"success","traceId":"huge","data":""#,
    );
    let tail = Bytes::from_static(br#""}"#);
    let fill = Bytes::from(vec![b'x'; CHUNK]);
    let frame = (head.len() + tail.len()) as u64;
    let len = size.max(frame);
    let mut left = len - frame;
    let middle = std::iter::from_fn(move || {
        let n = left.min(CHUNK as u64) as usize;
        left -= n as u64;
        (n > 0).then(|| fill.slice(..n))
    });
    let chunks = std::iter::once(head)
        .chain(middle)
        .chain(std::iter::once(tail));
    let body = StreamBody::new(futures_util::stream::iter(
        chunks.map(|b| Ok::<_, Infallible>(Frame::data(b))),
    ))
    .boxed();
    (body, len)
}

/// Collects the body, refusing more than [`MAX_BODY`] bytes; the error is the answer to give.
async fn read_body(body: Incoming) -> Result<Bytes, Reply> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            BAD_PARAM,
            "request body too large",
        )),
        Err(_) => Err(Reply::error(
            StatusCode::BAD_REQUEST,
            BAD_PARAM,
            "request body could not be read",
        )),
    }
}
