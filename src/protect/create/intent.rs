//! The prologue both flows share: what a spend is, gathered once from the request into one typed
//! [`Intent`]: its route and policy, its account and client, its request id, its order, its
//! identity (fingerprint), the record it runs under (by `Idempotency-Key` or not), and the client
//! its records count for. [`Intent::new`] builds it from the typed parts of a spend.

use http::HeaderMap;

use crate::admitted::RequestId;
use crate::error::GatewayError;
use crate::protect::policy::{CreatePolicy, CreateSettings};
use crate::protect::validate::{DiskOrder, Order};
use crate::routes::{Route, RouteMatch};

use super::keys::{RecordKey, fingerprint, idempotency_key};

/// One spend, as the create flow needs it.
#[derive(Debug, Clone)]
pub(crate) struct Intent {
    pub(crate) route: Route,
    pub(crate) account: String,
    pub(crate) client: String,
    /// The `Idempotency-Key`, as sent, of a keyed spend.
    pub(crate) key: Option<String>,
    /// The ledger entry this request opened, if the ledger holds it.
    pub(crate) purchase: Option<std::sync::Arc<str>>,
    pub(crate) request_id: RequestId,
    /// The request's identity (see [`fingerprint`]).
    pub(crate) fingerprint: String,
    /// The record it runs under.
    pub(crate) keying: Keying,
    /// The client its records count for, and how many live records that client may hold.
    pub(crate) owner: RecordKey,
    pub(crate) max_records: u64,
    /// The route's policy, as current when the request began.
    pub(crate) policy: CreatePolicy,
    /// A valid disk create's order: what reconciliation looks for. `None` for other spends.
    pub(crate) disk: Option<DiskOrder>,
}

/// Under which record a spend runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Keying {
    /// Under its `Idempotency-Key` (scoped to its client and route): replay, 422, 409.
    Keyed(RecordKey),
    /// Key-less: identical creates collapse, and are answered alike for the de-dup window.
    Unkeyed(RecordKey),
}

/// The typed parts a spend is made of, as the edge knows them.
pub(crate) struct Parts<'a> {
    pub(crate) route: &'a RouteMatch,
    pub(crate) account: &'a str,
    pub(crate) client: &'a str,
    pub(crate) request_id: RequestId,
    pub(crate) purchase: Option<std::sync::Arc<str>>,
    pub(crate) order: Option<&'a Order>,
    pub(crate) disk: Option<&'a DiskOrder>,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) body: &'a [u8],
}

impl Intent {
    /// The spend these parts make: `None` when its route has no create policy; an error (400,
    /// code 1007) when its `Idempotency-Key` is not usable.
    pub(crate) fn new(
        parts: &Parts<'_>,
        settings: &CreateSettings,
    ) -> Option<Result<Intent, GatewayError>> {
        let m = parts.route;
        let policy = settings.routes.get(&m.route)?.clone();
        let (account, client) = (parts.account, parts.client);
        let fingerprint = fingerprint(m, parts.order, parts.body);
        let key = match idempotency_key(parts.headers) {
            Ok(key) => key,
            Err(msg) => return Some(Err(GatewayError::BadRequest { code: 1007, msg })),
        };
        let keying = match &key {
            Some(key) => Keying::Keyed(RecordKey::idempotent(account, client, m.route, key)),
            None => Keying::Unkeyed(RecordKey::dedup(
                account,
                client,
                policy.dedup_scope,
                &fingerprint,
            )),
        };
        Some(Ok(Intent {
            route: m.route,
            account: account.to_string(),
            client: client.to_string(),
            key,
            purchase: parts.purchase.clone(),
            request_id: parts.request_id.clone(),
            fingerprint,
            keying,
            owner: RecordKey::owner(account, client),
            max_records: settings.max_records_per_client,
            policy,
            disk: parts.disk.cloned(),
        }))
    }
}
