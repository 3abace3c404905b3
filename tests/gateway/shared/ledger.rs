//! One purchase ledger for the fleet, on a real PostgreSQL server: three replicas under
//! concurrent keyed and key-less creates with retries write exactly one `bought` entry per disk
//! the upstream made; a ledger that is down refuses creates (503) while reads go on, and creates
//! resume once it is back; `on_failure = "allow"` lets them through unrecorded.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::postgres::{PgServer, ledger_config};
use crate::harness::redis::RedisServer;
use crate::harness::*;

const ADMIN: &str = "fgw_fleet_ledger_admin_91c3d7e2";

fn config(redis: &RedisServer, pg: &PgServer, ledger_extra: &str) -> String {
    format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-ledger:\"\ntimeout = \"1s\"\n\
         [create.routes.\"disk.create\"]\nrate = \"1000/1s\"\nburst = 1000\n\
         [admin]\nkey_sha256 = \"{}\"\n{}",
        redis.url(),
        hex::encode(Sha256::digest(ADMIN.as_bytes())),
        ledger_config(pg, ledger_extra)
    )
}

async fn create(url: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = http().post(format!("{url}{DISK}/create")).json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    send_json(req).await
}

/// Every entry, once none is open.
async fn settled(admin_url: &str, n: usize) -> Vec<Value> {
    eventually_some("every entry settles", Duration::from_secs(20), || async {
        let (status, v) = send_json(
            http()
                .get(format!("{admin_url}/admin/purchases?limit=1000"))
                .bearer_auth(ADMIN),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let all = v["data"]["entries"].as_array().unwrap().clone();
        (all.len() >= n && all.iter().all(|e| e["outcome"] != "open")).then_some(all)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_write_one_bought_entry_per_disk_the_upstream_made() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let gws = replicas::<3>(&config(&redis, &pg, ""), &sim.url, demo_env()).await;
    let urls: Vec<String> = gws.iter().map(|g| g.url.clone()).collect();
    // Twelve keyed purchases, each sent to every replica at once (a client retrying on
    // another); six key-less orders, each sent twice to two replicas at once.
    let mut tasks = Vec::new();
    for i in 0..12u64 {
        let key = format!("fleet-{}-{i}", fresh_key());
        for url in &urls {
            let (url, key) = (url.clone(), key.clone());
            let body = json!({"area": 0, "memory": 20 + i, "isMount": 0});
            tasks.push(tokio::spawn(async move {
                create(&url, Some(&key), &body).await
            }));
        }
    }
    for i in 0..6u64 {
        for r in 0..2 {
            let url = urls[(i as usize + r) % 3].clone();
            let body = json!({"area": 1, "memory": 60 + i, "isMount": 0});
            tasks.push(tokio::spawn(async move { create(&url, None, &body).await }));
        }
    }
    let mut answered = 0;
    for t in tasks {
        let (status, v) = t.await.unwrap();
        assert!(status == 200 || status == 409, "{status} {v}");
        answered += 1;
    }
    let all = settled(&gws[0].admin_url, answered).await;
    assert_eq!(
        all.len(),
        answered,
        "one entry per request, from every replica"
    );
    let bought: Vec<&Value> = all.iter().filter(|e| e["outcome"] == "bought").collect();
    let made = sim.calls("create").await;
    let mut outcomes: HashMap<&str, usize> = HashMap::new();
    for e in &all {
        *outcomes.entry(e["outcome"].as_str().unwrap()).or_default() += 1;
    }
    assert_eq!(bought.len() as u64, made, "{outcomes:?}");
    assert_eq!(made, 18, "one purchase per intent");
    let disks: HashSet<&str> = bought
        .iter()
        .map(|e| e["resourceId"].as_str().expect("a disk id"))
        .collect();
    assert_eq!(disks.len(), bought.len(), "no disk twice");
    let replicas: HashSet<&str> = all.iter().map(|e| e["replica"].as_str().unwrap()).collect();
    assert_eq!(replicas.len(), 3, "every replica writes to the one ledger");
    for e in all
        .iter()
        .filter(|e| e["outcome"] == "replayed" || e["outcome"] == "joined")
    {
        let by = e["boughtBy"].as_str().expect("a repeat names its buyer");
        assert!(bought.iter().any(|b| b["id"] == by), "{e}");
    }
    // The table holds no credential, client key or token: every column of every row, as text.
    let seen = sim.requests().await;
    let token = seen
        .iter()
        .find_map(|r| r["headers"]["finovy-access-token"].as_str())
        .expect("a token was sent")
        .to_string();
    let table = tokio::task::block_in_place(|| pg.sql("SELECT p::text FROM purchases p"));
    assert!(table.contains("disk.create"), "{table}");
    for secret in ["demo-uuid", "demo-secret", ADMIN, token.as_str(), "hostPw"] {
        assert!(
            !table.contains(secret),
            "the ledger's table holds {secret:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ledger_that_is_down_refuses_creates_serves_reads_and_recovers() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let mut pg = PgServer::start();
    let toml = format!(
        "{}\n{}",
        config(&redis, &pg, ""),
        info_policy("ttl = \"60s\"")
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let order = json!({"area": 0, "memory": 20, "isMount": 0});
    let (status, v) = create(&gw.url, Some(&fresh_key()), &order).await;
    assert_eq!(status, 200, "{v}");
    let disk = v["data"].as_str().unwrap().to_string();

    tokio::task::block_in_place(|| pg.stop());
    let (status, v) = create(&gw.url, Some(&fresh_key()), &order).await;
    assert_eq!((status, v["code"].as_i64()), (503, Some(1005)), "{v}");
    assert!(v["msg"].as_str().unwrap().contains("ledger"), "{v}");
    assert_eq!(sim.calls("create").await, 1, "nothing bought unrecorded");
    let (status, info) = send_json(http().get(format!("{}{DISK}/info/{disk}", gw.url))).await;
    assert_eq!((status, info["code"].as_i64()), (200, Some(0)), "{info}");
    let errors = gw
        .metric("finovy_gateway_ledger_writes_total", &[("result", "error")])
        .await;
    assert!(errors >= 1.0, "{errors}");

    tokio::task::block_in_place(|| pg.start_again());
    let (status, v) = eventually_some("creates resume", Duration::from_secs(20), || async {
        let answer = create(&gw.url, Some(&fresh_key()), &order).await;
        (answer.0 != 503).then_some(answer)
    })
    .await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    let all = settled(&gw.admin_url, 2).await;
    assert_eq!(
        all.iter().filter(|e| e["outcome"] == "bought").count() as u64,
        sim.calls("create").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_failure_allow_lets_creates_through_while_the_ledger_is_down() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let mut pg = PgServer::start();
    let gw = Gw::start(
        &config(&redis, &pg, "on_failure = \"allow\"\ntimeout = \"500ms\""),
        &sim.url,
        demo_env(),
    )
    .await;
    tokio::task::block_in_place(|| pg.stop());
    let order = json!({"area": 0, "memory": 20, "isMount": 0});
    let (status, v) = create(&gw.url, Some(&fresh_key()), &order).await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    assert_eq!(sim.calls("create").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outcome_that_cannot_be_written_is_written_once_the_ledger_is_back() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let mut pg = PgServer::start();
    let gw = Gw::start(
        &config(&redis, &pg, "timeout = \"500ms\""),
        &sim.url,
        demo_env(),
    )
    .await;
    // The entry opens, the create reaches the upstream, and the ledger goes down before the
    // answer comes back: the client gets its disk, and the outcome waits for the ledger.
    sim.fault("slow", "2s").await;
    let url = gw.url.clone();
    let order = json!({"area": 0, "memory": 20, "isMount": 0});
    let buying = tokio::spawn(async move { create(&url, Some(&fresh_key()), &order).await });
    eventually(
        "the create reaches the upstream",
        Duration::from_secs(10),
        || async { sim.calls("create").await == 1 },
    )
    .await;
    tokio::task::block_in_place(|| pg.stop());
    let (status, v) = buying.await.unwrap();
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    sim.fault("none", "0s").await;
    tokio::task::block_in_place(|| pg.start_again());
    let all = settled(&gw.admin_url, 1).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["outcome"], "bought", "{}", all[0]);
    assert_eq!(all[0]["resourceId"], v["data"]);
}
