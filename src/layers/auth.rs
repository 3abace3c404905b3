//! Client authentication (CONTRACT.md, "Clients"): a bearer key in `Authorization`, or the key in
//! `Finovy-Access-Token` for code written against the upstream (`Authorization` decides when both
//! are sent). Keys are compared as SHA-256 digests in constant time against every client, so the
//! time taken says nothing about which digest came close. Both headers are removed here: nothing a
//! client sends as a credential goes further. The client's account and name are handed on in the
//! request's extensions; a client's `routes` allow-list is enforced here (403, code 1001), and
//! with `[[clients]]` configured an anonymous caller gets only `[auth] anonymous_routes` (401
//! otherwise: a key would help). The gateway's token lease (`/_gateway/token`) is granted by a
//! client's `token_lease` instead of its `routes` (403, code 1001, without it); a caller without
//! a key never gets it (401).
//!
//! It works on the request head alone, in front of the body read and the concurrency limit, so
//! a caller without a valid key never holds a slot or a buffer; when it refuses a request whose
//! body is still coming, the HTTP/1 connection is closed rather than drained.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderValue, Request, Version, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use crate::admitted::{Caller, ClientName, RequestId};
use crate::config::ANONYMOUS;
use crate::error::GatewayError;
use crate::routes::{GatewayRoute, Route, RouteMatch, check_query};
use crate::svc::{Resp, RespFuture};
use crate::swap::Swap;
use crate::upstream::AccountHandle;
use crate::upstream::forward::TOKEN_HEADER;

/// One calling service.
pub(crate) struct ClientEntry {
    pub(crate) name: Arc<str>,
    pub(crate) key_sha256: [u8; 32],
    pub(crate) account: Arc<AccountHandle>,
    pub(crate) routes: Option<BTreeSet<Route>>,
    /// May lease the account's upstream token (`GET /_gateway/token`).
    pub(crate) token_lease: bool,
}

/// The identified caller: its name, its account, and its entry unless anonymous.
struct Identified<'a> {
    name: Arc<str>,
    account: Arc<AccountHandle>,
    entry: Option<&'a ClientEntry>,
}

/// Who may call, and as which account.
pub(crate) struct Authenticator {
    clients: Vec<ClientEntry>,
    /// Set in anonymous mode: keyless calls go to this (the default) account.
    anonymous: Option<Arc<AccountHandle>>,
    /// [`ANONYMOUS`], made once rather than per call.
    anonymous_name: Arc<str>,
    /// The routes an anonymous caller may use; `None`: every route (no clients configured).
    anonymous_routes: Option<BTreeSet<Route>>,
}

/// The key of an `Authorization: Bearer <key>` header (the scheme in any case); `Err` when the
/// header is there but holds something else. Shared with the admin listener.
pub(crate) fn bearer_key(headers: &HeaderMap) -> Result<Option<&[u8]>, GatewayError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bytes = v.as_bytes();
    if bytes.len() > 7 && bytes[..7].eq_ignore_ascii_case(b"bearer ") {
        Ok(Some(bytes[7..].trim_ascii()))
    } else {
        Err(GatewayError::Unauthorized)
    }
}

/// Whether `key` hashes to `digest`, compared in constant time.
pub(crate) fn key_matches(key: &[u8], digest: &[u8; 32]) -> bool {
    let presented: [u8; 32] = Sha256::digest(key).into();
    bool::from(presented.ct_eq(digest))
}

impl Authenticator {
    pub(crate) fn new(
        clients: Vec<ClientEntry>,
        anonymous: Option<Arc<AccountHandle>>,
        anonymous_routes: Option<BTreeSet<Route>>,
    ) -> Authenticator {
        Authenticator {
            clients,
            anonymous,
            anonymous_name: ANONYMOUS.into(),
            anonymous_routes,
        }
    }

