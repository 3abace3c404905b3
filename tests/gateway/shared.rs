//! Shared mode end to end: several replicas in front of one simulator, sharing state through one
//! real Redis. The fleet behaves like one gateway (one fill per entry, one purchase per intent, one
//! rate, one token), survives Redis going away and coming back, and leaves nothing in Redis that
//! never expires. The simulator's counters are the witness of what reached the upstream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use finovy_gateway::sim::SimConfig;
use finovy_gateway::sim::seed::HOST_AREA0;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::harness::*;
use crate::redis_harness::{RedisCluster, RedisServer};

const DISK20: &str = r#"{"area":0,"memory":20,"isMount":0}"#;

/// A config in shared mode: `[redis]` with `redis_keys` added, then `rest` (more tables).
fn config(redis: &RedisServer, prefix: &str, redis_keys: &str, rest: &str) -> String {
    format!(
        "[redis]\nurl = \"{}\"\nprefix = \"{prefix}\"\ntimeout = \"1s\"\n{redis_keys}\n{rest}",
        redis.url()
    )
}

/// A client that gives up after 10 s: a request it cannot finish means the gateway hung (an
/// answer is due within Redis's 1 s timeout; the rest is room for a loaded machine).
fn prompt() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn info(client: &reqwest::Client, gw_url: &str, id: &str) -> (u16, HeaderMap, Value) {
    answer(client.get(format!("{gw_url}{DISK}/info/{id}"))).await
}

