//! One pooled HTTP client for every upstream call (HTTP and HTTPS through rustls with the webpki
//! roots, plus an account's `ca_file`), with a connect timeout and a whole-call timeout. An
//! account's egress proxy is reached with HTTP CONNECT (hyper-util's tunnel), for `https://` and
//! `http://` upstreams alike; accounts with their own egress get their own pool, chosen by the
//! upstream's scheme and authority. The whole connection setup (TCP, the proxy's CONNECT answer,
//! the TLS handshake) is bounded by `connect_timeout`: a peer that accepts and never answers is a
//! connection that failed, so the request was never sent. An answer is read completely: upstream
//! answers are small JSON envelopes, and the gateway must read `code` to act on it. Reading stops at
//! `max_answer_bytes` (an announced `Content-Length` beyond it is refused before reading), so an
//! upstream that answers without end cannot make the gateway buffer it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::capture_connection;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::config::{Account, Egress, UpstreamConfig};
use crate::envelope::EnvelopeHead;
use crate::metrics::Metrics;
use crate::upstream::no_proxy::NoProxy;

/// What went wrong with an upstream call. Its `Display` is what a client may read: plain words
/// that say nothing of the egress (proxies, addresses, the error chain); [`UpstreamError::detail`]
/// is for the log.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// No connection: the request was never sent. Holds the error chain, for the log.
    #[error("no connection to the upstream could be made; the request was not sent")]
    Unreachable(String),
    /// The connection broke after the request was sent. Holds the error chain, for the log.
    #[error("the connection to the upstream broke before its answer was read")]
    Broken(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answer is not JSON (HTTP {0})")]
    NotJson(u16),
    /// The answer's body is larger than `max_answer_bytes`; it was sent, so its effect is unknown.
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
}

impl UpstreamError {
    fn outcome(&self) -> &'static str {
        match self {
            UpstreamError::Unreachable(_) | UpstreamError::Broken(_) => "error",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::NotJson(_) => "invalid",
            UpstreamError::TooLarge(_) => "too_large",
        }
    }

    /// Whether the upstream may have carried the request out: it was sent and no answer was read.
    pub(crate) fn outcome_unknown(&self) -> bool {
        !matches!(self, UpstreamError::Unreachable(_))
    }

    /// What the operator needs to know: the error chain where there is one.
    pub(crate) fn detail(&self) -> String {
        match self {
            UpstreamError::Unreachable(d) | UpstreamError::Broken(d) => d.clone(),
            other => other.to_string(),
        }
    }
}

/// A complete upstream answer.
#[derive(Debug)]
pub(crate) struct UpstreamAnswer {
    pub(crate) parts: http::response::Parts,
    pub(crate) body: Bytes,
    pub(crate) head: EnvelopeHead,
}

type Pool = Client<Bounded<HttpsConnector<EgressConnector>>, Full<Bytes>>;

#[derive(Clone)]
pub(crate) struct UpstreamClient {
    /// The pool of `[upstream]`'s egress, for any upstream no account claims.
    client: Pool,
    /// `(scheme, authority)` of an account's base URL, with its own egress, and its pool.
    by_origin: Arc<Vec<(http::uri::Scheme, http::uri::Authority, Pool)>>,
    timeout: Duration,
    max_answer: usize,
    metrics: Arc<Metrics>,
}

impl UpstreamClient {
    /// `default` is the egress of upstreams no account names (`[upstream]`'s); each account whose
    /// egress differs from it gets a pool of its own. Fails when a CA file cannot be read.
    pub(crate) fn new(
        cfg: &UpstreamConfig,
        default: &Egress,
        accounts: &[Account],
        metrics: Arc<Metrics>,
    ) -> Result<UpstreamClient, String> {
        let client = pool(cfg, default)?;
        let mut by_origin = Vec::new();
        for a in accounts.iter().filter(|a| a.egress != *default) {
            let uri: http::Uri = a
                .base_url
                .parse()
                .map_err(|e| format!("account {:?}: {e}", a.name))?;
            if let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) {
                by_origin.push((scheme.clone(), authority.clone(), pool(cfg, &a.egress)?));
            }
        }
        Ok(UpstreamClient {
            client,
            by_origin: Arc::new(by_origin),
            timeout: cfg.timeout,
            max_answer: cfg.max_answer_bytes,
            metrics,
        })
    }

    /// Sends one request and reads its whole answer; `route` labels the metrics.
    pub(crate) async fn send(
        &self,
        route: &str,
        req: http::Request<Bytes>,
    ) -> Result<UpstreamAnswer, UpstreamError> {
        let started = Instant::now();
        let mut req = req.map(Full::new);
        // Set once the request has a connection, just before it is written.
        let connection = capture_connection(&mut req);
        let result = match tokio::time::timeout(self.timeout, self.exchange(req)).await {
            Ok(result) => result,
            // Still without a connection (`timeout` shorter than `connect_timeout`): not sent.
            Err(_) if connection.connection_metadata().is_none() => Err(
                UpstreamError::Unreachable(format!("no connection within {:?}", self.timeout)),
            ),
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
        };
        let outcome = match &result {
            Ok(a) if a.parts.status.is_server_error() => "server_error",
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        if let Err(e @ (UpstreamError::Unreachable(_) | UpstreamError::Broken(_))) = &result {
            tracing::warn!(route, error = %e.detail(), "upstream call failed");
        }
        self.metrics
            .observe_upstream(route, outcome, started.elapsed().as_secs_f64());
        result
    }

    async fn exchange(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<UpstreamAnswer, UpstreamError> {
        let pool = self
            .by_origin
            .iter()
            .find(|(scheme, authority, _)| {
                req.uri().scheme() == Some(scheme) && req.uri().authority() == Some(authority)
            })
            .map_or(&self.client, |(_, _, pool)| pool);
        let resp = pool.request(req).await.map_err(|e| {
            if e.is_connect() {
                UpstreamError::Unreachable(describe(&e))
            } else {
                UpstreamError::Broken(describe(&e))
            }
        })?;
        let (parts, body) = resp.into_parts();
        let too_large = UpstreamError::TooLarge(self.max_answer);
        let announced = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > self.max_answer as u64) {
            return Err(too_large);
        }
        let body = match Limited::new(body, self.max_answer).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => return Err(too_large),
            Err(e) => {
                return Err(UpstreamError::Broken(format!(
                    "reading the answer failed: {e}"
                )));
            }
        };
        let head =
            EnvelopeHead::parse(&body).ok_or(UpstreamError::NotJson(parts.status.as_u16()))?;
        Ok(UpstreamAnswer { parts, body, head })
    }
}

