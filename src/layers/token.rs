//! Token injection: asks the account's broker for its upstream token and hands it to the upstream
//! call. When the upstream answers 401 (HTTP 401, or envelope code 401) the token is dropped, a new
//! one is obtained (once for all requests that saw the same rejection) and the request is sent once
//! more. A 401 means the upstream did nothing, so even a create is safe to send again.

use std::task::{Context, Poll};

use http::StatusCode;
use tower::{Layer, Service, ServiceExt};

use crate::admitted::{Call, Outbound};
use crate::envelope::EnvelopeHead;
use crate::error::{GatewayError, GatewayFuture};
use crate::layers::trace::{RequestSpan, child_span};
use crate::svc::Resp;

#[derive(Clone, Default)]
pub(crate) struct TokenLayer;

impl<S> Layer<S> for TokenLayer {
    type Service = Token<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Token { inner }
    }
}

#[derive(Clone)]
pub(crate) struct Token<S> {
    inner: S,
}

/// The upstream refused the token.
fn rejected(resp: &Resp) -> bool {
    resp.status() == StatusCode::UNAUTHORIZED
        || resp
            .extensions()
            .get::<EnvelopeHead>()
            .is_some_and(|h| h.code == Some(401))
}

impl<S> Service<Call> for Token<S>
where
    S: Service<Outbound, Response = Resp, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = GatewayError;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let account = call.caller.account.clone();
            let broker = &account.broker;
            let token = waited(broker.get(), RequestSpan::of(&call.req))
                .await
                .map_err(GatewayError::NoToken)?;
            let retry = call.clone();
            let resp = inner
                .clone()
                .oneshot(Outbound {
                    call,
                    token: token.clone(),
                })
                .await?;
            if !rejected(&resp) {
                return Ok(resp);
            }
            broker.invalidate(&token).await;
            let fresh = broker.get().await.map_err(GatewayError::NoToken)?;
            inner
                .oneshot(Outbound {
                    call: retry,
                    token: fresh,
                })
                .await
        })
    }
}

