//! What the cache keeps: an answer that is not stored (a disk that does not exist) leaves no key,
//! epoch or message in Redis however many are asked for, and a client that always sends
//! `Cache-Control: no-cache` joins the refresh in flight instead of multiplying upstream calls.

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::harness::redis::RedisServer;
use crate::harness::*;

/// Invalidation messages this replica has heard from the others.
async fn heard(gw: &Gw) -> f64 {
    gw.metric("finovy_gateway_invalidation_lag_seconds_count", &[])
        .await
}

/// `used_memory` of `MEMORY STATS` (or of `INFO memory`), in bytes.
async fn redis_memory(redis: &RedisServer) -> i64 {
    let info = redis
        .command(&["INFO", "memory"])
        .await
        .text()
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_ids_leave_redis_as_it_was() {
    // FGW_UNKNOWN_IDS=10000 measures the figure of docs/shared-mode.md; a few hundred prove the point.
    let n: usize = std::env::var("FGW_UNKNOWN_IDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-unknown:\"\ntimeout = \"1s\"\n",
        redis.url()
    );
    let [a, b] = replicas::<2>(&toml, &sim.url, demo_env()).await;
    let (keys_before, memory_before, heard_before) = (
        redis.keys("*").await,
        redis_memory(&redis).await,
        heard(&b).await,
    );
    let started = Instant::now();
    let client = http();
    let answers = futures_util::stream::iter(0..n)
        .map(|i| {
            let (client, url) = (client.clone(), a.url.clone());
            async move {
                // Every fifth asks for a refresh, which must leave nothing either.
                let mut req = client.get(format!("{url}{DISK}/info/nosuchdisk{i:05}"));
                if i % 5 == 0 {
                    req = req.header("Cache-Control", "no-cache");
                }
                send_json(req).await
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for (status, v) in &answers {
        assert_eq!((*status, v["code"].as_i64()), (200, Some(220001)), "{v}");
    }
    assert_eq!(
        sim.calls("info").await,
        n as u64,
        "each unknown id asked once"
    );
    let (keys_after, memory_after) = (redis.keys("*").await, redis_memory(&redis).await);
    eprintln!(
        "{n} unknown ids in {:?}: keys {} -> {}, used_memory {memory_before} -> {memory_after} bytes",
        started.elapsed(),
        keys_before.len(),
        keys_after.len(),
    );
    let new: Vec<&String> = keys_after
        .iter()
        .filter(|k| !keys_before.contains(k))
        .collect();
    assert!(new.is_empty(), "keys created: {new:?}");
    // Nothing was published either: a create's two invalidations (lists and totals) are the
    // next messages B hears, and the only ones.
    let disk = new_disk_info_url(&a.url).await;
    eventually("B hears of the create", Duration::from_secs(10), || async {
        heard(&b).await >= heard_before + 2.0
    })
    .await;
    assert_eq!(
        heard(&b).await,
        heard_before + 2.0,
        "no message per unknown id"
    );
    // A disk that is stored, then gone, is still dropped fleet-wide.
    let (status, _, v) = get(&disk, &[]).await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)));
    assert!(!redis.keys("fgw-unknown:{default}:cache:*").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_no_cache_flood_makes_one_upstream_call_per_fill() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(&info_policy("ttl = \"60s\""), &sim.url, demo_env()).await;
    let url = new_disk_info_url(&gw.url).await;
    let id = url.rsplit('/').next().unwrap().to_string();
    let first = cache_status(&get(&url, &[]).await.1);
    assert!(first.contains("stored"), "{first}");
    assert_eq!(sim.calls("info").await, 1);
    // Each refresh takes 1.5 s upstream; 40 clients refresh at once.
    sim.fault("slow", "1500ms").await;
    let refreshes: Vec<_> = (0..40)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url, &[("Cache-Control", "no-cache")]).await })
        })
        .collect();
    let mut collapsed = 0;
    for r in refreshes {
        let (status, h, v) = r.await.unwrap();
        let cache = cache_status(&h);
        assert_eq!((status, v["data"]["id"].as_str()), (200, Some(id.as_str())));
        assert!(cache.contains("fwd=request"), "{cache}");
        collapsed += usize::from(cache.contains("collapsed"));
    }
    assert_eq!(sim.calls("info").await, 2, "one refresh for all 40");
    assert_eq!(collapsed, 39);
    sim.fault("none", "0s").await;
    // The refresh was stored: a plain poll is a hit.
    let cache = cache_status(&get(&url, &[]).await.1);
    assert!(cache.contains("hit"), "{cache}");
    // A refresh asked for after that fill is a fill of its own.
    let cache = cache_status(&get(&url, &[("Cache-Control", "no-cache")]).await.1);
    assert!(
        cache.contains("fwd=request") && !cache.contains("collapsed"),
        "{cache}"
    );
    assert_eq!(sim.calls("info").await, 3);
}
