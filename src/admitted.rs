//! What the edge learns about a request, as typed values that travel with it: its id, the route
//! it matched and who is calling ([`Admitted`]), built once by authentication. Below the
//! concurrency slot the pipeline switch splits it by route kind: a route's request and its facts
//! travel together as a [`Call`], so no layer looks anything up again, and none can find it
//! missing.
//!
//! This is a leaf: it names what the layers hand each other and imports no layer.

use std::sync::Arc;

use crate::cache::key::CacheKey;
use crate::counters::ClientCounters;
use crate::protect::validate::Order;
use crate::routes::{GatewayRoute, Route, RouteMatch};
use crate::secret::Secret;
use crate::svc::Req;
use crate::upstream::AccountHandle;

/// The request's id (`X-Request-Id`, kept or generated); the `traceId` of the gateway's own errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RequestId(pub Arc<str>);

impl RequestId {
    /// The request's id, set by the request-id layer (empty before it).
    pub(crate) fn of<B>(req: &http::Request<B>) -> RequestId {
        req.extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// The authenticated client's name, on the answer for the access log (never its key).
#[derive(Debug, Clone)]
pub(crate) struct ClientName(pub Arc<str>);

/// The account an answer concerns, on answers whose access line names it (a token lease).
#[derive(Debug, Clone)]
pub(crate) struct AccountName(pub Arc<str>);

/// Who is calling: the client's name and the upstream account it uses.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) client: Arc<str>,
    pub(crate) account: Arc<AccountHandle>,
    /// The client's counts for the console, made with its entry: counting is one atomic add.
    pub(crate) counts: Arc<ClientCounters>,
}

/// What a request is to the gateway once classified: one of the table's routes, or one of the
/// gateway's own endpoints.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Route(RouteMatch),
    Own(GatewayRoute),
}

/// What authentication established: the request's id, what it is, and who sends it. Handed down
/// with the request until the pipeline switch splits it by route kind.
#[derive(Debug, Clone)]
pub(crate) struct Admitted {
    pub(crate) id: RequestId,
    pub(crate) target: Target,
    pub(crate) caller: Caller,
    /// The cache key, when the cache-hit layer already built it for a miss.
    pub(crate) cache_key: Option<CacheKey>,
}

/// What the cache-hit layer learned of a request it could not answer, handed down with it so
/// that admission and the cache need not learn it again: the route, a caller that may call it
/// (query checked), and the entry's key.
#[derive(Clone)]
pub(crate) struct HeadStart {
    pub(crate) matched: RouteMatch,
    pub(crate) caller: Caller,
    pub(crate) key: CacheKey,
}

/// A request on its way to a slot: its [`Admitted`] beside it, the body not yet read (`B` is
/// hyper's body) or read (`Bytes`).
pub(crate) struct AdmittedRequest<B> {
    pub(crate) admitted: Admitted,
    pub(crate) req: http::Request<B>,
}

/// A route's request below the slot: everything a pipeline needs, typed.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) id: RequestId,
    pub(crate) route: RouteMatch,
    pub(crate) caller: Caller,
    /// Set when admission was handed it (see [`HeadStart`]).
    pub(crate) cache_key: Option<CacheKey>,
    pub(crate) req: Req,
}

impl Call {
    pub(crate) fn route(&self) -> Route {
        self.route.route
    }
}

/// A request to one of the gateway's own endpoints below the slot.
pub(crate) struct OwnCall {
    pub(crate) id: RequestId,
    pub(crate) own: GatewayRoute,
    pub(crate) caller: Caller,
    pub(crate) req: Req,
}

/// A create whose body was checked: the order it is (what is sent upstream, byte for byte).
#[derive(Debug, Clone)]
pub(crate) struct Spend {
    pub(crate) call: Call,
    pub(crate) order: Order,
}

/// A call with the upstream token it is sent with (the token layer's work, the forwarder's input).
pub(crate) struct Outbound {
    pub(crate) call: Call,
    pub(crate) token: Secret,
}

/// Marks an answer made because the upstream call broke after the request was sent (timeout,
/// reset, not JSON): the upstream may have carried it out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutcomeUnknown;

/// The ledger entry a spend opened (a request extension), and the answer's header naming the entry
/// that carried the purchase out (replays and joins name the original's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PurchaseId(pub Arc<str>);

/// The header of [`PurchaseId`] on spend answers.
pub(crate) const PURCHASE_ID: http::HeaderName =
    http::HeaderName::from_static("finovy-purchase-id");

/// How the create flow answered a spend when it did not simply carry it out (an answer's
/// extension, read by the ledger).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlowAnswer {
    /// Joined to an identical execution in flight: its answer.
    Joined,
    /// An unknown outcome settled to the disk it made.
    Reconciled,
    /// An unknown outcome found not made: this request carried the purchase out again.
    RetriedUnknown,
}
