//! One client's share of the gateway (`[server] max_inflight_per_client`): a client with that many
//! requests in flight gets 503 (code 503, `Retry-After`) for the next one, so that no one caller,
//! however slow its bodies or its requests, takes every slot from the others. Counted per
//! authenticated client name; anonymous callers share one count. A request counts from the moment
//! its head is authenticated until its answer is made (or its client goes away), body upload
//! included; a guard gives the count back on drop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::admitted::AdmittedRequest;
use crate::error::{GatewayError, GatewayFuture};
use crate::svc::Resp;

/// The in-flight counts, one per caller name: those known at start, and a client a reload added
/// gets its own on its first request (names come only from the configuration, so they are few).
struct Counts {
    index: RwLock<HashMap<Arc<str>, Arc<AtomicUsize>>>,
    limit: usize,
}

#[derive(Clone)]
pub(crate) struct ClientLimitLayer {
    counts: Arc<Counts>,
}

impl ClientLimitLayer {
    /// `names`: every caller the authenticator can hand on (clients, and `anonymous` if allowed).
    pub(crate) fn new<'a>(names: impl Iterator<Item = &'a Arc<str>>, limit: usize) -> Self {
        let index = names
            .map(|n| (n.clone(), Arc::new(AtomicUsize::new(0))))
            .collect();
        ClientLimitLayer {
            counts: Arc::new(Counts {
                index: RwLock::new(index),
                limit,
            }),
        }
    }
}

impl<S> Layer<S> for ClientLimitLayer {
    type Service = ClientLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClientLimit {
            inner,
            counts: self.counts.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct ClientLimit<S> {
    inner: S,
    counts: Arc<Counts>,
}

/// One request's place in its client's count, given back on drop.
struct Held {
    slot: Arc<AtomicUsize>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.slot.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Counts {
    /// A place for `client`, or `None` when it already has `limit` requests in flight.
    fn take(&self, client: &Arc<str>) -> Option<Held> {
        let known = self
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(client)
            .cloned();
        let slot = match known {
            Some(slot) => slot,
            None => self
                .index
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(client.clone())
                .or_default()
                .clone(),
        };
        let before = slot.fetch_add(1, Ordering::AcqRel);
        let held = Held { slot };
        (before < self.limit).then_some(held)
    }
}

impl<S, B> Service<AdmittedRequest<B>> for ClientLimit<S>
where
    S: Service<AdmittedRequest<B>, Response = Resp, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = Resp;
    type Error = GatewayError;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: AdmittedRequest<B>) -> Self::Future {
        let Some(held) = self.counts.take(&req.admitted.caller.client) else {
            let err = GatewayError::ClientOverloaded(self.counts.limit);
            return Box::pin(std::future::ready(Err(err)));
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await;
            drop(held);
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::Method;
    use tokio::sync::Semaphore;
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::layers::testing::{self, Log};

    const LIMIT: usize = 2;
    const NAME: &str = "client_limit";

    /// The layer (limit 2, clients `alpha` and `beta`) around an inner service that answers once
    /// `gate` gives it a permit, logging each caller it saw.
    fn limited(
        gate: Arc<Semaphore>,
    ) -> (
        impl Service<
            AdmittedRequest<Bytes>,
            Response = Resp,
            Error = GatewayError,
            Future = GatewayFuture,
        > + Clone,
        Log<Arc<str>>,
    ) {
        let names: Vec<Arc<str>> = vec!["alpha".into(), "beta".into()];
        let log = Log::default();
        let seen = log.clone();
        let svc = ClientLimitLayer::new(names.iter(), LIMIT).layer(service_fn(
            move |entry: AdmittedRequest<Bytes>| {
                seen.push(entry.admitted.caller.client.clone());
                let gate = gate.clone();
                async move {
                    gate.acquire().await.expect("gate open").forget();
                    Ok::<_, GatewayError>(testing::ok())
                }
            },
        ));
        (svc, log)
    }

    fn request(client: &str) -> AdmittedRequest<Bytes> {
        let caller = testing::caller(client, &testing::account("acct"));
        let req = testing::request(
            Method::GET,
            "/v1/PveMachineHardDisk/open/info/d1",
            Bytes::new(),
        );
        testing::admitted(&caller, req)
    }

    #[tokio::test]
    async fn one_client_over_its_share_is_refused_and_another_is_not() {
        let gate = Arc::new(Semaphore::new(0));
        let (svc, log) = limited(gate.clone());
        let mut held = Vec::new();
        for _ in 0..LIMIT {
            held.push(tokio::spawn(svc.clone().oneshot(request("alpha"))));
        }
        testing::until(NAME, || log.len() == LIMIT).await;
        let over = testing::within(NAME, svc.clone().oneshot(request("alpha"))).await;
        assert!(
            matches!(over, Err(GatewayError::ClientOverloaded(LIMIT))),
            "client_limit: the limit-th+1 request was not refused: {over:?}"
        );
        assert_eq!(
            log.len(),
            LIMIT,
            "client_limit: a refused request reached the inner"
        );
        let other = tokio::spawn(svc.clone().oneshot(request("beta")));
        testing::until(NAME, || log.len() == LIMIT + 1).await;
        assert_eq!(
            &*log.all()[LIMIT],
            "beta",
            "client_limit: another client was held"
        );
        gate.add_permits(LIMIT + 1);
        for h in held {
            assert!(testing::within(NAME, h).await.unwrap().is_ok());
        }
        assert!(testing::within(NAME, other).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn the_count_is_given_back_when_a_request_finishes() {
        let gate = Arc::new(Semaphore::new(0));
        let (svc, log) = limited(gate.clone());
        // More requests, one after another, than the client's share.
        let rounds = 2 * LIMIT + 1;
        gate.add_permits(rounds);
        for _ in 0..rounds {
            let answer = testing::within(NAME, svc.clone().oneshot(request("alpha"))).await;
            assert!(
                answer.is_ok(),
                "client_limit: a finished request kept its count"
            );
        }
        assert_eq!(log.len(), rounds);
    }

    #[tokio::test]
    async fn the_count_is_given_back_when_a_request_is_cancelled() {
        let gate = Arc::new(Semaphore::new(0));
        let (mut svc, log) = limited(gate.clone());
        // `call` takes the count at once; the futures are never polled, then dropped.
        let mut cancelled = Vec::new();
        for _ in 0..LIMIT {
            cancelled.push(svc.ready().await.unwrap().call(request("alpha")));
        }
        let over = testing::within(NAME, svc.clone().oneshot(request("alpha"))).await;
        assert!(matches!(over, Err(GatewayError::ClientOverloaded(_))));
        drop(cancelled);
        gate.add_permits(1);
        let after = testing::within(NAME, svc.clone().oneshot(request("alpha"))).await;
        assert!(
            after.is_ok(),
            "client_limit: a cancelled request kept its count: {after:?}"
        );
        assert_eq!(log.len(), LIMIT + 1);
    }
}