/// The error chain in one line, without the request (whose URI is configuration, not secret, but
/// whose headers are).
pub(crate) fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// One pool: its TLS roots and its way out.
fn pool(cfg: &UpstreamConfig, egress: &Egress) -> Result<Pool, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    let matcher = egress.proxy.as_ref().map(|p| {
        let builder = Matcher::builder();
        let builder = if egress.from_env {
            builder.https(p.expose().to_string())
        } else {
            builder.all(p.expose().to_string())
        };
        Arc::new(builder.build())
    });
    // `NO_PROXY` in the spellings this gateway documents (the matcher's own misses some).
    let no_proxy = match egress.no_proxy.as_deref().filter(|_| egress.from_env) {
        Some(list) => Some(Arc::new(
            NoProxy::parse(list).map_err(|e| format!("NO_PROXY: {e}"))?,
        )),
        None => None,
    };
    let roots = crate::tls::upstream_roots(egress.ca_file.as_deref())?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(EgressConnector {
            http,
            matcher,
            no_proxy,
        });
    let connector = Bounded {
        inner: https,
        limit: cfg.connect_timeout,
    };
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
        .build(connector))
}

/// A connector whose whole setup must finish within `limit`; past it, the setup is a connect
/// error like a refused connection (hyper then reports `is_connect`).
#[derive(Clone)]
struct Bounded<C> {
    inner: C,
    limit: Duration,
}

impl<C> tower::Service<http::Uri> for Bounded<C>
where
    C: tower::Service<http::Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(done) => done.map_err(Into::into),
                Err(_) => Err(format!(
                    "connection, proxy CONNECT and TLS handshake not done within {limit:?}"
                )
                .into()),
            }
        })
    }
}

/// TCP to the upstream, or a CONNECT tunnel through the proxy the matcher picks for it.
#[derive(Clone)]
struct EgressConnector {
    http: HttpConnector,
    matcher: Option<Arc<Matcher>>,
    no_proxy: Option<Arc<NoProxy>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Uri> for EgressConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // HttpConnector is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let direct = self
            .no_proxy
            .as_ref()
            .is_some_and(|n| n.matches(dst.host().unwrap_or(""), port_of(&dst)));
        let intercept = self
            .matcher
            .as_ref()
            .filter(|_| !direct)
            .and_then(|m| m.intercept(&dst));
        let mut http = self.http.clone();
        Box::pin(async move {
            match intercept {
                Some(proxy) => {
                    let mut tunnel = Tunnel::new(proxy.uri().clone(), http);
                    if let Some(auth) = proxy.basic_auth() {
                        tunnel = tunnel.with_auth(auth.clone());
                    }
                    // An `http://` upstream has no default port of 443, which the tunnel assumes.
                    let dst = with_port(dst);
                    Ok(tower::Service::call(&mut tunnel, dst).await?)
                }
                None => Ok(tower::Service::call(&mut http, dst).await?),
            }
        })
    }
}

/// `dst`'s port, or its scheme's.
fn port_of(dst: &http::Uri) -> u16 {
    dst.port_u16()
        .unwrap_or(if dst.scheme_str() == Some("http") {
            80
        } else {
            443
        })
}

/// `dst` with its scheme's default port written out.
fn with_port(dst: http::Uri) -> http::Uri {
    if dst.port().is_some() {
        return dst;
    }
    let port = port_of(&dst);
    let Some(host) = dst.host() else { return dst };
    let mut parts = dst.clone().into_parts();
    match format!("{host}:{port}").parse() {
        Ok(authority) => {
            parts.authority = Some(authority);
            http::Uri::from_parts(parts).unwrap_or(dst)
        }
        Err(_) => dst,
    }
}

#[cfg(test)]
mod tests {
    use super::with_port;

    #[test]
    fn the_tunnel_target_carries_the_scheme_s_port() {
        let port = |u: &str| with_port(u.parse().unwrap()).port_u16();
        assert_eq!(port("http://upstream.example/v1/x?a=1"), Some(80));
        assert_eq!(port("https://upstream.example"), Some(443));
        assert_eq!(port("http://upstream.example:8080/"), Some(8080));
        let kept = with_port("http://upstream.example/v1/x?a=1".parse().unwrap());
        assert_eq!(kept.to_string(), "http://upstream.example:80/v1/x?a=1");
    }
}
