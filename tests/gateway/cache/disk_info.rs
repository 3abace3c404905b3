//! The disk-info cache end to end: one upstream call per disk per TTL, coalesced misses,
//! stale-while-revalidate and stale-if-error, invalidation by our own mutations, and isolation
//! between accounts. The simulator's counters are the witness.

use std::time::{Duration, Instant};

use finovy_gateway::sim::SimConfig;
use finovy_gateway::sim::seed::HOST_AREA0;
use serde_json::{Value, json};

use crate::harness::*;

async fn create_disk(gw: &Gw, body: Value) -> String {
    let (_, v) = send_json(
        http()
            .post(format!("{}{DISK}/create", gw.url))
            .header("Idempotency-Key", fresh_key())
            .json(&body),
    )
    .await;
    assert_eq!(v["code"], 0, "{v}");
    v["data"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_polls_make_one_upstream_call() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(&info_policy("ttl = \"60s\""), &sim.url, demo_env()).await;
    let id = create_disk(&gw, json!({"area": 0, "memory": 20, "isMount": 0})).await;
    let url = format!("{}{DISK}/info/{id}", gw.url);
    let (_, h, first) = get(&url, &[]).await;
    assert_eq!(first["data"]["id"], id.as_str());
    assert!(
        cache_status(&h).contains("fwd=miss") && cache_status(&h).contains("stored"),
        "{h:?}"
    );
    for _ in 0..20 {
        for answer in concurrent_gets(&url, 50).await {
            assert_eq!(answer, first);
        }
    }
    let (_, h, _) = get(&url, &[]).await;
    assert!(
        cache_status(&h).starts_with("finovy-gateway; hit; ttl="),
        "{h:?}"
    );
    assert!(h.get("age").is_some());
    assert_eq!(sim.calls("info").await, 1);
    let metrics = gw.metrics().await;
    let hits = [("result", "hit"), ("route", "disk.info")];
    assert_eq!(
        metric(&metrics, "finovy_gateway_cache_lookups_total", &hits),
        1001.0,
        "{metrics}"
    );
    assert_eq!(
        metric_opt(&metrics, "finovy_gateway_cache_entries", &[]),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_cold_requests_collapse_into_one_call() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    let id = create_disk(&gw, json!({"area": 0, "memory": 20, "isMount": 0})).await;
    sim.fault("slow", "1s").await;
    let url = format!("{}{DISK}/info/{id}", gw.url);
    let client = http();
    let handles: Vec<_> = (0..200)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let (_, h, v) = answer(client.get(url)).await;
                (cache_status(&h), v)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for h in handles {
        let (status, body) = h.await.unwrap();
        assert_eq!(body["data"]["id"], id.as_str());
        statuses.push(status);
    }
    assert_eq!(sim.calls("info").await, 1);
    // One request made the call; the others joined it, or (arriving after it landed) hit its entry.
    let leaders = statuses
        .iter()
        .filter(|s| s.contains("stored") && !s.contains("collapsed"))
        .count();
    let followers = statuses
        .iter()
        .filter(|s| s.contains("collapsed") || s.contains("; hit;"))
        .count();
    assert_eq!((leaders, followers), (1, 199), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_disks_with_twenty_pollers_each_make_fifty_calls() {
    let sim = Sim::start(sim_config()).await;
    // A thousand pollers in flight at once from one address: past the per-address cap.
    let toml = format!(
        "[server]\nmax_connections_per_ip = 2000\n{}",
        info_policy("ttl = \"60s\"")
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(create_disk(&gw, json!({"area": 1, "memory": 20, "isMount": 0})).await);
    }
    sim.fault("slow", "200ms").await;
    let client = http();
    let handles: Vec<_> = ids
        .iter()
        .flat_map(|id| std::iter::repeat_n(id.clone(), 20))
        .map(|id| {
            let (client, url) = (client.clone(), format!("{}{DISK}/info/{id}", gw.url));
            tokio::spawn(async move { (id, send_json(client.get(url)).await.1) })
        })
        .collect();
    for h in handles {
        let (id, body) = h.await.unwrap();
        assert_eq!(body["data"]["id"], id.as_str());
    }
    assert_eq!(sim.calls("info").await, 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_ttl_exactly_one_refresh() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        &info_policy("ttl = \"300ms\"\nstale_while_revalidate = \"0s\""),
        &sim.url,
        demo_env(),
    )
    .await;
    let id = create_disk(&gw, json!({"area": 0, "memory": 20, "isMount": 0})).await;
    let url = format!("{}{DISK}/info/{id}", gw.url);
    get(&url, &[]).await;
    // Let the TTL pass (the cache measures time itself; there is no event to wait for).
    tokio::time::sleep(Duration::from_millis(400)).await;
    for answer in concurrent_gets(&url, 30).await {
        assert_eq!(answer["data"]["id"], id.as_str());
    }
    assert_eq!(sim.calls("info").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mounting_disk_expires_sooner_than_a_settled_one() {
    let sim = Sim::start(SimConfig {
        mount_delay: Duration::from_secs(3600),
        ..sim_config()
    })
    .await;
    let gw = Gw::start(
        &info_policy(
            "ttl = \"60s\"\nstale_while_revalidate = \"0s\"\nstatus_ttl = { \"1\" = \"300ms\" }",
        ),
        &sim.url,
        demo_env(),
    )
    .await;
    let mounting = create_disk(
        &gw,
        json!({"area": 0, "memory": 20, "isMount": 1, "pveId": HOST_AREA0}),
    )
    .await;
    let settled = create_disk(&gw, json!({"area": 0, "memory": 20, "isMount": 0})).await;
    for id in [&mounting, &settled] {
        get(&format!("{}{DISK}/info/{id}", gw.url), &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, h, v) = get(&format!("{}{DISK}/info/{mounting}", gw.url), &[]).await;
    assert_eq!(v["data"]["status"], "1");
    assert!(
        cache_status(&h).contains("fwd=stale; fwd-status=200; stored"),
        "the mounting disk's entry expired: {h:?}"
    );
    let (_, h, _) = get(&format!("{}{DISK}/info/{settled}", gw.url), &[]).await;
    assert!(
        cache_status(&h).contains("hit"),
        "the settled disk's entry is still fresh: {h:?}"
    );
    assert_eq!(sim.calls("info").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        &info_policy("ttl = \"300ms\"\nstale_while_revalidate = \"30s\""),
        &sim.url,
        demo_env(),
    )
    .await;
    let id = create_disk(&gw, json!({"area": 0, "memory": 20, "isMount": 0})).await;
    let url = format!("{}{DISK}/info/{id}", gw.url);
    get(&url, &[]).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    sim.fault("slow", "3s").await;
    let started = Instant::now();
    for _ in 0..10 {
        let (status, h, v) = get(&url, &[]).await;
        assert_eq!((status, v["code"].as_i64()), (200, Some(0)));
        assert!(cache_status(&h).contains("fwd=stale"), "{h:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stale answers did not wait for the upstream"
    );
    assert_eq!(
        sim.calls("info").await,
        2,
        "one background refresh for ten stale answers"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_if_error_covers_upstream_failures_within_its_window() {
    let sim = Sim::start(sim_config()).await;
    let toml = "[upstream]\ntimeout = \"500ms\"\n".to_string()
        + &info_policy("ttl = \"200ms\"\nstale_while_revalidate = \"0s\"\nstale_if_error = \"3s\"");
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let id = create_disk(&gw, json!({"area": 0, "memory": 20, "isMount": 0})).await;
    let url = format!("{}{DISK}/info/{id}", gw.url);
    let (_, _, fresh) = get(&url, &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for mode in ["error", "reset", "garbage", "slow"] {
        sim.fault(mode, "2s").await;
        let (status, h, v) = get(&url, &[]).await;
        assert_eq!(status, 200, "{mode}");
        assert_eq!(v, fresh, "{mode}: the stored answer");
        assert!(
            cache_status(&h).contains("detail=stale-if-error"),
            "{mode}: {h:?}"
        );
    }
    // Past stale-if-error, the failure comes through.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    sim.fault("error", "0s").await;
    let (status, _, v) = get(&url, &[]).await;
    assert_eq!((status, v["code"].as_i64()), (500, Some(500)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_disk_is_never_cached_nor_masked() {
    let sim = Sim::start(SimConfig {
        mount_delay: Duration::from_millis(100),
        ..sim_config()
    })
    .await;
    let gw = Gw::start(
        &info_policy("ttl = \"200ms\"\nstale_if_error = \"5m\""),
        &sim.url,
        demo_env(),
    )
    .await;
    for _ in 0..3 {
        let (_, h, v) = get(&format!("{}{DISK}/info/noSuchDisk", gw.url), &[]).await;
        assert_eq!(v["code"], 220001);
        assert!(
            cache_status(&h).contains("fwd=miss") && !cache_status(&h).contains("stored"),
            "{h:?}"
        );
        assert!(
            h.contains_key("age"),
            "every answer of a cached route has Age"
        );
    }
    assert_eq!(sim.calls("info").await, 3);

    // A disk destroyed behind the gateway's back: once its entry is stale, 220001 comes through.
    let id = create_disk(&gw, json!({"area": 0, "memory": 20, "isMount": 0})).await;
    let url = format!("{}{DISK}/info/{id}", gw.url);
    assert_eq!(get(&url, &[]).await.2["code"], 0);
    let token = sim.token().await;
    let destroyed = send_json(
        http()
            .put(format!("{}{DISK}/updateStatus", sim.url))
            .header("Finovy-Access-Token", token)
            .json(&json!({"id": id, "status": "5"})),
    )
    .await
    .1;
    assert_eq!(destroyed["code"], 0);
    eventually(
        "the entry gives way to 220001",
        Duration::from_secs(20),
        || async { get(&url, &[]).await.2["code"] == 220001 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mount_through_the_gateway_is_seen_at_once() {
    let sim = Sim::start(SimConfig {
        mount_delay: Duration::from_secs(3600),
        ..sim_config()
    })
    .await;
    let gw = Gw::start(&info_policy("ttl = \"60s\""), &sim.url, demo_env()).await;
    let id = create_disk(&gw, json!({"area": 0, "memory": 20, "isMount": 0})).await;
    let url = format!("{}{DISK}/info/{id}", gw.url);
    assert_eq!(get(&url, &[]).await.2["data"]["status"], "0");
    assert_eq!(get(&url, &[]).await.2["data"]["status"], "0");
    let (_, mounted) = send_json(
        http()
            .post(format!("{}{DISK}/pveCreate", gw.url))
            .json(&json!({"id": id, "pveId": HOST_AREA0})),
    )
    .await;
    assert_eq!(mounted["code"], 0, "{mounted}");
    let (_, h, v) = get(&url, &[]).await;
    assert_eq!(v["data"]["status"], "1", "{h:?}");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            "finovy_gateway_cache_invalidations_total{reason=\"mutation\",route=\"disk.info\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_accounts_never_share_entries() {
    let sim = Sim::start(sim_config()).await;
    let toml = format!(
        "{}{}{}[[accounts]]\nname = \"other\"\nbase_url = \"{}\"\nuuid_env = \"FINOVY_UUID\"\nsecret_env = \"FINOVY_SECRET\"\n",
        info_policy("ttl = \"60s\""),
        client_entry("a", "key-a-0000000000000000", ""),
        client_entry("b", "key-b-0000000000000000", "account = \"other\""),
        sim.url
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let (_, created) = send_json(
        http()
            .post(format!("{}{DISK}/create", gw.url))
            .header("Authorization", "Bearer key-a-0000000000000000")
            .json(&json!({"area": 0, "memory": 20, "isMount": 0})),
    )
    .await;
    let url = format!(
        "{}{DISK}/info/{}",
        gw.url,
        created["data"].as_str().unwrap()
    );
    for key in ["key-a-0000000000000000", "key-b-0000000000000000"] {
        for _ in 0..3 {
            get(&url, &[("Authorization", &format!("Bearer {key}"))]).await;
        }
    }
    assert_eq!(sim.calls("info").await, 2, "one call per account");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_cache_forces_one_upstream_call_and_refreshes() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(&info_policy("ttl = \"60s\""), &sim.url, demo_env()).await;
    let id = create_disk(&gw, json!({"area": 0, "memory": 20, "isMount": 0})).await;
    let url = format!("{}{DISK}/info/{id}", gw.url);
    get(&url, &[]).await;
    let (_, h, _) = get(&url, &[("Cache-Control", "no-cache")]).await;
    assert!(
        cache_status(&h).contains("fwd=request") && cache_status(&h).contains("stored"),
        "{h:?}"
    );
    let (_, h, _) = get(&url, &[]).await;
    assert!(cache_status(&h).contains("hit"), "{h:?}");
    assert_eq!(sim.calls("info").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_needs_the_admin_key() {
    const ADMIN: &str = "admin-key-for-tests-0001";
    let sim = Sim::start(sim_config()).await;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(ADMIN.as_bytes()));
    let toml = format!(
        "[admin]\nkey_sha256 = \"{digest}\"\n{}[cache.routes.\"disk.list\"]\nttl = \"60s\"\n",
        info_policy("ttl = \"60s\"")
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let id = create_disk(&gw, json!({"area": 0, "memory": 20, "isMount": 0})).await;
    let url = format!("{}{DISK}/info/{id}", gw.url);
    get(&url, &[]).await;
    let purge = format!("{}/admin/cache/purge", gw.admin_url);
    let body = json!({"route": "disk.info", "id": id});
    for auth in [None, Some("Bearer wrong-admin-key")] {
        let mut req = http().post(&purge).json(&body);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        assert_eq!(req.send().await.unwrap().status(), 401);
    }
    let (_, h, _) = get(&url, &[]).await;
    assert!(
        cache_status(&h).contains("hit"),
        "not purged without the key: {h:?}"
    );
    let (status, v) = send_json(
        http()
            .post(&purge)
            .header("Authorization", format!("Bearer {ADMIN}"))
            .json(&body),
    )
    .await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    let (_, h, _) = get(&url, &[]).await;
    assert!(cache_status(&h).contains("fwd=miss"), "purged: {h:?}");
    let (status, _) = send_json(
        http()
            .post(&purge)
            .header("Authorization", format!("Bearer {ADMIN}"))
            .json(&json!({"route": "disk.nope"})),
    )
    .await;
    assert_eq!(status, 400);
    // A list entry is named by its request body, in any key order.
    let list = || {
        http()
            .post(format!("{}{DISK}/getList", gw.url))
            .json(&json!({"page": 1, "pageSize": 10}))
    };
    list().send().await.unwrap();
    let h = list().send().await.unwrap().headers().clone();
    assert!(cache_status(&h).contains("hit"), "{h:?}");
    let (status, v) = send_json(
        http()
            .post(&purge)
            .header("Authorization", format!("Bearer {ADMIN}"))
            .json(&json!({"route": "disk.list", "id": "{ \"pageSize\": 10, \"page\": 1 }"})),
    )
    .await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    let h = list().send().await.unwrap().headers().clone();
    assert!(cache_status(&h).contains("fwd=miss"), "purged: {h:?}");
    assert_eq!(sim.calls("getList").await, 2);
    let (status, _) = send_json(
        http()
            .post(&purge)
            .header("Authorization", format!("Bearer {ADMIN}"))
            .json(&json!({"all": true})),
    )
    .await;
    assert_eq!(status, 200);
    let (_, h, _) = get(&url, &[]).await;
    assert!(cache_status(&h).contains("fwd=miss"), "purged all: {h:?}");
    assert_eq!(sim.calls("info").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn body_keyed_lists_are_cached_and_dropped_by_a_create() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        "[cache.routes.\"disk.list\"]\nenabled = true\nttl = \"60s\"\n",
        &sim.url,
        demo_env(),
    )
    .await;
    let list = |body: &'static str| {
        http()
            .post(format!("{}{DISK}/getList", gw.url))
            .header("content-type", "application/json")
            .body(body)
    };
    let first = list(r#"{"page":1,"pageSize":10}"#).send().await.unwrap();
    assert!(cache_status(first.headers()).contains("stored"));
    let again = list("{ \"pageSize\": 10, \"page\": 1 }")
        .send()
        .await
        .unwrap();
    assert!(
        cache_status(again.headers()).contains("hit"),
        "key order and whitespace do not matter"
    );
    assert_eq!(sim.calls("getList").await, 1);
    create_disk(&gw, json!({"area": 0, "memory": 20, "isMount": 0})).await;
    let after = send_json(list(r#"{"page":1,"pageSize":10}"#)).await.1;
    assert_eq!(
        after["data"]["totalCounts"], 1,
        "the create dropped the cached list"
    );
    assert_eq!(sim.calls("getList").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_byte_bound_holds() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        &format!(
            "[cache]\nmax_bytes = 16384\n{}",
            info_policy("ttl = \"60s\"")
        ),
        &sim.url,
        demo_env(),
    )
    .await;
    for _ in 0..150 {
        let id = create_disk(&gw, json!({"area": 2, "memory": 20, "isMount": 0})).await;
        get(&format!("{}{DISK}/info/{id}", gw.url), &[]).await;
    }
    let metrics = gw.metrics().await;
    let gauge = |name: &str| {
        metric_opt(&metrics, name, &[]).unwrap_or_else(|| panic!("{name} in\n{metrics}")) as u64
    };
    assert!(gauge("finovy_gateway_cache_bytes") <= 16384);
    let entries = gauge("finovy_gateway_cache_entries");
    assert!(
        entries > 0 && entries < 150,
        "entries were evicted: {entries}"
    );
}

/// Waits until the simulator has received `n` `info` calls in all.
async fn info_calls_reach(sim: &Sim, n: u64) {
    eventually(
        &format!("{n} info calls"),
        Duration::from_secs(10),
        || async { sim.calls("info").await >= n },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refreshing_one_disk_leaves_another_disks_fill_alone() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(&info_policy("ttl = \"60s\""), &sim.url, demo_env()).await;
    let a = create_disk(&gw, json!({"area": 0, "memory": 20, "isMount": 0})).await;
    let b = create_disk(&gw, json!({"area": 0, "memory": 30, "isMount": 0})).await;
    let (url_a, url_b) = (
        format!("{}{DISK}/info/{a}", gw.url),
        format!("{}{DISK}/info/{b}", gw.url),
    );
    get(&url_a, &[]).await;
    sim.fault("slow", "600ms").await;
    let polls = |n: usize| {
        let url = url_b.clone();
        tokio::spawn(async move { concurrent_gets(&url, n).await })
    };
    // Disk B's fill is in flight...
    let early = polls(10);
    info_calls_reach(&sim, 2).await;
    // ...when a client refreshes disk A (an invalidation of A's entry, and a call of its own)...
    let url = url_a.clone();
    let refresh = tokio::spawn(async move { get(&url, &[("Cache-Control", "no-cache")]).await });
    info_calls_reach(&sim, 3).await;
    // ...and more polls of B arrive: they join B's fill, which is stored as if nothing happened.
    let late = polls(10);
    for answer in early.await.unwrap().into_iter().chain(late.await.unwrap()) {
        assert_eq!(answer["data"]["id"], b.as_str());
    }
    assert_eq!(refresh.await.unwrap().0, 200);
    sim.fault("none", "0s").await;
    let (_, h, _) = get(&url_b, &[]).await;
    assert!(cache_status(&h).contains("hit"), "{h:?}");
    assert_eq!(sim.calls("info").await, 3, "A, B once, A's refresh");
}
