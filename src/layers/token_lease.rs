//! The token lease (CONTRACT.md, "Clients"; docs/clients.md, "The token lease"): the gateway's own endpoints
//! for a service that must call the upstream itself, for an API the gateway does not route.
//!
//! - `GET /_gateway/token` answers, in the upstream's envelope with `Cache-Control: no-store`,
//!   `{"token", "expiresAt", "account"}`: the client's account's current token, valid until the
//!   moment the gateway itself will replace it ([`TokenBroker::lease`]).
//! - `POST /_gateway/token/rejected` with `{"token": "..."}`: the upstream refused that token. If
//!   it is still the current one it is replaced once, as after the gateway's own 401
//!   ([`TokenBroker::renew_rejected`]); the answer is the current lease. At most
//!   [`REJECTIONS_PER_CLIENT`] per client (this replica's count): beyond it 429, code 220025,
//!   with `Retry-After`.
//!
//! Admission classifies these paths ([`GatewayRoute`]) and admits only clients whose entry has
//! `token_lease = true`. They go through the access log, request id, admission, the client's
//! share, the body limit and the concurrency limit like any request, and the pipeline switch
//! sends them here, the whole of their pipeline: never forwarded, never cached. Each lease is counted in `finovy_gateway_token_leases_total{client}`
//! and its access line names the account; the token itself is in the answer's body only.
//!
//! [`TokenBroker::lease`]: crate::upstream::TokenBroker::lease
//! [`TokenBroker::renew_rejected`]: crate::upstream::TokenBroker::renew_rejected

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, header};
use serde::Deserialize;
use tokio::time::Instant;
use tower::Service;

use crate::admitted::{Caller, OwnCall};
use crate::clock::retry_secs;
use crate::envelope::success_response;
use crate::error::{GatewayError, GatewayFuture};
use crate::metrics::Metrics;
use crate::protect::gcra::{Decision, Limit, MemoryLimiter, Scope};
use crate::protect::policy::Rate;
use crate::routes::GatewayRoute;
use crate::secret::Secret;
use crate::svc::Resp;
use crate::upstream::token::Lease;

/// How often one client may report a rejected token: each report may cost a `getToken`, and a
/// client that keeps reporting is broken, not unlucky. One per 5 s, two at once.
pub(crate) const REJECTIONS_PER_CLIENT: Rate = Rate {
    count: 1,
    period: Duration::from_secs(5),
    burst: 2,
};

/// The gateway's own endpoints: the whole of their pipeline.
#[derive(Clone)]
pub(crate) struct TokenLease {
    metrics: Arc<Metrics>,
    /// Rejection reports per client, on this replica.
    rejections: Arc<MemoryLimiter>,
}

impl TokenLease {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        TokenLease {
            metrics,
            rejections: Arc::new(MemoryLimiter::new()),
        }
    }
}

impl Service<OwnCall> for TokenLease {
    type Response = Resp;
    type Error = GatewayError;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: OwnCall) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.answer(call).await })
    }
}

/// The body of a rejection report.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rejected {
    token: String,
}

/// The longest token accepted in a report; the upstream's are a few dozen characters.
const MAX_TOKEN: usize = 4096;

/// The reported token, or what is wrong with the body.
fn reported_token(body: &[u8]) -> Result<Secret, String> {
    let expected = r#"expected a JSON body {"token": "<the token the upstream refused>"}"#;
    match serde_json::from_slice::<Rejected>(body) {
        Ok(r) if !r.token.is_empty() && r.token.len() <= MAX_TOKEN => Ok(Secret::new(r.token)),
        Ok(_) => Err(format!(
            "\"token\" must be 1 to {MAX_TOKEN} characters; {expected}"
        )),
        Err(_) => Err(expected.to_string()),
    }
}

/// The lease in the upstream's success envelope, never stored by anyone on the way.
fn lease_response(lease: &Lease, account: &str, request_id: &str) -> Resp {
    let data = serde_json::json!({
        "token": lease.token.expose(),
        "expiresAt": lease.expires_ms,
        "account": account,
    });
    let mut resp = success_response("success", data, request_id);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

impl TokenLease {
    async fn answer(&self, call: OwnCall) -> Result<Resp, GatewayError> {
        let OwnCall {
            id,
            own,
            caller,
            req,
        } = call;
        let broker = &caller.account.broker;
        let leased = match own {
            GatewayRoute::TokenLease => broker.lease().await,
            GatewayRoute::TokenRejected => {
                let token = reported_token(req.body())
                    .map_err(|msg| GatewayError::BadRequest { code: 1007, msg })?;
                if let Some(wait) = self.rejection_refused(&caller) {
                    return Err(too_frequent(wait));
                }
                broker.renew_rejected(&token).await
            }
        };
        let lease = leased.map_err(GatewayError::NoToken)?;
        self.metrics
            .token_leases
            .with_label_values(&[&caller.client])
            .inc();
        caller.counts.leased();
        broker.counts().leased();
        Ok(lease_response(&lease, &caller.account.name, id.as_str()))
    }

    /// `Some(wait)` when this client reported rejections faster than [`REJECTIONS_PER_CLIENT`].
    fn rejection_refused(&self, caller: &Caller) -> Option<Duration> {
        let limit = Limit {
            account: caller.account.name.to_string(),
            key: caller.client.to_string(),
            scope: Scope::Client,
            rate: REJECTIONS_PER_CLIENT,
        };
        match self
            .rejections
            .decide(&[limit], Duration::ZERO, Instant::now())
        {
            Decision::Granted { .. } => None,
            Decision::Refused { retry_after, .. } => Some(retry_after),
        }
    }
}

/// 429 with code 220025, the gateway's answer to anything coming too fast, and `Retry-After`.
fn too_frequent(wait: Duration) -> GatewayError {
    GatewayError::RejectionsTooFast {
        count: REJECTIONS_PER_CLIENT.count,
        period: REJECTIONS_PER_CLIENT.period,
        burst: REJECTIONS_PER_CLIENT.burst,
        retry_after: retry_secs(wait),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_one_non_empty_token_and_nothing_else() {
        assert_eq!(
            reported_token(br#"{"token":"abc"}"#).unwrap().expose(),
            "abc"
        );
        for bad in [
            &br#"{"token":""}"#[..],
            br#"{"token":"abc","x":1}"#,
            br#"{"token":1}"#,
            br"{}",
            b"abc",
            b"",
        ] {
            let e = reported_token(bad).unwrap_err();
            assert!(e.contains("\"token\""), "{e}");
        }
        let long = format!(r#"{{"token":"{}"}}"#, "a".repeat(MAX_TOKEN + 1));
        assert!(reported_token(long.as_bytes()).is_err());
    }

    #[test]
    fn the_lease_is_an_envelope_that_no_cache_keeps() {
        let lease = Lease {
            token: Secret::new("tok"),
            expires_ms: 1_700_000_000_000,
        };
        let resp = lease_response(&lease, "default", "rid-1");
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "code": 0, "success": true, "msg": "success",
                "data": {"token": "tok", "expiresAt": 1_700_000_000_000u64, "account": "default"},
                "traceId": "rid-1",
            })
        );
    }
}
