//! Shared mode, the cache: one fill per entry for the fleet, invalidations that reach every
//! replica, fill locks that free themselves, fills detached by another replica's mutation, and a
//! replica that lost its subscription forgetting what it may have missed.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_polling_one_disk_make_one_upstream_call() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    // 300 polls in flight at once per replica from one address: past the per-address cap.
    let toml = config(
        &redis,
        "fgw-poll:",
        "",
        &format!(
            "[server]\nmax_connections_per_ip = 1000\n{}",
            info_policy("ttl = \"30s\"")
        ),
    );
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
    // One upstream call. A replica whose Redis command ran past the 1 s timeout (a loaded
    // machine) fails open by design and fills on its own, once, its polls coalesced; so a second
    // call is allowed only where a replica counted a Redis failure, and exactly one otherwise.
    let calls = sim.calls("info").await;
    let mut failed_open = 0;
    for gw in &gws {
        if gw.metric("finovy_gateway_redis_errors_total", &[]).await > 0.0 {
            failed_open += 1;
        }
    }
    assert!(
        (1..=1 + failed_open).contains(&calls),
        "900 polls over three replicas made {calls} upstream calls; \
         {failed_open} replicas saw Redis fail"
    );
    // Later polls on any replica are answered from the cache.
    sim.fault("none", "0s").await;
    for gw in &gws {
        let (_, h, _) = info(&client, &gw.url, &id).await;
        assert!(cache_status(&h).contains("hit"), "{h:?}");
    }
    assert_eq!(sim.calls("info").await, calls);
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
    // A request on B after that does not join the fill B began before it (that would answer
    // "collapsed"). It waits on the fleet's fill lock, which B's detached fill holds until its
    // call returns, and then either fills on its own (a call of its own) or finds A's refresh
    // stored first (a hit on an entry fetched after the invalidation): the two calls return
    // within moments of each other, and either order is right.
    let (status, h, v) = info(&http(), &b.url, &x).await;
    assert_eq!((status, v["data"]["id"].as_str()), (200, Some(x.as_str())));
    let own_call = cache_status(&h).contains("fwd=miss");
    assert!(
        (own_call || cache_status(&h).contains("hit")) && !cache_status(&h).contains("collapsed"),
        "{h:?}"
    );
    assert_eq!(early.await.unwrap().0, 200);
    assert_eq!(refresh.await.unwrap().0, 200);
    // B's early fill and A's refresh, and B's own call when it made one.
    let expected = if own_call { 3 } else { 2 };
    assert_eq!(sim.calls("info").await, expected, "{h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_resubscribes_clears_what_it_may_have_missed() {
    let sim = Sim::start(sim_config()).await;
    let mut redis = RedisServer::start();
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

/// GETs `url` and says whether the answer came from the cache.
async fn is_hit(url: &str) -> bool {
    let (status, h, v) = get(url, &[]).await;
    assert_eq!(status, 200, "{url}: {v}");
    cache_status(&h).contains("hit")
}
