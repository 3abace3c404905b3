//! Nobody unauthenticated holds capacity, and no one client holds all of it: keys are checked on
//! the request head, bodies must arrive in time, each client has its share of the slots,
//! connections are capped and let go when idle, and the admin listener keeps answering while the
//! data plane is saturated. Raw sockets where a well-behaved client would not send the bytes.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

const KEY_A: &str = "fgw_capacity_client_key_aaaaaaaa01";
const KEY_B: &str = "fgw_capacity_client_key_bbbbbbbb02";

fn clients() -> String {
    client_entry("a", KEY_A, "") + &client_entry("b", KEY_B, "")
}

async fn connect(url: &str) -> TcpStream {
    TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection; how long that took and what came.
async fn until_closed(s: &mut TcpStream, limit: Duration) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("the server closes the connection within {limit:?}"))
        {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    (started.elapsed(), out)
}

/// Reads one HTTP/1.1 answer (head, and a body of its Content-Length): status and body.
async fn read_answer(s: &mut TcpStream) -> (u16, String) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, body.to_string());
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("an answer within 20 s")
            .expect("read");
        assert!(n > 0, "closed before a whole answer: {text}");
        out.extend_from_slice(&buf[..n]);
    }
}

fn status_of(bytes: &[u8]) -> u16 {
    String::from_utf8_lossy(bytes)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn body_of(bytes: &[u8]) -> Value {
    let text = String::from_utf8_lossy(bytes).to_string();
    let body = text.split_once("\r\n\r\n").expect("a head").1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A create's head with a body announced and not sent (`key`: the client's, or none).
fn stalled_create(key: Option<&str>) -> String {
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    format!(
        "POST {DISK}/create HTTP/1.1\r\nHost: gw\r\n{auth}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"area\":"
    )
}

/// Buys a disk as client A; its `info` path.
async fn disk_info_path(gw: &Gw) -> String {
    let (status, created) = send_json(
        http()
            .post(format!("{}{DISK}/create", gw.url))
            .bearer_auth(KEY_A)
            .json(&serde_json::json!({"area": 0, "memory": 20, "isMount": 0})),
    )
    .await;
    assert_eq!((status, &created["code"]), (200, &serde_json::json!(0)));
    format!("{DISK}/info/{}", created["data"].as_str().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn keyless_stalled_bodies_hold_no_slot_and_are_answered_at_once() {
    let sim = Sim::start(sim_config()).await;
    let toml = format!(
        "[server]\nmax_concurrency = 8\nbody_timeout = \"60s\"\nrequest_timeout = \"60s\"\n{}",
        clients()
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let info = format!("{}{}", gw.url, disk_info_path(&gw).await);
    let before = sim.total().await;

    // Ten key-less creates: the head, then a body that stalls.
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut s = connect(&gw.url).await;
        s.write_all(stalled_create(None).as_bytes()).await.unwrap();
        stalled.push(s);
    }
    // A keyed miss is still served while they hang on.
    let (status, body) = send_json(http().get(&info).bearer_auth(KEY_A)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"], 0, "{body}");

    // Each was refused with 401 at once (not after the body timeout) and its connection closed.
    for mut s in stalled {
        let (took, bytes) = until_closed(&mut s, Duration::from_secs(10)).await;
        assert_eq!(
            status_of(&bytes),
            401,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(body_of(&bytes)["code"], 401);
        assert!(took < Duration::from_secs(10), "{took:?}");
    }
    // Only the keyed miss reached the upstream.
    assert_eq!(sim.total().await, before + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_does_not_arrive_is_408_and_gives_its_slot_back() {
    let sim = Sim::start(sim_config()).await;
    let toml = format!(
        "[server]\nbody_timeout = \"3s\"\nmax_concurrency = 1\nmax_inflight_per_client = 1\n{}",
        clients()
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let total = format!("{}{DISK}/memoryTotal/0", gw.url);
    let before = sim.total().await;

    let mut s = connect(&gw.url).await;
    let started = Instant::now();
    s.write_all(stalled_create(Some(KEY_A)).as_bytes())
        .await
        .unwrap();
    // While A's body stalls, the only concurrency slot is free: B is served.
    gw.wait_inflight(1).await;
    let (status, body) = send_json(http().get(&total).bearer_auth(KEY_B)).await;
    assert_eq!(status, 200, "{body}");
    // (Within the body timeout, or the slot would have been freed by the 408 anyway.)
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "too slow to tell"
    );
    let (_, bytes) = until_closed(&mut s, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert_eq!(
        status_of(&bytes),
        408,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let v = body_of(&bytes);
    assert_eq!(
        (v["code"].as_i64(), v["success"].as_bool()),
        (Some(1007), Some(false))
    );
    assert!(v["data"].is_null() && v["traceId"].is_string(), "{v}");
    assert!(took >= Duration::from_millis(2900), "{took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");

    // The client's only in-flight place is free again: its next request is served.
    let (status, body) = send_json(http().get(&total).bearer_auth(KEY_A)).await;
    assert_eq!(status, 200, "{body}");
    // The stalled create never reached the upstream; the GETs did.
    assert_eq!(sim.calls("create").await, 0);
    assert_eq!(sim.total().await, before + 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_client_cannot_take_every_slot() {
    let sim = Sim::start(sim_config()).await;
    let toml = format!(
        "[server]\nmax_concurrency = 8\nmax_inflight_per_client = 2\n{}",
        clients()
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    let (status, _) = send_json(http().get(&url).bearer_auth(KEY_A)).await; // token held
    assert_eq!(status, 200);
    sim.fault("slow", "2s").await;

    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { send_json(http().get(url).bearer_auth(KEY_A)).await.0 })
        })
        .collect();
    gw.wait_inflight(2).await;
    // A's third is refused at once, with Retry-After, in the envelope...
    let started = Instant::now();
    let (status, h, v) = answer(http().get(&url).bearer_auth(KEY_A)).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(status, 503);
    assert_eq!(h["retry-after"], "1");
    assert_eq!(v["code"], 503, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("in flight"), "{v}");
    // ...while B, another client, is still served.
    let (status, body) = send_json(http().get(&url).bearer_auth(KEY_B)).await;
    assert_eq!(status, 200, "{body}");
    for h in slow {
        assert_eq!(h.await.unwrap(), 200);
    }
    // Once A's requests are done, A is served again.
    sim.fault("none", "0s").await;
    let (status, _) = send_json(http().get(&url).bearer_auth(KEY_A)).await;
    assert_eq!(status, 200);
}

/// One kept-alive HTTP/1.1 connection to `url`, served once (so surely accepted), then idle.
async fn served_once(url: &str) -> TcpStream {
    let mut s = connect(url).await;
    s.write_all(format!("GET {DISK}/memoryTotal/0 HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_answer(&mut s).await.0, 200);
    s
}

/// The gateway's count of connections it closed on `listener` for `reason`.
async fn closed(gw: &Gw, listener: &str, reason: &str) -> f64 {
    gw.metric(
        "finovy_gateway_connections_closed_total",
        &[("listener", listener), ("reason", reason)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn at_max_connections_a_new_connection_takes_the_longest_idle_ones_place() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        "[server]\nmax_connections = 2\nidle_timeout = \"60s\"\nrequest_timeout = \"60s\"\n",
        &sim.url,
        demo_env(),
    )
    .await;
    let request = format!("GET {DISK}/memoryTotal/0 HTTP/1.1\r\nHost: gw\r\n\r\n").into_bytes();
    // Every place taken by a kept-alive connection with nothing in flight.
    let mut first = served_once(&gw.url).await;
    let mut second = served_once(&gw.url).await;
    // A third is served at once (not after the idle timeout), in the place of the first.
    let started = Instant::now();
    let mut third = connect(&gw.url).await;
    third.write_all(&request).await.unwrap();
    assert_eq!(read_answer(&mut third).await.0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let (_, bytes) = until_closed(&mut first, Duration::from_secs(5)).await;
    assert!(bytes.is_empty(), "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(closed(&gw, "data", "idle_at_cap").await, 1.0);

    // A connection with a request in flight keeps its place: with both busy, a fourth waits...
    sim.fault("slow", "1500ms").await;
    for s in [&mut second, &mut third] {
        s.write_all(&request).await.unwrap();
    }
    gw.wait_inflight(2).await;
    let mut fourth = connect(&gw.url).await;
    fourth.write_all(&request).await.unwrap();
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), fourth.read(&mut buf))
            .await
            .is_err(),
        "a fourth connection was served while both were busy"
    );
    // ...both busy ones are answered, and then the fourth takes the place of one.
    assert_eq!(read_answer(&mut second).await.0, 200);
    assert_eq!(read_answer(&mut third).await.0, 200);
    assert_eq!(read_answer(&mut fourth).await.0, 200);
    // The first metrics read above took an admin place, not a data one; the fourth took one.
    assert_eq!(closed(&gw, "data", "idle_at_cap").await, 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_answers_beside_more_idle_admin_sockets_than_its_cap() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start("", &sim.url, demo_env()).await;
    // Twice the admin cap (64) of sockets that connect and never send a byte.
    let mut silent = Vec::new();
    for _ in 0..128 {
        silent.push(connect(&gw.admin_url).await);
    }
    let started = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        http().get(format!("{}/healthz", gw.admin_url)).send(),
    )
    .await
    .expect("/healthz answers beside idle sockets")
    .unwrap();
    assert_eq!(resp.status(), 200);
    eprintln!(
        "/healthz beside 128 idle admin sockets: {:?}",
        started.elapsed()
    );
    // Each socket past the cap, and the probe, took the place of an idle one (or of one that
    // the handshake timeout closed first, on a slow machine).
    let text = gw.metrics().await;
    let closed = |reason| {
        metric(
            &text,
            "finovy_gateway_connections_closed_total",
            &[("listener", "admin"), ("reason", reason)],
        )
    };
    let evicted = closed("idle_at_cap");
    assert!(evicted + closed("handshake_timeout") >= 65.0, "{evicted}");
    assert!(evicted >= 1.0, "{evicted}");
    // Known label values are exported from the start.
    for reason in ["idle_at_cap", "handshake_timeout", "per_ip_cap"] {
        assert_eq!(
            metric_opt(
                &text,
                "finovy_gateway_connections_closed_total",
                &[("listener", "data"), ("reason", reason)]
            ),
            Some(0.0),
            "{reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_cannot_take_every_connection() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        "[server]\nmax_connections_per_ip = 3\nidle_timeout = \"60s\"\n",
        &sim.url,
        demo_env(),
    )
    .await;
    let (mut first, mut second, mut third) = (
        served_once(&gw.url).await,
        served_once(&gw.url).await,
        served_once(&gw.url).await,
    );
    // A fourth from the same address, with its three idle, takes the place of its own
    // longest-idle one (a client's pool that grew in a burst keeps working)...
    let mut fourth = served_once(&gw.url).await;
    let (_, bytes) = until_closed(&mut first, Duration::from_secs(5)).await;
    assert!(bytes.is_empty(), "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(closed(&gw, "data", "per_ip_cap").await, 1.0);
    // ...but while each of its connections has a request in flight, a new one is closed
    // unanswered.
    sim.fault("slow", "3s").await;
    let req = format!("GET {DISK}/memoryTotal/0 HTTP/1.1\r\nHost: gw\r\n\r\n");
    for s in [&mut second, &mut third, &mut fourth] {
        s.write_all(req.as_bytes()).await.unwrap();
    }
    gw.wait_inflight(3).await;
    let mut fifth = connect(&gw.url).await;
    let _ = fifth.write_all(req.as_bytes()).await;
    let (_, bytes) = until_closed(&mut fifth, Duration::from_secs(5)).await;
    assert!(bytes.is_empty(), "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(closed(&gw, "data", "per_ip_cap").await, 2.0);
    // ...while another address (loopback's 127.0.0.2) is served.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let addr = gw.url.trim_start_matches("http://").parse().unwrap();
    let mut other = socket.connect(addr).await.unwrap();
    other.write_all(req.as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut other).await.0, 200);
    // The busy ones finish what they were doing.
    for s in [&mut second, &mut third, &mut fourth] {
        assert_eq!(read_answer(s).await.0, 200);
    }
}

/// The client connection preface of h2 (prior knowledge) and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// The frames in `bytes`: (type, payload).
fn h2_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        if bytes.len() < 9 + len {
            break;
        }
        out.push((bytes[3], bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_let_go_over_http1_and_h2() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        "[server]\nidle_timeout = \"600ms\"\nrequest_timeout = \"60s\"\n",
        &sim.url,
        demo_env(),
    )
    .await;
    // HTTP/1.1: one whole exchange, then nothing.
    let mut h1 = connect(&gw.url).await;
    h1.write_all(format!("GET {DISK}/memoryTotal/0 HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // A connection that never sends a byte.
    let mut silent = connect(&gw.url).await;
    // h2 with prior knowledge: the preface, then nothing.
    let mut h2 = connect(&gw.url).await;
    h2.write_all(H2_PREFACE).await.unwrap();

    let limit = Duration::from_secs(15);
    let (h1, silent, h2) = tokio::join!(
        until_closed(&mut h1, limit),
        until_closed(&mut silent, limit),
        until_closed(&mut h2, limit)
    );
    assert!(String::from_utf8_lossy(&h1.1).starts_with("HTTP/1.1 200 OK"));
    for (what, took) in [("h1", h1.0), ("silent", silent.0), ("h2", h2.0)] {
        assert!(took >= Duration::from_millis(500), "{what}: {took:?}");
    }
    // h2 says goodbye with a GOAWAY frame.
    assert!(
        h2_frames(&h2.1).iter().any(|(t, _)| *t == 0x7),
        "{:?}",
        h2_frames(&h2.1)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn h2_announces_its_stream_and_header_limits() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        "[server]\nh2_max_concurrent_streams = 7\nmax_header_bytes = 9000\n",
        &sim.url,
        demo_env(),
    )
    .await;
    let mut s = connect(&gw.url).await;
    s.write_all(H2_PREFACE).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let settings = loop {
        if let Some((_, p)) = h2_frames(&got).into_iter().find(|(t, _)| *t == 0x4) {
            break p;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the server's SETTINGS")
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    };
    let param = |id: u16| {
        settings.chunks(6).find_map(|c| {
            (u16::from_be_bytes([c[0], c[1]]) == id)
                .then(|| u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
        })
    };
    assert_eq!(param(0x3), Some(7), "SETTINGS_MAX_CONCURRENT_STREAMS");
    assert_eq!(param(0x6), Some(9000), "SETTINGS_MAX_HEADER_LIST_SIZE");
}

#[tokio::test(flavor = "multi_thread")]
async fn both_listeners_ping_idle_h2_peers() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        "[server]\nh2_keep_alive_interval = \"300ms\"\nidle_timeout = \"60s\"\n",
        &sim.url,
        demo_env(),
    )
    .await;
    for (name, url) in [("data", &gw.url), ("admin", &gw.admin_url)] {
        let mut s = connect(url).await;
        s.write_all(H2_PREFACE).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        // A PING that is not an acknowledgement (flags 0), well before the handshake timeout.
        let pinged = |got: &[u8]| {
            let mut rest = got;
            while rest.len() >= 9 {
                let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
                if rest.len() < 9 + len {
                    break;
                }
                if rest[3] == 0x6 && rest[4] & 1 == 0 {
                    return true;
                }
                rest = &rest[9 + len..];
            }
            false
        };
        while !pinged(&got) {
            let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{name}: no PING within 3 s: {:?}", h2_frames(&got)))
                .unwrap();
            assert!(n > 0, "{name}: closed before a PING");
            got.extend_from_slice(&buf[..n]);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_lets_stalled_and_idle_clients_go() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        "[server]\nrequest_timeout = \"800ms\"\nidle_timeout = \"60s\"\n",
        &sim.url,
        demo_env(),
    )
    .await;
    // Half a head, then nothing; and a kept-alive connection after one exchange.
    let mut stalled = connect(&gw.admin_url).await;
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n")
        .await
        .unwrap();
    let mut idle = connect(&gw.admin_url).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await
        .unwrap();
    let limit = Duration::from_secs(15);
    let (stalled, idle) = tokio::join!(
        until_closed(&mut stalled, limit),
        until_closed(&mut idle, limit)
    );
    assert!(stalled.0 >= Duration::from_millis(700), "{stalled:?}");
    assert!(!String::from_utf8_lossy(&stalled.1).contains("200 OK"));
    assert!(idle.0 >= Duration::from_millis(700), "{idle:?}");
    assert!(String::from_utf8_lossy(&idle.1).starts_with("HTTP/1.1 200 OK"));

    // The admin idle timeout on its own: a connection that never sends a byte.
    let gw = Gw::start(
        "[server]\nidle_timeout = \"600ms\"\nrequest_timeout = \"60s\"\n",
        &sim.url,
        demo_env(),
    )
    .await;
    let mut silent = connect(&gw.admin_url).await;
    let (took, _) = until_closed(&mut silent, limit).await;
    assert!(took >= Duration::from_millis(500), "{took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_answers_while_the_data_plane_is_saturated() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        "[server]\nmax_concurrency = 2\nmax_connections = 2\n",
        &sim.url,
        demo_env(),
    )
    .await;
    // The token fetched, over a connection that closes after it (the cap counts connections).
    let mut warm = connect(&gw.url).await;
    warm.write_all(
        format!("GET {DISK}/memoryTotal/0 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let (_, bytes) = until_closed(&mut warm, Duration::from_secs(10)).await;
    assert_eq!(status_of(&bytes), 200);
    sim.fault("slow", "3s").await;
    // Two connections with a slow upstream call each: every slot and every connection taken.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut s = connect(&gw.url).await;
        s.write_all(format!("GET {DISK}/memoryTotal/0 HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
            .await
            .unwrap();
        busy.push(s);
    }
    gw.wait_inflight(2).await;
    let started = Instant::now();
    let resp = http()
        .get(format!("{}/healthz", gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    for s in &mut busy {
        assert_eq!(read_answer(s).await.0, 200);
    }
}
