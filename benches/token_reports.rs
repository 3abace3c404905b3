//! What token reports cost everyone else: a client with `token_lease = true` leases the token and
//! reports it refused (`POST /_gateway/token/rejected`) once per 5 s on each replica, the reports
//! of two replicas `FGW_BENCH_STAGGER_MS` apart (default 2500), while another client sends `GET memoryTotal/0` (not
//! cached) to every replica without pause. Prints, per replica, the share of that client's
//! requests the gateway refused, for two replicas on one Redis and for a single replica. The
//! simulator takes every token it issued, so each refusal is the gateway's own doing.
//!
//! Run with: `cargo bench --bench token_reports` (`FGW_BENCH_SECS`, default 30; it needs
//! `redis-server`). The gateway's token settings are the defaults (`min_refresh_interval = 5s`).

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

#[allow(dead_code)] // the helpers other benches use
mod common;

use common::{Proc, start};

const REPORTER: &str = "bench-key-of-the-reporter-000000";
const USER: &str = "bench-key-of-the-user-0000000000";
const PERIOD: Duration = Duration::from_secs(5);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn client(name: &str, key: &str, extra: &str) -> String {
    format!(
        "[[clients]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\n{extra}\n",
        hex::encode(Sha256::digest(key.as_bytes()))
    )
}

/// A replica with `redis` (shared mode) or on its own.
fn replica(upstream: &str, redis: Option<&str>, n: usize) -> (Proc, String) {
    let mut toml = client("reporter", REPORTER, "token_lease = true") + &client("user", USER, "");
    if let Some(url) = redis {
        toml = format!("[redis]\nurl = \"{url}\"\nprefix = \"bench:\"\n{toml}");
    }
    let path =
        std::env::temp_dir().join(format!("fgw-token-reports-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_finovy-gateway"));
    cmd.args(["serve", "--config"]).arg(&path).args([
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--upstream",
        upstream,
    ]);
    let (p, addr) = start(cmd, "gateway listening", None);
    (p, format!("http://{addr}"))
}

/// Leases from `gw` and reports the leased token there, every [`PERIOD`] from `offset`.
async fn reporter(http: reqwest::Client, gw: String, offset: Duration, stop: Arc<AtomicBool>) {
    tokio::time::sleep(offset).await;
    let mut tick = tokio::time::interval(PERIOD);
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let lease: serde_json::Value = match http
            .get(format!("{gw}/_gateway/token"))
            .bearer_auth(REPORTER)
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => continue,
        };
        let Some(token) = lease["data"]["token"].as_str() else {
            continue;
        };
        let _ = http
            .post(format!("{gw}/_gateway/token/rejected"))
            .bearer_auth(REPORTER)
            .json(&serde_json::json!({ "token": token }))
            .send()
            .await;
    }
}

/// The other client's requests to `gw` until `stop`: (sent, refused).
async fn user(http: reqwest::Client, gw: String, stop: Arc<AtomicBool>) -> (u64, u64) {
    let (mut sent, mut refused) = (0, 0);
    while !stop.load(Ordering::SeqCst) {
        let ok = match http
            .get(format!("{gw}/v1/PveMachineHardDisk/open/memoryTotal/0"))
            .bearer_auth(USER)
            .send()
            .await
        {
            Ok(r) => {
                r.status().is_success()
                    && r.json::<serde_json::Value>().await.unwrap_or_default()["code"] == 0
            }
            Err(_) => false,
        };
        sent += 1;
        refused += u64::from(!ok);
    }
    (sent, refused)
}

/// Runs the load on `gws` for `secs` and prints each replica's refused share.
async fn run(what: &str, gws: &[String], secs: u64) {
    let http = reqwest::Client::new();
    // Ready: each replica leases a token.
    for gw in gws {
        let deadline = Instant::now() + Duration::from_secs(20);
        while http
            .get(format!("{gw}/_gateway/token"))
            .bearer_auth(REPORTER)
            .send()
            .await
            .map_or(true, |r| !r.status().is_success())
        {
            assert!(Instant::now() < deadline, "{gw} never leased a token");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stagger = Duration::from_millis(
        std::env::var("FGW_BENCH_STAGGER_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2500),
    );
    let mut reporters = Vec::new();
    let mut users = Vec::new();
    for (i, gw) in gws.iter().enumerate() {
        let offset = stagger * u32::try_from(i).unwrap();
        reporters.push(tokio::spawn(reporter(
            http.clone(),
            gw.clone(),
            offset,
            stop.clone(),
        )));
        users.push(tokio::spawn(user(http.clone(), gw.clone(), stop.clone())));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::SeqCst);
    println!(
        "{what}: one report per 5 s per replica, {} ms apart, {secs} s",
        stagger.as_millis()
    );
    for (gw, u) in gws.iter().zip(users) {
        let (sent, refused) = u.await.unwrap();
        println!(
            "  {gw}: {refused} of {sent} of the other client's requests refused ({:.1}%)",
            100.0 * refused as f64 / sent.max(1) as f64
        );
    }
    for r in reporters {
        r.abort();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let secs: u64 = std::env::var("FGW_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let mut sim = Command::new(env!("CARGO_BIN_EXE_finovy-gateway"));
    sim.args(["sim", "--listen", "127.0.0.1:0"]);
    let (_sim, sim_addr) = start(sim, "simulator listening", None);
    let upstream = format!("http://{sim_addr}");

    let port = free_port();
    let _redis = Proc(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    let redis = format!("redis://127.0.0.1:{port}");
    let (_a, a) = replica(&upstream, Some(&redis), 0);
    let (_b, b) = replica(&upstream, Some(&redis), 1);
    run("two replicas, one Redis", &[a, b], secs).await;

    let (_c, c) = replica(&upstream, None, 2);
    run("a single replica", &[c], secs).await;
}
