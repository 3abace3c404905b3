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
    use super::*;

    #[test]
    fn the_id_comes_from_a_string_or_a_number() {
        assert_eq!(body_id(br#"{"id":"d1"}"#).as_deref(), Some("d1"));
        assert_eq!(body_id(br#"{"id":42}"#).as_deref(), Some("42"));
        assert_eq!(body_id(br#"{"id":[1]}"#), None);
        assert_eq!(body_id(b"not json"), None);
    }
}
