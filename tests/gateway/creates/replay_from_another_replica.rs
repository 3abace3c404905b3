//! Create protection across its parts, end to end: a key-less create that another replica is
//! carrying out is answered, on this replica, from the record that replica writes (the record
//! protocol's claim), and counted as a replay, not as a second purchase or a local join.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::harness::redis::RedisServer;
use crate::harness::*;

const DISK20: &str = r#"{"area":0,"memory":20,"isMount":0}"#;

async fn create(gw_url: &str) -> (u16, HeaderMap, Value) {
    let resp = http()
        .post(format!("{gw_url}{DISK}/create"))
        .header("content-type", "application/json")
        .body(DISK20)
        .send()
        .await
        .expect("an answer");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.expect("a JSON body"))
}

fn dedup(text: &str, result: &str) -> f64 {
    metric(
        text,
        "finovy_gateway_dedup_total",
        &[("route", "disk.create"), ("result", result)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_carried_out_on_another_replica_is_replayed_here_from_its_record() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-parts:\"\ntimeout = \"1s\"\n",
        redis.url()
    );
    let [a, b] = replicas::<2>(&toml, &sim.url, demo_env()).await;
    // The purchase stays upstream long enough for the other replica's request to find it there.
    sim.fault("slow", "2s").await;
    let first = tokio::spawn({
        let url = a.url.clone();
        async move { create(&url).await }
    });
    eventually(
        "the first create reaches the upstream",
        Duration::from_secs(10),
        || async { sim.calls("create").await == 1 },
    )
    .await;
    let (status, headers, second) = create(&b.url).await;
    let (first_status, first_headers, first) = first.await.unwrap();

    assert_eq!(
        (first_status, first["code"].as_i64()),
        (200, Some(0)),
        "{first}"
    );
    assert!(!first_headers.contains_key("idempotent-replayed"));
    assert_eq!(
        (status, second["code"].as_i64()),
        (200, Some(0)),
        "{second}"
    );
    assert_eq!(second["data"], first["data"], "the same disk: {second}");
    assert_eq!(
        headers
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(sim.calls("create").await, 1, "one purchase");
    // Counted where it was answered, as what it was: a replay of the other replica's record.
    let (on_a, on_b) = (a.metrics().await, b.metrics().await);
    assert_eq!(dedup(&on_b, "replayed"), 1.0, "{on_b}");
    assert_eq!(dedup(&on_b, "joined"), 0.0, "{on_b}");
    assert_eq!(
        dedup(&on_a, "replayed") + dedup(&on_a, "joined"),
        0.0,
        "{on_a}"
    );
}
