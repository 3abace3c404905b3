//! One pooled HTTP client for every upstream call (HTTP and HTTPS through rustls with the webpki
//! roots), with a connect timeout and a whole-call timeout. An answer is read completely: upstream
//! answers are small JSON envelopes, and the gateway must read `code` to act on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::UpstreamConfig;
use crate::envelope::EnvelopeHead;
use crate::error::GatewayError;
use crate::metrics::Metrics;

/// Upstream answers larger than this are treated as broken rather than buffered.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// No connection: the request was never sent.
    #[error("{0}")]
    Unreachable(String),
    /// The connection broke after the request was sent.
    #[error("{0}")]
    Broken(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answer is not JSON (HTTP {0})")]
    NotJson(u16),
}

impl UpstreamError {
    fn outcome(&self) -> &'static str {
        match self {
            UpstreamError::Unreachable(_) | UpstreamError::Broken(_) => "error",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::NotJson(_) => "invalid",
        }
    }

    /// Whether the upstream may have carried the request out: it was sent and no answer was read.
    pub fn outcome_unknown(&self) -> bool {
        !matches!(self, UpstreamError::Unreachable(_))
    }
}

impl From<UpstreamError> for GatewayError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Timeout(_) => GatewayError::UpstreamTimeout,
            other => GatewayError::UpstreamUnavailable(other.to_string()),
        }
    }
}

/// A complete upstream answer.
#[derive(Debug)]
pub struct Answer {
    pub parts: http::response::Parts,
    pub body: Bytes,
    pub head: EnvelopeHead,
}

#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl UpstreamClient {
    pub fn new(cfg: &UpstreamConfig, metrics: Arc<Metrics>) -> UpstreamClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .build(https);
        UpstreamClient {
            client,
            timeout: cfg.timeout,
            metrics,
        }
    }

    /// Sends one request and reads its whole answer; `route` labels the metrics.
    pub async fn send(
        &self,
        route: &str,
        req: http::Request<Bytes>,
    ) -> Result<Answer, UpstreamError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.exchange(req.map(Full::new)))
            .await
            .unwrap_or(Err(UpstreamError::Timeout(self.timeout)));
        let outcome = match &result {
            Ok(a) if a.parts.status.is_server_error() => "server_error",
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        self.metrics
            .observe_upstream(route, outcome, started.elapsed().as_secs_f64());
        result
    }

    async fn exchange(&self, req: http::Request<Full<Bytes>>) -> Result<Answer, UpstreamError> {
        let resp = self.client.request(req).await.map_err(|e| {
            if e.is_connect() {
                UpstreamError::Unreachable(describe(&e))
            } else {
                UpstreamError::Broken(describe(&e))
            }
        })?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| UpstreamError::Broken(format!("reading the answer failed: {e}")))?
            .to_bytes();
        let head =
            EnvelopeHead::parse(&body).ok_or(UpstreamError::NotJson(parts.status.as_u16()))?;
        Ok(Answer { parts, body, head })
    }
}

/// The error chain in one line, without the request (whose URI is configuration, not secret, but
/// whose headers are).
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
