//! The read pipeline's cache: answers a read route from [`crate::cache::Cache`] when the config
//! caches it (a route it does not cache goes straight on). Entries a mutation makes wrong are
//! dropped by [`crate::layers::invalidate`].
//!
//! For a cached route: a fresh entry is a *hit*; an entry past its TTL but within
//! stale-while-revalidate is answered at once while one background fill refreshes it; otherwise the
//! request joins (or starts) the one fill for its key. When that fill fails (5xx, reset, timeout,
//! garbage, code 500/503) and the entry is within stale-if-error, the entry is answered instead.
//! Business errors (220001 and the like) always pass through. `Cache-Control: no-cache` sends the
//! request upstream and refreshes the entry, or joins the fill of its key already in flight (see
//! [`crate::cache`] for why that answer is current enough). Every answer of a cached route carries
//! `Cache-Status` (RFC 9211) and `Age`.
//!
//! Most fresh hits never get here: [`crate::layers::cache_hit`], the stack's outermost layer,
//! answers them.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue, header};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::admitted::Call;
use crate::cache::answer::Answer;
use crate::cache::entry::{Entry, Freshness};
use crate::cache::hit_values::{self, CACHE_NAME};
use crate::cache::key::{CacheKey, canonical_json};
use crate::cache::stored::HIT_HEADERS;
use crate::cache::{Cache, Filled};
use crate::error::{GatewayError, GatewayFuture};
use crate::routes::RouteMatch;
use crate::single_flight::Role;
use crate::svc::Resp;
use crate::upstream::AccountHandle;

#[derive(Clone)]
pub(crate) struct CachingLayer {
    cache: Arc<Cache>,
}

impl CachingLayer {
    pub(crate) fn new(cache: Arc<Cache>) -> Self {
        CachingLayer { cache }
    }
}

impl<S> Layer<S> for CachingLayer {
    type Service = Caching<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Caching {
            inner,
            cache: self.cache.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Caching<S> {
    inner: S,
    cache: Arc<Cache>,
}

/// The entry's key of a call to a cached route; `None` for a body that is not JSON (the upstream
/// will say so, uncached).
fn key_of_call(call: &mut Call) -> Option<CacheKey> {
    if let Some(key) = call.cache_key.take() {
        return Some(key);
    }
    let account = &call.caller.account;
    if call.route().body_keyed() {
        let body = canonical_json(call.req.body())?;
        return Some(CacheKey::new(account.name.clone(), call.route(), body));
    }
    Some(key_of(account, &call.route, call.req.uri().query()))
}

/// The key of a request to a route keyed by its path parameter and query.
pub(crate) fn key_of(account: &AccountHandle, m: &RouteMatch, query: Option<&str>) -> CacheKey {
    let query = crate::cache::key::canonical_query(m.route, query);
    let id: Arc<str> = match (&m.param, query) {
        (Some(p), Some(q)) => format!("{p}?{q}").into(),
        (Some(p), None) => p.clone(),
        (None, Some(q)) => format!("?{q}").into(),
        (None, None) => "".into(),
    };
    CacheKey::new(account.name.clone(), m.route, id)
}

/// Whether the client asks for this request to go upstream (`Cache-Control: no-cache`).
pub(crate) fn no_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
        })
}

/// An answer with `Cache-Status` and `Age` set.
fn respond(answer: &Answer, status: String, age_secs: u64) -> Resp {
    with_status(answer.to_response(), status, age_secs)
}

fn with_status(mut resp: Resp, status: String, age_secs: u64) -> Resp {
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&status) {
        headers.insert(CACHE_STATUS, v);
    }
    headers.insert(header::AGE, HeaderValue::from(age_secs));
    resp
}

const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

fn from_entry(entry: &Entry, params: &str, now: Instant) -> Resp {
    let status = format!("{CACHE_NAME}; {params}; ttl={}", entry.ttl_secs(now));
    with_status(entry.answer.to_response(), status, entry.age(now).as_secs())
}

/// A hit, with the upstream's envelope head for the layers above.
fn hit(entry: &Entry, now: Instant) -> Resp {
    let mut resp = bare_hit(entry, now);
    if let Some(head) = &entry.answer.head {
        resp.extensions_mut().insert(head.clone());
    }
    resp
}

