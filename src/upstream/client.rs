//! One pooled HTTP client for every upstream call (HTTP and HTTPS through rustls with the webpki
//! roots), with a connect timeout and a whole-call timeout. An answer is read completely: upstream
//! answers are small JSON envelopes, and the gateway must read `code` to act on it. Reading stops at
//! `max_answer_bytes` (an announced `Content-Length` beyond it is refused before reading), so an
//! upstream that answers without end cannot make the gateway buffer it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::UpstreamConfig;
use crate::envelope::EnvelopeHead;
use crate::error::GatewayError;
use crate::metrics::Metrics;

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
    max_answer: usize,
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
            max_answer: cfg.max_answer_bytes,
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
