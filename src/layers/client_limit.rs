//! One client's share of the gateway (`[server] max_inflight_per_client`): a client with that many
//! requests in flight gets 503 (code 503, `Retry-After`) for the next one, so that no one caller,
//! however slow its bodies or its requests, takes every slot from the others. Counted per
//! authenticated client name; anonymous callers share one count. A request counts from the moment
//! its head is authenticated until its answer is made (or its client goes away), body upload
//! included; a guard gives the count back on drop.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use crate::admitted::{Caller, RequestId};
use crate::error::GatewayError;
use crate::svc::{Resp, RespFuture};

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
    fn take(&self, client: &Arc<str>) -> Option<Option<Held>> {
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
        (before < self.limit).then_some(Some(held))
    }
}

impl<S, B> Service<Request<B>> for ClientLimit<S>
where
    S: Service<Request<B>, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = RespFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> RespFuture {
        let taken = match req.extensions().get::<Caller>() {
            Some(caller) => self.counts.take(&caller.client),
            None => Some(None),
        };
        match taken {
            Some(held) => {
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let resp = fut.await;
                    drop(held);
                    resp
                })
            }
            None => {
                let id = RequestId::of(&req);
                let err = GatewayError::ClientOverloaded(self.counts.limit);
                Box::pin(async move { Ok(err.into_response(id.as_str())) })
            }
        }
    }
}
