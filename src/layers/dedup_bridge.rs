//! The de-duplication layer on typed calls: it still reads a request's facts from its extensions,
//! so this puts them there on the way in and takes them out on the way down. The step below it
//! is the spend pipeline's rest for a create, and the token and forwarder for the calls it makes
//! itself (a mutation's collapse, a reconciliation's disk list).

use std::convert::Infallible;
use std::task::{Context, Poll};

use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use crate::admitted::{Call, Caller, OutcomeUnknown, RequestId, Spend};
use crate::error::GatewayError;
use crate::layers::dedup::{Dedup, DedupLayer};
use crate::protect::validate::{DiskOrder, Order};
use crate::routes::RouteMatch;
use crate::svc::{BoxFuture, GatewayFuture, Req, Resp};

pub(crate) type CallService = BoxCloneSyncService<Call, Resp, GatewayError>;
pub(crate) type SpendService = BoxCloneSyncService<Spend, Resp, GatewayError>;

/// A call's facts as the request's extensions.
fn into_req(call: Call, order: Option<Order>) -> Req {
    let Call {
        id,
        route,
        caller,
        cache_key: _,
        mut req,
    } = call;
    let ext = req.extensions_mut();
    ext.insert(id);
    ext.insert(route);
    ext.insert(caller);
    if let Some(order) = order {
        if let Some(disk) = order.disk() {
            ext.insert(disk.clone());
        }
        ext.insert(order);
    }
    req
}

/// The facts back out of the extensions.
fn from_req(mut req: Req) -> Option<(Call, Option<Order>)> {
    let ext = req.extensions_mut();
    let id = ext.remove::<RequestId>()?;
    let route = ext.remove::<RouteMatch>()?;
    let caller = ext.remove::<Caller>()?;
    ext.remove::<DiskOrder>();
    let order = ext.remove::<Order>();
    let call = Call {
        id,
        route,
        caller,
        cache_key: None,
        req,
    };
    Some((call, order))
}

/// Below the de-duplication layer: a create goes on down the spend pipeline, anything else to the
/// token and the forwarder. Errors are rendered here, as the layer above expects answers.
#[derive(Clone)]
pub(crate) struct Below {
    spend: SpendService,
    plain: CallService,
}

impl Service<Req> for Below {
    type Response = Resp;
    type Error = Infallible;
    type Future = BoxFuture<Result<Resp, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let id = RequestId::of(&req);
            let result = match from_req(req) {
                Some((call, Some(order))) => this.spend.oneshot(Spend { call, order }).await,
                Some((call, None)) => this.plain.oneshot(call).await,
                None => Err(GatewayError::NotFound("unclassified request".into())),
            };
            Ok(match result {
                Ok(resp) => resp,
                Err(e) => {
                    let unknown = e.outcome_unknown();
                    let mut resp = e.into_response(id.as_str());
                    if unknown {
                        resp.extensions_mut().insert(OutcomeUnknown);
                    }
                    resp
                }
            })
        })
    }
}

/// The de-duplication layer over a create's (or a mutation's) typed call.
#[derive(Clone)]
pub(crate) struct Bridged {
    dedup: Dedup<Below>,
}

impl Bridged {
    pub(crate) fn new(layer: &DedupLayer, spend: SpendService, plain: CallService) -> Bridged {
        Bridged {
            dedup: layer.layer(Below { spend, plain }),
        }
    }

    fn run(&self, req: Req) -> GatewayFuture {
        let dedup = self.dedup.clone();
        Box::pin(async move {
            let resp = dedup.oneshot(req).await.unwrap_or_else(|e| match e {});
            Ok(resp)
        })
    }
}

impl Service<Spend> for Bridged {
    type Response = Resp;
    type Error = GatewayError;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, spend: Spend) -> Self::Future {
        self.run(into_req(spend.call, Some(spend.order)))
    }
}

impl Service<Call> for Bridged {
    type Response = Resp;
    type Error = GatewayError;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        self.run(into_req(call, None))
    }
}
