//! The admin listener (CONTRACT.md, "Admin"): `/metrics`, `/healthz`, `/readyz`, and `/admin/*`
//! (`/admin/cache/purge`, `/admin/reload`, the ledger's `/admin/purchases` and `/admin/spend`
//! from `crate::purchases`, the console's views from `crate::console`) guarded by `[admin]
//! key_sha256` (disabled when unset), and the console's page (`/console`, off without that key).
//! Kept apart from the data plane so that it can be exposed to the cluster's probes and scrapers
//! only.

pub(crate) mod state;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::cache::Reason;
use crate::cache::key::{CacheKey, canonical_json};
use crate::clock::now_ms;
use crate::config::{DEFAULT_ACCOUNT, ServerConfig};
use crate::console;
use crate::envelope::success_response;
use crate::error::GatewayError;
use crate::layers::auth::{bearer_key, key_matches};
use crate::layers::request_id::pick;
use crate::metrics::Metrics;
use crate::purchases;
use crate::reload::ReloadError;
use crate::routes::RouteTable;
use crate::serve::{self, Plane};
use crate::store::Invalidation;
use crate::upstream::token::TokenStatus;

pub(crate) use state::AdminState;

/// How long `/readyz` waits for a token when none is held.
const READY_TOKEN_WAIT: Duration = Duration::from_secs(3);

/// Open admin connections at most: probes and scrapers need few, and a flood of them must not
/// take the process's file descriptors. At the cap a new one takes the longest-idle one's place.
pub(crate) const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Serves the admin listener until `shutdown`, as the data plane's is served (the same HTTP
/// settings, timeouts and per-address cap), with its own small connection cap.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    cfg: ServerConfig,
    tls: Option<Arc<crate::tls::ServerTls>>,
    shutdown: impl Future<Output = ()>,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, "admin listening");
    }
    let plane = Plane {
        name: "admin",
        max_connections: ADMIN_MAX_CONNECTIONS,
        tls: tls.as_deref(),
    };
    let metrics = state.metrics.clone();
    let answer = move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, req).await) }
    };
    let connections = serve::serve(listener, plane, &cfg, &metrics, answer, shutdown).await;
    // Idle probe connections close now; one mid-request finishes on its own.
    connections.close_all_later();
}

