//! The upstream is trusted no further than needed: an answer past `max_answer_bytes` is refused
//! while it is read (for a create, an unknown outcome), a token that comes back already expired
//! cannot make the gateway call `getToken` in a loop, a refused `getToken`'s message stays in the
//! log, a client name cannot forge access lines, and an upstream `Retry-After` says at most
//! `max_wait`.

use std::time::{Duration, Instant};

use finovy_gateway::sim::SimConfig;
use serde_json::{Value, json};

use crate::harness::redis::RedisServer;
use crate::harness::*;

/// Sets a simulator fault with the given fields.
async fn fault(sim: &Sim, body: Value) {
    let r = http()
        .post(format!("{}/_sim/fault", sim.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "fault {body}");
}

/// The peak resident memory of process `pid` so far, in bytes (Linux).
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// The start of a body, for failure messages (a refused answer could otherwise be 256 MiB).
fn head(v: &Value) -> String {
    v.to_string().chars().take(300).collect()
}

fn assert_envelope(v: &Value, code: i64) {
    assert_eq!(v["code"].as_i64(), Some(code), "{}", head(v));
    assert_eq!(v["success"], json!(false), "{}", head(v));
    assert!(
        v["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        head(v)
    );
    assert!(v["data"].is_null(), "{}", head(v));
    assert!(
        v["traceId"].as_str().is_some_and(|t| !t.is_empty()),
        "{}",
        head(v)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_over_the_cap_is_refused_while_it_is_read() {
    let sim = Sim::start(sim_config()).await;
    // The real binary, so that its memory is its own (this test process runs other tests too).
    let gw = Bin::serve(
        "[upstream]\nmax_answer_bytes = 65536\n",
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    let (status, v) = send_json(http().get(&url)).await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    let pid = gw.child.id();
    let peak_before = peak_rss_bytes(pid);
    // 256 MiB, chunked: only reading tells how large it is.
    fault(&sim, json!({"mode": "huge", "size": 256u64 << 20})).await;
    let started = Instant::now();
    let (status, v) = send_json(http().get(&url)).await;
    let took = started.elapsed();
    let grown = peak_rss_bytes(pid).saturating_sub(peak_before);
    eprintln!(
        "chunked 256 MiB answer refused in {took:?}; the gateway's peak memory grew {grown} bytes"
    );
    assert!(
        grown < 16 << 20,
        "the answer was not buffered: peak memory grew by {grown} bytes"
    );
    assert_eq!(status, 502, "{}", head(&v));
    assert_envelope(&v, 503);
    // Announced by Content-Length: refused before reading any of it.
    fault(
        &sim,
        json!({"mode": "huge", "size": 256u64 << 20, "announce": true}),
    )
    .await;
    let (status, v) = send_json(http().get(&url)).await;
    assert_eq!(status, 502, "{}", head(&v));
    assert_envelope(&v, 503);
    // An answer within the cap is unaffected.
    fault(&sim, json!({"mode": "huge", "size": 60_000})).await;
    let (status, v) = send_json(http().get(&url)).await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)));
    fault(&sim, json!({"mode": "none"})).await;
    let metrics = get_text(&format!("{}/metrics", gw.admin_url)).await;
    assert!(
        metrics.contains(
            "finovy_gateway_upstream_requests_total{outcome=\"too_large\",route=\"disk.memory_total\"} 2"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_over_large_create_answer_is_an_unknown_outcome_and_reconciled() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        "[upstream]\nmax_answer_bytes = 4096\n",
        &sim.url,
        demo_env(),
    )
    .await;
    let key = fresh_key();
    let body = json!({"area": 0, "memory": 20, "isMount": 0});
    let create = || {
        http()
            .post(format!("{}{DISK}/create", gw.url))
            .header("Idempotency-Key", &key)
            .json(&body)
    };
    // The simulator buys the disk, then answers 1 MiB.
    fault(&sim, json!({"mode": "huge", "size": 1 << 20})).await;
    let (status, v) = send_json(create()).await;
    assert_eq!(status, 504, "the purchase may exist: {}", head(&v));
    assert_envelope(&v, 1005);
    assert_eq!(sim.stats().await["disks"], 1, "the upstream did buy it");
    fault(&sim, json!({"mode": "none"})).await;
    // The retry finds that purchase instead of buying another.
    let (status, v) = send_json(create()).await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    assert!(v["data"].as_str().is_some_and(|id| !id.is_empty()), "{v}");
    assert_eq!(sim.calls("create").await, 1, "one purchase");
    assert_eq!(sim.stats().await["disks"], 1);
}

/// Requests (and readiness checks) for `window` against a simulator whose tokens are born
/// expired; every answer must come promptly. The number of `getToken` calls, and how long the
/// traffic really ran (a slow last pass can run past `window`).
async fn traffic_with_expired_tokens(sim: &Sim, gws: &[&Gw], window: Duration) -> (u64, Duration) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < window {
        for gw in gws {
            let sent = Instant::now();
            let (status, v) =
                send_json(client.get(format!("{}{DISK}/memoryTotal/0", gw.url))).await;
            // The upstream's own 401 (after the one retry), or the gateway's 503: never a hang.
            assert!(
                (status == 503 && v["code"] == 503) || v["code"] == 401,
                "request {n}: {status} {v}"
            );
            assert!(sent.elapsed() < Duration::from_secs(3), "request {n} hung");
            let ready = client
                .get(format!("{}/readyz", gw.admin_url))
                .send()
                .await
                .expect("readyz answers in time");
            // Either answer is right here (a clamped token reads as held until the upstream
            // rejects it): what counts is that readiness answers at once, never loops.
            assert!(ready.status() == 200 || ready.status() == 503);
            n += 1;
        }
    }
    let (calls, ran) = (sim.calls("getToken").await, started.elapsed());
    eprintln!("{calls} getToken calls over {ran:?} and {n} requests");
    (calls, ran)
}

const EXPIRED_TOKENS: &str = "[token]\nmin_refresh_interval = \"1s\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn tokens_born_expired_cannot_make_the_gateway_loop() {
    let sim = Sim::start(SimConfig {
        token_ttl: Duration::ZERO,
        ..sim_config()
    })
    .await;
    let gw = Gw::start(EXPIRED_TOKENS, &sim.url, demo_env()).await;
    let (calls, ran) = traffic_with_expired_tokens(&sim, &[&gw], Duration::from_secs(4)).await;
    // One at start, then at most one per second it ran (and one of slack for the edges).
    assert!(
        calls <= 2 + ran.as_secs(),
        "{calls} getToken calls in {ran:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleet_calls_get_token_once_per_interval() {
    let sim = Sim::start(SimConfig {
        token_ttl: Duration::ZERO,
        ..sim_config()
    })
    .await;
    let redis = RedisServer::start();
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-gate:\"\ntimeout = \"1s\"\n{EXPIRED_TOKENS}",
        redis.url()
    );
    let [a, b, c] = replicas::<3>(&toml, &sim.url, demo_env()).await;
    let (calls, ran) =
        traffic_with_expired_tokens(&sim, &[&a, &b, &c], Duration::from_secs(4)).await;
    // As for one replica: three on their own would make up to three times as many.
    assert!(
        calls <= 2 + ran.as_secs(),
        "{calls} getToken calls in {ran:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_get_token_message_goes_to_the_log_not_to_clients() {
    const SECRET: &str = "not-the-secret-5e884898da";
    // The simulator's words for wrong credentials.
    const UPSTREAM_MSG: &str = "wrong uuid or secret";
    let sim = Sim::start(sim_config()).await;
    let gw = Bin::serve(
        "[token]\nretry_min = \"50ms\"\nretry_max = \"100ms\"\nmin_refresh_interval = \"0s\"\n",
        &sim.url,
        &[("FINOVY_UUID", "demo-uuid"), ("FINOVY_SECRET", SECRET)],
    );
    let (status, v) = send_json(http().get(format!("{}{DISK}/memoryTotal/0", gw.url))).await;
    assert_eq!(status, 503, "{v}");
    assert_envelope(&v, 503);
    let msg = v["msg"].as_str().unwrap();
    assert!(
        !msg.contains(UPSTREAM_MSG),
        "the upstream's msg reached a client: {v}"
    );
    assert!(
        msg.contains("code 401"),
        "the code is the client's business: {v}"
    );
    let ready = get_text(&format!("{}/readyz", gw.admin_url)).await;
    assert!(ready.contains("\"ready\":false"), "{ready}");
    assert!(!ready.contains(UPSTREAM_MSG), "{ready}");
    let log = gw.wait_for_log(UPSTREAM_MSG, 1).await;
    assert!(!log.contains(SECRET), "the secret reached the log:\n{log}");
}

/// A client name is letters, digits, `.`, `_` and `-` only, so none can forge an access line (or a
/// record key): one holding a line break, a quote and a fake field stops `serve` before it
/// listens, and the error shows the name escaped on one line.
#[test]
fn a_client_name_that_could_forge_an_access_line_is_refused_at_start() {
    const KEY: &str = "fgw_client_key_forger_000000001";
    let toml = client_entry(
        "svc\\\" status=200 forged=\\\"yes\\n2026-01-01T00:00:00.000000Z  INFO finovy_gateway::access: request forged=1",
        KEY,
        "",
    );
    let out = crate::harness::binary()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(crate::harness::temp_file("forger.toml", &toml))
        .env("FINOVY_UUID", "demo-uuid")
        .env("FINOVY_SECRET", "demo-secret")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served with a forging name:\n{err}");
    assert!(err.contains("clients[0].name"), "{err}");
    assert!(!err.lines().any(|l| l.starts_with("2026-01-01")), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_retry_after_says_at_most_max_wait() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        "[create.routes.\"disk.create\"]\nrate = \"1000/1s\"\nburst = 1000\nmax_wait = \"2s\"\n",
        &sim.url,
        demo_env(),
    )
    .await;
    // The upstream refuses (nothing done) and asks for a day's pause.
    fault(&sim, json!({"mode": "too_frequent", "retry_after": "24h"})).await;
    let started = Instant::now();
    let (status, h, v) = answer(
        http()
            .post(format!("{}{DISK}/create", gw.url))
            .json(&json!({"area": 0, "memory": 20, "isMount": 0})),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, 429);
    let retry_after: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert_envelope(&v, 220025);
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    // A pause past max_wait is not waited for, nor retried against.
    assert_eq!(sim.calls("create").await, 1);
    assert!(took < Duration::from_secs(2), "answered in {took:?}");
}