async fn create(
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
async fn create_disk(gw: &Gw) -> String {
    let (status, _, v) = create(&http(), &gw.url, Some(&fresh_key()), DISK20).await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    v["data"].as_str().expect("a disk id").to_string()
}

async fn mount(gw: &Gw, id: &str) {
    let (status, _, v) = answer(
        http()
            .post(format!("{}{DISK}/pveCreate", gw.url))
            .json(&json!({"id": id, "pveId": HOST_AREA0})),
    )
    .await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
}

fn replayed(h: &HeaderMap) -> bool {
    h.get("idempotent-replayed").is_some_and(|v| v == "true")
}

/// SIGKILL: no drain, nothing written on the way out.
fn sigkill(bin: &mut Bin) {
    tokio::task::block_in_place(|| {
        bin.child.kill().expect("SIGKILL the replica");
        bin.child.wait().expect("the replica exits");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_polling_one_disk_make_one_upstream_call() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let toml = config(&redis, "fgw-poll:", "", &info_policy("ttl = \"30s\""));
    let gws = replicas::<3>(&toml, &sim.url, demo_env()).await;
    let id = create_disk(&gws[0]).await;
    // Every poll arrives while the first fill is still upstream, so only the fleet-wide fill lock
    // (not a replica's own coalescing) can keep the count at one.
    sim.fault("slow", "300ms").await;
    let client = http();
    let handles: Vec<_> = gws
        .iter()
        .flat_map(|gw| std::iter::repeat_n(gw.url.clone(), 300))
        .map(|url| {
            let (client, id) = (client.clone(), id.clone());
            tokio::spawn(async move { info(&client, &url, &id).await })
        })
        .collect();
    assert_eq!(handles.len(), 900);
    for h in handles {
        let (status, _, v) = h.await.unwrap();
        assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
        assert_eq!(v["data"]["id"], id.as_str());
    }
    assert_eq!(
        sim.calls("info").await,
        1,
        "900 polls over three replicas, one upstream call"
    );
    // Later polls on any replica are answered from the cache.
    sim.fault("none", "0s").await;
    for gw in &gws {
        let (_, h, _) = info(&client, &gw.url, &id).await;
        assert!(cache_status(&h).contains("hit"), "{h:?}");
    }
    assert_eq!(sim.calls("info").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_identical_creates_over_three_replicas_buy_one_disk() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let gws = replicas::<3>(&config(&redis, "fgw-dup:", "", ""), &sim.url, demo_env()).await;
    // The first create is still upstream when the others arrive on every replica.
    sim.fault("slow", "300ms").await;
    let handles: Vec<_> = (0..30)
        .map(|i| {
            let url = gws[i % 3].url.clone();
            tokio::spawn(async move { create(&http(), &url, None, DISK20).await })
        })
        .collect();
    let mut answers = Vec::new();
    for h in handles {
        answers.push(h.await.unwrap());
    }
    let (status, _, first) = &answers[0];
    assert_eq!((*status, first["code"].as_i64()), (200, Some(0)), "{first}");
    assert!(first["data"].is_string(), "{first}");
    for (status, _, v) in &answers {
        assert_eq!(*status, 200, "{v}");
        assert_eq!(v["data"], first["data"], "one disk for all: {v}");
    }
    assert_eq!(
        answers.iter().filter(|(_, h, _)| replayed(h)).count(),
        29,
        "every answer but the buyer's is a replay"
    );
    assert_eq!(sim.calls("create").await, 1);
    assert_eq!(sim.stats().await["disks"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_replays_and_refuses_a_new_body_on_other_replicas() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let [a, b, c] = replicas::<3>(&config(&redis, "fgw-idem:", "", ""), &sim.url, demo_env()).await;
    let client = http();
    let (status, h, bought) = create(&client, &a.url, Some("order-77"), DISK20).await;
    assert_eq!(
        (status, bought["code"].as_i64()),
        (200, Some(0)),
        "{bought}"
    );
    assert!(!replayed(&h));
    let (status, h, again) = create(&client, &b.url, Some("order-77"), DISK20).await;
    assert_eq!(status, 200, "{again}");
    assert!(replayed(&h), "the other replica replays: {h:?}");
    assert_eq!(again, bought, "the same answer, byte for byte");
    let (status, _, mismatch) = create(
        &client,
        &c.url,
        Some("order-77"),
        r#"{"area":0,"memory":40,"isMount":0}"#,
    )
    .await;
    assert_eq!(
        (status, mismatch["code"].as_i64()),
        (422, Some(1003)),
        "{mismatch}"
    );
    assert_eq!(sim.calls("create").await, 1);
    assert_eq!(sim.stats().await["disks"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_create_rate_holds_for_the_fleet_not_per_replica() {
    const RATE_PER_S: f64 = 2.0;
    const BURST: f64 = 1.0;
    // The upstream refuses creates closer than 100 ms; the fleet's 2/s spaces them 500 ms apart
    // (room for a slow machine), where three replicas limiting alone would send three at once.
    let sim = Sim::start(SimConfig {
        create_min_interval: Duration::from_millis(100),
        ..sim_config()
    })
    .await;
    let redis = RedisServer::start();
    let toml = config(
        &redis,
        "fgw-rate:",
        "",
        "[create.routes.\"disk.create\"]\nrate = \"2/1s\"\nburst = 1\nmax_wait = \"1s\"\n",
    );
    let gws = replicas::<3>(&toml, &sim.url, demo_env()).await;
    let started = Instant::now();
    let handles: Vec<_> = (0..30)
        .map(|i| {
            let url = gws[i % 3].url.clone();
            let body = format!(r#"{{"area":1,"memory":{},"isMount":0}}"#, 20 + i);
            tokio::spawn(async move { create(&http(), &url, None, &body).await })
        })
        .collect();
    let (mut ok, mut refused) = (0u64, 0u64);
    for h in handles {
        let (status, headers, v) = h.await.unwrap();
        match status {
            200 => {
                assert_eq!(v["code"], 0, "{v}");
                ok += 1;
            }
            429 => {
                assert_eq!(v["code"], 220025, "{v}");
                let retry: u64 = headers
                    .get("retry-after")
                    .unwrap_or_else(|| panic!("a 429 carries Retry-After: {headers:?}"))
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1, "{headers:?}");
                // The fleet's standing, as one gateway's: nothing left, whole again no sooner
                // than a retry may go.
                let state = headers["ratelimit"].to_str().unwrap();
                let t: u64 = state
                    .split(';')
                    .find_map(|p| p.strip_prefix("t="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("{state}"));
                assert!(state.starts_with("\"tenant\";r=0;"), "{state}");
                assert!(t >= retry, "{state} against Retry-After {retry}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!("fleet rate: {ok} created, {refused} refused in {elapsed:.2} s");
    assert_eq!(ok + refused, 30);
    // Slots 500 ms apart from the first, within max_wait (1 s): 0, 0.5 and 1.0 s, for the fleet.
    assert!((2..=3).contains(&ok), "ok {ok}, refused {refused}");
    let stats = sim.stats().await;
    assert_eq!(
        stats["tooFrequent"], 0,
        "the upstream never saw two creates closer than its interval: the fleet kept one pace"
    );
    assert_eq!(
        stats["calls"]["create"], ok,
        "one upstream call per success"
    );
    assert!(
        ok as f64 <= elapsed * RATE_PER_S + BURST,
        "{ok} creates in {elapsed:.2} s exceed the fleet's rate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_fetch_one_token() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    // A slow getToken keeps the three startups overlapping: one call for all is the fleet's doing.
    sim.fault("slow", "500ms").await;
    let gws = replicas::<3>(&config(&redis, "fgw-token:", "", ""), &sim.url, demo_env()).await;
    sim.fault("none", "0s").await;
    for gw in &gws {
        let (status, _, v) = answer(http().get(format!("{}{DISK}/memoryTotal/0", gw.url))).await;
        assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
        assert_eq!(readyz(&gw.admin_url).await.0, 200);
    }
    assert_eq!(sim.calls("memoryTotal").await, 3);
    assert_eq!(
        sim.calls("getToken").await,
        1,
        "three ready replicas, one getToken"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_through_one_replica_is_seen_through_another_once_its_message_arrives() {
    let sim = Sim::start(SimConfig {
        mount_delay: Duration::from_secs(3600),
        ..sim_config()
    })
    .await;
    let redis = RedisServer::start();
    let toml = config(&redis, "fgw-mount:", "", &info_policy("ttl = \"60s\""));
    let [a, b] = replicas::<2>(&toml, &sim.url, demo_env()).await;
    let id = create_disk(&a).await;
    let client = http();
    assert_eq!(info(&client, &b.url, &id).await.2["data"]["status"], "0");
    let (_, h, v) = info(&client, &b.url, &id).await;
    assert_eq!(v["data"]["status"], "0");
    assert!(
        cache_status(&h).contains("hit"),
        "B holds the entry at status 0: {h:?}"
    );
    mount(&a, &id).await;
    // B drops its entry when A's invalidation message arrives (a fraction of a millisecond, but
    // not before A answers the mount).
    eventually(
        "B shows the mount made through A",
        Duration::from_secs(5),
        || async { info(&client, &b.url, &id).await.2["data"]["status"] == "1" },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_down_reads_are_served_creates_refused_and_all_recovers() {
    let sim = Sim::start(sim_config()).await;
    let mut redis = RedisServer::start();
    // Short create timings: Redis comes back empty, and creates that find no record are refused
    // for execution limit + lease (here every create route's max_wait 200ms + 4 × 1s + 1s) before
    // they run again.
    let rest = format!(
        "{}[upstream]\ntimeout = \"1s\"\n[create]\nlease = \"1s\"\n{FAST_CREATES}max_wait = \"200ms\"\n\
         [create.routes.\"host.create_quantity\"]\nmax_wait = \"200ms\"\n\
         [create.routes.\"host.create_rent\"]\nmax_wait = \"200ms\"\n",
        info_policy("ttl = \"60s\"")
    );
    let toml = config(&redis, "fgw-down:", "", &rest);
    let gws = replicas::<3>(&toml, &sim.url, demo_env()).await;
    let id = create_disk(&gws[0]).await;
    for gw in &gws {
        let (status, _, v) = info(&http(), &gw.url, &id).await;
        assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    }

    // Steady polling through every replica, across the kill.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let traffic = {
        let urls: Vec<String> = gws.iter().map(|g| g.url.clone()).collect();
        let (stop, served, id) = (stop.clone(), served.clone(), id.clone());
        tokio::spawn(async move {
            let client = prompt();
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                for url in &urls {
                    match client.get(format!("{url}{DISK}/info/{id}")).send().await {
                        Ok(r) if r.status() == 200 => {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => failures.push(format!("{url}: HTTP {}", r.status())),
                        Err(e) => failures.push(format!("{url}: {e}")),
                    }
                }
            }
            failures
        })
    };
    eventually("traffic flowing", Duration::from_secs(10), || async {
        served.load(Ordering::SeqCst) >= 30
    })
    .await;
    redis.kill();
    let before_kill = served.load(Ordering::SeqCst);
    let creates = sim.calls("create").await;

    for (i, gw) in gws.iter().enumerate() {
        let (status, _, v) = info(&prompt(), &gw.url, &id).await;
        assert_eq!(
            (status, v["code"].as_i64()),
            (200, Some(0)),
            "replica {i}: {v}"
        );
        assert_eq!(v["data"]["id"], id.as_str());
        let body = format!(r#"{{"area":0,"memory":{},"isMount":0}}"#, 30 + i);
        let (status, _, v) = create(&prompt(), &gw.url, None, &body).await;
        assert_eq!(
            (status, v["code"].as_i64()),
            (503, Some(503)),
            "replica {i}: no create without the shared records: {v}"
        );
        assert_eq!(v["success"], false);
        let (status, ready) = readyz(&gw.admin_url).await;
        assert_eq!(status, 503, "replica {i}: {ready}");
        assert!(
            ready["redis"]
                .as_str()
                .is_some_and(|r| r.starts_with("down")),
            "readyz says why: {ready}"
        );
    }
    assert_eq!(
        sim.calls("create").await,
        creates,
        "no create reached the upstream"
    );
    for (i, gw) in gws.iter().enumerate() {
        let metrics = gw.metrics().await;
        assert!(
            metric(&metrics, "finovy_gateway_redis_errors_total", &[]) > 0.0,
            "replica {i} counts its Redis errors:\n{metrics}"
        );
    }
    eventually("traffic past the kill", Duration::from_secs(10), || async {
        served.load(Ordering::SeqCst) >= before_kill + 30
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let failures = traffic.await.unwrap();
    assert!(
        failures.is_empty(),
        "every poll was answered 200 in time: {failures:?}"
    );

    redis.restart();
    for (i, gw) in gws.iter().enumerate() {
        let body = format!(r#"{{"area":0,"memory":{},"isMount":0}}"#, 40 + i);
        let url = gw.url.clone();
        eventually(
            &format!("replica {i} creates again"),
            Duration::from_secs(30),
            || {
                let (url, body) = (url.clone(), body.clone());
                async move {
                    let (status, _, v) = create(&prompt(), &url, None, &body).await;
                    match (status, v["code"].as_i64()) {
                        (200, Some(0)) => true,
                        // Redis down, then back without its data (the grace window).
                        (503, Some(503 | 1005)) => false,
                        other => panic!("replica {i}: unexpected {other:?}: {v}"),
                    }
                }
            },
        )
        .await;
        eventually(
            &format!("replica {i} ready again"),
            Duration::from_secs(15),
            || async { readyz(&gw.admin_url).await.0 == 200 },
        )
        .await;
    }
    assert_eq!(sim.calls("create").await, creates + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_creates_when_down_local_duplicates_still_collapse() {
    let sim = Sim::start(sim_config()).await;
    let mut redis = RedisServer::start();
    let toml = config(&redis, "fgw-local:", "creates_when_down = \"local\"\n", "");
    let [a, b] = replicas::<2>(&toml, &sim.url, demo_env()).await;
    // Shared mode is on while Redis is up: B replays what A bought.
    let earlier = r#"{"area":2,"memory":50,"isMount":0}"#;
    let (_, _, bought) = create(&prompt(), &a.url, Some("local-1"), earlier).await;
    let (_, h, again) = create(&prompt(), &b.url, Some("local-1"), earlier).await;
    assert!(replayed(&h), "{again}");
    assert_eq!(again["data"], bought["data"]);
    assert_eq!(sim.calls("create").await, 1);

    redis.kill();
    let (status, h, first) = create(&prompt(), &a.url, None, DISK20).await;
    assert_eq!((status, first["code"].as_i64()), (200, Some(0)), "{first}");
    assert!(!replayed(&h));
    let (status, h, dup) = create(&prompt(), &a.url, None, DISK20).await;
    assert_eq!(status, 200, "{dup}");
    assert!(replayed(&h), "the replica's own records caught the repeat");
    assert_eq!(dup["data"], first["data"]);
    assert_eq!(sim.calls("create").await, 2);

    // Identical creates in flight at once still make one call.
    sim.fault("slow", "300ms").await;
    let body = r#"{"area":1,"memory":30,"isMount":0}"#;
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let url = a.url.clone();
            tokio::spawn(async move { create(&prompt(), &url, None, body).await })
        })
        .collect();
    let mut ids = Vec::new();
    for h in handles {
        let (status, _, v) = h.await.unwrap();
        assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
        ids.push(v["data"].clone());
    }
    assert!(ids.iter().all(|d| *d == ids[0]), "{ids:?}");
    assert_eq!(sim.calls("create").await, 3);

    // The other replica buys too.
    sim.fault("none", "0s").await;
    let (status, _, v) = create(
        &prompt(),
        &b.url,
        None,
        r#"{"area":2,"memory":25,"isMount":0}"#,
    )
    .await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    assert_eq!(sim.calls("create").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fill_lock_held_by_a_killed_replica_frees_itself_after_lock_ttl() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let toml = config(
        &redis,
        "fgw-lock:",
        "lock_ttl = \"1s\"\n",
        &info_policy("ttl = \"60s\""),
    );
    let b = Gw::start(&toml, &sim.url, demo_env()).await;
    let mut a = replica_process(&toml, &sim.url).await;
    let id = create_disk(&b).await;

    // A's fill hangs upstream (the simulator answers 3 s late) while A holds the fill lock.
    sim.fault("slow", "3s").await;
    let in_flight = {
        let url = format!("{}{DISK}/info/{id}", a.url);
        tokio::spawn(async move { http().get(url).send().await.map(|r| r.status()) })
    };
    eventually(
        "A's fill reached the upstream",
        Duration::from_secs(10),
        || async { sim.calls("info").await == 1 },
    )
    .await;
    // The fill lock is the only key naming the disk before its entry is stored, and the only one
    // living no longer than lock_ttl.
    let mut locks = Vec::new();
    for key in redis.keys(&format!("fgw-lock:*{id}*")).await {
        let pttl = redis.pttl(&key).await;
        if (1..=1000).contains(&pttl) {
            locks.push(key);
        }
    }
    assert!(
        !locks.is_empty(),
        "A holds a fill lock with the 1 s lock_ttl: {:?}",
        redis.keys("*").await
    );
    sigkill(&mut a);
    assert!(
        in_flight.await.unwrap().is_err(),
        "A died before answering, still holding the lock"
    );

    sim.fault("none", "0s").await;
    let started = Instant::now();
    let (status, _, v) = info(&http(), &b.url, &id).await;
    let waited = started.elapsed();
    eprintln!("B answered {waited:?} after A was killed holding the fill lock");
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    assert_eq!(v["data"]["id"], id.as_str());
    assert_eq!(sim.calls("info").await, 2, "A's call, then B's own");
    assert!(
        waited < Duration::from_secs(8),
        "the 1 s lock_ttl, not the 10 s default, bounded B's wait: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_shared_key_lives_under_the_prefix_and_expires() {
    const PREFIX: &str = "fgw-keys:";
    let sim = Sim::start(SimConfig {
        mount_delay: Duration::from_secs(3600),
        ..sim_config()
    })
    .await;
    let redis = RedisServer::start();
    let rest = format!(
        "{}[cache.routes.\"disk.list\"]\nenabled = true\nttl = \"30s\"\n{FAST_CREATES}[create.budget.account]\ncreates_per_day = 100\n",
        info_policy("ttl = \"30s\"")
    );
    let toml = config(&redis, PREFIX, "", &rest);
    let [a, b] = replicas::<2>(&toml, &sim.url, demo_env()).await;
    let client = http();
    // Traffic touching every kind of shared state: token, cache entries, fill locks, idempotency
    // and de-dup records, rate and budget counters, invalidations.
    let (_, _, keyed) = create(&client, &a.url, Some("hyg-1"), DISK20).await;
    let (_, h, _) = create(&client, &b.url, Some("hyg-1"), DISK20).await;
    assert!(replayed(&h));
    let (status, _, _) = create(
        &client,
        &b.url,
        Some("hyg-1"),
        r#"{"area":0,"memory":21,"isMount":0}"#,
    )
    .await;
    assert_eq!(status, 422);
    let plain = r#"{"area":1,"memory":22,"isMount":0}"#;
    let (_, _, unkeyed) = create(&client, &b.url, None, plain).await;
    create(&client, &a.url, None, plain).await;
    let ids: Vec<String> = [&keyed, &unkeyed]
        .iter()
        .map(|v| v["data"].as_str().expect("a disk id").to_string())
        .collect();
    for gw in [&a, &b] {
        for id in &ids {
            assert_eq!(info(&client, &gw.url, id).await.2["code"], 0);
        }
        let (_, _, list) = answer(
            client
                .post(format!("{}{DISK}/getList", gw.url))
                .json(&json!({"page": 1, "pageSize": 10})),
        )
        .await;
        assert_eq!(list["code"], 0, "{list}");
    }
    mount(&a, &ids[0]).await;
    assert_eq!(info(&client, &b.url, &ids[0]).await.2["code"], 0);

    let keys = redis.keys("*").await;
    assert!(!keys.is_empty(), "shared mode stored something");
    let mut report = String::new();
    for key in &keys {
        assert!(
            key.starts_with(PREFIX),
            "{key} is outside the prefix {PREFIX}"
        );
        let pttl = redis.pttl(key).await;
        report.push_str(&format!("  {key}  pttl={pttl}\n"));
        // -2: the key expired or was removed between KEYS and PTTL.
        assert!(pttl != -1, "{key} never expires");
        assert!(pttl > 0 || pttl == -2, "{key}: PTTL {pttl}");
    }
    eprintln!("{} keys in Redis:\n{report}", keys.len());

    // Entry keys: {prefix}{account}:cache:{route}:{generation}:{id}.
    let entries: Vec<String> = redis
        .keys(&format!("{PREFIX}*:cache:*"))
        .await
        .into_iter()
        .filter(|k| k.contains("disk.info"))
        .collect();
    let entry = entries
        .iter()
        .find(|k| k.contains(ids[1].as_str()))
        .unwrap_or_else(|| panic!("a disk.info entry for {}: {entries:?}", ids[1]));
    let bytes = redis
        .memory_usage(entry)
        .await
        .expect("the entry is still there");
    eprintln!("MEMORY USAGE {entry} = {bytes} bytes");
    // README: "a disk.info entry costs about 600 bytes in Redis", so 100,000 take about 60 MB.
    assert!((400..=800).contains(&bytes), "{entry}: {bytes} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalidation_reaches_every_replica() {
    const DISKS: usize = 10;
    let sim = Sim::start(SimConfig {
        mount_delay: Duration::from_secs(3600),
        ..sim_config()
    })
    .await;
    let redis = RedisServer::start();
    // Entries live far longer than the wait below: only the invalidation can change an answer.
    let toml = config(&redis, "fgw-inval:", "", &info_policy("ttl = \"60s\""));
    let [a, b, c] = replicas::<3>(&toml, &sim.url, demo_env()).await;
    let mut ids = Vec::new();
    for _ in 0..DISKS {
        ids.push(create_disk(&a).await);
    }
    let client = http();
    for id in &ids {
        for gw in [&b, &c] {
            info(&client, &gw.url, id).await;
            let (_, h, v) = info(&client, &gw.url, id).await;
            assert_eq!(v["data"]["status"], "0");
            assert!(cache_status(&h).contains("hit"), "{h:?}");
        }
    }
    let mut seen: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut stale_reads = [0usize; 2];
    for id in &ids {
        mount(&a, id).await;
        let mounted = Instant::now();
        let pollers: Vec<_> = [&b, &c]
            .iter()
            .map(|gw| {
                let (url, id) = (gw.url.clone(), id.clone());
                tokio::spawn(async move {
                    let client = http();
                    let mut stale = 0;
                    loop {
                        let (_, _, v) = info(&client, &url, &id).await;
                        if v["data"]["status"] == "1" {
                            return (mounted.elapsed(), stale);
                        }
                        stale += 1;
                        assert!(
                            mounted.elapsed() < Duration::from_secs(5),
                            "the mount of {id} never showed through {url}: {v}"
                        );
                    }
                })
            })
            .collect();
        for (i, p) in pollers.into_iter().enumerate() {
            let (elapsed, stale) = p.await.unwrap();
            seen[i].push(elapsed);
            stale_reads[i] += stale;
        }
    }
    for (name, (times, stale)) in ["B", "C"].iter().zip(seen.iter_mut().zip(stale_reads)) {
        times.sort();
        eprintln!(
            "invalidation to replica {name}: min {:?}, median {:?}, max {:?}; {stale} stale reads over {DISKS} mounts",
            times[0],
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_redis_url_may_come_from_the_environment() {
    const PREFIX: &str = "fgw-env:";
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let in_process = Gw::start(&config(&redis, PREFIX, "", ""), &sim.url, demo_env()).await;
    // The binary's file has the rest of [redis] but no URL: FGW_REDIS_URL supplies it.
    let url = redis.url();
    let bin = Bin::serve(
        &format!("[redis]\nprefix = \"{PREFIX}\"\n{FAST_CREATES}"),
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
            ("FGW_REDIS_URL", &url),
        ],
    );
    let (status, _, bought) = create(&http(), &in_process.url, Some("env-1"), DISK20).await;
    assert_eq!(
        (status, bought["code"].as_i64()),
        (200, Some(0)),
        "{bought}"
    );
    let (status, h, again) = create(&http(), &bin.url, Some("env-1"), DISK20).await;
    assert_eq!(status, 200, "{again}");
    assert!(
        replayed(&h),
        "the binary shares the records under the same prefix"
    );
    assert_eq!(again["data"], bought["data"]);
    assert_eq!(sim.calls("create").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_may_ignore_redis_when_configured_to() {
    let sim = Sim::start(sim_config()).await;
    let mut redis = RedisServer::start();
    let toml = config(&redis, "fgw-ready:", "required_for_readiness = false", "");
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    // Until the subscriber is in, readiness says "ok; not yet listening for invalidations".
    eventually(
        "readyz says Redis is ok",
        Duration::from_secs(5),
        || async {
            let (status, body) = readyz(&gw.admin_url).await;
            status == 200 && body["redis"] == "ok"
        },
    )
    .await;
    redis.kill();
    // Ready, and saying what is degraded.
    let (status, body) = readyz(&gw.admin_url).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["redis"]
            .as_str()
            .is_some_and(|r| r.starts_with("down")),
        "{body}"
    );
    // Creates are still refused: readiness changes nothing else.
    let (status, _, v) = create(&prompt(), &gw.url, None, DISK20).await;
    assert_eq!((status, v["code"].as_i64()), (503, Some(503)), "{v}");
    assert_eq!(sim.calls("create").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_in_flight_on_a_killed_replica_is_found_not_bought_again() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    // An in-flight record is taken for lost once its lease lapses: nobody renews it. 3 s rather
    // than the default 5 s: long enough for B's first retry to land inside it, short to wait out.
    let rest = "[create]\nlease = \"3s\"\n\
                [create.routes.\"disk.create\"]\nrate = \"100/1s\"\nburst = 10\nmax_wait = \"200ms\"\n";
    let toml = config(&redis, "fgw-crash:", "", rest);
    let b = Gw::start(&toml, &sim.url, demo_env()).await;
    let mut a = replica_process(&toml, &sim.url).await;

    // The simulator makes the disk at once and holds the answer back; A dies meanwhile.
    sim.fault("slow", "10s").await;
    let key = fresh_key();
    let a_url = a.url.clone();
    let k = key.clone();
    let lost = tokio::spawn(async move {
        http()
            .post(format!("{a_url}{DISK}/create"))
            .header("content-type", "application/json")
            .header("Idempotency-Key", k)
            .body(DISK20)
            .send()
            .await
    });
    eventually(
        "A's create reached the upstream",
        Duration::from_secs(10),
        || async { sim.calls("create").await == 1 },
    )
    .await;
    sigkill(&mut a);
    assert!(lost.await.unwrap().is_err(), "A died before answering");
    sim.fault("none", "0s").await;

    // Within the lease the record says "in flight": B refuses rather than buy again.
    let (status, headers, v) = create(&http(), &b.url, Some(&key), DISK20).await;
    assert_eq!((status, v["code"].as_i64()), (409, Some(1005)), "{v}");
    assert!(headers.contains_key("retry-after"));

    // Past it the record reads as an unknown outcome, and B finds the disk A's create made.
    // Waiting out the lease: nothing signals it.
    let (status, headers, v) =
        eventually_some("the lease lapses", Duration::from_secs(20), || async {
            let answer = create(&http(), &b.url, Some(&key), DISK20).await;
            (answer.0 != 409).then_some(answer)
        })
        .await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    assert!(
        replayed(&headers),
        "the purchase A made is answered, not a new one"
    );
    let disks = sim.stats().await["disks"].as_u64();
    assert_eq!(sim.calls("create").await, 1, "no second purchase");
    assert_eq!(disks, Some(1));
    // Every later retry, on any replica, gets the same disk.
    let (_, _, again) = create(&http(), &b.url, Some(&key), DISK20).await;
    assert_eq!(again["data"], v["data"]);
}

/// A shared-mode config for any `[redis] url` (cluster or sentinel).
fn config_url(url: &str, prefix: &str, rest: &str) -> String {
    format!("[redis]\nurl = \"{url}\"\nprefix = \"{prefix}\"\ntimeout = \"1s\"\n\n{rest}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_cluster_serves_the_fleet_like_one_server() {
    let sim = Sim::start(sim_config()).await;
    let cluster = RedisCluster::start();
    cluster.wait_ok().await;
    let toml = config_url(&cluster.url(), "fgw-cl:", &info_policy("ttl = \"60s\""));
    let gws = replicas::<3>(&toml, &sim.url, demo_env()).await;

    // One purchase for 30 identical creates over the three replicas.
    let mut creates = Vec::new();
    for i in 0..30 {
        let url = gws[i % 3].url.clone();
        creates.push(tokio::spawn(async move {
            create(&http(), &url, None, DISK20).await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for c in creates {
        let (status, _, v) = c.await.unwrap();
        assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
        ids.insert(v["data"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(sim.calls("create").await, 1);
    let id = ids.into_iter().next().unwrap();

    // An Idempotency-Key replays on another replica.
    let key = fresh_key();
    let body = r#"{"area":0,"memory":40,"isMount":0}"#;
    let (_, _, first) = create(&http(), &gws[0].url, Some(&key), body).await;
    let (status, h, again) = create(&http(), &gws[2].url, Some(&key), body).await;
    assert_eq!(status, 200);
    assert!(replayed(&h));
    assert_eq!(again["data"], first["data"]);
    assert_eq!(sim.calls("create").await, 2);

    // 3 × 100 concurrent polls: one upstream call.
    let before = sim.calls("info").await;
    let mut polls = Vec::new();
    for gw in &gws {
        for _ in 0..100 {
            let (url, id) = (gw.url.clone(), id.clone());
            polls.push(tokio::spawn(
                async move { info(&http(), &url, &id).await.0 },
            ));
        }
    }
    for p in polls {
        assert_eq!(p.await.unwrap(), 200);
    }
    assert_eq!(sim.calls("info").await - before, 1);

    // A mount through one replica is seen through another (pub/sub across the cluster).
    mount(&gws[0], &id).await;
    // Mounting (1), or already mounted (2): anything but the entry from before.
    eventually(
        "the mount is seen through another replica",
        Duration::from_secs(5),
        || async { info(&http(), &gws[1].url, &id).await.2["data"]["status"] != "0" },
    )
    .await;
    assert_eq!(sim.calls("getToken").await, 1, "one token for the fleet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_managed_primary_is_followed_through_a_failover() {
    let sim = Sim::start(sim_config()).await;
    let primary = RedisServer::start();
    let port = primary.port().to_string();
    let replica = RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &port]);
    let sentinel = RedisServer::start_sentinel(primary.port());
    let url = format!("redis+sentinel://127.0.0.1:{}/mymaster", sentinel.port());
    let primary_of = || async {
        sentinel
            .command(&["SENTINEL", "get-master-addr-by-name", "mymaster"])
            .await
            .strings()
            .get(1)
            .cloned()
            .unwrap_or_default()
    };
    eventually(
        "the sentinel knows the primary",
        Duration::from_secs(10),
        || async { primary_of().await == primary.port().to_string() },
    )
    .await;
    eventually(
        "the replica is in sync",
        Duration::from_secs(10),
        || async {
            replica
                .command(&["INFO", "replication"])
                .await
                .text()
                .is_some_and(|t| t.contains("master_link_status:up"))
        },
    )
    .await;
    let toml = config_url(&url, "fgw-sen:", "");
    let [a, b] = replicas::<2>(&toml, &sim.url, demo_env()).await;
    let key = fresh_key();
    let (status, _, first) = create(&http(), &a.url, Some(&key), DISK20).await;
    assert_eq!((status, first["code"].as_i64()), (200, Some(0)), "{first}");
    // The record reached the replica before the failover (replication is asynchronous).
    let record = format!("fgw-sen:rec:idem|default|anonymous|disk.create|{key}");
    eventually(
        "the record is replicated",
        Duration::from_secs(10),
        || async { replica.get(&record).await.is_some() },
    )
    .await;

    let reply = sentinel
        .command(&["SENTINEL", "FAILOVER", "mymaster"])
        .await;
    assert_eq!(reply.text().as_deref(), Some("OK"));
    eventually(
        "the replica is promoted",
        Duration::from_secs(20),
        || async { primary_of().await == replica.port().to_string() },
    )
    .await;

    // Both replicas follow: the record is found on the new primary, and new creates are recorded.
    eventually(
        "B answers from the new primary",
        Duration::from_secs(20),
        || async {
            let (status, h, v) = create(&http(), &b.url, Some(&key), DISK20).await;
            status == 200 && replayed(&h) && v["data"] == first["data"]
        },
    )
    .await;
    // A follows within about a second: a create of its then lands on the new primary.
    let made = Arc::new(AtomicU64::new(0));
    eventually(
        "A records on the new primary",
        Duration::from_secs(20),
        || {
            let (a, replica, made) = (&a, &replica, made.clone());
            async move {
                let fresh = fresh_key();
                if create(&http(), &a.url, Some(&fresh), DISK20).await.0 != 200 {
                    return false;
                }
                made.fetch_add(1, Ordering::SeqCst);
                let record = format!("fgw-sen:rec:idem|default|anonymous|disk.create|{fresh}");
                replica.get(&record).await.is_some()
            }
        },
    )
    .await;
    assert_eq!(
        sim.calls("create").await,
        1 + made.load(Ordering::SeqCst),
        "one purchase per key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_over_tls_works_through_a_rediss_url() {
    let sim = Sim::start(sim_config()).await;
    // A private CA and a certificate it signed for localhost, made here.
    let dir = std::env::temp_dir().join(format!("fgw-tls-{}", fresh_key()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ext"), "subjectAltName=DNS:localhost\n").unwrap();
    for args in [
        "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=fgw-test-ca -keyout ca.key -out ca.pem",
        "req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout key.pem -out srv.csr",
        "x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile ext -out cert.pem",
    ] {
        let made = std::process::Command::new("openssl")
            .args(args.split(' '))
            .current_dir(&dir)
            .output()
            .expect("run openssl");
        assert!(made.status.success(), "openssl {args}: {made:?}");
    }
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let (ca, cert, key) = (
        ca.to_str().unwrap(),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    );
    let redis = RedisServer::start_with_args(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        cert,
        "--tls-key-file",
        key,
        "--tls-ca-cert-file",
        ca,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://localhost:{tls_port}");
    let toml = config_url(&url, "fgw-tls:", "")
        .replace("[redis]\n", &format!("[redis]\ntls_ca_file = \"{ca}\"\n"));
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let k = fresh_key();
    let (status, _, v) = create(&http(), &gw.url, Some(&k), DISK20).await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    // The record went over TLS into the server (read back over its plain port).
    let record = format!("fgw-tls:rec:idem|default|anonymous|disk.create|{k}");
    assert!(
        redis.get(&record).await.is_some(),
        "{:?}",
        redis.keys("*").await
    );
    let (status, body) = readyz(&gw.admin_url).await;
    assert_eq!(status, 200, "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_rejected_on_every_replica_is_fetched_again_once() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let gws = replicas::<3>(&config(&redis, "fgw-401:", "", ""), &sim.url, demo_env()).await;
    for gw in &gws {
        assert_eq!(readyz(&gw.admin_url).await.0, 200);
    }
    assert_eq!(sim.calls("getToken").await, 1);
    // The upstream forgets the token: every replica's next call is answered 401.
    sim.revoke_tokens().await;
    let mut calls = Vec::new();
    for gw in &gws {
        for _ in 0..5 {
            let url = format!("{}{DISK}/memoryTotal/0", gw.url);
            calls.push(tokio::spawn(async move { answer(http().get(url)).await }));
        }
    }
    for c in calls {
        let (status, _, v) = c.await.unwrap();
        assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    }
    assert_eq!(
        sim.calls("getToken").await,
        2,
        "one refresh for the fleet after the rejection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleet_refreshes_its_token_once_per_lifetime() {
    // Tokens live 2 s; each is refreshed 0.5 s before it expires (a quarter of its life).
    let sim = Sim::start(SimConfig {
        token_ttl: Duration::from_secs(2),
        ..sim_config()
    })
    .await;
    let redis = RedisServer::start();
    let gws = replicas::<3>(&config(&redis, "fgw-life:", "", ""), &sim.url, demo_env()).await;
    let started = Instant::now();
    let lifetimes = 4;
    // Traffic throughout, so that every replica needs a valid token all the time.
    while started.elapsed() < Duration::from_millis(1500 * lifetimes) {
        for gw in &gws {
            let (status, _, v) =
                answer(http().get(format!("{}{DISK}/memoryTotal/0", gw.url))).await;
            assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
        }
        // Paces the traffic; nothing to wait for.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fetched = sim.calls("getToken").await;
    eprintln!(
        "{fetched} getToken calls for 3 replicas over {:?}",
        started.elapsed()
    );
    // One at start, then one per 1.5 s of refresh cycle; three replicas on their own would make
    // three times as many.
    assert!(
        (lifetimes..=lifetimes + 2).contains(&fetched),
        "{fetched} getToken calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_no_cache_refresh_on_one_replica_is_shared_with_the_others() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let toml = config(&redis, "fgw-nocache:", "", &info_policy("ttl = \"60s\""));
    let [a, b] = replicas::<2>(&toml, &sim.url, demo_env()).await;
    let id = create_disk(&a).await;
    let before = sim.calls("info").await;
    let (status, h, _) = answer(
        http()
            .get(format!("{}{DISK}/info/{id}", a.url))
            .header("Cache-Control", "no-cache"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(cache_status(&h).contains("fwd=request"), "{h:?}");
    // The refreshed entry was stored for the fleet: B answers it without an upstream call.
    let (status, h, v) = info(&http(), &b.url, &id).await;
    assert_eq!((status, v["data"]["id"].as_str()), (200, Some(id.as_str())));
    assert!(cache_status(&h).contains("hit"), "{h:?}");
    assert_eq!(sim.calls("info").await - before, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn refreshing_one_disk_leaves_the_fleets_fill_of_another_alone() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let toml = config(&redis, "fgw-epoch:", "", &info_policy("ttl = \"60s\""));
    let [a, b] = replicas::<2>(&toml, &sim.url, demo_env()).await;
    let (x, y) = (create_disk(&a).await, create_disk(&a).await);
    assert_ne!(x, y);
    let client = http();
    info(&client, &a.url, &x).await;
    sim.fault("slow", "600ms").await;
    // Disk Y's fill is in flight on A...
    let (a_url, y2) = (a.url.clone(), y.clone());
    let poll_y = tokio::spawn(async move { info(&http(), &a_url, &y2).await });
    eventually("Y's fill", Duration::from_secs(10), || async {
        sim.calls("info").await >= 2
    })
    .await;
    // ...when a client refreshes disk X through B (X's entry dropped fleet-wide, and a call).
    let (status, h, _) = answer(
        client
            .get(format!("{}{DISK}/info/{x}", b.url))
            .header("Cache-Control", "no-cache"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(cache_status(&h).contains("fwd=request"), "{h:?}");
    let (status, h, v) = poll_y.await.unwrap();
    assert_eq!((status, v["data"]["id"].as_str()), (200, Some(y.as_str())));
    assert!(
        cache_status(&h).contains("stored"),
        "Y's fill was stored: {h:?}"
    );
    sim.fault("none", "0s").await;
    // B finds Y's entry in Redis: no second call for Y.
    let (_, h, _) = info(&client, &b.url, &y).await;
    assert!(cache_status(&h).contains("hit"), "{h:?}");
    assert_eq!(sim.calls("info").await, 3, "X, Y once, X's refresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_replicas_invalidation_detaches_this_replicas_fill() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let toml = config(&redis, "fgw-detach:", "", &info_policy("ttl = \"60s\""));
    let [a, b] = replicas::<2>(&toml, &sim.url, demo_env()).await;
    let x = create_disk(&a).await;
    let heard = || async {
        b.metric("finovy_gateway_invalidation_lag_seconds_count", &[])
            .await
    };
    // The create's own invalidations (lists, totals: two messages) reach B first; one still on
    // its way would pass for X's below.
    eventually("B hears of the create", Duration::from_secs(5), || async {
        heard().await >= 2.0
    })
    .await;
    let heard_before = heard().await;
    sim.fault("slow", "800ms").await;
    // B's fill of X is in flight...
    let (b_url, x2) = (b.url.clone(), x.clone());
    let early = tokio::spawn(async move { info(&http(), &b_url, &x2).await });
    eventually("B's fill", Duration::from_secs(10), || async {
        sim.calls("info").await >= 1
    })
    .await;
    // ...when X is dropped fleet-wide through A (a no-cache refresh, whose call follows).
    let refresh = tokio::spawn({
        let url = format!("{}{DISK}/info/{x}", a.url);
        async move { answer(http().get(url).header("Cache-Control", "no-cache")).await }
    });
    eventually("B hears of it", Duration::from_secs(5), || async {
        heard().await > heard_before
    })
    .await;
    // A request on B after that does not join the fill B began before it.
    let calls = sim.calls("info").await;
    let (status, h, v) = info(&http(), &b.url, &x).await;
    assert_eq!((status, v["data"]["id"].as_str()), (200, Some(x.as_str())));
    assert!(
        cache_status(&h).contains("fwd=miss") && !cache_status(&h).contains("collapsed"),
        "{h:?}"
    );
    assert_eq!(sim.calls("info").await, calls + 1, "a call of its own");
    assert_eq!(early.await.unwrap().0, 200);
    assert_eq!(refresh.await.unwrap().0, 200);
}
