//! Shared mode, Redis itself: down and back, every key under the prefix and expiring, the URL from
//! the environment, readiness, a cluster, a sentinel failover, and TLS.

use super::*;

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
    // docs/shared-mode.md: "a disk.info entry costs about 600 bytes in Redis", so 100,000 take about 60 MB.
    assert!((400..=800).contains(&bytes), "{entry}: {bytes} bytes");
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

#[tokio::test(flavor = "multi_thread")]
async fn the_password_comes_from_a_file_and_a_wrong_one_is_refused() {
    let sim = Sim::start(sim_config()).await;
    // A user with a password, beside the open default user the harness itself uses.
    let redis = RedisServer::start_with_args(&[
        "--user",
        "gateway",
        "on",
        ">s3cret-pw",
        "~*",
        "&*",
        "+@all",
    ]);
    let url = format!("redis://gateway@127.0.0.1:{}", redis.port());
    for (password, right) in [("s3cret-pw\n", true), ("wrong-pw-77", false)] {
        let file = temp_file("redis-password", password);
        let toml = format!(
            "[redis]\nurl = \"{url}\"\npassword_file = \"{}\"\ntimeout = \"1s\"\n",
            file.display()
        );
        let gw = Gw::start(&toml, &sim.url, demo_env()).await;
        let (status, ready) = readyz(&gw.admin_url).await;
        if right {
            assert_eq!((status, &ready["redis"]), (200, &json!("ok")), "{ready}");
        } else {
            assert_eq!(status, 503, "{ready}");
            let redis = ready["redis"].as_str().unwrap();
            assert!(redis.starts_with("down"), "{ready}");
            assert!(!redis.contains("wrong-pw-77"), "{ready}");
        }
    }
}