fn json(status: StatusCode, value: serde_json::Value) -> http::Response<Bytes> {
    let mut resp = http::Response::new(Bytes::from(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Every answer of the admin listener; its refusals are rendered here, once, with the request's
/// id as their `traceId`: a sane incoming `X-Request-Id` (the data plane's rule), so that an
/// operator's action and its log line carry the id the operator's tool sent; else a new one.
async fn handle(state: &AdminState, req: http::Request<Incoming>) -> http::Response<Bytes> {
    let id = pick(req.headers());
    let id = id.to_str().unwrap_or_default().to_owned();
    route(state, req, &id)
        .await
        .unwrap_or_else(|e| e.into_response(&id))
}

async fn route(
    state: &AdminState,
    req: http::Request<Incoming>,
    id: &str,
) -> Result<http::Response<Bytes>, GatewayError> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => readiness(state).await,
        (&Method::GET, "/metrics") => {
            update_token_gauge(state);
            state.cache.update_gauges();
            // Read from the counters at each scrape: fleet-wide, and 0 once a window has rolled.
            export_budget_gauges(&state.reloader.budget, &state.metrics).await;
            if let Some((records, bytes)) = state.records.usage() {
                state.metrics.records.set(records as i64);
                state.metrics.records_bytes.set(bytes as i64);
            }
            let mut resp = http::Response::new(Bytes::from(state.metrics.render()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (_, p) if p.starts_with("/admin/") => admin(state, req, id).await?,
        (&Method::GET, p) if p == "/console" || p.starts_with("/console/") => {
            // The page asks for the key itself; where none is set there is no console.
            if state.admin_key_sha256.load().is_none() {
                return Err(GatewayError::AdminDisabled);
            }
            console::page(p).ok_or(GatewayError::NoAdminEndpoint)?
        }
        _ => return Err(GatewayError::NotAdmin),
    })
}

/// Sets the budget gauges from what each set cap has used; a store that does not answer leaves
/// them as they were (and is counted where every store error is).
async fn export_budget_gauges(budget: &crate::protect::budget::Budget, metrics: &Metrics) {
    if !budget.enabled() {
        metrics.set_budget_gauges(&[]);
        return;
    }
    match budget.gauges(crate::clock::now_secs()).await {
        Ok(uses) => metrics.set_budget_gauges(&uses),
        Err(e) => tracing::debug!(error = %e.detail(), "budget gauges not read"),
    }
}

/// 200 when this replica can serve as well as its peers: not draining, and no account's
/// credentials refused (nor, where required, its Redis unreachable). An upstream that is
/// unreachable, failing or slow is an outage every replica shares: it is said in the body (and
/// in the metrics and alerts) but keeps the replica ready, so that the Service keeps endpoints
/// and callers get the stale entries the cache promises, or the gateway's own 502/503, rather
/// than connection refused.
async fn readiness(state: &AdminState) -> http::Response<Bytes> {
    if state.draining.load(Ordering::SeqCst) {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"ready": false, "reason": "draining"}),
        );
    }
    let mut ready = true;
    let mut outage = Vec::new();
    let mut accounts = serde_json::Map::new();
    for a in &state.accounts {
        let status = match a.broker.status() {
            TokenStatus::Fixed => "fixed token".to_string(),
            TokenStatus::Held { expires_in } => {
                format!("token valid for {}s", expires_in.as_secs())
            }
            _ => match tokio::time::timeout(READY_TOKEN_WAIT, a.broker.get()).await {
                Ok(Ok(_)) => "token obtained".to_string(),
                Ok(Err(e)) => {
                    // A "throttled" or "none held" says nothing of why: the last failure does.
                    let refused = e.is_refusal()
                        || matches!(a.broker.status(), TokenStatus::Failing(last) if last.is_refusal());
                    if refused {
                        ready = false;
                        format!("no token: {e}")
                    } else {
                        outage.push(a.name.to_string());
                        format!("no token (upstream outage, not this replica's): {e}")
                    }
                }
                Err(_) => {
                    outage.push(a.name.to_string());
                    "no token (upstream outage, not this replica's): getToken did not answer in time"
                        .to_string()
                }
            },
        };
        accounts.insert(a.name.to_string(), serde_json::Value::String(status));
    }
    let mut body = serde_json::json!({"ready": ready, "accounts": accounts});
    if !outage.is_empty() {
        body["upstream"] = format!(
            "no token for {}: the upstream is unreachable or failing; cached entries are served stale within stale_if_error, other requests get 502/503",
            outage.join(", ")
        )
        .into();
    }
    if let Some(fleet) = &state.fleet {
        // Without Redis the replica still serves (cache and token on its own), but creates are
        // refused unless configured otherwise, and the fleet no longer acts as one.
        let redis = match fleet.ping().await {
            Ok(()) => {
                let listening = state.two_level.as_ref().is_none_or(|t| t.subscribed());
                if listening {
                    "ok".to_string()
                } else {
                    "ok; not yet listening for invalidations".to_string()
                }
            }
            Err(e) => {
                ready &= !fleet.required_for_readiness;
                format!(
                    "down ({}): cache and token from this replica only; creates {}",
                    e.detail(),
                    fleet.creates_when_down()
                )
            }
        };
        body["ready"] = ready.into();
        body["redis"] = redis.into();
        // A loss of Redis's data is a note, not unreadiness: the replica serves, and refuses
        // only the creates it cannot tell from retries.
        if let Some(note) = fleet.reset_note() {
            body["redis_reset"] = note.into();
        }
        // So is an eviction policy that could drop records: reads and the token are unaffected.
        if let Some(note) = fleet.eviction.note() {
            body["redis_eviction"] = note.into();
        }
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, body)
}

fn update_token_gauge(state: &AdminState) {
    let soonest = state
        .accounts
        .iter()
        .filter_map(|a| match a.broker.status() {
            TokenStatus::Held { expires_in } => Some(expires_in.as_secs() as i64),
            _ => None,
        })
        .min()
        .unwrap_or(0);
    state.metrics.token_expires_in.set(soonest);
}

