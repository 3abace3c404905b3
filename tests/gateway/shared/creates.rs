//! Shared mode, creates: one purchase per intent across replicas, idempotency replays anywhere,
//! one create rate for the fleet, and a create in flight on a killed replica found, not bought again.

use super::*;

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