/// `get`'s result; when traces are on and the token is not there at once, the wait is a span of
/// the request's (a token fetched, or a fetch in flight joined).
async fn waited<T>(get: impl Future<Output = T>, parent: Option<&tracing::Span>) -> T {
    let Some(parent) = parent else {
        return get.await;
    };
    let mut get = std::pin::pin!(get);
    let first = std::future::poll_fn(|cx| Poll::Ready(get.as_mut().poll(cx))).await;
    if let Poll::Ready(v) = first {
        return v;
    }
    let _span = child_span!(parent, "token.wait");
    get.await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use http::Method;
    use tower::service_fn;

    use super::*;
    use crate::config::{Credentials, TokenConfig};
    use crate::layers::testing::{self, Log};
    use crate::metrics::Metrics;
    use crate::secret::Secret;
    use crate::sim::{SimConfig, Simulator};
    use crate::upstream::token::TokenError;
    use crate::upstream::{AccountHandle, TokenBroker};

    /// The built-in simulator on a free port, serving until the test ends; its base URL.
    async fn simulator() -> String {
        let sim = Simulator::bind("127.0.0.1:0".parse().unwrap(), SimConfig::default())
            .await
            .expect("the simulator binds");
        let url = format!("http://{}", sim.local_addr());
        tokio::spawn(sim.run(std::future::pending()));
        url
    }

    /// An account whose broker trades `secret` at the simulator `url` (no interval between
    /// `getToken`s, so a refused token is replaced at once), and the broker's metrics.
    fn account(url: &str, secret: &str) -> (Arc<AccountHandle>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let sim = SimConfig::default();
        let credentials = Credentials::Exchange {
            uuid: Secret::new(sim.uuid),
            secret: Secret::new(secret),
        };
        let cfg = TokenConfig {
            min_refresh_interval: Duration::ZERO,
            ..TokenConfig::default()
        };
        let client = testing::upstream_client(&metrics);
        let broker = TokenBroker::new("acct", url, &credentials, client, cfg, metrics.clone())
            .expect("a broker with credentials");
        let account = Arc::new(AccountHandle {
            name: "acct".into(),
            base_url: url.into(),
            broker: Arc::new(broker),
        });
        (account, metrics)
    }

    /// The layer around an inner service that logs the token it was handed and answers
    /// `answers[n]` (HTTP status, envelope code) to its n-th call, a success past the end.
    fn tokened(
        answers: Vec<(StatusCode, i64)>,
    ) -> (
        impl Service<Call, Response = Resp, Error = GatewayError, Future = GatewayFuture>,
        Log<String>,
    ) {
        let log = Log::default();
        let seen = log.clone();
        let calls = Arc::new(AtomicUsize::new(0));
        let answers: Arc<[(StatusCode, i64)]> = answers.into();
        let svc = TokenLayer.layer(service_fn(move |out: Outbound| {
            seen.push(out.token.expose().to_owned());
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let (status, code) = answers.get(n).copied().unwrap_or((StatusCode::OK, 0));
            std::future::ready(Ok::<_, GatewayError>(testing::answer(status, code)))
        }));
        (svc, log)
    }

    fn call(account: &Arc<AccountHandle>) -> Call {
        let caller = testing::caller("alpha", account);
        testing::call(&caller, Method::GET, "/v1/pve/open/image", "")
    }

    fn fetched(metrics: &Metrics) -> u64 {
        metrics.token_refreshes.with_label_values(&["ok"]).get()
    }

    #[tokio::test]
    async fn the_brokers_token_is_handed_to_the_inner_service() {
        let url = simulator().await;
        let (account, metrics) = account(&url, &SimConfig::default().secret);
        let (svc, log) = tokened(Vec::new());
        let resp = svc.oneshot(call(&account)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let held = account.broker.get().await.unwrap();
        assert_eq!(
            log.all(),
            [held.expose().to_owned()],
            "token: the inner service did not get the broker's token"
        );
        assert_eq!(fetched(&metrics), 1);
    }

    #[tokio::test]
    async fn an_upstream_401_is_retried_once_with_a_fresh_token() {
        for refusal in [(StatusCode::UNAUTHORIZED, 401), (StatusCode::OK, 401)] {
            let url = simulator().await;
            let (account, metrics) = account(&url, &SimConfig::default().secret);
            let (svc, log) = tokened(vec![refusal]);
            let resp = svc.oneshot(call(&account)).await.unwrap();
            assert_eq!(
                resp.extensions().get::<EnvelopeHead>().and_then(|h| h.code),
                Some(0),
                "token: {refusal:?} was not retried"
            );
            let tokens = log.all();
            assert_eq!(
                tokens.len(),
                2,
                "token: not exactly one retry after {refusal:?}"
            );
            assert_ne!(
                tokens[0], tokens[1],
                "token: the retry reused the refused token"
            );
            let held = account.broker.get().await.unwrap();
            assert_eq!(
                tokens[1],
                held.expose(),
                "token: the retry's token is not the broker's"
            );
            assert_eq!(fetched(&metrics), 2);
        }
    }

    #[tokio::test]
    async fn a_second_401_is_answered_without_another_retry() {
        let url = simulator().await;
        let (account, _) = account(&url, &SimConfig::default().secret);
        let refused = (StatusCode::UNAUTHORIZED, 401);
        let (svc, log) = tokened(vec![refused; 3]);
        let resp = svc.oneshot(call(&account)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(log.len(), 2, "token: retried more than once");
    }

    #[tokio::test]
    async fn a_broker_without_a_token_gives_no_token() {
        let url = simulator().await;
        let (account, _) = account(&url, "not-the-secret");
        let (svc, log) = tokened(Vec::new());
        let got = svc.oneshot(call(&account)).await;
        assert!(
            matches!(got, Err(GatewayError::NoToken(TokenError::Refused { .. }))),
            "token: a refused getToken did not give NoToken: {got:?}"
        );
        assert_eq!(
            log.len(),
            0,
            "token: the inner service was called without a token"
        );
    }
}
