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
