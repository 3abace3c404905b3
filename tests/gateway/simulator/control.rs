//! The simulator's `/_sim/*` control: call counts, the request log, faults (error, slow, garbage,
//! reset), latency, and a reset that keeps tokens.

use std::time::{Duration, Instant};

use finovy_gateway::sim::SimConfig;
use finovy_gateway::sim::seed::{HOST_AREA0, HOST_RUNNING};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::client::*;

#[tokio::test]
async fn stats_count_every_call_that_reached_the_simulator() {
    let sim = start(quick()).await;
    let stats = sim.stats().await;
    let names = [
        "getToken",
        "create",
        "info",
        "getList",
        "pveCreate",
        "updateStatus",
        "memoryTotal",
        "image",
        "packAge",
        "createQuantity",
        "createRent",
        "operate",
        "reboot",
        "one",
        "mypage",
        "delete",
        "balance",
        "other",
    ];
    assert_eq!(
        stats["calls"].as_object().unwrap().len(),
        names.len(),
        "{stats}"
    );
    for name in names {
        let want = u64::from(name == "getToken");
        assert_eq!(stats["calls"][name], want, "{name}: {stats}");
    }

    sim.info("NoSuchDisk").await;
    sim.call_as(None, Method::GET, &format!("{DISK}/info/x"), None)
        .await;
    sim.call_as(Some("bogus"), Method::POST, &format!("{DISK}/create"), None)
        .await;
    sim.get(&format!("{HOST}/mypage")).await;
    let (status, _) = sim.control(Method::GET, "/v1/no/such/path", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = sim
        .control(Method::DELETE, &format!("{DISK}/create"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Control calls are not counted.
    sim.control(Method::GET, "/_sim/requests", None).await;

    let stats = sim.stats().await;
    assert_eq!(stats["calls"]["info"], 2, "{stats}");
    assert_eq!(stats["calls"]["create"], 1);
    assert_eq!(stats["calls"]["mypage"], 1);
    assert_eq!(stats["calls"]["other"], 2);
    assert_eq!(stats["total"], 7);
    assert_eq!(stats["tooFrequent"], 0);
    assert_eq!(stats["disks"], 0);
    assert_eq!(stats["hosts"], 6);
}

#[tokio::test]
async fn the_request_log_shows_what_was_received() {
    let sim = start(quick()).await;
    let answer = sim
        .send(
            sim.request(Method::POST, &format!("{DISK}/getList?trace=1"))
                .header("Finovy-Access-Token", &sim.token)
                .header("X-Request-Id", "req-42")
                .header("X-Multi", "a")
                .header("X-Multi", "b")
                .body(r#"{"page":1}"#),
        )
        .await;
    assert_eq!(code(&answer.1), 0);
    let (_, log) = sim.control(Method::GET, "/_sim/requests", None).await;
    let log = log.as_array().expect("a list");
    assert_eq!(log.len(), 2, "getToken, then getList");
    assert_eq!(log[0]["path"], "/v1/auth/getToken");
    let last = &log[1];
    assert_eq!(last["method"], "POST");
    assert_eq!(last["path"], format!("{DISK}/getList?trace=1"));
    assert_eq!(last["headers"]["finovy-access-token"], sim.token.as_str());
    assert_eq!(last["headers"]["x-request-id"], "req-42");
    assert_eq!(last["headers"]["x-multi"], "a, b");
    assert_eq!(last["body"], r#"{"page":1}"#);

    // The log keeps the last 200, oldest first.
    for i in 0..205 {
        sim.send(sim.request(Method::GET, &format!("/v1/nothing?i={i}")))
            .await;
    }
    let (_, log) = sim.control(Method::GET, "/_sim/requests", None).await;
    let log = log.as_array().expect("a list");
    assert_eq!(log.len(), 200);
    assert_eq!(log[0]["path"], "/v1/nothing?i=5");
    assert_eq!(log[199]["path"], "/v1/nothing?i=204");
}

#[tokio::test]
async fn fault_error_answers_500_and_does_nothing() {
    let sim = start(quick()).await;
    assert_eq!(
        sim.fault(json!({"mode": "error"})).await["data"]["mode"],
        "error"
    );
    let (status, answer) = sim
        .send(
            sim.request(Method::POST, &format!("{DISK}/create"))
                .header("Finovy-Access-Token", &sim.token)
                .json(&json!({"area": 0, "memory": 20, "isMount": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(code(&answer), 500);
    assert_eq!(answer["success"], false);
    let (status, answer) = sim
        .send(
            sim.request(Method::POST, "/v1/auth/getToken")
                .json(&json!({"uuid": "demo-uuid", "secret": "demo-secret"})),
        )
        .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::INTERNAL_SERVER_ERROR, 500)
    );
    let stats = sim.stats().await;
    assert_eq!(stats["disks"], 0, "nothing was created");
    assert_eq!(stats["calls"]["create"], 1, "faulted calls are counted");
    assert_eq!(stats["calls"]["getToken"], 2);

    sim.fault(json!({"mode": "none"})).await;
    sim.create_ok(json!({"area": 0, "memory": 20, "isMount": 0}))
        .await;
}

#[tokio::test]
async fn fault_slow_holds_the_answer_back() {
    let sim = start(quick()).await;
    let latency = Duration::from_millis(700);
    let set = sim.fault(json!({"mode": "slow", "latency": "700ms"})).await;
    assert_eq!(set["data"], json!({"mode": "slow", "latency": "700ms"}));
    let started = Instant::now();
    let answer = sim.memory_total("0").await;
    assert!(started.elapsed() >= latency, "{:?}", started.elapsed());
    assert_eq!(code(&answer), 0, "answered normally: {answer}");

    // Control endpoints are never delayed.
    let started = Instant::now();
    sim.stats().await;
    assert!(started.elapsed() < latency);

    let set = sim.fault(json!({"mode": "slow"})).await;
    assert_eq!(set["data"]["latency"], "1s", "default latency");
}

#[tokio::test]
async fn fault_garbage_answers_something_that_is_not_json() {
    let sim = start(quick()).await;
    sim.fault(json!({"mode": "garbage"})).await;
    let response = sim
        .request(Method::GET, &format!("{DISK}/info/x"))
        .header("Finovy-Access-Token", &sim.token)
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.bytes().await.expect("body");
    assert!(!body.is_empty());
    assert!(serde_json::from_slice::<Value>(&body).is_err(), "{body:?}");
}

#[tokio::test]
async fn fault_reset_closes_the_connection_without_an_answer() {
    let sim = start(quick()).await;
    sim.fault(json!({"mode": "reset"})).await;
    for version_client in [client(), h2_client()] {
        let result = version_client
            .get(format!("{}{DISK}/info/x", sim.base))
            .header("Finovy-Access-Token", &sim.token)
            .send()
            .await;
        let err = result.expect_err("no HTTP answer at all");
        assert!(err.status().is_none(), "{err:?}");
    }
    let stats = sim.stats().await;
    assert_eq!(
        stats["calls"]["info"], 2,
        "the requests did reach the simulator"
    );

    sim.fault(json!({"mode": "none"})).await;
    assert_eq!(code(&sim.info("x").await), 220001, "back to normal");
}

#[tokio::test]
async fn bad_fault_requests_are_refused() {
    let sim = start(quick()).await;
    for body in [
        r#"{"mode": "explode"}"#,
        r#"{"latency": "1s"}"#,
        r#"{"mode": "slow", "latency": "soon"}"#,
        r#"{"mode": "slow", "latency": 5}"#,
        "not json",
        "[]",
    ] {
        let (status, answer) = sim
            .send(sim.request(Method::POST, "/_sim/fault").body(body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(code(&answer), 1007, "{body}");
    }
    assert_eq!(code(&sim.info("x").await), 220001, "no fault was set");
}

#[tokio::test]
async fn configured_latency_delays_api_answers_only() {
    let latency = Duration::from_millis(800);
    let sim = start(SimConfig { latency, ..quick() }).await;
    let started = Instant::now();
    sim.info("x").await;
    assert!(started.elapsed() >= latency);
    let started = Instant::now();
    sim.control(Method::GET, "/_sim/requests", None).await;
    assert!(started.elapsed() < latency);
}

#[tokio::test]
async fn reset_returns_to_the_start_but_keeps_tokens() {
    let sim = start(SimConfig {
        create_min_interval: FOREVER,
        ..quick()
    })
    .await;
    let body = json!({"area": 0, "memory": 20, "isMount": 0});
    sim.create_ok(body.clone()).await;
    assert_eq!(code(&sim.create(body.clone()).await), 220025);
    let deleted = sim
        .call(Method::DELETE, &format!("{HOST}/delete/{HOST_AREA0}"), None)
        .await;
    assert_eq!(deleted["data"], true);
    sim.get(&format!("{HOST}/operate/{HOST_RUNNING}?type=0"))
        .await;
    sim.fault(json!({"mode": "error"})).await;

    let (status, answer) = sim.control(Method::POST, "/_sim/reset", None).await;
    assert_eq!((status, code(&answer)), (StatusCode::OK, 0));

    let stats = sim.stats().await;
    assert_eq!(stats["total"], 0, "{stats}");
    assert_eq!(stats["tooFrequent"], 0);
    assert_eq!(stats["disks"], 0);
    assert_eq!(stats["hosts"], 6);
    let (_, log) = sim.control(Method::GET, "/_sim/requests", None).await;
    assert_eq!(log, json!([]));
    // No fault, the old token still valid, seeded hosts back as they were, create timer restarted.
    let one = sim.get(&format!("{HOST}/one/{HOST_AREA0}")).await;
    assert_eq!(code(&one), 0, "{one}");
    let running = sim.get(&format!("{HOST}/one/{HOST_RUNNING}")).await;
    assert_eq!(running["data"]["status"], 2);
    sim.create_ok(body).await;
}
