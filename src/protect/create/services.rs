//! The two services an execution runs through: [`Bounded`] cuts it off at its limit with an
//! unknown outcome, [`ClaimFirst`] claims a key-less create's record before calling. Neither
//! renders anything: what stops an execution is a [`Stopped`] value.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Service, ServiceExt};

use crate::error::GatewayError;
use crate::routes::Route;
use crate::svc::{BoxFuture, Req, Resp};

use super::protocol::{Claim, Claimed, with_lease};
use super::replay::replay;

/// Why an execution ended without an answer from below.
#[derive(Debug)]
pub(super) enum Stopped {
    /// Cut off at the execution limit: the request may have reached the upstream, so the outcome
    /// is unknown.
    TimedOut,
    /// Refused before anything was sent (or the record says the outcome is unknown): the record
    /// stays as it is.
    Refused(GatewayError),
}

/// An execution cut off at its limit: the request may have reached the upstream, so the outcome
/// is unknown, and is recorded as such before any other replica may take it for lost.
#[derive(Clone)]
pub(super) struct Bounded<S> {
    pub(crate) inner: S,
    pub(crate) limit: Duration,
    pub(crate) route: Route,
}

impl<S> Service<Req> for Bounded<S>
where
    S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = Stopped;
    type Future = BoxFuture<Result<Resp, Stopped>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Stopped>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            match tokio::time::timeout(this.limit, this.inner.oneshot(req)).await {
                Ok(resp) => Ok(resp.unwrap_or_else(|e| match e {})),
                Err(_) => {
                    tracing::warn!(route = %this.route, limit = ?this.limit, "a create ran past its limit; its outcome is unknown");
                    Err(Stopped::TimedOut)
                }
            }
        })
    }
}

/// Claims the record before calling: answers from a record that landed since the caller looked,
/// and waits for an execution in flight on another replica to land, instead of calling again.
pub(super) struct ClaimFirst<S> {
    pub(crate) claim: Arc<Claim>,
    pub(crate) inner: S,
}

impl<S> Service<Req> for ClaimFirst<S>
where
    S: Service<Req, Response = Resp, Error = Stopped> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = Stopped;
    type Future = BoxFuture<Result<Resp, Stopped>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Stopped>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let claim = self.claim.clone();
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
                Claimed::Refused(err) => Err(Stopped::Refused(err)),
            }
        })
    }
}
