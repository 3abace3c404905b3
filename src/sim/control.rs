//! The control endpoints under `/_sim/`: not part of the upstream API, never delayed or faulted,
//! no token needed. They let tests and developers watch and steer the simulator.

use http::{Method, StatusCode};
use serde_json::json;
use tokio::time::Instant;

use crate::sim::envelope::{BAD_PARAM, Reply};
use crate::sim::fault::Fault;
use crate::sim::state::Shared;

/// Answers `/_sim/*`; HTTP 404 for anything not listed in the module documentation.
pub(crate) fn answer(shared: &Shared, method: &Method, path: &str, body: &[u8]) -> Reply {
    let mut state = shared.lock();
    match (method, path) {
        (&Method::GET, "/_sim/stats") => {
            state.world.settle(Instant::now());
            let doc = state
                .stats
                .to_json(state.world.disks.len(), state.world.hosts.len());
            Reply::document(&doc)
        }
        (&Method::GET, "/_sim/requests") => Reply::document(&state.stats.requests_json()),
        (&Method::POST, "/_sim/fault") => match Fault::parse(body) {
            Ok(fault) => {
                state.fault = fault;
                tracing::info!(?fault, "simulator: fault set");
                Reply::ok(fault.to_json())
            }
            Err(msg) => Reply::error(StatusCode::BAD_REQUEST, BAD_PARAM, &msg),
        },
        (&Method::POST, "/_sim/reset") => {
            state.reset();
            Reply::ok(json!(true))
        }
        (&Method::POST, "/_sim/revoke-tokens") => {
            let revoked = state.tokens.revoke_all();
            Reply::ok(json!({ "revoked": revoked }))
        }
        _ => Reply::not_found(method, path),
    }
}
