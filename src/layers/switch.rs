//! The pipeline switch: below the concurrency slot, each request goes down the pipeline built for
//! its route's kind (as linkerd switches per route), so no layer in a pipeline ever meets a
//! request that is not its own. Here the admitted request becomes the pipeline's typed value: a
//! [`Call`] for the table's routes, an [`OwnCall`] for the gateway's own endpoints.

use std::task::{Context, Poll};

use bytes::Bytes;
use tower::Service;
use tower::util::BoxCloneSyncService;

use crate::admitted::{AdmittedRequest, Call, OwnCall, Target};
use crate::error::{GatewayError, GatewayFuture};
use crate::routes::Kind;
use crate::svc::Resp;

/// A pipeline for the table's routes of one kind.
pub(crate) type RoutePipeline = BoxCloneSyncService<Call, Resp, GatewayError>;
/// The gateway's own endpoints.
pub(crate) type OwnPipeline = BoxCloneSyncService<OwnCall, Resp, GatewayError>;

/// One pipeline per kind of route.
#[derive(Clone)]
pub(crate) struct Pipelines {
    /// `/_gateway/...`: the token lease.
    pub(crate) own: OwnPipeline,
    /// Reads: cache → token → forward.
    pub(crate) read: RoutePipeline,
    /// Mutations: invalidate → collapse → token → forward.
    pub(crate) mutation: RoutePipeline,
    /// Spends: invalidate → validate → de-duplicate → budget → rate limit → token → forward.
    pub(crate) spend: RoutePipeline,
}

impl Service<AdmittedRequest<Bytes>> for Pipelines {
    type Response = Resp;
    type Error = GatewayError;
    type Future = GatewayFuture;

    /// Ready when every pipeline is (each always is: none holds a slot of its own), so that
    /// `call` can hand the request to its pipeline without cloning that pipeline.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        std::task::ready!(self.own.poll_ready(cx))?;
        std::task::ready!(self.read.poll_ready(cx))?;
        std::task::ready!(self.mutation.poll_ready(cx))?;
        std::task::ready!(self.spend.poll_ready(cx))?;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, entry: AdmittedRequest<Bytes>) -> Self::Future {
        let AdmittedRequest { admitted, req } = entry;
        let route = match admitted.target {
            Target::Own(own) => {
                let call = OwnCall {
                    id: admitted.id,
                    own,
                    caller: admitted.caller,
                    req,
                };
                return self.own.call(call);
            }
            Target::Route(route) => route,
        };
        let pipeline = match route.route.kind() {
            Kind::Read => &mut self.read,
            Kind::Mutation => &mut self.mutation,
            Kind::Spend => &mut self.spend,
        };
        let call = Call {
            id: admitted.id,
            route,
            caller: admitted.caller,
            cache_key: admitted.cache_key,
            req,
        };
        pipeline.call(call)
    }
}
