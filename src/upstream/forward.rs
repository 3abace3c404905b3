//! The innermost service: sends a classified request to its account's upstream and hands the answer
//! back unchanged (status, the headers that matter, body). Only an allow-list of request headers
//! goes upstream, so nothing a client sends (its key, cookies, forwarding headers) leaks through;
//! the upstream token comes from the token layer, never from the client.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue, header};
use tokio::time::Instant;
use tower::Service;

use crate::admitted::Outbound;
use crate::error::{GatewayError, GatewayFuture};
use crate::svc::Resp;
use crate::telemetry::server_timing::Timing;
use crate::telemetry::span::{self as trace, RequestSpan};
use crate::upstream::UpstreamClient;

/// The upstream's token header.
pub(crate) const TOKEN_HEADER: HeaderName = HeaderName::from_static("finovy-access-token");

/// Request headers passed to the upstream.
static FORWARDED_REQUEST_HEADERS: [HeaderName; 7] = [
    header::CONTENT_TYPE,
    header::ACCEPT,
    header::ACCEPT_LANGUAGE,
    header::USER_AGENT,
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

/// Answer headers never passed back: hop-by-hop (RFC 9110 §7.6.1), framing that hyper recomputes,
/// and upstream session state.
static DROPPED_RESPONSE_HEADERS: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::CONTENT_LENGTH,
    header::SET_COOKIE,
];

/// Cloned with the stack on every request, so the client sits behind one `Arc`.
#[derive(Clone)]
pub(crate) struct Forward {
    client: Arc<UpstreamClient>,
}

impl Forward {
    pub(crate) fn new(client: UpstreamClient) -> Forward {
        Forward {
            client: Arc::new(client),
        }
    }
}

impl Service<Outbound> for Forward {
    type Response = Resp;
    type Error = GatewayError;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, out: Outbound) -> Self::Future {
        let client = self.client.clone();
        Box::pin(async move { forward(&client, out).await })
    }
}

/// Sends the call to its account's upstream with the token; an upstream that broke is an error
/// value that says whether the request had been sent ([`GatewayError::outcome_unknown`]).
async fn forward(client: &UpstreamClient, out: Outbound) -> Result<Resp, GatewayError> {
    let Outbound { call, token } = out;
    let route = call.route();
    let (parts, body) = call.req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let uri = format!("{}{}", call.caller.account.base_url, path_and_query);
    let span = upstream_span(&parts, &call.caller.account, &uri);
    let mut builder = http::Request::builder().method(parts.method).uri(uri);
    let headers = builder
        .headers_mut()
        .expect("builder is valid until body()");
    copy_allowed(&parts.headers, headers);
    if let Some(span) = &span {
        // The upstream's parent is this call's span, not the caller's.
        trace::inject(span, headers);
    }
    if let Ok(mut v) = HeaderValue::from_str(token.expose()) {
        v.set_sensitive(true);
        headers.insert(TOKEN_HEADER, v);
    }
    let upstream_req = builder.body(body).map_err(|e| GatewayError::BadRequest {
        code: 1007,
        msg: format!("cannot forward this request: {e}"),
    })?;
    let sent = Instant::now();
    let answer = client.send(route.as_str(), upstream_req).await;
    if let Some(t) = parts.extensions.get::<Timing>() {
        t.upstream(sent.elapsed());
    }
    if let Some(span) = &span {
        match &answer {
            Ok(a) => {
                span.record("http.response.status_code", a.parts.status.as_u16());
                if a.parts.status.is_server_error() {
                    span.record("otel.status_code", "ERROR");
                }
            }
            Err(e) => {
                use crate::upstream::client::UpstreamError as E;
                let kind = match e {
                    E::Unreachable(_) => "unreachable",
                    E::Broken(_) => "broken",
                    E::Timeout(_) => "timeout",
                    E::NotJson(_) => "not_json",
                    E::TooLarge(_) => "too_large",
                };
                span.record("error.type", kind);
                span.record("otel.status_code", "ERROR");
            }
        }
    }
    let answer = answer?;
    let mut resp = Resp::new(answer.body);
    *resp.status_mut() = answer.parts.status;
    let mut headers = answer.parts.headers;
    strip_hop_by_hop(&mut headers);
    *resp.headers_mut() = headers;
    resp.extensions_mut().insert(answer.head);
    Ok(resp)
}

/// The upstream call's span (OpenTelemetry's HTTP client conventions), a child of the request's,
/// when traces are on. A call made for the gateway itself (a reconciliation's list) has no
/// request span of its own and takes the current one. `url.full` leaves the query out: it may
/// carry what a trace store should not.
fn upstream_span(
    parts: &http::request::Parts,
    account: &crate::upstream::AccountHandle,
    uri: &str,
) -> Option<tracing::Span> {
    let parent = match RequestSpan::of_parts(parts) {
        Some(s) => s.clone(),
        None if crate::telemetry::traces_on() => tracing::Span::current(),
        None => return None,
    };
    parent.record("account", &*account.name);
    let url = uri.split('?').next().unwrap_or(uri);
    let parsed: Option<http::Uri> = url.parse().ok();
    let host = parsed
        .as_ref()
        .and_then(http::Uri::host)
        .unwrap_or_default();
    let port = parsed.as_ref().map_or(0, |u| {
        u.port_u16().unwrap_or(if u.scheme_str() == Some("https") {
            443
        } else {
            80
        })
    });
    let method = parts.method.as_str();
    Some(trace::child_span!(
        &parent,
        "upstream",
        otel.name = method,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        url.full = url,
        server.address = host,
        server.port = port,
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    ))
}

/// Drops the answer headers that never reach a client: the fixed list, and every field the
/// answer's own `Connection` names as hop-by-hop (RFC 9110 §7.6.1).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in named.iter().chain(&DROPPED_RESPONSE_HEADERS) {
        headers.remove(h);
    }
}

fn copy_allowed(from: &HeaderMap, to: &mut HeaderMap) {
    for name in &FORWARDED_REQUEST_HEADERS {
        for v in from.get_all(name) {
            to.append(name.clone(), v.clone());
        }
    }
}
