//! `GET /admin/overview`: the gateway at a glance. Version and uptime, mode (one replica or a
//! fleet sharing Redis), Redis and ledger state, each account's token, the cache and its hit
//! ratio over the last minutes, the webhook backlog, and today's purchases by outcome (today in
//! `[create.budget] timezone`). Everything is read when asked; nothing here runs per request.

use serde_json::{Value, json};

use crate::admin::state::AdminState;
use crate::ledger::Outcome;
use crate::upstream::AccountHandle;
use crate::upstream::token::TokenStatus;

pub(super) async fn overview(state: &AdminState) -> Value {
    let now = crate::clock::now_ms();
    let started = state.console.started_ms;
    let budget = state.reloader.budget.settings();
    let (max_bytes, webhooks) = {
        let current = state
            .reloader
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (current.cache.max_bytes, current.webhooks.len())
    };
    let since = crate::protect::budget::window::start_of_day(&budget.tz, now / 1000) * 1000;
    let (redis, ledger, today) = tokio::join!(redis(state), ledger(state), today(state, since));
    let usage = state.cache.update_gauges();
    let (window, lookups) = state.console.lookups.read(&state.metrics, now);
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "startedAt": started,
        "now": now,
        "uptimeSeconds": now.saturating_sub(started) / 1000,
        "timezone": budget.timezone,
        "mode": if state.fleet.is_some() { "shared" } else { "single" },
        "replica": &*state.console.replica,
        "redis": redis,
        "ledger": ledger,
        "webhooks": {
            "configured": webhooks,
            "backlog": state.metrics.webhook_backlog.get(),
        },
        "accounts": state.accounts.iter().map(|a| account(a)).collect::<Vec<_>>(),
        "cache": {
            "entries": usage.entries,
            "bytes": usage.bytes,
            "maxBytes": max_bytes,
            "windowSeconds": window,
            "hitRatio": lookups.hit_ratio(),
            "lookups": {
                "hit": lookups.hit,
                "stale": lookups.stale,
                "miss": lookups.miss,
                "coalesced": lookups.coalesced,
            },
        },
        "purchasesToday": today,
    })
}

/// `off` without Redis; else whether it answers a ping, and what is worth knowing about it.
async fn redis(state: &AdminState) -> Value {
    let Some(fleet) = &state.fleet else {
        return json!({"state": "off", "detail": null});
    };
    match fleet.ping().await {
        Ok(()) => {
            let mut notes = Vec::new();
            if !state.two_level.as_ref().is_none_or(|t| t.subscribed()) {
                notes.push("not yet listening for invalidations".to_string());
            }
            notes.extend(fleet.reset_note());
            notes.extend(fleet.eviction.note());
            let detail = (!notes.is_empty()).then(|| notes.join("; "));
            json!({"state": "ok", "detail": detail})
        }
        Err(e) => json!({"state": "down", "detail": e.detail()}),
    }
}

/// Whether the ledger answers, and how many entries have no outcome yet.
async fn ledger(state: &AdminState) -> Value {
    let backend = state.ledger.backend_name();
    match state.ledger.open_count().await {
        Ok(open) => json!({"state": "ok", "backend": backend, "openEntries": open, "detail": null}),
        Err(e) => json!({
            "state": "down",
            "backend": backend,
            "openEntries": null,
            "detail": e.to_string(),
        }),
    }
}

/// The ledger's entries since `since` (epoch ms) by outcome: bought (reconciled ones included:
/// they bought too), refused, unknown, and every other outcome (open, replayed, joined, failed).
async fn today(state: &AdminState, since: u64) -> Value {
    match state.ledger.counts_since(since).await {
        Ok(counts) => {
            let (mut bought, mut refused, mut unknown, mut other) = (0, 0, 0, 0);
            for (outcome, n) in counts {
                match outcome {
                    Outcome::Bought | Outcome::Reconciled => bought += n,
                    Outcome::Refused => refused += n,
                    Outcome::Unknown => unknown += n,
                    Outcome::Open | Outcome::Replayed | Outcome::Joined | Outcome::Failed => {
                        other += n;
                    }
                }
            }
            json!({
                "since": since,
                "bought": bought,
                "refused": refused,
                "unknown": unknown,
                "other": other,
            })
        }
        Err(e) => json!({
            "since": since, "bought": null, "refused": null, "unknown": null, "other": null,
            "detail": e.to_string(),
        }),
    }
}

/// One account's token: its state, and what this process saw of it.
fn account(a: &AccountHandle) -> Value {
    let counts = a.broker.counts().snapshot();
    let (token, expires_in, last_error) = match a.broker.status() {
        TokenStatus::Fixed => ("fixed", None, None),
        TokenStatus::Held { expires_in } => ("held", Some(expires_in.as_secs()), None),
        TokenStatus::Failing(e) => ("failing", None, Some(e.to_string())),
        TokenStatus::None => ("none", None, None),
    };
    json!({
        "name": &*a.name,
        "token": token,
        "expiresInSeconds": expires_in,
        "lastRefreshAt": counts.last_token_ms,
        "lastError": last_error,
        "leases": counts.leases,
        "refusals": counts.refusals,
    })
}
