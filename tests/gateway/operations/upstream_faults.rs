//! An upstream that fails: every failure becomes an envelope with the right status, and the
//! gateway recovers when the upstream does.

use serde_json::Value;

use crate::harness::*;

/// `GET url`: status and body; a gateway error's `traceId` is checked to be the request id.
async fn traced(url: &str) -> (u16, Value) {
    let (status, h, v) = get(url, &[]).await;
    if status >= 502 {
        assert_eq!(
            v["traceId"],
            h["x-request-id"].to_str().unwrap(),
            "gateway errors carry the request id"
        );
    }
    (status, v)
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failures_map_to_502_and_504() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start("[upstream]\ntimeout = \"400ms\"\n", &sim.url, demo_env()).await;
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    assert_eq!(traced(&url).await.1["code"], 0);

    for (mode, status, code) in [
        ("reset", 502, 503),
        ("garbage", 502, 503),
        ("slow", 504, 503),
        ("error", 500, 500),
    ] {
        sim.fault(mode, "2s").await;
        let (got, body) = traced(&url).await;
        assert_eq!(
            (got, body["code"].as_i64()),
            (status, Some(code)),
            "{mode}: {body}"
        );
    }
    sim.fault("none", "0s").await;
    assert_eq!(
        traced(&url).await.1["code"],
        0,
        "recovers with the upstream"
    );

    // Each call counted once under its outcome: the first and the last were fine.
    let metrics = gw.metrics().await;
    for (outcome, n) in [
        ("ok", 2),
        ("error", 1),
        ("invalid", 1),
        ("timeout", 1),
        ("server_error", 1),
    ] {
        let line = format!(
            "finovy_gateway_upstream_requests_total{{outcome=\"{outcome}\",route=\"disk.memory_total\"}} {n}\n"
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_upstream_is_502() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token_env = vec![("FINOVY_TOKEN", "fixed".to_string())];
    let gw = Gw::start("", &format!("http://127.0.0.1:{port}"), token_env).await;
    let (status, body) = traced(&format!("{}{DISK}/memoryTotal/0", gw.url)).await;
    assert_eq!((status, body["code"].as_i64()), (502, Some(503)), "{body}");
}
