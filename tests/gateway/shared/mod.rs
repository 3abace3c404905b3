//! Shared mode end to end: several replicas in front of one simulator, sharing state through one
//! real Redis. The fleet behaves like one gateway (one fill per entry, one purchase per intent, one
//! rate, one token), survives Redis going away and coming back, and leaves nothing in Redis that
//! never expires. The simulator's counters are the witness of what reached the upstream. What
//! every file here uses (configs naming the test Redis, requests, killing a replica) is below.
//!
//! - `budget`: a spending cap holds for the fleet; a refused create's refund never fails in Redis;
//! - `cache`: one fill per entry for the fleet, invalidations reaching every replica;
//! - `creates`: one purchase per intent across replicas, one create rate for the fleet;
//! - `host_password`: host passwords never reach Redis;
//! - `ledger`: one purchase ledger (PostgreSQL) for the fleet, down and back;
//! - `redis`: Redis down and back, key hygiene, URL sources, Cluster, Sentinel and TLS;
//! - `redis_eviction`: an evicting `maxmemory-policy` refuses creates unless allowed;
//! - `redis_failures`: commands rest after a timeout; token-path failures counted by operation;
//! - `redis_reset`: Redis losing its data is noticed, and creates wait out the grace window;
//! - `token`: one `getToken` for the fleet.

mod budget;
mod cache;
mod creates;
mod host_password;
mod ledger;
mod redis;
mod redis_eviction;
mod redis_failures;
mod redis_reset;
mod token;

pub(super) use std::sync::Arc;
pub(super) use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
pub(super) use std::time::{Duration, Instant};

pub(super) use finovy_gateway::sim::SimConfig;
pub(super) use finovy_gateway::sim::seed::HOST_AREA0;
pub(super) use reqwest::header::HeaderMap;
pub(super) use serde_json::{Value, json};

pub(super) use crate::harness::redis::{RedisCluster, RedisServer};
pub(super) use crate::harness::*;

pub(super) const DISK20: &str = r#"{"area":0,"memory":20,"isMount":0}"#;

/// A config in shared mode: `[redis]` with `redis_keys` added, then `rest` (more tables).
pub(super) fn config(redis: &RedisServer, prefix: &str, redis_keys: &str, rest: &str) -> String {
    format!(
        "[redis]\nurl = \"{}\"\nprefix = \"{prefix}\"\ntimeout = \"1s\"\n{redis_keys}\n{rest}",
        redis.url()
    )
}

/// A client that gives up after 10 s: a request it cannot finish means the gateway hung (an
/// answer is due within Redis's 1 s timeout; the rest is room for a loaded machine).
pub(super) fn prompt() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

pub(super) async fn info(
    client: &reqwest::Client,
    gw_url: &str,
    id: &str,
) -> (u16, HeaderMap, Value) {
    answer(client.get(format!("{gw_url}{DISK}/info/{id}"))).await
}

pub(super) async fn create(
    client: &reqwest::Client,
    gw_url: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, HeaderMap, Value) {
    let mut req = client
        .post(format!("{gw_url}{DISK}/create"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    answer(req).await
}

/// A new disk (area 0, 20 GB, not mounted) bought through `gw`; its id.
pub(super) async fn create_disk(gw: &Gw) -> String {
    let (status, _, v) = create(&http(), &gw.url, Some(&fresh_key()), DISK20).await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    v["data"].as_str().expect("a disk id").to_string()
}

pub(super) async fn mount(gw: &Gw, id: &str) {
    let (status, _, v) = answer(
        http()
            .post(format!("{}{DISK}/pveCreate", gw.url))
            .json(&json!({"id": id, "pveId": HOST_AREA0})),
    )
    .await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
}

pub(super) fn replayed(h: &HeaderMap) -> bool {
    h.get("idempotent-replayed").is_some_and(|v| v == "true")
}

/// SIGKILL: no drain, nothing written on the way out.
pub(super) fn sigkill(bin: &mut Bin) {
    tokio::task::block_in_place(|| {
        bin.child.kill().expect("SIGKILL the replica");
        bin.child.wait().expect("the replica exits");
    });
}

/// A shared-mode config for any `[redis] url` (cluster or sentinel).
pub(super) fn config_url(url: &str, prefix: &str, rest: &str) -> String {
    format!("[redis]\nurl = \"{url}\"\nprefix = \"{prefix}\"\ntimeout = \"1s\"\n\n{rest}")
}
