//! The spending guard in shared mode gives back what a refused create was charged, whatever its
//! size: a host create weighs 0 GB, and its refund must not fail in Redis (a failure there made
//! the replica treat Redis as down and refuse the next creates with 503).

use serde_json::Value;

use crate::harness::*;
use crate::redis_harness::RedisServer;

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
