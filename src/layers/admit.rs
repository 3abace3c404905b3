//! Admission: the boundary between HTTP and the gateway's typed pipelines. Each request is
//! classified once (method and raw path, see [`crate::routes`]), its caller authenticated
//! ([`Authenticator`]) and its query checked against what the route declares; what that
//! established travels on as one [`Admitted`] value beside the request. Below here no layer looks
//! up a route, a caller or a request id again.
//!
//! Every refusal, here or in any layer below, arrives as a [`GatewayError`] value and is rendered
//! in one place, [`render`], with the request's id as `traceId`, its `Retry-After` and
//! `RateLimit-*` headers, and `Connection: close` where the request's body is not read. The
//! answer carries the route and the caller's name for the access log, refusals included.
//!
//! Order of refusals: an unknown route is 404 before anything else (a caller without a key learns
//! nothing more than that); then 401 without a valid key, 403 outside the client's allow-list,
//! 400 for an undeclared query parameter. Both credential headers are removed here: nothing a
//! client sends as a credential goes further. It works on the request head alone, in front of
//! the body read and the concurrency limit, so a caller without a valid key never holds a slot or
//! a buffer.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Version, header};
use tower::{Layer, Service};

use crate::admitted::{
    AccountName, Admitted, AdmittedRequest, ClientName, HeadStart, RequestId, Target,
};
use crate::counters::{ClientCounters, Counted, Refused};
use crate::error::GatewayError;
use crate::layers::auth::SharedAuthenticator;
use crate::routes::{GatewayRoute, Kind, RouteTable, check_query};
use crate::svc::{BoxFuture, Resp, RespFuture};
use crate::upstream::forward::TOKEN_HEADER;

