//! Shared mode, the token: one getToken for the fleet at start, after a rejection, and per lifetime.

use super::*;

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