/// `/admin/*`: 404 when no admin key is configured, 401 without the right key. Refusals are
/// values, rendered once by [`handle`].
async fn admin(
    state: &AdminState,
    req: http::Request<Incoming>,
    id: &str,
) -> Result<http::Response<Bytes>, GatewayError> {
    let expected = (*state.admin_key_sha256.load()).ok_or(GatewayError::AdminDisabled)?;
    let authorised =
        matches!(bearer_key(req.headers()), Ok(Some(key)) if key_matches(key, &expected));
    if !authorised {
        return Err(GatewayError::AdminUnauthorized);
    }
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/admin/cache/purge") => {
            let body = Limited::new(req.into_body(), 64 * 1024)
                .collect()
                .await
                .map_err(|_| GatewayError::BadRequest {
                    code: 1007,
                    msg: "could not read the body".to_string(),
                })?
                .to_bytes();
            let what = purge_target(&body, &state.routes)
                .map_err(|msg| GatewayError::BadRequest { code: 1007, msg })?;
            // An entry's id is the operator's (up to the body's 64 KiB): shown and logged cut.
            let shown: String = format!("{what:?}").chars().take(200).collect();
            state.cache.invalidate(what, Reason::Purge).await;
            tracing::info!(
                action = "cache.purge",
                target = %shown,
                request_id = %id,
                "operator action"
            );
            Ok(success_response(
                "purged",
                serde_json::json!({"purged": shown}),
                id,
            ))
        }
        (&Method::POST, "/admin/reload") => {
            let reloaded = state.reloader.reload("POST /admin/reload").await;
            match &reloaded {
                Ok(applied) => tracing::info!(
                    action = "reload",
                    result = "ok",
                    restart_needed = ?applied.restart_needed,
                    request_id = %id,
                    "operator action"
                ),
                Err(e) => tracing::info!(
                    action = "reload",
                    result = "error",
                    error = %e,
                    request_id = %id,
                    "operator action"
                ),
            }
            let applied = reloaded.map_err(|e| match e {
                ReloadError::Stuck(_) => GatewayError::ReloadStuck(e.to_string()),
                ReloadError::Unavailable => GatewayError::ReloadUnavailable(e.to_string()),
                // The running settings stay; the message names the key that did not check.
                ReloadError::Invalid(_) => GatewayError::ConfigInvalid(e.to_string()),
            })?;
            Ok(success_response(
                "reloaded",
                serde_json::json!({"restart_needed": applied.restart_needed, "kept": applied.kept}),
                id,
            ))
        }
        (&Method::GET, "/admin/purchases") => {
            purchases::list(&state.ledger, req.uri().query(), req.headers(), id).await
        }
        (&Method::GET, p) if p.starts_with(PURCHASE) => {
            purchases::one(&state.ledger, &p[PURCHASE.len()..], req.uri().query(), id).await
        }
        (&Method::GET, "/admin/spend") => {
            purchases::spend(&state.ledger, req.uri().query(), now_ms(), id).await
        }
        (&Method::GET, p) if let Some(view) = console::View::at(p) => {
            console::answer(state, view, req.uri().query(), id).await
        }
        _ => Err(GatewayError::NoAdminEndpoint),
    }
}

/// The prefix of `GET /admin/purchases/{id}`.
const PURCHASE: &str = "/admin/purchases/";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    #[serde(default)]
    all: bool,
    route: Option<String>,
    account: Option<String>,
    id: Option<String>,
}

/// `{"all": true}`, `{"route": "disk.info"}` (every account, or one with `account`), or
/// `{"route": "disk.info", "id": "PgOiNCqaJQ"}` (one entry; `account` defaults to `default`;
/// for `disk.list` the id is the request's JSON body, in any key order).
fn purge_target(body: &[u8], routes: &RouteTable) -> Result<Invalidation, String> {
    const USAGE: &str = "expected {\"all\": true}, {\"route\": \"disk.info\"} or {\"route\": \"disk.info\", \"id\": \"...\"} (optional \"account\")";
    let req: PurgeRequest = serde_json::from_slice(body).map_err(|e| format!("{USAGE}: {e}"))?;
    let route = match &req.route {
        Some(name) => Some(
            routes
                .by_name(name)
                .ok_or_else(|| format!("unknown route {name:?}; {USAGE}"))?,
        ),
        None => None,
    };
    match (req.all, route, req.account, req.id) {
        (true, None, None, None) => Ok(Invalidation::All),
        (false, Some(route), account, Some(id)) => {
            // A body-keyed route's entry is named by the request's JSON body, in canonical form.
            let id = if route.body_keyed() {
                canonical_json(id.as_bytes()).ok_or_else(|| {
                    format!("the id of a {route} entry is its request's JSON body: {USAGE}")
                })?
            } else {
                id
            };
            Ok(Invalidation::Key(CacheKey::new(
                account.as_deref().unwrap_or(DEFAULT_ACCOUNT),
                route,
                id,
            )))
        }
        (false, Some(route), Some(account), None) => Ok(Invalidation::Route {
            account: account.into(),
            route,
        }),
        (false, Some(route), None, None) => Ok(Invalidation::AnyAccount(route)),
        _ => Err(USAGE.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_entry_is_named_by_its_body_in_any_key_order() {
        let purge = |body: &str| purge_target(body.as_bytes(), &RouteTable::default());
        let a = purge(r#"{"route":"disk.list","id":"{\"pageSize\": 10, \"page\": 1}"}"#).unwrap();
        let b = purge(r#"{"route":"disk.list","id":"{\"page\":1,\"pageSize\":10}"}"#).unwrap();
        match (&a, &b) {
            (Invalidation::Key(x), Invalidation::Key(y)) => {
                assert_eq!(x, y);
                assert_eq!(&*x.id, r#"{"page":1,"pageSize":10}"#);
            }
            other => panic!("{other:?}"),
        }
        assert!(purge(r#"{"route":"disk.list","id":"page=1"}"#).is_err());
        // Other routes' ids are taken as they are.
        match purge(r#"{"route":"disk.info","id":"PgOiNCqaJQ"}"#).unwrap() {
            Invalidation::Key(k) => assert_eq!(&*k.id, "PgOiNCqaJQ"),
            other => panic!("{other:?}"),
        }
    }
}
