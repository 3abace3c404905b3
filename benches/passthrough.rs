//! Added latency of a pass-through request: the same `GET memoryTotal/0`, interleaved, straight to
//! the simulator and through the gateway, both release binaries in their own processes on loopback.
//! Reports median and p99 of each and the gateway's addition.
//!
//! Run with: `cargo bench --bench passthrough` (`FGW_BENCH_N=20000` for more requests).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary with `args` and returns it with the address from its `<marker> listen=` line.
fn start(args: &[&str], marker: &str) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_finovy-gateway"))
        .args(args)
        .env("FINOVY_UUID", "demo-uuid")
        .env("FINOVY_SECRET", "demo-secret")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let marker = marker.to_string();
    let addr = loop {
        let line = lines
            .next()
            .expect("the process printed its address")
            .unwrap();
        if line.contains(&marker)
            && let Some(rest) = line.split("listen=").nth(1)
        {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), addr)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
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
    let (_gw, gw_addr) = start(
        &[
            "serve",
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
    let token: serde_json::Value = client
        .post(format!("{upstream}/v1/auth/getToken"))
        .json(&serde_json::json!({"uuid": "demo-uuid", "secret": "demo-secret"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["data"]["token"].as_str().unwrap().to_string();
    let path = "/v1/PveMachineHardDisk/open/memoryTotal/0";
    let direct = format!("{upstream}{path}");
    let through = format!("http://{gw_addr}{path}");

    let one = |url: String, token: Option<String>| {
        let client = client.clone();
        async move {
            let mut req = client.get(url);
            if let Some(t) = token {
                req = req.header("Finovy-Access-Token", t);
            }
            let started = Instant::now();
            let body = req.send().await.unwrap().bytes().await.unwrap();
            let took = started.elapsed();
            assert!(body.starts_with(b"{"), "an envelope");
            took
        }
    };
    for _ in 0..500 {
        one(direct.clone(), Some(token.clone())).await;
        one(through.clone(), None).await;
    }
    let mut d = Vec::with_capacity(n);
    let mut g = Vec::with_capacity(n);
    for _ in 0..n {
        d.push(one(direct.clone(), Some(token.clone())).await);
        g.push(one(through.clone(), None).await);
    }
    d.sort();
    g.sort();
    let us = |x: Duration| x.as_secs_f64() * 1e6;
    let (dm, d99, gm, g99) = (
        percentile(&d, 0.5),
        percentile(&d, 0.99),
        percentile(&g, 0.5),
        percentile(&g, 0.99),
    );
    println!("passthrough: {n} sequential requests each way, interleaved, keep-alive, loopback");
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
