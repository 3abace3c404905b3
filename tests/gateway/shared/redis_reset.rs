//! Redis losing its data (FLUSHALL, or a restart without persistence) is noticed through the
//! fleet marker by every replica: the reset counter, an error log, a note on `/readyz`; and for
//! the grace window creates that find no record are refused (503, code 1005) and nothing reaches
//! the upstream, since they may be retries of purchases whose records were lost. After it,
//! creates run again.

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::harness::redis::RedisServer;
use crate::harness::*;

const PREFIX: &str = "fgw-reset:";
const DISK20: &str = r#"{"area":0,"memory":20,"isMount":0}"#;

/// Short timings: execution limit 200ms (every create route's max_wait) + 4 × 1s, lease 1s: a
/// grace window of 5.2 s.
fn config(redis: &RedisServer) -> String {
    format!(
        "[redis]\nurl = \"{}\"\nprefix = \"{PREFIX}\"\ntimeout = \"1s\"\n\
         [upstream]\ntimeout = \"1s\"\n\
         [create]\nlease = \"1s\"\n\
         [create.routes.\"disk.create\"]\nrate = \"1000/1s\"\nburst = 1000\nmax_wait = \"200ms\"\n\
         [create.routes.\"host.create_quantity\"]\nmax_wait = \"200ms\"\n\
         [create.routes.\"host.create_rent\"]\nmax_wait = \"200ms\"\n",
        redis.url()
    )
}

const GRACE: Duration = Duration::from_millis(5200);

/// A replica in this process or the real binary.
trait Replica {
    fn url(&self) -> &str;
    fn admin_url(&self) -> &str;
}

impl Replica for Gw {
    fn url(&self) -> &str {
        &self.url
    }
    fn admin_url(&self) -> &str {
        &self.admin_url
    }
}

impl Replica for Bin {
    fn url(&self) -> &str {
        &self.url
    }
    fn admin_url(&self) -> &str {
        &self.admin_url
    }
}

async fn create(gw: &impl Replica, key: Option<&str>, body: &str) -> (u16, HeaderMap, Value) {
    let mut req = http()
        .post(format!("{}{DISK}/create", gw.url()))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    answer(req).await
}

/// The resets `gw` has counted (the counter is exported from the start).
async fn resets(gw: &impl Replica) -> u64 {
    let text = metrics_at(gw.admin_url()).await;
    metric_opt(&text, "finovy_gateway_redis_resets_total", &[])
        .expect("the reset counter is exported") as u64
}

/// Polls until `gw` has counted `n` resets.
async fn wait_resets(gw: &impl Replica, n: u64) {
    eventually("the reset is noticed", Duration::from_secs(20), || async {
        resets(gw).await >= n
    })
    .await;
}

/// A refusal for a lost record: 503, code 1005, Retry-After, and what to do.
fn assert_refused((status, headers, v): &(u16, HeaderMap, Value)) {
    assert_eq!((*status, v["code"].as_i64()), (503, Some(1005)), "{v}");
    assert_eq!(v["success"], false);
    assert!(v["data"].is_null() && v["traceId"].is_string(), "{v}");
    let msg = v["msg"].as_str().unwrap();
    assert!(
        msg.contains("lost its data") && msg.contains("nothing was sent upstream"),
        "{msg}"
    );
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "Retry-After {retry}");
}