/// The one place a gateway-made answer is rendered: the error's envelope with `request_id` as its
/// `traceId` and its headers ([`GatewayError::into_response`]), and `Connection: close` when the
/// request's body may still be coming on an HTTP/1 connection (`body_unread`) or the error says
/// the body was abandoned midway.
fn render(err: GatewayError, request_id: &str, version: Version, body_unread: bool) -> Resp {
    let closes = body_unread || err.abandons_body();
    let mut resp = err.into_response(request_id);
    if closes && version <= Version::HTTP_11 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// What the access log learns of an answer: its route and its caller, once known.
#[derive(Clone, Default)]
struct Stamp {
    target: Option<Target>,
    client: Option<Arc<str>>,
    /// The account of a call to the gateway's own endpoints (a token lease names it).
    account: Option<Arc<str>>,
    /// The known caller's counts: the answer is counted there.
    counts: Option<Arc<ClientCounters>>,
}

impl Stamp {
    fn on(self, resp: &mut Resp) {
        if let Some(counts) = &self.counts {
            let kind = match &self.target {
                Some(Target::Route(m)) if m.route.kind() == Kind::Spend => Counted::Create,
                _ => Counted::Request,
            };
            counts.answered(kind, resp.extensions().get::<Refused>().copied());
        }
        match self.target {
            Some(Target::Route(m)) => {
                resp.extensions_mut().insert(m.route);
            }
            Some(Target::Own(own)) => {
                resp.extensions_mut().insert(own);
            }
            None => {}
        }
        if let Some(name) = self.client {
            resp.extensions_mut().insert(ClientName(name));
        }
        if let Some(account) = self.account {
            resp.extensions_mut().insert(AccountName(account));
        }
    }
}

#[derive(Clone)]
pub(crate) struct AdmitLayer {
    routes: Arc<RouteTable>,
    auth: SharedAuthenticator,
}

impl AdmitLayer {
    pub(crate) fn new(routes: Arc<RouteTable>, auth: SharedAuthenticator) -> Self {
        AdmitLayer { routes, auth }
    }
}

impl<S> Layer<S> for AdmitLayer {
    type Service = Admit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Admit {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Admit<S> {
    inner: S,
    layer: AdmitLayer,
}

impl AdmitLayer {
    /// Classifies and authenticates `req`, strips its credentials, and names what it learned in
    /// `stamp` as it goes (so that a refusal's access line names the route and a known caller).
    fn admit<B>(&self, req: &mut Request<B>, stamp: &mut Stamp) -> Result<Admitted, GatewayError> {
        let id = RequestId::of(req);
        // What the cache-hit layer already learned of a miss: the route, the caller it may call
        // it as, the query checked, the cache key.
        if let Some(head) = req.extensions_mut().remove::<HeadStart>() {
            stamp.target = Some(Target::Route(head.matched.clone()));
            stamp.client = Some(head.caller.client.clone());
            stamp.counts = Some(head.caller.counts.clone());
            strip_credentials(req);
            return Ok(Admitted {
                id,
                target: Target::Route(head.matched),
                caller: head.caller,
                cache_key: Some(head.key),
            });
        }
        // The gateway's own endpoints first: no table route can stand in for them.
        let target = match GatewayRoute::classify(req.method(), req.uri().path()) {
            Some(own) => Target::Own(own),
            None => match self.routes.classify(req.method(), req.uri().path()) {
                Some(m) => Target::Route(m),
                None => {
                    let shown: String = req.uri().path().chars().take(200).collect();
                    return Err(GatewayError::NotFound(format!("{} {shown}", req.method())));
                }
            },
        };
        stamp.target = Some(target.clone());
        let mut known = None;
        let caller = self
            .auth
            .with(|a| a.admit(req.headers(), &target, &mut known));
        if let Some((name, counts)) = known {
            stamp.client = Some(name);
            stamp.counts = Some(counts);
        }
        let caller = caller?;
        // A known client was stamped above; only the anonymous caller is left to stamp.
        if stamp.counts.is_none() {
            stamp.client = Some(caller.client.clone());
            stamp.counts = Some(caller.counts.clone());
        }
        if let Target::Own(_) = target {
            stamp.account = Some(caller.account.name.clone());
        }
        // The query is checked for a known caller only: nobody learns a route's parameters
        // before showing a key.
        let query = req.uri().query();
        match &target {
            Target::Route(m) => check_query(m.route, query),
            Target::Own(own) => own.check_query(query),
        }
        .map_err(|msg| GatewayError::BadRequest { code: 1007, msg })?;
        strip_credentials(req);
        Ok(Admitted {
            id,
            target,
            caller,
            cache_key: None,
        })
    }
}

/// Nothing a client sends as a credential goes further.
fn strip_credentials<B>(req: &mut Request<B>) {
    req.headers_mut().remove(header::AUTHORIZATION);
    req.headers_mut().remove(TOKEN_HEADER);
}

impl<S, B> Service<Request<B>> for Admit<S>
where
    S: Service<AdmittedRequest<B>, Response = Resp, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = RespFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The layers below are always ready (the body-limit layer drives the slot itself).
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, mut req: Request<B>) -> RespFuture {
        let id = RequestId::of(&req);
        let version = req.version();
        let mut stamp = Stamp::default();
        match self.layer.admit(&mut req, &mut stamp) {
            Ok(admitted) => {
                let fut = self.inner.call(AdmittedRequest { admitted, req });
                Box::pin(async move {
                    let mut resp = match fut.await {
                        Ok(resp) => resp,
                        // The body-limit layer has read (or abandoned) the body by now.
                        Err(err) => render(err, id.as_str(), version, false),
                    };
                    stamp.on(&mut resp);
                    Ok(resp)
                })
            }
            Err(err) => {
                // A body still coming is not read for a refused request: the HTTP/1 connection
                // ends with this answer instead of waiting for (or draining) it.
                let unread = !req.body().is_end_stream();
                let mut resp = render(err, id.as_str(), version, unread);
                stamp.on(&mut resp);
                Box::pin(std::future::ready(Ok(resp))) as BoxFuture<_>
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use bytes::Bytes;
    use http::{Method, StatusCode};
    use http_body_util::combinators::UnsyncBoxBody;
    use http_body_util::{BodyExt, Empty};
    use sha2::{Digest, Sha256};
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::admitted::Caller;
    use crate::cache::key::CacheKey;
    use crate::error::RateLimitHeaders;
    use crate::layers::auth::{Authenticator, ClientEntry};
    use crate::layers::testing::{self, Log, REQUEST_ID, code_of, header};
    use crate::routes::{Route, classify};
    use crate::swap::Swap;

    type Body = UnsyncBoxBody<Bytes, Infallible>;

    /// What the inner service saw of one request.
    #[derive(Clone, Debug)]
    struct Seen {
        client: Arc<str>,
        route: &'static str,
        credentials: bool,
        cache_key: bool,
    }

    const INFO: &str = "/v1/PveMachineHardDisk/open/info/d1";

    fn client(name: &str, key: &str, routes: Option<&[Route]>) -> ClientEntry {
        ClientEntry {
            name: name.into(),
            key_sha256: Sha256::digest(key.as_bytes()).into(),
            account: testing::account("acct"),
            routes: routes.map(|r| r.iter().copied().collect::<BTreeSet<_>>()),
            token_lease: false,
            counts: Arc::default(),
        }
    }

    /// Admission over `alpha` (key `key-a`, every route) and `beta` (key `key-b`, `disk.list`
    /// only), no anonymous callers, around an inner service that answers `inner`.
    fn admit(
        inner: fn() -> Result<Resp, GatewayError>,
    ) -> (
        impl Service<Request<Body>, Response = Resp, Error = Infallible>,
        Log<Seen>,
    ) {
        let auth = Authenticator::new(
            vec![
                client("alpha", "key-a", None),
                client("beta", "key-b", Some(&[Route::DiskList])),
            ],
            None,
            None,
        );
        let layer = AdmitLayer::new(Arc::default(), Arc::new(Swap::new(auth)));
        let log = Log::default();
        let seen = log.clone();
        let svc = layer.layer(service_fn(move |entry: AdmittedRequest<Body>| {
            let headers = entry.req.headers();
            seen.push(Seen {
                client: entry.admitted.caller.client.clone(),
                route: match &entry.admitted.target {
                    Target::Route(m) => m.route.as_str(),
                    Target::Own(own) => own.as_str(),
                },
                credentials: headers.contains_key(header::AUTHORIZATION)
                    || headers.contains_key(TOKEN_HEADER),
                cache_key: entry.admitted.cache_key.is_some(),
            });
            std::future::ready(inner())
        }));
        (svc, log)
    }

    fn empty() -> Body {
        Empty::new().boxed_unsync()
    }

    fn get(uri: &str, key: Option<&str>) -> Request<Body> {
        let mut req = testing::request(Method::GET, uri, empty());
        if let Some(key) = key {
            let v = HeaderValue::from_str(&format!("Bearer {key}")).unwrap();
            req.headers_mut().insert(header::AUTHORIZATION, v);
        }
        req
    }

    async fn answer(
        svc: impl Service<Request<Body>, Response = Resp, Error = Infallible>,
        req: Request<Body>,
    ) -> Resp {
        svc.oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn an_unknown_route_is_404_before_authentication() {
        let (svc, log) = admit(|| Ok(testing::ok()));
        let resp = answer(svc, get("/v1/nothing/here", None)).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "admit: not 404");
        assert_eq!(code_of(&resp), 404);
        assert_eq!(
            log.len(),
            0,
            "admit: an unknown route reached the inner service"
        );
    }

    #[tokio::test]
    async fn no_key_is_401() {
        let (svc, log) = admit(|| Ok(testing::ok()));
        let resp = answer(svc, get(INFO, None)).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "admit: not 401");
        assert_eq!(code_of(&resp), 401);
        assert_eq!(resp.extensions().get::<Route>(), Some(&Route::DiskInfo));
        assert_eq!(
            log.len(),
            0,
            "admit: a keyless request reached the inner service"
        );
    }

    #[tokio::test]
    async fn a_client_outside_its_allow_list_is_403_and_named_in_the_access_stamp() {
        let (svc, log) = admit(|| Ok(testing::ok()));
        let resp = answer(svc, get(INFO, Some("key-b"))).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "admit: not 403");
        assert_eq!(code_of(&resp), 1001);
        let named = resp.extensions().get::<ClientName>().map(|c| &*c.0);
        assert_eq!(
            named,
            Some("beta"),
            "admit: the refusal's stamp lacks the client"
        );
        assert_eq!(log.len(), 0);
    }

    #[tokio::test]
    async fn an_undeclared_query_parameter_is_400() {
        let (svc, log) = admit(|| Ok(testing::ok()));
        let resp = answer(svc, get(&format!("{INFO}?sneaky=1"), Some("key-a"))).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "admit: not 400");
        assert_eq!(code_of(&resp), 1007);
        let body = String::from_utf8_lossy(resp.body()).into_owned();
        assert!(
            body.contains("sneaky"),
            "admit: the parameter is not named: {body}"
        );
        assert_eq!(log.len(), 0);
    }

    #[tokio::test]
    async fn credentials_are_stripped_before_the_inner_service() {
        let (svc, log) = admit(|| Ok(testing::ok()));
        let mut req = get(INFO, Some("key-a"));
        req.headers_mut()
            .insert(TOKEN_HEADER, HeaderValue::from_static("also-a-credential"));
        let resp = answer(svc, req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let seen = log.all();
        assert_eq!(
            seen.len(),
            1,
            "admit: the inner service was not called once"
        );
        assert_eq!(&*seen[0].client, "alpha");
        assert_eq!(seen[0].route, "disk.info");
        assert!(!seen[0].credentials, "admit: a credential header went on");
        let named = resp.extensions().get::<ClientName>().map(|c| &*c.0);
        assert_eq!(
            named,
            Some("alpha"),
            "admit: the answer's stamp lacks the client"
        );
    }

    #[tokio::test]
    async fn a_refusal_with_a_body_still_coming_closes_an_http1_connection() {
        let create = "/v1/PveMachineHardDisk/open/create";
        let coming = || testing::streamed(&["{\"area\":"], true);
        let (svc, _) = admit(|| Ok(testing::ok()));
        let resp = answer(svc, testing::request(Method::POST, create, coming())).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            header(&resp, "connection"),
            "close",
            "admit: HTTP/1.1 kept open"
        );

        // Nothing left to read, or HTTP/2 (a stream, not the connection): kept open.
        let (svc, _) = admit(|| Ok(testing::ok()));
        let resp = answer(svc, testing::request(Method::POST, create, empty())).await;
        assert_eq!(
            header(&resp, "connection"),
            "",
            "admit: closed without a body"
        );
        let (svc, _) = admit(|| Ok(testing::ok()));
        let mut req = testing::request(Method::POST, create, coming());
        *req.version_mut() = Version::HTTP_2;
        let resp = answer(svc, req).await;
        assert_eq!(
            header(&resp, "connection"),
            "",
            "admit: closed an HTTP/2 answer"
        );
    }

    #[tokio::test]
    async fn an_inner_error_is_rendered_once_with_the_request_id_and_retry_after() {
        let (svc, log) = admit(|| {
            Err(GatewayError::RateLimited {
                route: "disk.info",
                scope: "account",
                count: 1,
                period: std::time::Duration::from_secs(1),
                retry_after: 3,
                headers: Box::<RateLimitHeaders>::default(),
            })
        });
        let resp = answer(svc, get(INFO, Some("key-a"))).await;
        assert_eq!(log.len(), 1);
        assert_eq!(
            resp.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "admit: not rendered"
        );
        let body: serde_json::Value = serde_json::from_slice(resp.body())
            .expect("admit: the answer is not one JSON envelope");
        assert_eq!(body["code"], 220_025);
        assert_eq!(
            body["traceId"], REQUEST_ID,
            "admit: traceId is not the request id"
        );
        let retry: Vec<_> = resp.headers().get_all(header::RETRY_AFTER).iter().collect();
        assert_eq!(retry, ["3"], "admit: Retry-After missing or repeated");
        assert_eq!(header(&resp, "connection"), "", "admit: the body was read");
        let named = resp.extensions().get::<ClientName>().map(|c| &*c.0);
        assert_eq!(named, Some("alpha"));
    }

    #[tokio::test]
    async fn a_head_start_is_used_and_credentials_still_stripped() {
        let (svc, log) = admit(|| Ok(testing::ok()));
        // A caller the authenticator does not know, and a key it would refuse: only the head
        // start can admit this request.
        let account = testing::account("acct");
        let mut req = get(INFO, Some("not-a-key"));
        req.extensions_mut().insert(HeadStart {
            matched: classify(&Method::GET, INFO).unwrap(),
            caller: Caller {
                client: "gamma".into(),
                account: account.clone(),
                counts: std::sync::Arc::default(),
            },
            key: CacheKey::new(account.name.clone(), Route::DiskInfo, "d1"),
        });
        let resp = answer(svc, req).await;
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "admit: the head start was not used"
        );
        let seen = log.all();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            &*seen[0].client, "gamma",
            "admit: the inner did not see its caller"
        );
        assert!(
            seen[0].cache_key,
            "admit: the head start's cache key was lost"
        );
        assert!(!seen[0].credentials, "admit: a credential header went on");
    }
}
