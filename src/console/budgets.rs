//! `GET /admin/budgets`: every spending cap that is set, what it has used in its current window
//! against its limit (read as the `finovy_gateway_budget_*` gauges are: fleet-wide in shared
//! mode), and when that window ends, in `[create.budget] timezone`.

use serde_json::{Value, json};

use crate::admin::state::AdminState;

pub(super) async fn budgets(state: &AdminState) -> Value {
    let budget = &state.reloader.budget;
    let settings = budget.settings();
    let mut out = json!({
        "timezone": settings.timezone,
        "warnAt": settings.warn_at,
        "caps": [],
    });
    if !settings.enabled() {
        return out;
    }
    match budget.gauges(crate::clock::now_secs()).await {
        Ok(uses) => {
            out["caps"] = uses
                .iter()
                .map(|u| {
                    json!({
                        "scope": u.scope,
                        "name": u.who,
                        "cap": u.cap,
                        "used": u.used,
                        "limit": u.limit,
                        "resetsAt": u.resets_at * 1000,
                    })
                })
                .collect();
        }
        // The counters' store did not answer: no caps to show, and why.
        Err(e) => out["unavailable"] = e.detail().into(),
    }
    out
}
