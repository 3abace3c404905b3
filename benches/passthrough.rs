//! Added latency of a pass-through request: the same `GET memoryTotal/0`, interleaved, straight to
//! the simulator and through the gateway, both release binaries in their own processes on loopback.
//! Reports median and p99 of each and the gateway's addition; then the same for disk creates
//! (distinct bodies, rate limit far above the load, so no create waits: the cost of validation,
//! de-duplication records and the limiter themselves).
//!
//! Run with: `cargo bench --bench passthrough` (`FGW_BENCH_N=20000` for more requests;
//! `FGW_BENCH_GATEWAY=<path>` measures another build of the gateway, say the last release's, against
//! the same simulator build, for a before/after).

use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{Proc, demo_token, start as start_process};

/// Starts the gateway binary with `args` (`FGW_BENCH_GATEWAY`'s build for `serve`); its address
/// from its `<marker> listen=` line.
fn start(args: &[&str], marker: &str) -> (Proc, String) {
    let built = env!("CARGO_BIN_EXE_finovy-gateway").to_string();
    let bin = match std::env::var("FGW_BENCH_GATEWAY") {
        Ok(other) if args.first() == Some(&"serve") => other,
        _ => built,
    };
    let mut cmd = Command::new(bin);
    cmd.args(args);
    start_process(cmd, marker, None)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Warms up, then interleaves `n` calls of each; the sorted latencies of each.
async fn measure<D, G, F1, F2>(n: usize, direct: D, through: G) -> (Vec<Duration>, Vec<Duration>)
where
    D: Fn(usize) -> F1,
    G: Fn(usize) -> F2,
    F1: std::future::Future<Output = Duration>,
    F2: std::future::Future<Output = Duration>,
{
    for i in 0..300 {
        direct(1_000_000 + i).await;
        through(1_000_000 + i).await;
    }
    let mut d = Vec::with_capacity(n);
    let mut g = Vec::with_capacity(n);
    for i in 0..n {
        d.push(direct(i).await);
        g.push(through(i).await);
    }
    d.sort();
    g.sort();
    (d, g)
}

fn report(what: &str, n: usize, d: &[Duration], g: &[Duration]) {
    let us = |x: Duration| x.as_secs_f64() * 1e6;
    let (dm, d99) = (percentile(d, 0.5), percentile(d, 0.99));
    let (gm, g99) = (percentile(g, 0.5), percentile(g, 0.99));
    println!("{what}: {n} sequential requests each way, interleaved, keep-alive, loopback");
    println!(
        "  direct to simulator : median {:8.1} us   p99 {:8.1} us",
        us(dm),
        us(d99)
    );
    println!(
        "  through the gateway : median {:8.1} us   p99 {:8.1} us",
        us(gm),
        us(g99)
    );
    println!(
        "  added by the gateway: median {:8.1} us   p99 {:8.1} us   (ratio median {:.2}x, p99 {:.2}x)",
        us(gm) - us(dm),
        us(g99) - us(d99),
        us(gm) / us(dm),
        us(g99) / us(d99)
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::var("FGW_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let (_sim, sim_addr) = start(
        &[
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--create-min-interval",
            "0ms",
        ],
        "simulator listening",
    );
    let upstream = format!("http://{sim_addr}");
    // Creates are limited far above this load, so none waits for a slot.
    let config = std::env::temp_dir().join(format!("fgw-passthrough-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "[create.routes.\"disk.create\"]\nrate = \"1000000/1s\"\nburst = 1000000\n",
    )
    .unwrap();
    let config_arg = config.to_str().unwrap().to_string();
    let (_gw, gw_addr) = start(
        &[
            "serve",
            "--config",
            &config_arg,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
        ],
        "gateway listening",
    );
    let client = reqwest::Client::new();
    let token = demo_token(&client, &upstream).await;

    // One call. `create = Some(i)`: a disk create whose body is distinct for each i.
    let one = |url: String, token: Option<String>, create: Option<usize>| {
        let client = client.clone();
        async move {
            let mut req = match create {
                None => client.get(url),
                Some(i) => client
                    .post(url)
                    .json(&serde_json::json!({"area": i % 3, "memory": 20 + (i / 3) % 20_000, "isMount": 0})),
            };
            if let Some(t) = token {
                req = req.header("Finovy-Access-Token", t);
            }
            let started = Instant::now();
            let body = req.send().await.unwrap().bytes().await.unwrap();
            let took = started.elapsed();
            // Only successes are timed: an error answered fast would flatter the gateway.
            let v: serde_json::Value = serde_json::from_slice(&body).expect("a JSON envelope");
            assert_eq!(v["code"], 0, "{v}");
            took
        }
    };

    let path = "/v1/PveMachineHardDisk/open/memoryTotal/0";
    let (direct, through) = (
        format!("{upstream}{path}"),
        format!("http://{gw_addr}{path}"),
    );
    let (d, g) = measure(
        n,
        |_| one(direct.clone(), Some(token.clone()), None),
        |_| one(through.clone(), None, None),
    )
    .await;
    report("passthrough (GET memoryTotal)", n, &d, &g);

    let path = "/v1/PveMachineHardDisk/open/create";
    let (direct, through) = (
        format!("{upstream}{path}"),
        format!("http://{gw_addr}{path}"),
    );
    let m = n.min(10_000);
    let (d, g) = measure(
        m,
        |i| one(direct.clone(), Some(token.clone()), Some(2 * i)),
        |i| one(through.clone(), None, Some(2 * i + 1)),
    )
    .await;
    report("create (distinct bodies, no rate-limit wait)", m, &d, &g);
    let _ = std::fs::remove_file(&config);
}
