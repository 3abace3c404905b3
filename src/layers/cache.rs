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
use crate::layers::trace::{RequestSpan, child_span};
use crate::routes::RouteMatch;
use crate::single_flight::Role;
use crate::svc::Resp;
use crate::telemetry::server_timing::{CacheOutcome, Timing};
use crate::upstream::AccountHandle;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use tracing_opentelemetry::OpenTelemetrySpanExt;

#[derive(Clone)]
pub(crate) struct CachingLayer {
    cache: Arc<Cache>,
    fills: Arc<FillSpans>,
}

impl CachingLayer {
    pub(crate) fn new(cache: Arc<Cache>) -> Self {
        CachingLayer {
            cache,
            fills: Arc::default(),
        }
    }
}

/// With traces on: the span of each fill in flight, by key, so that the requests joined to it
/// link their waits to it.
type FillSpans = std::sync::Mutex<std::collections::HashMap<CacheKey, SpanContext>>;

impl<S> Layer<S> for CachingLayer {
    type Service = Caching<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Caching {
            inner,
            cache: self.cache.clone(),
            fills: self.fills.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Caching<S> {
    inner: S,
    cache: Arc<Cache>,
    fills: Arc<FillSpans>,
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
    let mut resp = bare_hit(entry, now, 0);
    if let Some(head) = &entry.answer.head {
        resp.extensions_mut().insert(head.clone());
    }
    resp
}

/// A hit without extensions: the stored headers in a map with room for the ones the gateway adds
/// (`Cache-Status`, `Age`, and the `X-Request-Id` its caller sets), so none of them grows it; the
/// values of the first two come from static tables; `room` more for what the caller adds
/// (`Server-Timing`). The entry keeps nothing of its hits.
pub(crate) fn bare_hit(entry: &Entry, now: Instant, room: usize) -> Resp {
    let mut headers = entry.answer.header_map(HIT_HEADERS + room);
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
        let fills = self.fills.clone();
        Box::pin(async move { cached(&cache, &fills, inner, call, key, no_cache).await })
    }
}

async fn cached<S>(
    cache: &Arc<Cache>,
    fills: &FillSpans,
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
    let timing = Timing::of(&call.req).cloned();
    let span = RequestSpan::of(&call.req).cloned();
    let mark = |outcome: CacheOutcome| {
        if let Some(t) = &timing {
            t.cache(outcome);
        }
        if let Some(s) = &span {
            s.record("cache", outcome.desc());
        }
    };
    if let Some(s) = &span {
        s.record("account", &*call.caller.account.name);
    }
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
            mark(CacheOutcome::Hit);
            return Ok(hit(entry, now));
        }
        (Some(entry), Some(Freshness::Revalidate)) => {
            cache.record_lookup(route, "stale");
            mark(CacheOutcome::Stale);
            // One background refresh per key; this request does not wait for it.
            drop(cache.fill(key, false, fetch));
            return Ok(from_entry(entry, "fwd=stale; detail=revalidating", now));
        }
        _ => {}
    }

    // Kept only for a fill's span.
    let traced = span.as_ref().map(|p| (p, key.clone()));
    let flight = cache.fill(key, no_cache, fetch);
    let role = flight.role;
    let waiting = Instant::now();
    let fill_span = traced.map(|(p, key)| FillSpan::start(fills, p, key, role));
    let filled: Option<Arc<Filled>> = flight.wait().await;
    drop(fill_span);
    // A leader's time in its fill is its upstream call's; a joined request waited for another's.
    if let (Some(t), Role::Joined) = (&timing, role) {
        t.waited(waiting.elapsed());
    }
    let (answer, stored) = match filled.as_deref() {
        Some(Filled::Found(entry)) => {
            cache.record_lookup(route, "hit");
            mark(CacheOutcome::Hit);
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
        mark(CacheOutcome::Stale);
        let fwd_status = match answer {
            Some(Ok(a)) => a.status.as_u16(),
            Some(Err(e)) => e.status_and_code().0.as_u16(),
            None => 502,
        };
        let params = format!("fwd=stale; fwd-status={fwd_status}; detail=stale-if-error");
        return Ok(from_entry(&entry, &params, Instant::now()));
    }
    mark(CacheOutcome::Miss);
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

/// The span of a fill this request leads (`cache.fill`, known to the joiners by its key) or
/// waits for (`cache.wait`, linked to the fill's span). A leader's key is forgotten when it ends,
/// the request cancelled included.
struct FillSpan<'a> {
    _span: tracing::Span,
    leads: Option<(&'a FillSpans, CacheKey, SpanContext)>,
}

impl<'a> FillSpan<'a> {
    fn start(fills: &'a FillSpans, parent: &tracing::Span, key: CacheKey, role: Role) -> Self {
        let mut known = fills
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match role {
            Role::Leader => {
                let span = child_span!(parent, "cache.fill");
                let cx = span.context().span().span_context().clone();
                known.insert(key.clone(), cx.clone());
                FillSpan {
                    _span: span,
                    leads: Some((fills, key, cx)),
                }
            }
            Role::Joined => {
                let span = child_span!(parent, "cache.wait");
                if let Some(fill) = known.get(&key) {
                    span.add_link(fill.clone());
                }
                FillSpan {
                    _span: span,
                    leads: None,
                }
            }
        }
    }
}

impl Drop for FillSpan<'_> {
    fn drop(&mut self) {
        if let Some((fills, key, cx)) = self.leads.take() {
            let mut known = fills
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // A later fill of the key may have taken the place already.
            if known.get(&key) == Some(&cx) {
                known.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use http::StatusCode;
    use tower::service_fn;

    use super::*;
    use crate::admitted::Caller;
    use crate::layers::testing::{self, Log, header};

    /// One scripted answer of the inner service: an upstream answer (HTTP status, envelope code),
    /// or an error value.
    type Scripted = Result<(StatusCode, i64), GatewayError>;

    /// The layer over a fresh in-memory cache (`disk.info` cached) around an inner service that
    /// logs the path it was asked for, takes 10 ms, and answers `answers[n]` to its n-th call
    /// (a success past the end).
    fn cached(
        answers: Vec<Scripted>,
    ) -> (
        impl Service<Call, Response = Resp, Error = GatewayError, Future = GatewayFuture> + Clone,
        Log<String>,
    ) {
        let log = Log::default();
        let seen = log.clone();
        let calls = Arc::new(AtomicUsize::new(0));
        let answers: Arc<[Scripted]> = answers.into();
        let svc =
            CachingLayer::new(testing::memory_cache()).layer(service_fn(move |call: Call| {
                seen.push(call.req.uri().path().to_owned());
                let n = calls.fetch_add(1, Ordering::SeqCst);
                let scripted = answers.get(n).cloned().unwrap_or(Ok((StatusCode::OK, 0)));
                async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    scripted.map(|(status, code)| testing::answer(status, code))
                }
            }));
        (svc, log)
    }

    fn alpha() -> Caller {
        testing::caller("alpha", &testing::account("acct"))
    }

    fn cache_status(resp: &Resp) -> &str {
        header(resp, "cache-status")
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_entry_is_answered_at_once_while_one_refresh_runs() {
        let (svc, log) = cached(Vec::new());
        let first = svc
            .clone()
            .oneshot(testing::disk_info(&alpha(), "d1"))
            .await;
        assert!(first.is_ok());
        // Past the 5 s TTL, within the 5 s of stale-while-revalidate.
        tokio::time::advance(Duration::from_secs(7)).await;
        let stale = svc
            .clone()
            .oneshot(testing::disk_info(&alpha(), "d1"))
            .await
            .unwrap();
        assert!(
            cache_status(&stale).contains("fwd=stale; detail=revalidating"),
            "cache: a stale entry was not answered as revalidating: {}",
            cache_status(&stale)
        );
        assert_eq!(header(&stale, "age"), "7");
        // The refresh runs in the background, once, whoever asks meanwhile.
        let again = svc
            .clone()
            .oneshot(testing::disk_info(&alpha(), "d1"))
            .await
            .unwrap();
        assert!(cache_status(&again).contains("revalidating"));
        testing::until("cache", || log.len() == 2).await;
        // The refresh lands (the inner service takes 10 ms); until then answers stay stale.
        let mut fresh = stale;
        for _ in 0..20 {
            tokio::time::advance(Duration::from_millis(10)).await;
            tokio::task::yield_now().await;
            fresh = svc
                .clone()
                .oneshot(testing::disk_info(&alpha(), "d1"))
                .await
                .unwrap();
            if cache_status(&fresh).contains("hit") {
                break;
            }
        }
        assert!(
            cache_status(&fresh).contains("hit"),
            "cache: the refresh did not store a fresh entry: {}",
            cache_status(&fresh)
        );
        assert_eq!(log.len(), 2, "cache: one refresh, not one per stale answer");
    }

    #[tokio::test(start_paused = true)]
    async fn a_miss_calls_inner_once_and_stores_then_a_hit_does_not() {
        let (svc, log) = cached(Vec::new());
        let miss = svc
            .clone()
            .oneshot(testing::disk_info(&alpha(), "d1"))
            .await;
        let miss = miss.unwrap();
        assert_eq!(
            log.len(),
            1,
            "cache: a miss did not call the inner service once"
        );
        assert_eq!(
            cache_status(&miss),
            "finovy-gateway; fwd=miss; fwd-status=200; stored",
            "cache: the miss was not stored"
        );
        let hit = svc
            .oneshot(testing::disk_info(&alpha(), "d1"))
            .await
            .unwrap();
        assert_eq!(log.len(), 1, "cache: a hit called the inner service");
        assert!(
            cache_status(&hit).starts_with("finovy-gateway; hit; ttl="),
            "cache: not a hit: {}",
            cache_status(&hit)
        );
        assert_eq!(
            hit.body(),
            miss.body(),
            "cache: the hit is not the stored answer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_make_one_inner_call() {
        let (svc, log) = cached(Vec::new());
        let (a, b) = tokio::join!(
            svc.clone().oneshot(testing::disk_info(&alpha(), "d1")),
            svc.clone().oneshot(testing::disk_info(&alpha(), "d1")),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(log.len(), 1, "cache: concurrent misses were not coalesced");
        assert_eq!(a.body(), b.body());
        assert!(
            cache_status(&b).ends_with("; collapsed"),
            "cache: the second miss did not join the first: {}",
            cache_status(&b)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_inner_error_within_stale_if_error_answers_the_stale_entry() {
        let failed = GatewayError::UpstreamUnavailable {
            msg: "reset".into(),
            sent: false,
        };
        let (svc, log) = cached(vec![
            Ok((StatusCode::OK, 0)),
            Err(failed.clone()),
            Err(failed),
        ]);
        let stored = svc
            .clone()
            .oneshot(testing::disk_info(&alpha(), "d1"))
            .await;
        let stored = stored.unwrap();
        // Past the TTL (5 s) and stale-while-revalidate (5 s), within stale-if-error (5 min).
        tokio::time::advance(Duration::from_secs(20)).await;
        let stale = svc
            .clone()
            .oneshot(testing::disk_info(&alpha(), "d1"))
            .await;
        let stale = stale.expect("cache: the error was passed up despite a stale entry");
        assert_eq!(
            log.len(),
            2,
            "cache: the stale entry was answered without trying"
        );
        assert_eq!(stale.body(), stored.body());
        assert!(
            cache_status(&stale).contains("detail=stale-if-error"),
            "cache: {}",
            cache_status(&stale)
        );
        // Past stale-if-error too: the error itself.
        tokio::time::advance(Duration::from_secs(300)).await;
        let gone = svc.oneshot(testing::disk_info(&alpha(), "d1")).await;
        assert!(
            matches!(gone, Err(GatewayError::UpstreamUnavailable { .. })),
            "cache: an entry past stale-if-error stood in: {gone:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_cache_goes_to_the_inner_service() {
        let (svc, log) = cached(Vec::new());
        svc.clone()
            .oneshot(testing::disk_info(&alpha(), "d1"))
            .await
            .unwrap();
        let mut call = testing::disk_info(&alpha(), "d1");
        call.req
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let fresh = svc.oneshot(call).await.unwrap();
        assert_eq!(log.len(), 2, "cache: no-cache was answered from the cache");
        assert!(
            cache_status(&fresh).contains("fwd=request"),
            "cache: {}",
            cache_status(&fresh)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_it_does_not_cache_goes_straight_on() {
        let (svc, log) = cached(Vec::new());
        for _ in 0..2 {
            let caller = alpha();
            let call = testing::call(&caller, http::Method::GET, "/v1/pve/open/image", "");
            let resp = svc.clone().oneshot(call).await.unwrap();
            assert_eq!(
                cache_status(&resp),
                "",
                "cache: an uncached route got Cache-Status"
            );
        }
        assert_eq!(
            log.len(),
            2,
            "cache: an uncached route was answered from the cache"
        );
    }
}
