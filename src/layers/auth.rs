//! Client authentication (CONTRACT.md, "Clients"), used by admission ([`crate::layers::admit`])
//! and the cache-hit fast path alike: a bearer key in `Authorization`, or the key in
//! `Finovy-Access-Token` for code written against the upstream (`Authorization` decides when both
//! are sent). Keys are compared as SHA-256 digests in constant time against every client, so the
//! time taken says nothing about which digest came close. The client's account and name become the
//! request's [`Caller`]; a client's `routes` allow-list is enforced here (403, code 1001), and
//! with `[[clients]]` configured an anonymous caller gets only `[auth] anonymous_routes` (401
//! otherwise: a key would help). The gateway's token lease (`/_gateway/token`) is granted by a
//! client's `token_lease` instead of its `routes` (403, code 1001, without it); a caller without
//! a key never gets it (401).

use std::collections::BTreeSet;
use std::sync::Arc;

use http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::admitted::{Caller, Target};
use crate::config::ANONYMOUS;
use crate::counters::ClientCounters;
use crate::error::GatewayError;
use crate::routes::Route;
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
    /// Its counts for the console, handed to each of its calls.
    pub(crate) counts: Arc<ClientCounters>,
}

/// The identified caller: its name, its account, and its entry unless anonymous.
struct Identified<'a> {
    name: Arc<str>,
    account: Arc<AccountHandle>,
    counts: Arc<ClientCounters>,
    entry: Option<&'a ClientEntry>,
}

/// Who may call, and as which account.
pub(crate) struct Authenticator {
    clients: Vec<ClientEntry>,
    /// Set in anonymous mode: keyless calls go to this (the default) account.
    anonymous: Option<Arc<AccountHandle>>,
    /// [`ANONYMOUS`], made once rather than per call.
    anonymous_name: Arc<str>,
    /// The anonymous caller's counts.
    anonymous_counts: Arc<ClientCounters>,
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
            anonymous_counts: Arc::default(),
            anonymous_routes,
        }
    }

    /// Counts the anonymous caller's calls in `counts` (kept across reloads by their maker).
    #[must_use]
    pub(crate) fn with_anonymous_counts(mut self, counts: Arc<ClientCounters>) -> Authenticator {
        self.anonymous_counts = counts;
        self
    }

    /// Every caller this authenticator knows, with its counts: each client, and the anonymous
    /// caller when allowed (`GET /admin/clients`).
    pub(crate) fn callers(&self) -> Vec<(Arc<str>, Arc<ClientCounters>)> {
        self.clients
            .iter()
            .map(|c| (c.name.clone(), c.counts.clone()))
            .chain(
                self.anonymous
                    .is_some()
                    .then(|| (self.anonymous_name.clone(), self.anonymous_counts.clone())),
            )
            .collect()
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
            counts: self.anonymous_counts.clone(),
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
                    counts: c.counts.clone(),
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
            counts,
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
            counts,
        })
    }

    /// The identified caller, if it may call a token-lease endpoint: only a client whose entry
    /// grants `token_lease` (401 without a key, since only a client can hold the grant; 403
    /// without the grant).
    fn may_lease(who: Identified<'_>) -> Result<Caller, GatewayError> {
        let Identified {
            name,
            account,
            counts,
            entry,
        } = who;
        match entry {
            None => Err(GatewayError::Unauthorized),
            Some(e) if !e.token_lease => Err(GatewayError::LeaseNotGranted),
            Some(_) => Ok(Caller {
                client: name,
                account,
                counts,
            }),
        }
    }

    /// Who may call `target`: the caller, or why not. A known client is named in `known` (with
    /// its counts) before its route is checked, so that a refusal's access line names it too and
    /// its counts count it.
    pub(crate) fn admit(
        &self,
        headers: &HeaderMap,
        target: &Target,
        known: &mut Option<(Arc<str>, Arc<ClientCounters>)>,
    ) -> Result<Caller, GatewayError> {
        let who = self.identify(headers)?;
        if who.entry.is_some() {
            *known = Some((who.name.clone(), who.counts.clone()));
        }
        match target {
            Target::Own(_) => Self::may_lease(who),
            Target::Route(m) => self.may_call(who, Some(m.route)),
        }
    }
}

/// The authenticator as reloads swap it: each request reads the current one once.
pub(crate) type SharedAuthenticator = Arc<Swap<Authenticator>>;
