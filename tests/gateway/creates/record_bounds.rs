//! Each client holds at most `[create] max_records_per_client` live idempotency and de-dup
//! records: a create that would make one more is refused (429, code 220025) before the upstream,
//! while retries of its existing records are still answered, other clients are not affected,
//! and a create that did nothing (an upstream failure) leaves no record to count. The same bound
//! holds for the fleet in shared mode.

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::harness::redis::RedisServer;
use crate::harness::*;

const KEY_A: &str = "fgw_bounds_client_a";
const KEY_B: &str = "fgw_bounds_client_b";

fn config(redis: Option<&RedisServer>) -> String {
    let mut toml = String::new();
    if let Some(r) = redis {
        toml.push_str(&format!(
            "[redis]\nurl = \"{}\"\nprefix = \"fgw-bounds:\"\ntimeout = \"1s\"\n",
            r.url()
        ));
    }
    toml.push_str("[create]\nmax_records_per_client = 3\n");
    toml.push_str(FAST_CREATES);
    toml.push_str(&client_entry("a", KEY_A, ""));
    toml.push_str(&client_entry("b", KEY_B, ""));
    toml
}

async fn create(
    url: &str,
    client: &str,
    key: Option<&str>,
    memory: u64,
) -> (u16, HeaderMap, Value) {
    let mut req = http()
        .post(format!("{url}{DISK}/create"))
        .header("Authorization", format!("Bearer {client}"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"area":0,"memory":{memory},"isMount":0}}"#));
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    answer(req).await
}

fn assert_full((status, headers, v): &(u16, HeaderMap, Value)) {
    assert_eq!((*status, v["code"].as_i64()), (429, Some(220025)), "{v}");
    assert!(v["data"].is_null() && v["success"] == false, "{v}");
    let msg = v["msg"].as_str().unwrap();
    assert!(
        msg.contains("max_records_per_client") && msg.contains("nothing was sent upstream"),
        "{msg}"
    );
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    // The oldest record lives the idempotency lifetime (24h).
    assert!(retry > 3600, "Retry-After {retry}");
}

/// The bound through `urls` (one gateway, or replicas of one fleet taken in turn).
async fn the_bound_holds(urls: &[&str], sim: &Sim) {
    let at = |i: usize| urls[i % urls.len()];
    // An upstream failure did nothing: its record goes, and does not count.
    sim.fault("error", "0s").await;
    let (status, _, _) = create(at(0), KEY_A, Some(&fresh_key()), 20).await;
    assert_eq!(status, 500, "the upstream's own failure");
    sim.fault("none", "0s").await;

    let keys: Vec<String> = (0..3).map(|_| fresh_key()).collect();
    let mut disks = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let (status, _, v) = create(at(i), KEY_A, Some(k), 20).await;
        assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
        disks.push(v["data"].clone());
    }
    let made = sim.calls("create").await;
    // A fourth record, keyed or key-less, is refused before the upstream.
    assert_full(&create(at(3), KEY_A, Some(&fresh_key()), 20).await);
    assert_full(&create(at(4), KEY_A, None, 33).await);
    assert_eq!(sim.calls("create").await, made);
    // Retries of what it holds are answered as ever.
    let (status, h, v) = create(at(5), KEY_A, Some(&keys[0]), 20).await;
    assert_eq!(status, 200);
    assert!(h.contains_key("idempotent-replayed"));
    assert_eq!(v["data"], disks[0]);
    // Another client has its own count.
    let (status, _, v) = create(at(6), KEY_B, Some(&fresh_key()), 20).await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    assert_eq!(sim.calls("create").await, made + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_over_its_record_bound_is_refused_before_the_upstream() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(&config(None), &sim.url, demo_env()).await;
    the_bound_holds(&[&gw.url], &sim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_record_bound_holds_for_the_fleet() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let toml = config(Some(&redis));
    let [a, b] = replicas::<2>(&toml, &sim.url, demo_env()).await;
    the_bound_holds(&[&a.url, &b.url], &sim).await;
    // The count lives in Redis, and expires.
    let owners = redis.keys("fgw-bounds:rec-owner:*").await;
    assert_eq!(owners.len(), 2, "{owners:?}");
    for k in &owners {
        assert!(redis.pttl(k).await > 0, "{k}");
    }
}
