//! `GET /admin/clients`: per client, what this replica answered for it since it started:
//! requests, create attempts, token leases and refusals by reason. Every caller the current
//! configuration knows is listed, at 0 until it calls (and `anonymous` when anonymous calls are
//! allowed); the counts are [`crate::counters::ClientCounters`], kept across reloads.

use serde_json::{Map, Value, json};

use crate::admin::state::AdminState;
use crate::counters::Refusal;

pub(super) fn clients(state: &AdminState) -> Value {
    let callers = state.reloader.auth.load().callers();
    let clients: Vec<Value> = callers
        .iter()
        .map(|(name, counts)| {
            let c = counts.snapshot();
            let refusals: Map<String, Value> = Refusal::ALL
                .iter()
                .zip(c.refusals)
                .map(|(r, n)| (r.as_str().to_string(), n.into()))
                .collect();
            json!({
                "name": &**name,
                "requests": c.requests,
                "creates": c.creates,
                "tokenLeases": c.token_leases,
                "refusals": refusals,
            })
        })
        .collect();
    json!({"since": state.console.started_ms, "clients": clients})
}