    /// The names callers are known by: every client's, and the anonymous one when allowed.
    pub(crate) fn caller_names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.clients
            .iter()
            .map(|c| &c.name)
            .chain(self.anonymous.is_some().then_some(&self.anonymous_name))
    }

    /// The presented key: `Authorization: Bearer` first, then `Finovy-Access-Token`.
    /// `Err` when `Authorization` is present but not a bearer key.
    fn presented_key(headers: &HeaderMap) -> Result<Option<&[u8]>, GatewayError> {
        match bearer_key(headers)? {
            Some(key) => Ok(Some(key)),
            None => Ok(headers.get(TOKEN_HEADER).map(|v| v.as_bytes().trim_ascii())),
        }
    }

    /// Finds the caller: a client entry, or the anonymous account.
    fn identify(&self, headers: &HeaderMap) -> Result<Identified<'_>, GatewayError> {
        let anonymous = |account: &Arc<AccountHandle>| Identified {
            name: self.anonymous_name.clone(),
            account: account.clone(),
            entry: None,
        };
        if let (true, Some(account)) = (self.clients.is_empty(), &self.anonymous) {
            // With no clients configured, a presented key (say, an upstream token left in a
            // client's code) cannot match anything, and anonymous mode serves the call anyway;
            // only an `Authorization` that is not a bearer key is refused, as always.
            bearer_key(headers)?;
            return Ok(anonymous(account));
        }
        let key = Self::presented_key(headers)?;
        match (key, &self.anonymous) {
            (None, Some(account)) => Ok(anonymous(account)),
            (None, None) => Err(GatewayError::Unauthorized),
            (Some(key), _) => {
                let digest: [u8; 32] = Sha256::digest(key).into();
                let mut found = None;
                for c in &self.clients {
                    if bool::from(c.key_sha256.ct_eq(&digest)) {
                        found = Some(c);
                    }
                }
                let c = found.ok_or(GatewayError::Unauthorized)?;
                Ok(Identified {
                    name: c.name.clone(),
                    account: c.account.clone(),
                    entry: Some(c),
                })
            }
        }
    }

    /// Who is calling `route` (when known): 401 without a valid key, 403 outside the client's
    /// allow-list.
    pub(crate) fn caller(
        &self,
        headers: &HeaderMap,
        route: Option<Route>,
    ) -> Result<Caller, GatewayError> {
        self.may_call(self.identify(headers)?, route)
    }

    /// The identified caller, if it may call `route`.
    fn may_call(&self, who: Identified<'_>, route: Option<Route>) -> Result<Caller, GatewayError> {
        let Identified {
            name,
            account,
            entry,
        } = who;
        if let (Some(entry), Some(route)) = (entry, route)
            && entry
                .routes
                .as_ref()
                .is_some_and(|allowed| !allowed.contains(&route))
        {
            return Err(GatewayError::Forbidden(route.as_str()));
        }
        if let (None, Some(route), Some(allowed)) = (entry, route, &self.anonymous_routes)
            && !allowed.contains(&route)
        {
            return Err(GatewayError::Unauthorized);
        }
        Ok(Caller {
            client: name,
            account,
        })
    }

    /// The identified caller, if it may call a token-lease endpoint: only a client whose entry
    /// grants `token_lease` (401 without a key, since only a client can hold the grant; 403
    /// without the grant).
    fn may_lease(who: Identified<'_>) -> Result<Caller, GatewayError> {
        let Identified {
            name,
            account,
            entry,
        } = who;
        match entry {
            None => Err(GatewayError::Unauthorized),
            Some(e) if !e.token_lease => Err(GatewayError::LeaseNotGranted),
            Some(_) => Ok(Caller {
                client: name,
                account,
            }),
        }
    }

    /// Authenticates the request, strips its credentials and hands the caller on. A known
    /// client is named in `known` before its route is checked, so that a refusal's access line
    /// names it too.
    fn authorize<B>(
        &self,
        req: &mut Request<B>,
        known: &mut Option<Arc<str>>,
    ) -> Result<Arc<str>, GatewayError> {
        let who = self.identify(req.headers())?;
        if who.entry.is_some() {
            *known = Some(who.name.clone());
        }
        let caller = if req.extensions().get::<GatewayRoute>().is_some() {
            Self::may_lease(who)?
        } else {
            let route = req.extensions().get::<RouteMatch>().map(|m| m.route);
            self.may_call(who, route)?
        };
        req.headers_mut().remove(header::AUTHORIZATION);
        req.headers_mut().remove(TOKEN_HEADER);
        let name = caller.client.clone();
        req.extensions_mut().insert(caller);
        Ok(name)
    }
}

/// The authenticator as reloads swap it: each request reads the current one once.
pub(crate) type SharedAuthenticator = Arc<Swap<Authenticator>>;

#[derive(Clone)]
pub(crate) struct AuthLayer {
    auth: SharedAuthenticator,
}

impl AuthLayer {
    pub(crate) fn new(auth: SharedAuthenticator) -> Self {
        AuthLayer { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Auth<S> {
    inner: S,
    auth: SharedAuthenticator,
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = RespFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> RespFuture {
        // Known once the key is checked, so that a refusal's access line names its caller.
        let mut known = None;
        let checked = self
            .auth
            .with(|a| a.authorize(&mut req, &mut known))
            .and_then(|name| {
                known = Some(name.clone());
                // The query is checked for a known caller only: nobody learns a route's parameters
                // before showing a key.
                let query = req.uri().query();
                let checked = match (req.extensions().get::<RouteMatch>(), req.extensions().get()) {
                    (Some(m), _) => check_query(m.route, query),
                    (None, Some(own)) => GatewayRoute::check_query(*own, query),
                    (None, None) => Ok(()),
                };
                checked
                    .map(|()| name)
                    .map_err(|msg| GatewayError::BadRequest { code: 1007, msg })
            });
        match checked {
            Ok(name) => {
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let mut resp = fut.await?;
                    resp.extensions_mut().insert(ClientName(name));
                    Ok(resp)
                })
            }
            Err(e) => {
                let id = RequestId::of(&req);
                let mut resp = e.into_response(id.as_str());
                if let Some(name) = known {
                    resp.extensions_mut().insert(ClientName(name));
                }
                // A body still coming is not read for a refused request: the HTTP/1 connection
                // ends with this answer instead of waiting for (or draining) it.
                if !req.body().is_end_stream() && req.version() <= Version::HTTP_11 {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Box::pin(async move { Ok(resp) })
            }
        }
    }
}
