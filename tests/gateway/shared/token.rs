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

const REPORTER_A: &str = "key-of-a-reporter-on-a-00000";
const REPORTER_B: &str = "key-of-a-reporter-on-b-00000";
const LESSEE: &str = "key-of-a-lessee-000000000000";
const USER: &str = "key-of-a-plain-user-00000000";

async fn lease(gw: &Gw) -> (u16, HeaderMap, Value) {
    answer(
        http()
            .get(format!("{}/_gateway/token", gw.url))
            .bearer_auth(LESSEE),
    )
    .await
}

async fn report(gw: &Gw, key: &str, token: &str) -> (u16, HeaderMap, Value) {
    answer(
        http()
            .post(format!("{}/_gateway/token/rejected", gw.url))
            .bearer_auth(key)
            .json(&json!({ "token": token })),
    )
    .await
}

/// The token of a 200 lease.
fn leased(status: u16, v: &Value) -> String {
    assert_eq!((status, &v["code"]), (200, &json!(0)), "{v}");
    v["data"]["token"].as_str().expect("a token").to_string()
}

/// A 503 with its `Retry-After`, in seconds.
fn unavailable(status: u16, h: &HeaderMap, v: &Value) -> u64 {
    assert_eq!((status, &v["code"]), (503, &json!(503)), "{v}");
    assert!(v["data"].is_null(), "nothing leased: {v}");
    h.get("retry-after")
        .unwrap_or_else(|| panic!("a 503 with Retry-After: {v}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_on_two_replicas_never_leave_either_without_a_token() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let clients = [
        client_entry("reporter-a", REPORTER_A, "token_lease = true"),
        client_entry("reporter-b", REPORTER_B, "token_lease = true"),
        client_entry("lessee", LESSEE, "token_lease = true"),
        client_entry("user", USER, ""),
    ]
    .concat();
    // One getToken per 2 s for the fleet.
    let rest = format!("{clients}[token]\nmin_refresh_interval = \"2s\"\n");
    let [a, b] = replicas::<2>(
        &config(&redis, "fgw-report:", "", &rest),
        &sim.url,
        demo_env(),
    )
    .await;
    let a = Arc::new(a);
    let b = Arc::new(b);

    // Another client's requests on both replicas, all along: none may go without a token.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (a, b, stop) = (a.clone(), b.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                for gw in [&a, &b] {
                    let (s, _, v) = answer(
                        http()
                            .get(format!("{}{DISK}/memoryTotal/0", gw.url))
                            .bearer_auth(USER),
                    )
                    .await;
                    seen.push((s, v));
                }
            }
            seen
        })
    };

    let (s, _, v) = lease(&a).await;
    let first = leased(s, &v);
    // The startup getToken closed the fleet's gate for 2 s; once it is open, a report on A is
    // replaced there at once.
    eventually(
        "the fleet's gate opens",
        Duration::from_secs(10),
        || async { redis.get("fgw-report:{default}:token-gate").await.is_none() },
    )
    .await;
    let (s, _, v) = report(&a, REPORTER_A, &first).await;
    let second = leased(s, &v);
    assert_ne!(second, first);
    let (s, _, v) = lease(&b).await;
    assert_eq!(leased(s, &v), second, "B follows the fleet");

    // Reported on B at once: A's getToken closed the gate, so B cannot replace it. B keeps the
    // fleet's token for the gateway's own requests and says when to ask again.
    let (s, h, v) = report(&b, REPORTER_B, &second).await;
    assert!((1..=2).contains(&unavailable(s, &h, &v)));
    // No replica leases the refused token, nor goes back to the one refused before.
    for gw in [&a, &b] {
        let (s, h, v) = lease(gw).await;
        assert!((1..=2).contains(&unavailable(s, &h, &v)));
    }
    // Its replacement comes once the gate opens, with no request asking for it, for both.
    let third = eventually_some("a third token", Duration::from_secs(10), || async {
        let (s, _, v) = lease(&b).await;
        (s == 200).then(|| leased(s, &v))
    })
    .await;
    let (s, _, v) = lease(&a).await;
    assert_eq!(leased(s, &v), third);
    assert!(![&first, &second].contains(&&third));
    // A report of a token refused before is no reason to answer it: the current lease.
    let (s, _, v) = report(&b, REPORTER_A, &first).await;
    assert_eq!(leased(s, &v), third);

    stop.store(true, Ordering::SeqCst);
    let seen = load.await.unwrap();
    let failed: Vec<_> = seen
        .iter()
        .filter(|(s, v)| *s != 200 || v["code"] != 0)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} refused: {:?}",
        failed.len(),
        seen.len(),
        failed.first()
    );
    assert_eq!(
        sim.calls("getToken").await,
        3,
        "start, A's report, the refresher"
    );
}
