//! The first step of the mutation and spend pipelines: a success drops the cached entries it made
//! wrong ([`Route::invalidates`](crate::routes::Route::invalidates)), the moment it is answered, so
//! the next read through this gateway sees the change. Disk mutations name their disk in the
//! body, host ones in the path.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::StatusCode;
use tower::{Layer, Service, ServiceExt};

use crate::admitted::Call;
use crate::cache::Cache;
use crate::envelope::EnvelopeHead;
use crate::error::{GatewayError, GatewayFuture};
use crate::svc::Resp;

#[derive(Clone)]
pub(crate) struct InvalidateLayer {
    cache: Arc<Cache>,
}

impl InvalidateLayer {
    pub(crate) fn new(cache: Arc<Cache>) -> Self {
        InvalidateLayer { cache }
    }
}

impl<S> Layer<S> for InvalidateLayer {
    type Service = Invalidate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Invalidate {
            inner,
            cache: self.cache.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Invalidate<S> {
    inner: S,
    cache: Arc<Cache>,
}

/// The `id` field of a JSON body, as text.
fn body_id(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    match v.get("id")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn succeeded(resp: &Resp) -> bool {
    resp.status() == StatusCode::OK
        && resp
            .extensions()
            .get::<EnvelopeHead>()
            .is_some_and(EnvelopeHead::is_success)
}

impl<S> Service<Call> for Invalidate<S>
where
    S: Service<Call, Response = Resp, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = GatewayError;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let route = call.route();
        if route.invalidates().is_empty() {
            return Box::pin(self.inner.call(call));
        }
        let id = call
            .route
            .param
            .as_deref()
            .map(str::to_string)
            .or_else(|| body_id(call.req.body()));
        let account = call.caller.account.name.clone();
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let cache = self.cache.clone();
        Box::pin(async move {
            let resp = inner.oneshot(call).await?;
            if succeeded(&resp) {
                cache.after_mutation(&account, route, id.as_deref()).await;
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::Method;
    use tower::service_fn;

    use super::*;
    use crate::admitted::Caller;
    use crate::layers::cache::CachingLayer;
    use crate::layers::testing::{self, Log};

    /// One scripted answer of the mutation's inner service.
    type Scripted = Result<(StatusCode, i64), GatewayError>;

    /// A read pipeline (the cache around an inner service that logs its calls) and a mutation
    /// pipeline (this layer around an inner service that answers `answers[n]` to its n-th call),
    /// over one in-memory cache.
    fn pipelines(
        answers: Vec<Scripted>,
    ) -> (
        impl Service<Call, Response = Resp, Error = GatewayError> + Clone,
        Log<String>,
        impl Service<Call, Response = Resp, Error = GatewayError> + Clone,
    ) {
        let cache = testing::memory_cache();
        let log = Log::default();
        let seen = log.clone();
        let read = CachingLayer::new(cache.clone()).layer(service_fn(move |call: Call| {
            seen.push(call.req.uri().path().to_owned());
            std::future::ready(Ok::<_, GatewayError>(testing::ok()))
        }));
        let calls = Arc::new(AtomicUsize::new(0));
        let answers: Arc<[Scripted]> = answers.into();
        let mutate = InvalidateLayer::new(cache).layer(service_fn(move |_: Call| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let scripted = answers.get(n).cloned().unwrap_or(Ok((StatusCode::OK, 0)));
            std::future::ready(scripted.map(|(status, code)| testing::answer(status, code)))
        }));
        (read, log, mutate)
    }

    fn alpha() -> Caller {
        testing::caller("alpha", &testing::account("acct"))
    }

    /// `disk.update_status` of disk `d1`, which makes its `disk.info` entry wrong.
    fn update_d1() -> Call {
        let body = r#"{"id":"d1","status":2}"#;
        let uri = "/v1/PveMachineHardDisk/open/updateStatus";
        testing::call(&alpha(), Method::PUT, uri, body)
    }

    async fn read_d1(read: &(impl Service<Call, Response = Resp, Error = GatewayError> + Clone)) {
        let got = read
            .clone()
            .oneshot(testing::disk_info(&alpha(), "d1"))
            .await;
        assert!(got.is_ok(), "invalidate: a read failed: {got:?}");
    }

    #[tokio::test]
    async fn a_successful_mutation_drops_the_entry() {
        let (read, log, mutate) = pipelines(Vec::new());
        read_d1(&read).await;
        read_d1(&read).await;
        assert_eq!(log.len(), 1, "invalidate: the entry was not stored");
        mutate.oneshot(update_d1()).await.unwrap();
        read_d1(&read).await;
        assert_eq!(
            log.len(),
            2,
            "invalidate: a success left the entry in place"
        );
    }

    #[tokio::test]
    async fn a_failed_mutation_drops_nothing() {
        let failures = vec![
            Ok((StatusCode::OK, 220_001)),
            Ok((StatusCode::INTERNAL_SERVER_ERROR, 500)),
            Err(GatewayError::UpstreamTimeout),
        ];
        let (read, log, mutate) = pipelines(failures);
        read_d1(&read).await;
        for n in 0..3 {
            let _ = mutate.clone().oneshot(update_d1()).await;
            read_d1(&read).await;
            assert_eq!(log.len(), 1, "invalidate: failure {n} dropped the entry");
        }
    }

    #[test]
    fn the_id_comes_from_a_string_or_a_number() {
        assert_eq!(body_id(br#"{"id":"d1"}"#).as_deref(), Some("d1"));
        assert_eq!(body_id(br#"{"id":42}"#).as_deref(), Some("42"));
        assert_eq!(body_id(br#"{"id":[1]}"#), None);
        assert_eq!(body_id(b"not json"), None);
    }
}
