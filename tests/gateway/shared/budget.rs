//! The spending guard in shared mode: a cap holds for the fleet, not per replica, and a refused
//! create is given back what it was charged, whatever its size: a host create weighs 0 GB, and its
//! refund must not fail in Redis (a failure there made the replica treat Redis as down and refuse
//! the next creates with 503).

use serde_json::{Value, json};

use crate::harness::redis::RedisServer;
use crate::harness::*;

async fn create(gw: &Gw, path: &str, body: &str) -> (u16, Value) {
    send_json(
        http()
            .post(format!("{}{path}", gw.url))
            .header("content-type", "application/json")
            .header("Idempotency-Key", fresh_key())
            .body(body.to_string()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_host_create_is_refunded_without_a_redis_error() {
    let redis = RedisServer::start();
    let sim = Sim::start(sim_config()).await;
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-budget:\"\ntimeout = \"2s\"\n\
         [create.routes.\"host.create_quantity\"]\nrate = \"1/1h\"\nburst = 1\nmax_wait = \"0s\"\n\
         [create.budget.account]\ncreates_per_day = 100\n",
        redis.url()
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let host = r#"{"packageId":"pkg-south-3090","imageId":"img-win10"}"#;
    let quantity = "/v1/pve/open/createquantity";
    let (status, v) = create(&gw, quantity, host).await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    // Charged by the guard, then refused by the rate limit: the charge is given back.
    let (status, v) = create(&gw, quantity, host).await;
    assert_eq!((status, v["code"].as_i64()), (429, Some(220025)), "{v}");
    let metrics = gw.metrics().await;
    assert!(
        metric(&metrics, "finovy_gateway_redis_errors_total", &[]) == 0.0,
        "a refund failed in Redis:\n{metrics}"
    );
    // Redis is not taken for down: the next create goes through.
    let (status, v) = create(
        &gw,
        &format!("{DISK}/create"),
        r#"{"area":0,"memory":20,"isMount":0}"#,
    )
    .await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    // Two creates charged in each window (hour, day): the refused one was given back.
    let keys = redis.keys("fgw-budget:*budget*").await;
    assert!(!keys.is_empty(), "the guard's counters live in Redis");
    for key in keys {
        let charged = redis.command(&["HGET", &key, "c"]).await.text();
        assert_eq!(charged.as_deref(), Some("2"), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spending_cap_holds_for_the_fleet_in_shared_mode() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
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