/// Polls a new keyed create until the grace window has passed and it is made; when.
async fn wait_accepted(gw: &impl Replica) -> (Instant, Value) {
    let key = fresh_key();
    eventually_some(
        "creates accepted again",
        Duration::from_secs(30),
        || async {
            let answer = create(gw, Some(&key), DISK20).await;
            if answer.0 == 200 {
                return Some((Instant::now(), answer.2));
            }
            assert_refused(&answer);
            None
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flushall_is_noticed_by_every_replica_and_creates_without_a_record_wait_out_the_grace() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let toml = config(&redis);
    let [a, b] = replicas::<2>(&toml, &sim.url, demo_env()).await;
    let marker = format!("{PREFIX}fleet-marker");
    eventually(
        "the fleet marker is written",
        Duration::from_secs(10),
        || async { redis.get(&marker).await.is_some() },
    )
    .await;
    assert!(
        redis.pttl(&marker).await > 0,
        "the marker expires, if ever unused"
    );
    let key = fresh_key();
    let (status, _, first) = create(&a, Some(&key), DISK20).await;
    assert_eq!(status, 200, "{first}");
    for gw in [&a, &b] {
        assert_eq!(resets(gw).await, 0, "a fresh fleet is no reset");
        let (status, ready) = readyz(gw.admin_url()).await;
        assert_eq!(status, 200);
        assert!(ready.get("redis_reset").is_none(), "{ready}");
    }

    let flushed = Instant::now();
    assert_eq!(
        redis.command(&["FLUSHALL"]).await,
        crate::harness::redis::Resp::Simple("OK".into())
    );
    // Both replicas notice, though only one of them writes the new marker.
    wait_resets(&a, 1).await;
    wait_resets(&b, 1).await;
    for gw in [&a, &b] {
        let (status, ready) = readyz(gw.admin_url()).await;
        assert_eq!(status, 200, "a note, not unreadiness: {ready}");
        let note = ready["redis_reset"].as_str().unwrap_or_default();
        assert!(
            note.contains("lost its data") && note.contains("refused"),
            "{ready}"
        );
    }
    assert!(
        redis.get(&marker).await.is_some(),
        "the marker is written again"
    );

    // The retry of the purchase whose record was lost, a new key, a key-less create: refused,
    // and nothing reaches the upstream.
    assert_refused(&create(&b, Some(&key), DISK20).await);
    assert_refused(&create(&a, Some(&fresh_key()), DISK20).await);
    assert_refused(&create(&b, None, r#"{"area":0,"memory":21,"isMount":0}"#).await);
    assert_eq!(sim.calls("create").await, 1);
    assert_eq!(
        redis.keys(&format!("{PREFIX}rec:*")).await,
        Vec::<String>::new(),
        "no record made"
    );

    let (accepted, made) = wait_accepted(&a).await;
    assert_eq!(made["code"], 0, "{made}");
    let waited = accepted.duration_since(flushed);
    eprintln!("creates refused for {waited:?} after FLUSHALL (grace {GRACE:?})");
    assert!(waited >= GRACE - Duration::from_millis(1200), "{waited:?}");
    assert_eq!(sim.calls("create").await, 2);
    // Noticed once, and the note no longer refuses once the replica's own window is over: each
    // counts it from when it noticed, which may be a marker check (about 1 s) after A did.
    for gw in [&a, &b] {
        assert_eq!(resets(gw).await, 1);
        eventually(
            "the note no longer refuses",
            Duration::from_secs(3),
            || async {
                let (_, ready) = readyz(gw.admin_url()).await;
                let note = ready["redis_reset"].as_str().unwrap_or_default();
                assert!(note.contains("lost its data"), "{ready}");
                !note.contains("refused")
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restarted_empty_is_noticed_before_the_next_create() {
    let sim = Sim::start(sim_config()).await;
    let mut redis = RedisServer::start();
    // The real binary, for its log.
    let gw = Bin::serve(
        &config(&redis),
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    let key = fresh_key();
    let (status, _, first) = create(&gw, Some(&key), DISK20).await;
    assert_eq!(status, 200, "{first}");

    redis.restart();
    // The retry whose record was lost is never bought again: refused while Redis is away (503,
    // code 503); once it is back, a key-less repeat is refused as possibly lost (code 1005), and
    // the keyed retry is answered from the purchase ledger, which kept its key.
    let answer = eventually_some("Redis comes back", Duration::from_secs(30), || async {
        let answer = create(&gw, None, DISK20).await;
        (answer.2["code"] != 503).then_some(answer)
    })
    .await;
    assert_refused(&answer);
    let (status, headers, replayed) = create(&gw, Some(&key), DISK20).await;
    assert_eq!(
        (status, &replayed["data"]),
        (200, &first["data"]),
        "{replayed}"
    );
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(sim.calls("create").await, 1);
    assert_eq!(resets(&gw).await, 1);
    let (status, ready) = readyz(gw.admin_url()).await;
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready["redis_reset"]
            .as_str()
            .unwrap_or_default()
            .contains("refused"),
        "{ready}"
    );

    let log = gw.wait_for_log("Redis lost its data", 1).await;
    let line = log
        .lines()
        .find(|l| l.contains("Redis lost its data"))
        .unwrap();
    assert!(
        line.contains("ERROR") && line.contains("appendonly"),
        "{line}"
    );
    assert!(!log.contains(&redis.url()), "no Redis URL in the log");

    let (_, made) = wait_accepted(&gw).await;
    assert_eq!(made["code"], 0, "{made}");
    assert_eq!(sim.calls("create").await, 2);
    assert_eq!(resets(&gw).await, 1);
}

/// The marker is read every second, but the script that begins a record reads it too: a retry
/// sent at once after a FLUSHALL, before any check ran, is refused like one sent later, on the
/// replica that made the purchase and on another, keyed or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_at_once_after_a_flushall_never_buys_twice() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let [a, b] = replicas::<2>(&config(&redis), &sim.url, demo_env()).await;
    let key = fresh_key();
    let keyless = r#"{"area":0,"memory":22,"isMount":0}"#;
    for body in [DISK20, keyless] {
        let k = (body == DISK20).then_some(key.as_str());
        let (status, _, made) = create(&a, k, body).await;
        assert_eq!((status, made["code"].as_i64()), (200, Some(0)), "{made}");
    }
    assert_eq!(sim.calls("create").await, 2);

    assert_eq!(
        redis.command(&["FLUSHALL"]).await,
        crate::harness::redis::Resp::Simple("OK".into())
    );
    // No wait for the marker check: each retry goes out as soon as the FLUSHALL is answered.
    let retries = [
        create(&b, Some(&key), DISK20).await,
        create(&a, Some(&key), DISK20).await,
        create(&a, None, keyless).await,
        create(&b, None, keyless).await,
    ];
    let second_purchases = sim.calls("create").await - 2;
    eprintln!("second purchases right after FLUSHALL (of 4 retries): {second_purchases}");
    assert_eq!(second_purchases, 0);
    retries.iter().for_each(assert_refused);
    // The begin that found the marker gone counted the loss, as the check would have.
    for gw in [&a, &b] {
        assert_eq!(resets(gw).await, 1);
    }
    assert_eq!(
        redis.keys(&format!("{PREFIX}rec:*")).await,
        Vec::<String>::new(),
        "no record made"
    );
}
