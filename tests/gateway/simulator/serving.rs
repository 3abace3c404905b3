//! The simulator as a server: 404 for unknown paths and methods, an answer for odd input, h2c on
//! the same port, and `run` returning once its shutdown resolves.

use std::net::SocketAddr;

use finovy_gateway::sim::Simulator;
use finovy_gateway::sim::seed::HOST_AREA0;
use reqwest::{Method, StatusCode, Version};
use serde_json::{Value, json};

use super::client::*;

#[tokio::test]
async fn unknown_paths_and_methods_get_404() {
    let sim = start(quick()).await;
    for (method, path) in [
        (Method::GET, "/"),
        (Method::GET, "/v1/auth/getToken"),
        (Method::GET, "/v1/PveMachineHardDisk/open/create"),
        (Method::GET, "/v1/PveMachineHardDisk/open/info/"),
        (Method::GET, "/v1/PveMachineHardDisk/open/info/a/b"),
        (Method::POST, "/v1/pve/open/one/x"),
        (Method::GET, "/_sim/nothing"),
        (Method::POST, "/_sim/stats"),
    ] {
        let (status, answer) = sim
            .send(
                sim.request(method.clone(), path)
                    .header("Finovy-Access-Token", &sim.token),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(code(&answer), 404);
        assert_eq!(answer["success"], false);
    }
}

#[tokio::test]
async fn odd_input_gets_an_answer_never_a_crash() {
    let sim = start(quick()).await;
    let token = sim.token.clone();
    let bodies: [&[u8]; 7] = [
        b"\xff\xfe\x00garbage",
        b"null",
        b"12345678901234567890123456789012345678901234567890",
        br#"{"id": [], "pveId": {}, "status": 1e400, "page": -9223372036854775808, "pageSize": 1e30}"#,
        br#"{"id": "x", "pveId": "y", "status": "-0", "page": "99999999999999999999", "area": true}"#,
        br#"{"area": 0, "memory": -9223372036854775808, "isMount": 0}"#,
        &[b'['; 10_000],
    ];
    let routes = [
        (Method::POST, "/v1/auth/getToken".to_owned()),
        (Method::POST, format!("{DISK}/create")),
        (Method::POST, format!("{DISK}/getList")),
        (Method::POST, format!("{DISK}/pveCreate")),
        (Method::PUT, format!("{DISK}/updateStatus")),
        (Method::POST, format!("{HOST}/createquantity")),
        (Method::POST, format!("{HOST}/createRent")),
        (
            Method::GET,
            format!("{HOST}/mypage?page=99999999999999999999&pageSize=-1"),
        ),
        (
            Method::GET,
            format!("{HOST}/mypage?page=9223372036854775807&pageSize=25"),
        ),
        (Method::GET, format!("{HOST}/operate/{HOST_AREA0}?type")),
        (Method::GET, format!("{DISK}/memoryTotal/%FF")),
        (Method::GET, format!("{DISK}/info/%00%FF")),
    ];
    for (method, path) in &routes {
        for body in bodies {
            let (status, answer) = sim
                .send(
                    sim.request(method.clone(), path)
                        .header("Finovy-Access-Token", &token)
                        .body(body.to_vec()),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{method} {path}");
            assert!(answer["code"].is_i64(), "{answer}");
        }
    }
    let bad_header = sim
        .send(sim.request(Method::GET, &format!("{DISK}/info/x")).header(
            "Finovy-Access-Token",
            reqwest::header::HeaderValue::from_bytes(b"\xfftoken").unwrap(),
        ))
        .await;
    assert_eq!(code(&bad_header.1), 401);
    let (status, answer) = sim
        .send(
            sim.request(Method::POST, &format!("{DISK}/create"))
                .header("Finovy-Access-Token", &token)
                .body(vec![b' '; 2 * 1024 * 1024]),
        )
        .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::PAYLOAD_TOO_LARGE, 1007)
    );
    // Still serving.
    assert_eq!(code(&sim.memory_total("0").await), 0);
}

#[tokio::test]
async fn h2c_is_served_on_the_same_port() {
    let mut sim = start(quick()).await;
    sim.client = h2_client();
    sim.token = sim.new_token().await;
    let response = sim
        .request(Method::GET, &format!("{DISK}/memoryTotal/1"))
        .header("Finovy-Access-Token", &sim.token)
        .send()
        .await
        .expect("h2 answer");
    assert_eq!(response.version(), Version::HTTP_2);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(code(&answer), 0, "{answer}");
    let id = sim
        .create_ok(json!({"area": 1, "memory": 20, "isMount": 0}))
        .await;
    assert_eq!(sim.info(&id).await["data"]["status"], "0");
}

#[tokio::test]
async fn run_returns_once_shutdown_resolves() {
    let sim = Simulator::bind(SocketAddr::from(([127, 0, 0, 1], 0)), quick())
        .await
        .expect("bind");
    let addr = sim.local_addr();
    assert_ne!(addr.port(), 0);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(sim.run(async {
        let _ = stopped.await;
    }));
    let client = client();
    let url = format!("http://{addr}/_sim/stats");
    assert!(
        client
            .get(&url)
            .send()
            .await
            .expect("served")
            .status()
            .is_success()
    );
    stop.send(()).expect("still running");
    tokio::time::timeout(DEADLINE, running)
        .await
        .expect("run returned")
        .expect("no panic")
        .expect("no error");
    assert!(client.get(&url).send().await.is_err(), "no longer serving");
}
