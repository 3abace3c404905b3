//! A Redis whose `maxmemory-policy` may evict keys drops idempotency records by itself when it
//! fills up, while the fleet marker (the longest-lived key) stays: nothing looks lost, and the
//! retry of a purchase would buy again. The gateway reads the policy (`INFO memory`) and refuses
//! creates (503, code 1005) while it is anything but `noeviction`, unless
//! `[redis] allow_eviction_policy = true`; `/readyz` and `finovy_gateway_redis_eviction_unsafe`
//! say so, and reads go on.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::harness::redis::{RedisServer, Resp};
use crate::harness::*;

const PREFIX: &str = "fgw-evict:";
const DISK20: &str = r#"{"area":0,"memory":20,"isMount":0}"#;
const GAUGE: &str = "finovy_gateway_redis_eviction_unsafe";

fn config(redis: &RedisServer, extra: &str) -> String {
    format!(
        "[redis]\nurl = \"{}\"\nprefix = \"{PREFIX}\"\ntimeout = \"1s\"\n{extra}\n",
        redis.url()
    )
}

async fn create(url: &str, key: Option<&str>, body: &str) -> (u16, HeaderMap, Value) {
    let mut req = http()
        .post(format!("{url}{DISK}/create"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    answer(req).await
}

/// A refusal for the eviction policy: 503, code 1005, naming the policy and what it must be.
fn assert_refused((status, _, v): &(u16, HeaderMap, Value), policy: &str) {
    assert_eq!((*status, v["code"].as_i64()), (503, Some(1005)), "{v}");
    assert!(v["data"].is_null() && v["traceId"].is_string(), "{v}");
    let msg = v["msg"].as_str().unwrap();
    assert!(
        msg.contains(&format!("maxmemory-policy {policy}"))
            && msg.contains("must be noeviction")
            && msg.contains("nothing was sent upstream"),
        "{msg}"
    );
}

async fn config_set(redis: &RedisServer, name: &str, value: &str) {
    assert_eq!(
        redis.command(&["CONFIG", "SET", name, value]).await,
        Resp::Simple("OK".into())
    );
}

/// Polls until the gauge of the replica at `admin_url` reads `v`.
async fn wait_gauge(admin_url: &str, v: f64) {
    eventually(
        &format!("{GAUGE} = {v}"),
        Duration::from_secs(10),
        || async { metric_opt(&metrics_at(admin_url).await, GAUGE, &[]) == Some(v) },
    )
    .await;
}

/// Another tenant fills a Redis that evicts the keys closest to expiry (`volatile-ttl`, the
/// family managed services default to): the purchase's record goes, the marker stays. Its retry
/// is refused rather than bought again, reads go on, and once the policy is `noeviction` creates
/// are accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_evicted_under_another_tenants_load_never_buys_twice() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let gw = Bin::serve(
        &format!("{}\n{FAST_CREATES}", config(&redis, "")),
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    let key = fresh_key();
    let (status, _, first) = create(&gw.url, Some(&key), DISK20).await;
    assert_eq!((status, first["code"].as_i64()), (200, Some(0)), "{first}");
    let disk = first["data"].as_str().unwrap().to_string();
    // Checked below, after the purchases are counted.
    let gauge_before = metric_opt(&metrics_at(&gw.admin_url).await, GAUGE, &[]);
    let (_, ready_before) = readyz(&gw.admin_url).await;

    let records = redis.keys(&format!("{PREFIX}rec:idem*")).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let marker = format!("{PREFIX}fleet-marker");
    // The other tenant's keys expire after the record (a day) and before the marker (30 days).
    let used: i64 = {
        let info = redis.command(&["INFO", "memory"]).await.text().unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    config_set(&redis, "maxmemory-policy", "volatile-ttl").await;
    // Refused at once, before the next periodic check: the begin script reads the policy too.
    assert_refused(
        &create(&gw.url, Some(&fresh_key()), DISK20).await,
        "volatile-ttl",
    );
    // A record still there is answered as ever: its replay buys nothing.
    let (status, h, again) = create(&gw.url, Some(&key), DISK20).await;
    assert_eq!(
        (status, again["data"].as_str()),
        (200, Some(disk.as_str())),
        "{again}"
    );
    assert_eq!(h["idempotent-replayed"], "true");
    config_set(&redis, "maxmemory", &(used + 512 * 1024).to_string()).await;
    let filler = "x".repeat(16 * 1024);
    let mut n = 0;
    while redis.get(&records[0]).await.is_some() {
        assert!(n < 2000, "the record was never evicted");
        let k = format!("tenant:{n}");
        redis
            .command(&["SET", &k, &filler, "PX", &(2 * 86_400_000).to_string()])
            .await;
        n += 1;
    }
    assert!(redis.get(&marker).await.is_some(), "the marker survived");

    let retry = create(&gw.url, Some(&key), DISK20).await;
    let second_purchases = sim.calls("create").await - 1;
    eprintln!("second purchases after eviction ({n} filler keys): {second_purchases}");
    assert_eq!(second_purchases, 0);
    assert_refused(&retry, "volatile-ttl");
    assert_eq!(gauge_before, Some(0.0), "safe under noeviction");
    assert!(
        ready_before.get("redis_eviction").is_none(),
        "{ready_before}"
    );
    // Key-less creates too; nothing counts as a loss of data.
    assert_refused(&create(&gw.url, None, DISK20).await, "volatile-ttl");
    assert_eq!(sim.calls("create").await, 1);
    assert_eq!(
        gw.metric("finovy_gateway_redis_resets_total", &[]).await,
        0.0
    );

    wait_gauge(&gw.admin_url, 1.0).await;
    let (status, ready) = readyz(&gw.admin_url).await;
    assert_eq!(status, 200, "a note, not unreadiness: {ready}");
    let note = ready["redis_eviction"].as_str().unwrap_or_default();
    assert!(
        note.contains("maxmemory-policy is volatile-ttl") && note.contains("noeviction"),
        "{ready}"
    );
    // Reads, and the token they need, are served as ever.
    let (status, _, info) = get(&format!("{}{DISK}/info/{disk}", gw.url), &[]).await;
    assert_eq!((status, info["code"].as_i64()), (200, Some(0)), "{info}");
    // The error is logged once, not per request.
    let log = gw.wait_for_log("maxmemory-policy is volatile-ttl", 1).await;
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("maxmemory-policy is volatile-ttl"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("ERROR"), "{}", lines[0]);

    config_set(&redis, "maxmemory-policy", "noeviction").await;
    wait_gauge(&gw.admin_url, 0.0).await;
    let (_, ready) = readyz(&gw.admin_url).await;
    assert!(ready.get("redis_eviction").is_none(), "{ready}");
    let (status, _, made) = create(&gw.url, Some(&fresh_key()), DISK20).await;
    assert_eq!((status, made["code"].as_i64()), (200, Some(0)), "{made}");
    assert_eq!(sim.calls("create").await, 2);
}

/// Any policy but `noeviction` refuses, from the first create and whatever `maxmemory` is (0
/// here: a later `CONFIG SET maxmemory` would start evicting with nothing to notice), unless the
/// operator accepts the risk with `allow_eviction_policy = true`: then creates go on, and the
/// gauge and `/readyz` still say what the policy is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_evicting_policy_refuses_creates_from_the_start_unless_allowed() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start_with_args(&["--maxmemory-policy", "allkeys-lru"]);
    let strict = Gw::start(&config(&redis, ""), &sim.url, demo_env()).await;
    let lax = Gw::start(
        &config(&redis, "allow_eviction_policy = true"),
        &sim.url,
        demo_env(),
    )
    .await;

    assert_refused(
        &create(&strict.url, Some(&fresh_key()), DISK20).await,
        "allkeys-lru",
    );
    assert_refused(&create(&strict.url, None, DISK20).await, "allkeys-lru");
    assert_eq!(sim.calls("create").await, 0);
    assert_eq!(
        redis.keys(&format!("{PREFIX}rec:*")).await,
        Vec::<String>::new(),
        "no record made"
    );

    let key = fresh_key();
    let (status, _, made) = create(&lax.url, Some(&key), DISK20).await;
    assert_eq!((status, made["code"].as_i64()), (200, Some(0)), "{made}");
    let (status, h, again) = create(&lax.url, Some(&key), DISK20).await;
    assert_eq!((status, again["data"].clone()), (200, made["data"].clone()));
    assert_eq!(h["idempotent-replayed"], "true");
    assert_eq!(sim.calls("create").await, 1);

    for (gw, says) in [(&strict, "refused"), (&lax, "allow_eviction_policy = true")] {
        wait_gauge(&gw.admin_url, 1.0).await;
        let (status, ready) = readyz(&gw.admin_url).await;
        assert_eq!(status, 200, "{ready}");
        let note = ready["redis_eviction"].as_str().unwrap_or_default();
        assert!(
            note.contains("maxmemory-policy is allkeys-lru") && note.contains(says),
            "{ready}"
        );
    }
}
