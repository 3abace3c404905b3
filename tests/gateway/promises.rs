//! Promises of the docs (docs/) that no other module holds: what each mutation drops from the cache, the short
//! life of a disk being destroyed, purges by account and across accounts, the de-dup window's end,
//! the JSON log format, and the admin listener's plain endpoints.

use std::time::Duration;

use finovy_gateway::sim::seed::HOST_AREA0;
use serde_json::{Value, json};

use crate::harness::*;

/// GETs `url` and says whether the answer came from the cache.
async fn is_hit(url: &str) -> bool {
    let (status, h, v) = get(url, &[]).await;
    assert_eq!(status, 200, "{url}: {v}");
    cache_status(&h).contains("hit")
}

#[tokio::test(flavor = "multi_thread")]
async fn each_mutation_drops_exactly_what_it_changes() {
    let sim = Sim::start(sim_config()).await;
    let toml = "[cache.routes.\"disk.memory_total\"]\nttl = \"60s\"\n\
                [cache.routes.\"host.one\"]\nttl = \"60s\"\n\
                [cache.routes.\"host.page\"]\nttl = \"60s\"\n";
    let gw = Gw::start(toml, &sim.url, demo_env()).await;
    let total = format!("{}{DISK}/memoryTotal/0", gw.url);
    let one = format!("{}/v1/pve/open/one/{HOST_AREA0}", gw.url);
    let page = format!("{}/v1/pve/open/mypage?page=1&pageSize=10", gw.url);
    for url in [&total, &one, &page] {
        assert!(!is_hit(url).await, "{url}: first is a miss");
        assert!(is_hit(url).await, "{url}: then a hit");
    }
    // A disk create drops the area totals, and leaves the host entries alone.
    new_disk_info_url(&gw.url).await;
    assert!(!is_hit(&total).await, "a create drops disk.memory_total");
    assert!(is_hit(&one).await && is_hit(&page).await, "hosts untouched");
    // Powering a host on drops that host's entry and the host pages, not the disk totals.
    let (_, v) = send_json(http().get(format!(
        "{}/v1/pve/open/operate/{HOST_AREA0}?type=1",
        gw.url
    )))
    .await;
    assert_eq!(v["code"], 0, "{v}");
    assert!(!is_hit(&one).await, "operate drops host.one");
    assert!(!is_hit(&page).await, "operate drops host.page");
    assert!(is_hit(&total).await, "disks untouched");
    assert_eq!(sim.calls("memoryTotal").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_being_destroyed_lives_only_status_ttl_in_the_cache() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        &info_policy(
            "ttl = \"60s\"\nstale_while_revalidate = \"0s\"\nstatus_ttl = { \"4\" = \"1s\" }",
        ),
        &sim.url,
        demo_env(),
    )
    .await;
    let url = new_disk_info_url(&gw.url).await;
    let id = url.rsplit('/').next().unwrap().to_string();
    let (_, h, v) = get(&url, &[]).await;
    assert_eq!(v["data"]["status"], "0", "{v}");
    assert!(cache_status(&h).contains("stored"), "{h:?}");
    let (_, v) = send_json(
        http()
            .put(format!("{}{DISK}/updateStatus", gw.url))
            .json(&json!({"id": id, "status": "5"})),
    )
    .await;
    assert_eq!(v["code"], 0, "{v}");
    // The destroy dropped the entry; the disk now reads as status 4, kept for status_ttl.
    let (_, h, v) = get(&url, &[]).await;
    assert_eq!(v["data"]["status"], "4", "{v}");
    assert!(cache_status(&h).contains("fwd=miss"), "{h:?}");
    let (_, h, _) = get(&url, &[]).await;
    let status = cache_status(&h);
    assert!(
        status.contains("hit; ttl=0") || status.contains("hit; ttl=1"),
        "a status-4 entry lives 1 s, not 60: {status}"
    );
    let calls = sim.calls("info").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_, h, _) = get(&url, &[]).await;
    assert!(!cache_status(&h).contains("; hit"), "{h:?}");
    assert!(
        sim.calls("info").await > calls,
        "refetched after status_ttl"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn purges_by_account_and_of_a_route_across_accounts() {
    const ADMIN: &str = "admin-key-for-tests-0002";
    let sim = Sim::start(sim_config()).await;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(ADMIN.as_bytes()));
    let toml = format!(
        "[admin]\nkey_sha256 = \"{digest}\"\n{}{}{}[[accounts]]\nname = \"other\"\nbase_url = \"{}\"\nuuid_env = \"FINOVY_UUID\"\nsecret_env = \"FINOVY_SECRET\"\n",
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
    let as_client = |key: &'static str| {
        let url = url.clone();
        async move {
            let resp = http()
                .get(&url)
                .header("Authorization", format!("Bearer {key}"))
                .send()
                .await
                .unwrap();
            cache_status(resp.headers()).contains("hit")
        }
    };
    let (a, b) = ("key-a-0000000000000000", "key-b-0000000000000000");
    let prime = || async {
        as_client(a).await;
        as_client(b).await;
        assert!(as_client(a).await && as_client(b).await, "both cached");
    };
    let purge = |body: Value| {
        let url = format!("{}/admin/cache/purge", gw.admin_url);
        async move {
            let (status, v) = send_json(
                http()
                    .post(url)
                    .header("Authorization", format!("Bearer {ADMIN}"))
                    .json(&body),
            )
            .await;
            assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
        }
    };
    prime().await;
    purge(json!({"route": "disk.info", "account": "other"})).await;
    assert!(as_client(a).await, "account default kept its entry");
    assert!(!as_client(b).await, "account other lost its entry");
    prime().await;
    purge(json!({"route": "disk.info"})).await;
    assert!(!as_client(a).await && !as_client(b).await, "every account");
    prime().await;
    purge(json!({"all": true})).await;
    assert!(!as_client(a).await && !as_client(b).await, "everything");
    assert_eq!(
        sim.calls("info").await,
        7,
        "a miss after each purge, per account purged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identical_create_after_the_dedup_window_buys_again() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        "[create.routes.\"disk.create\"]\nrate = \"1000/1s\"\nburst = 1000\ndedup_window = \"3s\"\n",
        &sim.url,
        demo_env(),
    )
    .await;
    let create = || {
        send_json(
            http()
                .post(format!("{}{DISK}/create", gw.url))
                .json(&json!({"area": 0, "memory": 20, "isMount": 0})),
        )
    };
    let (_, first) = create().await;
    let (_, again) = create().await;
    assert_eq!(
        first["data"], again["data"],
        "within the window: the same disk"
    );
    // The window's end: waiting for time itself to pass.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (_, later) = create().await;
    assert_eq!(later["code"], 0, "{later}");
    assert_ne!(first["data"], later["data"], "after the window: a new disk");
    assert_eq!(sim.calls("create").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_without_an_admin_key_are_off_and_healthz_answers() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    let resp = http()
        .get(format!("{}/healthz", gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for auth in [None, Some("Bearer anything-at-all-000000")] {
        let mut req = http()
            .post(format!("{}/admin/cache/purge", gw.admin_url))
            .json(&json!({"all": true}));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let status = req.send().await.unwrap().status().as_u16();
        assert!(
            status == 404 || status == 403,
            "no admin key configured: /admin/* is off, got {status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_json_log_format_writes_one_object_per_line() {
    let sim = Sim::start(sim_config()).await;
    let gw = Bin::serve_args(
        "",
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
        &["--log-format", "json"],
    );
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    let resp = http()
        .get(&url)
        .header("X-Request-Id", "json-log-line-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = gw.wait_for_log("json-log-line-1", 1).await;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        assert!(v.is_object(), "{line}");
    }
    let access: Value = text
        .lines()
        .find(|l| l.contains("json-log-line-1"))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap();
    let fields = access.get("fields").unwrap_or(&access);
    assert_eq!(fields["route"], "disk.memory_total", "{access}");
    assert_eq!(fields["status"], 200, "{access}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spending_cap_holds_for_the_fleet_in_shared_mode() {
    let sim = Sim::start(sim_config()).await;
    let redis = crate::redis_harness::RedisServer::start();
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-budget:\"\ntimeout = \"1s\"\n{FAST_CREATES}[create.budget.account]\ncreates_per_day = 2\n",
        redis.url()
    );
    let [a, b] = replicas::<2>(&toml, &sim.url, demo_env()).await;
    let create = |gw: &Gw, memory: u32| {
        send_json(
            http()
                .post(format!("{}{DISK}/create", gw.url))
                .header("Idempotency-Key", fresh_key())
                .json(&json!({"area": 0, "memory": memory, "isMount": 0})),
        )
    };
    assert_eq!(create(&a, 20).await.1["code"], 0);
    assert_eq!(create(&b, 21).await.1["code"], 0);
    // The third, on either replica, passes the account's cap of two.
    for gw in [&a, &b] {
        let (status, v) = create(gw, 22).await;
        assert_eq!((status, v["code"].as_i64()), (429, Some(220025)), "{v}");
        assert!(
            v["msg"].as_str().unwrap().contains("creates_per_day"),
            "{v}"
        );
    }
    assert_eq!(sim.calls("create").await, 2, "refused before the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hosts_password_never_reaches_redis() {
    let sim = Sim::start(sim_config()).await;
    // Uncompressed dumps, so that a value holding the password would show it.
    let redis = crate::redis_harness::RedisServer::start_with_args(&["--rdbcompression", "no"]);
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-pw:\"\ntimeout = \"1s\"\n[cache.routes.\"host.one\"]\nttl = \"60s\"\n",
        redis.url()
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let one = format!("{}/v1/pve/open/one/{HOST_AREA0}", gw.url);
    let (_, _, v) = get(&one, &[]).await;
    let password = v["data"]["hostPw"]
        .as_str()
        .expect("the detail carries hostPw")
        .to_string();
    assert!(password.len() >= 6, "{v}");
    assert!(is_hit(&one).await, "cached, in this replica's memory");
    // Something of this gateway is in Redis, so the scan below looks at real state.
    let info = new_disk_info_url(&gw.url).await;
    get(&info, &[]).await;
    let keys = redis.keys("*").await;
    assert!(
        keys.iter().any(|k| k.contains("disk.info")),
        "the shared cache is in use: {keys:?}"
    );
    for key in &keys {
        assert!(!key.contains("host.one"), "{key}");
        let crate::redis_harness::Resp::Bulk(Some(dump)) = redis.command(&["DUMP", key]).await
        else {
            continue; // gone since KEYS
        };
        let text = String::from_utf8_lossy(&dump);
        assert!(
            !text.contains(&password) && !text.contains("hostPw"),
            "{key} holds the host password"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_resubscribes_clears_what_it_may_have_missed() {
    let sim = Sim::start(sim_config()).await;
    let mut redis = crate::redis_harness::RedisServer::start();
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-resub:\"\ntimeout = \"1s\"\n{}",
        redis.url(),
        info_policy("ttl = \"60s\"")
    );
    let [a, b] = replicas::<2>(&toml, &sim.url, demo_env()).await;
    let id = new_disk_info_url(&a.url)
        .await
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let on_b = format!("{}{DISK}/info/{id}", b.url);
    get(&on_b, &[]).await;
    assert!(is_hit(&on_b).await, "B holds the entry in its memory");
    // While Redis is away, the disk is mounted behind the gateway's back: no message can say so.
    redis.kill();
    let token = sim.token().await;
    let (_, v) = send_json(
        http()
            .post(format!("{}{DISK}/pveCreate", sim.url))
            .header("Finovy-Access-Token", &token)
            .json(&json!({"id": id, "pveId": HOST_AREA0})),
    )
    .await;
    assert_eq!(v["code"], 0, "{v}");
    redis.restart();
    // Once B listens again it cannot know what it missed, so it forgets its entries.
    eventually("B listens again", Duration::from_secs(15), || async {
        readyz(&b.admin_url).await.1["redis"] == "ok"
    })
    .await;
    let (status, h, v) = get(&on_b, &[]).await;
    assert_eq!(status, 200, "{v}");
    assert!(!cache_status(&h).contains("hit"), "{h:?}");
    assert_eq!(v["data"]["pveId"], HOST_AREA0, "the mount is seen: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_redis_timeout_commands_rest_instead_of_each_waiting_it_out() {
    let sim = Sim::start(sim_config()).await;
    let mut redis = crate::redis_harness::RedisServer::start();
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-rest:\"\ntimeout = \"600ms\"\nrequired_for_readiness = false\n",
        redis.url()
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let info = |n: usize| format!("{}{DISK}/info/unknownDisk{n}", gw.url);
    assert_eq!(get(&info(0), &[]).await.0, 200);
    // Redis hangs: connections stay open, nothing answers.
    redis.pause(true);
    let first = std::time::Instant::now();
    let (status, _, v) = get(&info(1), &[]).await;
    let first = first.elapsed();
    assert_eq!((status, v["code"].as_i64()), (200, Some(220001)), "{v}");
    assert!(
        first >= Duration::from_millis(500),
        "waited out the timeout: {first:?}"
    );
    // Right after, within the 250 ms rest, misses go straight to the upstream.
    let rest = std::time::Instant::now();
    for n in 2..7 {
        let (status, _, v) = get(&info(n), &[]).await;
        assert_eq!((status, v["code"].as_i64()), (200, Some(220001)), "{v}");
    }
    let rest = rest.elapsed();
    redis.pause(false);
    // Each would wait 600 ms without the rest (3 s in all); with it, at most one more timeout
    // falls in, should a slow machine run past the 250 ms.
    assert!(
        rest < Duration::from_millis(1500),
        "five misses while resting took {rest:?}, not five timeouts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_failures_on_the_token_path_are_counted_under_their_own_operation() {
    let sim = Sim::start(sim_config()).await;
    let mut redis = crate::redis_harness::RedisServer::start();
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-ops:\"\nrequired_for_readiness = false\n\
         [token]\nmin_lifetime = \"0s\"\nmin_refresh_interval = \"100ms\"\n",
        redis.url()
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    assert_eq!(get(&url, &[]).await.0, 200);
    // Without Redis, a rejected token is replaced by this replica alone: the fleet's refresh
    // lock and its getToken gate both fail, each counted under its own name.
    redis.kill();
    sim.revoke_tokens().await;
    tokio::time::sleep(Duration::from_millis(150)).await; // past min_refresh_interval
    let (status, _, v) = get(&url, &[]).await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    for op in ["token_lock", "token_gate"] {
        let n = gw
            .metric("finovy_gateway_redis_errors_total", &[("op", op)])
            .await;
        assert!(n >= 1.0, "redis errors under op={op}: {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_label_the_docs_name_is_counted() {
    const ADMIN: &str = "admin-key-for-tests-0003";
    let sim = Sim::start(sim_config()).await;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(ADMIN.as_bytes()));
    let toml = format!(
        "[admin]\nkey_sha256 = \"{digest}\"\n[upstream]\ntimeout = \"400ms\"\n{}\
         [create.routes.\"disk.create\"]\nrate = \"1000/1s\"\nburst = 1000\nmax_wait = \"2s\"\n\
         [create.routes.\"host.create_quantity\"]\nrate = \"1/1m\"\nburst = 1\nmax_wait = \"0s\"\n\
         [create.routes.\"host.create_rent\"]\nrate = \"1000/1s\"\nburst = 1000\nclient_rate = \"1/1m\"\nclient_burst = 1\nmax_wait = \"0s\"\n\
         [create.budget.account]\ngb_per_day = 900\n",
        info_policy("ttl = \"300ms\"\nstale_while_revalidate = \"30s\"")
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let create = |key: Option<&'static str>, body: Value| {
        let mut req = http().post(format!("{}{DISK}/create", gw.url)).json(&body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        send_json(req)
    };
    let disk = |memory: u32| json!({"area": 0, "memory": memory, "isMount": 0});

    // Cache lookups: miss, hit, coalesced, stale, bypass; invalidations: gone, no_cache,
    // mutation, purge.
    let (_, made) = create(Some("m-1"), disk(20)).await;
    let id = made["data"].as_str().unwrap().to_string();
    let info = format!("{}{DISK}/info/{id}", gw.url);
    get(&info, &[]).await;
    get(&info, &[]).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    get(&info, &[]).await; // past its TTL, within stale_while_revalidate
    sim.fault("slow", "300ms").await;
    let (_, other) = create(Some("m-2"), disk(21)).await;
    let other = format!("{}{DISK}/info/{}", gw.url, other["data"].as_str().unwrap());
    concurrent_gets(&other, 5).await;
    sim.fault("none", "0s").await;
    http()
        .get(&info)
        .header("Cache-Control", "no-cache")
        .send()
        .await
        .unwrap();
    get(&format!("{}{DISK}/info/noSuchDisk", gw.url), &[]).await;
    let (_, v) = send_json(
        http()
            .post(format!("{}{DISK}/pveCreate", gw.url))
            .json(&json!({"id": id, "pveId": HOST_AREA0})),
    )
    .await;
    assert_eq!(v["code"], 0, "{v}");
    let (status, _) = send_json(
        http()
            .post(format!("{}/admin/cache/purge", gw.admin_url))
            .header("Authorization", format!("Bearer {ADMIN}"))
            .json(&json!({"all": true})),
    )
    .await;
    assert_eq!(status, 200);

    // De-dup: replayed, mismatch, conflict, joined, reconciled.
    create(Some("m-1"), disk(20)).await;
    create(Some("m-1"), disk(22)).await;
    sim.fault("slow", "300ms").await;
    let slow = tokio::spawn(create(Some("m-3"), disk(23)));
    eventually("m-3 upstream", Duration::from_secs(10), || async {
        sim.stats().await["disks"] == 3
    })
    .await;
    create(Some("m-3"), disk(23)).await;
    slow.await.unwrap();
    let joined = (0..3).map(|_| tokio::spawn(create(None, disk(24))));
    for j in joined.collect::<Vec<_>>() {
        j.await.unwrap();
    }
    sim.fault("slow", "1s").await; // past the 400 ms upstream timeout: outcome unknown
    let (status, _) = create(Some("m-4"), disk(25)).await;
    assert_eq!(status, 504);
    sim.fault("none", "0s").await;
    eventually("m-4 made", Duration::from_secs(10), || async {
        sim.stats().await["disks"] == 5
    })
    .await;
    let (_, v) = create(Some("m-4"), disk(25)).await;
    assert_eq!(v["code"], 0, "{v}");

    // Rate limits: tenant, client, upstream; the spending guard's GB cap.
    let host = |path: &str, body: Value| {
        send_json(
            http()
                .post(format!("{}/v1/pve/open/{path}", gw.url))
                .json(&body),
        )
    };
    // Two different hosts: identical ones would be one purchase, not two.
    for image in ["img-win10", "img-ubuntu2204"] {
        host(
            "createquantity",
            json!({"packageId": "pkg-south-3090", "imageId": image}),
        )
        .await;
    }
    let rent = |n: u32| json!({"packageId": "pkg-south-3090-rent", "imageId": "img-win10", "periodNumber": n, "periodType": 1});
    host("createRent", rent(1)).await;
    host("createRent", rent(2)).await;
    // The upstream asks for a pause longer than max_wait: refused as the upstream's limit.
    let r = http()
        .post(format!("{}/_sim/fault", sim.url))
        .json(&json!({"mode": "too_frequent", "retry_after": "1m"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (status, v) = create(None, disk(26)).await;
    assert_eq!((status, v["code"].as_i64()), (429, Some(220025)), "{v}");
    sim.fault("none", "0s").await;
    let (status, v) = create(None, disk(1000)).await;
    assert_eq!(status, 429, "{v}");

    let text = gw.metrics().await;
    let must = |name: &str, labels: &[(&str, &str)]| {
        assert!(
            metric(&text, name, labels) >= 1.0,
            "{name} {labels:?} never counted:\n{text}"
        );
    };
    for result in ["hit", "stale", "miss", "coalesced", "bypass"] {
        must(
            "finovy_gateway_cache_lookups_total",
            &[("route", "disk.info"), ("result", result)],
        );
    }
    for reason in ["mutation", "purge", "no_cache", "gone"] {
        must(
            "finovy_gateway_cache_invalidations_total",
            &[("reason", reason)],
        );
    }
    for (route, scope) in [
        ("host.create_quantity", "tenant"),
        ("host.create_rent", "client"),
        ("disk.create", "upstream"),
    ] {
        must(
            "finovy_gateway_rate_limited_total",
            &[("route", route), ("scope", scope)],
        );
    }
    for result in ["joined", "replayed", "conflict", "mismatch", "reconciled"] {
        must(
            "finovy_gateway_dedup_total",
            &[("route", "disk.create"), ("result", result)],
        );
    }
    must(
        "finovy_gateway_budget_refused_total",
        &[("scope", "account"), ("cap", "gb_per_day")],
    );
    must(
        "finovy_gateway_requests_total",
        &[("route", "disk.info"), ("method", "GET"), ("status", "200")],
    );
}
