//! One purchase per intent, for the routes that spend money (CONTRACT.md: `Idempotency-Key`,
//! `Idempotent-Replayed`, the 409, 422, 503 and 504 rows of code 1005 and 1003): the layer
//! around [`crate::protect::create`]'s flow. It reads the request once into an [`Intent`] (the
//! flow's prologue), hands it to the flow with the inner service, and renders a refusal once.
//! Other requests pass through untouched; the in-flight collapse of other mutations is
//! [`super::collapse`]'s.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_util::task::TaskTracker;
use tower::{Layer, Service};

use crate::admitted::RequestId;
use crate::metrics::Metrics;
use crate::protect::create::{Flow, Intent};
use crate::protect::policy::CreateSettings;
use crate::protect::records::RecordStore;
use crate::reload::Swap;
use crate::svc::{Req, Resp, RespFuture};

#[derive(Clone)]
pub(crate) struct DedupLayer {
    flow: Arc<Flow>,
    /// Swapped by a reload; a create keeps the settings it started with (its [`Intent`]).
    settings: Arc<Swap<CreateSettings>>,
}

impl DedupLayer {
    pub(crate) fn new(
        records: Arc<dyn RecordStore>,
        limit: Duration,
        settings: Arc<Swap<CreateSettings>>,
        metrics: Arc<Metrics>,
        work: TaskTracker,
    ) -> Self {
        // Fixed at start: records already leased were written with it.
        let lease = settings.load().lease;
        DedupLayer {
            flow: Arc::new(Flow::new(records, limit, lease, metrics, work)),
            settings,
        }
    }
}

impl<S> Layer<S> for DedupLayer {
    type Service = Dedup<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Dedup {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Dedup<S> {
    inner: S,
    layer: DedupLayer,
}

impl<S> Service<Req> for Dedup<S>
where
    S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = RespFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> RespFuture {
        let settings = self.layer.settings.load();
        let Some(intent) = Intent::of(&req, &settings) else {
            return Box::pin(self.inner.call(req));
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let flow = self.layer.flow.clone();
        // The refusal's `traceId`.
        let id = RequestId::of(&req);
        Box::pin(async move {
            let answered = match intent {
                Ok(intent) => flow.run(inner, req, &intent).await,
                Err(err) => Err(err),
            };
            // Rendered here, once: the flow answers refusals as values.
            Ok(answered.unwrap_or_else(|err| err.into_response(id.as_str())))
        })
    }
}
