//! The purchase ledger from the outside: every spend on record once, with its outcome; replays
//! and joins pointing at the entry that bought; the ledger outliving a restart and answering a
//! keyed retry whose record went with it; a killed replica's purchase going from unknown to
//! reconciled; a disk's price recorded; no secret of any kind in the file.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use finovy_gateway::sim::SimConfig;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::*;

const ADMIN: &str = "fgw_ledger_admin_key_5b1c0e99a4d2";
const CLIENT: &str = "fgw_ledger_client_key_7e2a44c1b9f0";

/// A client, an admin key and the ledger at `path` (a fresh file when `None`).
fn config(path: Option<&std::path::Path>, extra: &str) -> String {
    let ledger = match path {
        Some(p) => format!("[ledger]\npath = {:?}\n{extra}", p.display().to_string()),
        None => extra.to_string(),
    };
    format!(
        "{}\n[admin]\nkey_sha256 = \"{}\"\n{ledger}",
        client_entry("svc", CLIENT, ""),
        hex::encode(Sha256::digest(ADMIN.as_bytes()))
    )
}

/// A fresh folder for a ledger file that outlives one gateway.
fn ledger_dir() -> std::path::PathBuf {
    let dir = fresh_dir("ledger-dir");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn create(
    url: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = http()
        .post(format!("{url}{DISK}/create"))
        .bearer_auth(CLIENT)
        .json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    answer(req).await
}

/// Every entry of the ledger, newest first, read through the admin API.
async fn entries(admin_url: &str) -> Vec<Value> {
    let (status, v) = send_json(
        http()
            .get(format!("{admin_url}/admin/purchases?limit=1000"))
            .bearer_auth(ADMIN),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["data"]["entries"].as_array().expect("entries").clone()
}

/// The entries once none is open any more (their outcomes are written after the answers).
async fn settled(admin_url: &str, n: usize) -> Vec<Value> {
    eventually_some("every entry settles", Duration::from_secs(20), || async {
        let all = entries(admin_url).await;
        (all.len() >= n && all.iter().all(|e| e["outcome"] != "open")).then_some(all)
    })
    .await
}

fn outcome_counts(all: &[Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for e in all {
        *counts
            .entry(e["outcome"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_spend_is_on_record_once_and_repeats_point_at_the_entry_that_bought() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(&config(None, ""), &sim.url, demo_env()).await;
    // Ten keyed purchases, each sent three times at once; five key-less ones, each twice at once.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let key = format!("ledger-{}-{i}", fresh_key());
        for _ in 0..3 {
            let (url, key) = (gw.url.clone(), key.clone());
            let body = json!({"area": 0, "memory": 20 + i, "isMount": 0});
            tasks.push(tokio::spawn(async move {
                create(&url, Some(&key), &body).await
            }));
        }
    }
    for i in 0..5 {
        for _ in 0..2 {
            let url = gw.url.clone();
            let body = json!({"area": 1, "memory": 40 + i, "isMount": 0});
            tasks.push(tokio::spawn(async move { create(&url, None, &body).await }));
        }
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let all = settled(&gw.admin_url, answers.len()).await;
    assert_eq!(all.len(), answers.len(), "one entry per request");
    let bought: Vec<&Value> = all.iter().filter(|e| e["outcome"] == "bought").collect();
    let made = sim.calls("create").await;
    assert_eq!(bought.len() as u64, made, "{:?}", outcome_counts(&all));
    let by_id: HashMap<&str, &Value> = all.iter().map(|e| (e["id"].as_str().unwrap(), e)).collect();
    // Each answer names the entry that bought its disk; a repeat's own entry points at it.
    for (status, headers, v) in &answers {
        if *status == 409 {
            continue;
        }
        assert_eq!((*status, v["code"].as_i64()), (200, Some(0)), "{v}");
        let named = headers["finovy-purchase-id"].to_str().unwrap();
        let buyer = by_id.get(named).expect("the named entry exists");
        assert_eq!(buyer["outcome"], "bought");
        assert_eq!(buyer["resourceId"], v["data"], "{buyer}");
    }
    for e in &all {
        match e["outcome"].as_str().unwrap() {
            "replayed" | "joined" => {
                let buyer = by_id[e["boughtBy"].as_str().expect("boughtBy")];
                assert_eq!(buyer["outcome"], "bought", "{e}");
                assert_eq!(buyer["order"], e["order"]);
            }
            "bought" => {
                assert!(
                    e["resourceId"].is_string() && e["settledAt"].is_i64(),
                    "{e}"
                );
                assert_eq!(e["client"], "svc");
                assert_eq!(e["route"], "disk.create");
                assert!(e["order"]["memory"].is_i64(), "{e}");
            }
            // A keyed repeat that arrived while the first ran.
            "refused" => assert!(e["idempotencyKey"].is_string(), "{e}"),
            other => panic!("unexpected outcome {other}: {e}"),
        }
    }
    let disks: HashSet<&str> = bought
        .iter()
        .map(|e| e["resourceId"].as_str().unwrap())
        .collect();
    assert_eq!(disks.len(), bought.len(), "one disk per bought entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_outlives_a_restart_and_answers_a_keyed_retry_whose_record_went_with_it() {
    let sim = Sim::start(sim_config()).await;
    let dir = ledger_dir();
    let toml = config(Some(&dir.join("ledger.sqlite")), "");
    let key = fresh_key();
    let order = json!({"area": 0, "memory": 30, "isMount": 0});
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let (status, headers, first) = create(&gw.url, Some(&key), &order).await;
    assert_eq!((status, first["code"].as_i64()), (200, Some(0)), "{first}");
    let bought_by = headers["finovy-purchase-id"].to_str().unwrap().to_string();
    settled(&gw.admin_url, 1).await;
    gw.stop().await;

    // A new process: its records (in memory) are empty, the ledger is not.
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let (status, headers, again) = create(&gw.url, Some(&key), &order).await;
    assert_eq!((status, &again["data"]), (200, &first["data"]), "{again}");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(headers["finovy-purchase-id"], bought_by.as_str());
    let other = json!({"area": 0, "memory": 31, "isMount": 0});
    let (status, _, v) = create(&gw.url, Some(&key), &other).await;
    assert_eq!((status, v["code"].as_i64()), (422, Some(1003)), "{v}");
    assert_eq!(sim.calls("create").await, 1, "never bought twice");
    let all = settled(&gw.admin_url, 3).await;
    assert_eq!(all.len(), 3);
    let counts = outcome_counts(&all);
    assert_eq!(
        (
            counts.get("bought"),
            counts.get("replayed"),
            counts.get("refused")
        ),
        (Some(&1), Some(&1), Some(&1)),
        "{all:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replicas_purchase_goes_unknown_then_reconciled_by_its_retry() {
    let sim = Sim::start(sim_config()).await;
    let dir = ledger_dir();
    let toml = config(Some(&dir.join("ledger.sqlite")), "");
    let env = [
        ("FINOVY_UUID", "demo-uuid"),
        ("FINOVY_SECRET", "demo-secret"),
    ];
    let mut gw = Bin::serve(&toml, &sim.url, &env);
    // The upstream makes the disk at once and holds its answer back: the replica dies with the
    // purchase in flight.
    sim.fault("slow", "5s").await;
    let key = fresh_key();
    let order = json!({"area": 0, "memory": 50, "isMount": 0});
    let dying = http()
        .post(format!("{}{DISK}/create", gw.url))
        .bearer_auth(CLIENT)
        .header("Idempotency-Key", &key)
        .json(&order);
    gw.kill_mid_create(&sim, dying).await;
    sim.fault("none", "0s").await;

    let gw = Bin::serve(&toml, &sim.url, &env);
    let first = eventually_some(
        "the open entry reads unknown",
        Duration::from_secs(10),
        || async {
            let all = entries(&gw.admin_url).await;
            all.into_iter().find(|e| e["outcome"] == "unknown")
        },
    )
    .await;
    assert!(first["resourceId"].is_null(), "{first}");
    let (status, headers, v) = create(&gw.url, Some(&key), &order).await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(sim.calls("create").await, 1, "reconciled, not bought again");
    let all = settled(&gw.admin_url, 2).await;
    let original = all.iter().find(|e| e["id"] == first["id"]).unwrap();
    assert_eq!(original["outcome"], "reconciled", "{original}");
    assert_eq!(original["resourceId"], v["data"]);
    let retry = all.iter().find(|e| e["id"] != first["id"]).unwrap();
    assert_eq!(retry["outcome"], "replayed", "{retry}");
    assert_eq!(retry["boughtBy"], first["id"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bought_disks_price_is_recorded_as_the_upstream_states_it() {
    let sim = Sim::start(sim_config()).await;
    let dir = ledger_dir();
    let ledger = format!("record_amount = true\n{}\n", info_policy("ttl = \"60s\""));
    let gw = Gw::start(
        &config(Some(&dir.join("ledger.sqlite")), &ledger),
        &sim.url,
        demo_env(),
    )
    .await;
    let (status, _, v) = create(
        &gw.url,
        None,
        &json!({"area": 0, "memory": 20, "isMount": 0}),
    )
    .await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    let disk = v["data"].as_str().unwrap().to_string();
    let entry = eventually_some("the price is recorded", Duration::from_secs(10), || async {
        entries(&gw.admin_url)
            .await
            .into_iter()
            .find(|e| e["amount"].is_string())
    })
    .await;
    // The price as the upstream's info states it, read through the cache: the client's own
    // poll after it is a hit, and the upstream saw one info call.
    let (_, info) = send_json(
        http()
            .get(format!("{}{DISK}/info/{disk}", gw.url))
            .bearer_auth(CLIENT),
    )
    .await;
    assert_eq!(
        entry["amount"].as_str().unwrap(),
        info["data"]["amount"].to_string()
    );
    assert_eq!(sim.calls("info").await, 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_of_any_kind_is_in_the_ledger_file() {
    let sim = Sim::start(sim_config()).await;
    let dir = ledger_dir();
    let path = dir.join("ledger.sqlite");
    let gw = Gw::start(&config(Some(&path), ""), &sim.url, demo_env()).await;
    let defaults = SimConfig::default();
    for i in 0..3 {
        let (status, _, v) = create(
            &gw.url,
            Some(&fresh_key()),
            &json!({"area": 0, "memory": 20 + i, "isMount": 0}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    // A host bought too: its detail carries its login password (hostPw), which must not be kept.
    let (status, host) = send_json(
        http()
            .post(format!("{}/v1/pve/open/createquantity", gw.url))
            .bearer_auth(CLIENT)
            .json(&json!({"packageId": "pkg-south-3090", "imageId": "img-win10"})),
    )
    .await;
    assert_eq!(status, 200, "{host}");
    settled(&gw.admin_url, 4).await;
    gw.stop().await;
    // The token the gateway sent upstream.
    let seen = sim.requests().await;
    let token = seen
        .iter()
        .find_map(|r| r["headers"]["finovy-access-token"].as_str())
        .expect("a token was sent")
        .to_string();
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("disk.create"), "the file holds the entries");
    for secret in [
        defaults.uuid.as_str(),
        defaults.secret.as_str(),
        CLIENT,
        ADMIN,
        token.as_str(),
        "hostPw",
    ] {
        assert!(!text.contains(secret), "the ledger holds {secret:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
