//! The two services an execution runs through: [`Bounded`] cuts it off at its limit with an
//! unknown outcome, [`ClaimFirst`] claims a key-less create's record before calling.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Service, ServiceExt};

use crate::admitted::{OutcomeUnknown, RequestId};
use crate::error::GatewayError;
use crate::routes::Route;
use crate::svc::{Req, Resp, RespFuture};

use super::protocol::{Claim, Claimed, with_lease};
use super::{refusal, replay};

/// An execution cut off at its limit: the request may have reached the upstream, so the outcome
/// is unknown, and is recorded as such before any other replica may take it for lost.
#[derive(Clone)]
pub(super) struct Bounded<S> {
    pub(crate) inner: S,
    pub(crate) limit: Duration,
    pub(crate) route: Route,
    pub(crate) request_id: RequestId,
}

impl<S> Service<Req> for Bounded<S>
where
    S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = RespFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> RespFuture {
        let this = self.clone();
        Box::pin(async move {
            match tokio::time::timeout(this.limit, this.inner.oneshot(req)).await {
                Ok(resp) => resp,
                Err(_) => {
                    tracing::warn!(route = %this.route, limit = ?this.limit, "a create ran past its limit; its outcome is unknown");
                    let err = GatewayError::OutcomeUnknown {
                        route: this.route.as_str(),
                        keyed: false,
                    };
                    let mut resp = err.into_response(this.request_id.as_str());
                    resp.extensions_mut().insert(OutcomeUnknown);
                    Ok(resp)
                }
            }
        })
    }
}

/// Claims the record before calling: answers from a record that landed since the caller looked,
/// and waits for an execution in flight on another replica to land, instead of calling again.
pub(super) struct ClaimFirst<S> {
    pub(crate) claim: Arc<Claim>,
    pub(crate) request_id: RequestId,
    pub(crate) inner: S,
}

impl<S> Service<Req> for ClaimFirst<S>
where
    S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = RespFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> RespFuture {
        let claim = self.claim.clone();
        let id = self.request_id.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            match claim.claim().await {
                Claimed::Held(record) => {
                    let work = inner.oneshot(req);
                    with_lease(
                        claim.records.clone(),
                        claim.rkey.clone(),
                        record,
                        claim.lease,
                        work,
                    )
                    .await
                }
                Claimed::Replay(answer) => Ok(replay(&answer)),
                Claimed::Refused(err) => Ok(refusal(err, id.as_str())),
            }
        })
    }
}