/// A hit without extensions: the stored headers in a map with room for the ones the gateway adds
/// (`Cache-Status`, `Age`, and the `X-Request-Id` its caller sets), so none of them grows it; the
/// values of the first two come from static tables. The entry keeps nothing of its hits.
pub(crate) fn bare_hit(entry: &Entry, now: Instant) -> Resp {
    let mut headers = entry.answer.header_map(HIT_HEADERS);
    headers.insert(
        CACHE_STATUS,
        hit_values::cache_status_hit(entry.ttl_secs(now)),
    );
    headers.insert(header::AGE, hit_values::age(entry.age(now).as_secs()));
    let mut resp = Resp::new(entry.answer.body());
    *resp.status_mut() = entry.answer.status;
    *resp.headers_mut() = headers;
    resp
}

impl<S> Service<Call> for Caching<S>
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

    fn call(&mut self, mut call: Call) -> Self::Future {
        let key = if self.cache.caches(call.route()) {
            key_of_call(&mut call)
        } else {
            None
        };
        let Some(key) = key else {
            return Box::pin(self.inner.call(call));
        };
        let no_cache = no_cache(call.req.headers());
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let cache = self.cache.clone();
        Box::pin(async move { cached(&cache, inner, call, key, no_cache).await })
    }
}

async fn cached<S>(
    cache: &Arc<Cache>,
    inner: S,
    call: Call,
    key: CacheKey,
    no_cache: bool,
) -> Result<Resp, GatewayError>
where
    S: Service<Call, Response = Resp, Error = GatewayError> + Send + 'static,
    S::Future: Send,
{
    let route = key.route;
    let fetch = async move { inner.oneshot(call).await.map(Answer::from_response) };

    // A refresh drops the stored entry in its fill (see `Cache::fill`), not here: here it would
    // detach the fill in flight, and every refresh would make a call of its own.
    let stored_entry = if no_cache {
        None
    } else {
        cache.lookup(&key).await
    };
    let now = Instant::now();
    let freshness = stored_entry.as_ref().and_then(|e| e.freshness(now));
    match (&stored_entry, freshness) {
        (Some(entry), Some(Freshness::Fresh(_))) => {
            cache.record_lookup(route, "hit");
            return Ok(hit(entry, now));
        }
        (Some(entry), Some(Freshness::Revalidate)) => {
            cache.record_lookup(route, "stale");
            // One background refresh per key; this request does not wait for it.
            drop(cache.fill(key, false, fetch));
            return Ok(from_entry(entry, "fwd=stale; detail=revalidating", now));
        }
        _ => {}
    }

    let flight = cache.fill(key, no_cache, fetch);
    let role = flight.role;
    let filled: Option<Arc<Filled>> = flight.wait().await;
    let (answer, stored) = match filled.as_deref() {
        Some(Filled::Found(entry)) => {
            cache.record_lookup(route, "hit");
            return Ok(hit(entry, Instant::now()));
        }
        Some(Filled::Fetched { answer, stored }) => (Some(answer), *stored),
        None => (None, false),
    };
    // The upstream failed (or the call was lost): a stale entry within stale-if-error stands in.
    let failed = match answer {
        None | Some(Err(_)) => true,
        Some(Ok(a)) => a.is_failure(),
    };
    if let Some(entry) = stored_entry.filter(|_| failed) {
        cache.record_lookup(route, "stale");
        let fwd_status = match answer {
            Some(Ok(a)) => a.status.as_u16(),
            Some(Err(e)) => e.status_and_code().0.as_u16(),
            None => 502,
        };
        let params = format!("fwd=stale; fwd-status={fwd_status}; detail=stale-if-error");
        return Ok(from_entry(&entry, &params, Instant::now()));
    }
    let answer = match answer {
        Some(Ok(answer)) => answer,
        // Each waiter's own refusal, with its own request id.
        Some(Err(e)) => return Err(e.clone()),
        None => {
            return Err(GatewayError::UpstreamUnavailable {
                msg: "the upstream call was lost".into(),
                sent: false,
            });
        }
    };
    let result = match (no_cache, role) {
        (true, _) => "bypass",
        (false, Role::Leader) => "miss",
        (false, Role::Joined) => "coalesced",
    };
    cache.record_lookup(route, result);
    let fwd = match (no_cache, &freshness) {
        (true, _) => "request",
        (false, Some(_)) => "stale",
        (false, None) => "miss",
    };
    let mut status = format!(
        "{CACHE_NAME}; fwd={fwd}; fwd-status={}",
        answer.status.as_u16()
    );
    if stored {
        status.push_str("; stored");
    }
    if role == Role::Joined {
        status.push_str("; collapsed");
    }
    Ok(respond(answer, status, 0))
}
