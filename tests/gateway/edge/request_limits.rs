//! Limits with clear answers (body size, concurrency, request timeout, a client that stalls) and
//! paths that try to leave the route table or reach another host.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// Sends `raw` over a fresh connection and returns the status code and body of the answer.
async fn raw(addr: &str, raw: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let (_, text) = until_closed(&mut s).await;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn path_escapes_never_reach_the_upstream() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    let before = sim.total().await;
    for target in [
        "/v1/PveMachineHardDisk/open/info/../../../v1/auth/getToken",
        "/v1/PveMachineHardDisk/open/info/..%2F..%2Fauth%2FgetToken",
        "/v1/PveMachineHardDisk/open/info/%2e%2e",
        "/v1/PveMachineHardDisk/open/./info/abc",
        "/v1/PveMachineHardDisk/open//info/abc",
        "//evil.example/v1/PveMachineHardDisk/open/info/abc",
        "/v1/PveMachineHardDisk/open/info/abc/..",
        "/v1/PveMachineHardDisk/open/info/a\\b",
        "http://evil.example/v1/auth/getToken",
        "*",
    ] {
        let (status, body) = raw(
            &gw.url,
            &format!("GET {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(status == 404 || status == 400, "{target}: {status} {body}");
        if status == 404 {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["code"], 404, "{target}");
        }
    }
    assert_eq!(sim.total().await, before, "nothing reached the simulator");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_absolute_form_target_goes_to_the_configured_upstream_only() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    let (status, body) = raw(
        &gw.url,
        "GET http://evil.example:81/v1/PveMachineHardDisk/open/memoryTotal/0 HTTP/1.1\r\nHost: evil.example:81\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = sim
        .requests()
        .await
        .pop()
        .expect("forwarded to the simulator");
    assert_eq!(seen["path"], "/v1/PveMachineHardDisk/open/memoryTotal/0");
    assert_eq!(seen["headers"]["host"], sim.addr.to_string().as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_body_is_413() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start("[server]\nmax_body_bytes = 1024\n", &sim.url, demo_env()).await;
    let before = sim.total().await;
    let big = format!(
        "{{\"area\":0,\"memory\":20,\"isMount\":0,\"pad\":\"{}\"}}",
        "x".repeat(4096)
    );
    let (status, _, v) = answer(
        http()
            .post(format!("{}{DISK}/create", gw.url))
            .header("content-type", "application/json")
            .body(big.clone()),
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(v["code"], 1007);
    // Without a Content-Length (chunked), the limit holds while reading.
    let mut chunked = String::new();
    for chunk in big.as_bytes().chunks(512) {
        chunked.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            String::from_utf8_lossy(chunk)
        ));
    }
    chunked.push_str("0\r\n\r\n");
    let (status, body) = raw(
        &gw.url,
        &format!(
            "POST {DISK}/create HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunked}"
        ),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(sim.total().await, before);
    assert_eq!(sim.stats().await["disks"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_concurrency_bound_answers_503_at_once() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start("[server]\nmax_concurrency = 2\n", &sim.url, demo_env()).await;
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    assert_eq!(http().get(&url).send().await.unwrap().status(), 200); // token held
    sim.fault("slow", "1500ms").await;
    let client = http();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let sent = std::time::Instant::now();
                let (status, _, v) = answer(client.get(url)).await;
                (status, v, sent.elapsed())
            })
        })
        .collect();
    let mut ok = 0;
    let mut shed = 0;
    for h in handles {
        match h.await.unwrap() {
            (200, _, took) => {
                assert!(took >= Duration::from_millis(1400), "{took:?}");
                ok += 1;
            }
            (503, v, took) => {
                assert_eq!(v["code"], 503);
                // Shed at once, not after waiting for a slot (the others take 1.5 s).
                assert!(took < Duration::from_millis(1000), "shed after {took:?}");
                shed += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ok, 2, "one per slot");
    assert_eq!(shed, 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_past_its_deadline_is_504() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        "[server]\nrequest_timeout = \"300ms\"\n",
        &sim.url,
        demo_env(),
    )
    .await;
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    assert_eq!(http().get(&url).send().await.unwrap().status(), 200);
    sim.fault("slow", "2s").await;
    let (status, _, v) = get(&url, &[]).await;
    assert_eq!(status, 504);
    assert_eq!(v["code"], 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_request_head_is_refused() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    let before = sim.total().await;
    let (status, _) = raw(
        &gw.url,
        &format!(
            "GET {DISK}/memoryTotal/0 HTTP/1.1\r\nHost: gw\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
            "p".repeat(64 * 1024)
        ),
    )
    .await;
    assert_eq!(status, 431);
    assert_eq!(sim.total().await, before);
}

/// Reads from `s` until the server closes the connection (a reset after an answer, for unread body
/// bytes, ends it too); how long that took, and what came.
async fn until_closed(s: &mut tokio::net::TcpStream) -> (Duration, String) {
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the server closes the connection within 10 s")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    (started.elapsed(), String::from_utf8_lossy(&out).to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stalls_mid_head_or_stays_idle_is_let_go() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start("[server]\nrequest_timeout = \"1s\"\n", &sim.url, demo_env()).await;
    let addr = gw.url.trim_start_matches("http://").to_string();
    let before = sim.total().await;

    // Half a request head, then nothing: the connection is closed once the timeout has passed.
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stalled
        .write_all(format!("GET {DISK}/memoryTotal/0 HTTP/1.1\r\nHost: gw\r\n").as_bytes())
        .await
        .unwrap();
    // An idle keep-alive connection after a whole exchange is let go the same way.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(format!("GET {DISK}/memoryTotal/0 HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (stalled, idle) = tokio::join!(until_closed(&mut stalled), until_closed(&mut idle));
    assert!(stalled.0 >= Duration::from_millis(900), "{stalled:?}");
    assert!(!stalled.1.contains("200 OK"), "{stalled:?}");
    assert!(idle.0 >= Duration::from_millis(900), "{idle:?}");
    assert!(idle.1.starts_with("HTTP/1.1 200 OK"), "{idle:?}");
    // Only the whole request went upstream, and the gateway still serves new connections.
    assert_eq!(sim.total().await, before + 1);
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    assert_eq!(http().get(&url).send().await.unwrap().status(), 200);
}
