//! A replica dies with purchases in flight: their records' leases lapse (the replica no longer
//! renews them), they read as unknown within `[create] lease`, and the clients' retries on the
//! other replicas reconcile them: each purchase answered once, with one disk, none bought twice.
//! And the other side of the lease: a live replica renews it, so a create that runs longer than
//! the lease is never taken for lost.

use std::time::{Duration, Instant};

use finovy_gateway::sim::SimConfig;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::harness::redis::RedisServer;
use crate::harness::*;

fn disk_body(memory: u64) -> String {
    format!(r#"{{"area":0,"memory":{memory},"isMount":0}}"#)
}

/// One create; `None` when no answer came (connection refused or reset: a dead replica).
async fn create(url: &str, key: &str, body: &str) -> Option<(u16, HeaderMap, Value)> {
    try_answer(
        http()
            .post(format!("{url}{DISK}/create"))
            .header("content-type", "application/json")
            .header("Idempotency-Key", key)
            .body(body.to_string()),
    )
    .await
    .ok()
}

/// What one client got in the end.
struct Settled {
    first_replica: usize,
    disk: String,
    replayed: bool,
    at: Instant,
    tries: u32,
}

/// A client that buys one disk under `key`, starting on replica `first`, and on no answer, a 409
/// (still in flight) or a 504 (outcome unknown) retries the same request on the next replica.
async fn buy(urls: Vec<String>, first: usize, key: String, body: String) -> Settled {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut tries = 0;
    loop {
        let url = &urls[(first + tries as usize) % urls.len()];
        tries += 1;
        let last = match create(url, &key, &body).await {
            Some((200, headers, v)) if v["code"] == 0 => {
                return Settled {
                    first_replica: first,
                    disk: v["data"].as_str().expect("a disk id").to_string(),
                    replayed: headers
                        .get("idempotent-replayed")
                        .is_some_and(|v| v == "true"),
                    at: Instant::now(),
                    tries,
                };
            }
            Some((status @ (409 | 504), _, v)) => format!("{status} {v}"),
            None => "no answer".to_string(),
            Some((status, _, v)) => {
                panic!("{key}: a final answer other than the disk: {status} {v}")
            }
        };
        assert!(
            Instant::now() < deadline,
            "{key}: not settled within 90 s; last: {last}"
        );
        // Nothing signals the lease's end to a client: it retries as a client would.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_drill_a_killed_replicas_purchases_settle_within_the_lease() {
    const N: usize = 40;
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    // Production timings (lease 5s, max_wait 5s, upstream timeout 15s: without the lease such a
    // record would read as lost only after 67 s), with a rate that lets 40 creates go at once.
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-drill:\"\ntimeout = \"1s\"\n\
         [create]\nlease = \"5s\"\n\
         [create.routes.\"disk.create\"]\nrate = \"1000/1s\"\nburst = 1000\n",
        redis.url()
    );
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica_process(&toml, &sim.url).await);
    }
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();

    // The upstream makes each disk at once and holds its answer back: every purchase is in
    // flight when the replica dies. Every purchase is the same order under its own key, the
    // hardest case for reconciliation: any of the 40 disks matches any of them.
    sim.fault("slow", "3s").await;
    let buyers: Vec<_> = (0..N)
        .map(|i| {
            let key = format!("drill-{}-{i}", std::process::id());
            tokio::spawn(buy(urls.clone(), i % 3, key, disk_body(20)))
        })
        .collect();
    eventually(
        "the creates all reach the upstream",
        Duration::from_secs(30),
        || async { sim.calls("create").await >= N as u64 },
    )
    .await;
    tokio::task::block_in_place(|| {
        replicas[0].child.kill().expect("SIGKILL replica 0");
        replicas[0].child.wait().expect("replica 0 exits");
    });
    let killed_at = Instant::now();
    sim.fault("none", "0s").await;

    let mut settled = Vec::new();
    for b in buyers {
        settled.push(b.await.expect("a buyer finished"));
    }
    let disks: std::collections::BTreeSet<&str> = settled.iter().map(|s| s.disk.as_str()).collect();
    assert_eq!(disks.len(), N, "every purchase has its own disk");
    assert_eq!(
        sim.calls("create").await,
        N as u64,
        "no purchase was made twice"
    );
    assert_eq!(sim.stats().await["disks"].as_u64(), Some(N as u64));

    // The killed replica's purchases: answered by another replica from the disk it made.
    let orphans: Vec<&Settled> = settled.iter().filter(|s| s.first_replica == 0).collect();
    assert_eq!(orphans.len(), N.div_ceil(3));
    let mut secs: Vec<f64> = orphans
        .iter()
        .map(|s| {
            assert!(s.replayed, "reconciled, not bought again");
            s.at.duration_since(killed_at).as_secs_f64()
        })
        .collect();
    secs.sort_by(f64::total_cmp);
    let tries: u32 = orphans.iter().map(|s| s.tries).sum();
    eprintln!(
        "crash drill: {N} purchases, replica 0 SIGKILLed with {} in flight; SIGKILL to a settled retry: \
         first {:.2}s, median {:.2}s, last {:.2}s ({tries} tries in all); upstream creates {}; \
         duplicate purchases 0",
        orphans.len(),
        secs[0],
        secs[secs.len() / 2],
        secs[secs.len() - 1],
        sim.calls("create").await
    );
    // Within the lease (5 s) and the retries' pace, far from the 67 s without it.
    assert!(
        secs[secs.len() - 1] < 20.0,
        "settled only after {:.1}s",
        secs[secs.len() - 1]
    );

    // Crashes 0: the survivors serve on, and every later retry gets the same disk.
    for r in replicas.iter_mut().skip(1) {
        assert!(r.child.try_wait().unwrap().is_none(), "a survivor died");
        let health = http().get(format!("{}/healthz", r.admin_url)).send().await;
        assert_eq!(health.unwrap().status(), 200);
    }
    let again = create(
        &urls[1],
        &format!("drill-{}-0", std::process::id()),
        &disk_body(20),
    )
    .await
    .expect("an answer");
    assert_eq!(again.2["data"].as_str(), Some(settled[0].disk.as_str()));
    assert_eq!(sim.calls("create").await, N as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_running_longer_than_its_lease_is_never_taken_for_lost() {
    let sim = Sim::start(SimConfig { ..sim_config() }).await;
    let redis = RedisServer::start();
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-lease:\"\ntimeout = \"1s\"\n\
         [create]\nlease = \"1s\"\n\
         [create.routes.\"disk.create\"]\nrate = \"1000/1s\"\nburst = 1000\n",
        redis.url()
    );
    let [a, b] = replicas::<2>(&toml, &sim.url, demo_env()).await;
    // The upstream holds the answer for four leases.
    sim.fault("slow", "4s").await;
    let key = fresh_key();
    let body = disk_body(20);
    let first = tokio::spawn({
        let (url, key, body) = (a.url.clone(), key.clone(), body.clone());
        async move { create(&url, &key, &body).await }
    });
    eventually(
        "the create reached the upstream",
        Duration::from_secs(10),
        || async { sim.calls("create").await >= 1 },
    )
    .await;
    // While A's create runs, its heartbeat keeps the record in flight: B refuses every retry
    // (a lapsed lease would let B reconcile it, since the disk already exists upstream).
    let mut conflicts = 0;
    let until = Instant::now() + Duration::from_millis(3000);
    while Instant::now() < until && !first.is_finished() {
        let (status, _, v) = create(&b.url, &key, &body).await.expect("B answers");
        assert_eq!((status, v["code"].as_i64()), (409, Some(1005)), "{v}");
        conflicts += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(conflicts >= 5, "B was asked while A ran: {conflicts}");
    let (status, _, v) = first.await.unwrap().expect("A answers");
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    sim.fault("none", "0s").await;
    let (status, headers, again) = create(&b.url, &key, &body).await.expect("B answers");
    assert_eq!(status, 200);
    assert!(headers.contains_key("idempotent-replayed"));
    assert_eq!(again["data"], v["data"]);
    assert_eq!(sim.calls("create").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_heartbeat_outlives_a_redis_hiccup_with_local_fallback() {
    let sim = Sim::start(SimConfig { ..sim_config() }).await;
    let mut redis = RedisServer::start();
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-hiccup:\"\ntimeout = \"300ms\"\n\
         creates_when_down = \"local\"\nrequired_for_readiness = false\n\
         [create]\nlease = \"1s\"\n\
         [create.routes.\"disk.create\"]\nrate = \"1000/1s\"\nburst = 1000\n",
        redis.url()
    );
    let [a, b] = replicas::<2>(&toml, &sim.url, demo_env()).await;
    sim.fault("slow", "5s").await;
    let (key, body) = (fresh_key(), disk_body(20));
    let first = tokio::spawn({
        let (url, key, body) = (a.url.clone(), key.clone(), body.clone());
        async move { create(&url, &key, &body).await }
    });
    eventually(
        "the create reached the upstream",
        Duration::from_secs(10),
        || async { sim.calls("create").await >= 1 },
    )
    .await;
    // Redis hangs for longer than the lease: renewals fail meanwhile, and must go on after.
    redis.pause(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.pause(false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A's create still runs (the upstream holds it 5 s): its record is still in flight.
    assert!(!first.is_finished());
    let (status, _, v) = create(&b.url, &key, &body).await.expect("B answers");
    assert_eq!(
        (status, v["code"].as_i64()),
        (409, Some(1005)),
        "the running create is not taken for lost: {v}"
    );
    let (status, _, v) = first.await.unwrap().expect("A answers");
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_in_redis_never_brings_back_a_finished_or_reopened_record() {
    use finovy_gateway::config::RedisConfig;
    use finovy_gateway::fleet::{Fleet, records::RedisRecords};
    use finovy_gateway::protect::records::{Record, RecordStore, State, in_flight};
    use std::sync::Arc;

    let redis = RedisServer::start();
    let cfg = RedisConfig {
        url: redis.url(),
        prefix: "fgw-renew:".into(),
        timeout: Duration::from_secs(1),
        ..RedisConfig::default()
    };
    let fleet = Fleet::new(&cfg, Arc::new(finovy_gateway::metrics::Metrics::new())).unwrap();
    let records = RedisRecords::new(fleet, false);
    let (ttl, lease) = (Duration::from_secs(60), Duration::from_secs(5));
    let now = finovy_gateway::fleet::now_ms();
    let lease_of = |r: Option<Record>| match r.map(|r| r.state) {
        Some(State::InFlight { lease_until_ms, .. }) => lease_until_ms,
        other => panic!("not in flight: {other:?}"),
    };

    let first = in_flight("disk.create||{}", ttl, lease);
    records.begin("k", first.clone()).await.unwrap();
    let renewed = first.renewed(now + 60_000).unwrap();
    assert!(records.renew("k", renewed.clone()).await.unwrap());
    assert_eq!(
        lease_of(records.get("k").await.unwrap()),
        Some(now + 60_000)
    );
    assert!(
        redis.pttl("fgw-renew:rec:k").await > 50_000,
        "the record keeps its lifetime"
    );

    // Finished: left as it is.
    let done = Record {
        state: State::Unknown { sent_at_ms: 1 },
        ..first.clone()
    };
    records.set("k", done).await.unwrap();
    assert!(!records.renew("k", renewed.clone()).await.unwrap());
    assert!(matches!(
        records.get("k").await.unwrap().unwrap().state,
        State::Unknown { .. }
    ));
    // Gone: not written again.
    records.remove("k").await.unwrap();
    assert!(!records.renew("k", renewed.clone()).await.unwrap());
    assert!(records.get("k").await.unwrap().is_none());
    // Reopened by another execution (another start): its lease is its own.
    let mut other = in_flight("disk.create||{}", ttl, lease);
    if let State::InFlight { started_ms, .. } = &mut other.state {
        *started_ms += 1;
    }
    records.set("k", other.clone()).await.unwrap();
    assert!(!records.renew("k", renewed).await.unwrap());
    assert_eq!(
        lease_of(records.get("k").await.unwrap()),
        lease_of(Some(other))
    );
}
