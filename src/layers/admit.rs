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
use crate::error::GatewayError;
use crate::layers::auth::SharedAuthenticator;
use crate::routes::{GatewayRoute, RouteTable, check_query};
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
}

impl Stamp {
    fn on(self, resp: &mut Resp) {
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
        let caller = self
            .auth
            .with(|a| a.admit(req.headers(), &target, &mut stamp.client))?;
        stamp.client = Some(caller.client.clone());
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
