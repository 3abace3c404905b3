//! Resident memory per idempotency record under a mixed load, against the release binary: keyed
//! disk creates (each sent twice, the second replayed from its record) and a `disk.list` call
//! every tenth create, first alone, then beside a flood of cache hits on 100 disks. Reports the
//! growth of the gateway's resident memory per record kept, beside the bytes the gateway accounts
//! for its records (`finovy_gateway_records_bytes`) and its cache (`finovy_gateway_cache_bytes`).
//! The gateway runs on CPUs 0-1 (two worker threads, as on a 2-core host) with 4 KiB pages
//! (`MIMALLOC_ALLOW_THP=0`: with transparent huge pages resident memory moves in 2 MiB steps);
//! other `MIMALLOC_*` variables of the environment pass through, to compare allocator options.
//!
//! Run with: `cargo bench --bench memory_mix` (`FGW_BENCH_N` creates measured, default 5,000,
//! after 1,000 of warm-up).

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

#[allow(dead_code)]
mod common;

use common::start;

const DISK: &str = "/v1/PveMachineHardDisk/open";
/// Connections of each load.
const PARALLEL: usize = 32;

fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// A gauge of the gateway's `/metrics` at `admin`.
async fn gauge(client: &reqwest::Client, admin: &str, name: &str) -> f64 {
    let text = client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Runs on CPUs 0-1 where the host has them.
fn pinned(bin: &str) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0,1", bin]);
    cmd
}

/// `n` keyed creates, each sent twice, and a list call every tenth, from [`PARALLEL`] connections.
async fn creates(client: &reqwest::Client, url: &str, n: usize) {
    static KEY: AtomicU64 = AtomicU64::new(0);
    let per = n.div_ceil(PARALLEL);
    let mut tasks = Vec::new();
    for _ in 0..PARALLEL {
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let key = format!("mix-{}", KEY.fetch_add(1, Ordering::Relaxed));
                for _ in 0..2 {
                    let v: serde_json::Value = client
                        .post(format!("{url}{DISK}/create"))
                        .header("Idempotency-Key", &key)
                        .json(&serde_json::json!({"area": 0, "memory": 20, "isMount": 0}))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    assert_eq!(v["code"], 0, "{v}");
                }
                if i % 10 == 0 {
                    client
                        .post(format!("{url}{DISK}/getList"))
                        .json(&serde_json::json!({"pageSize": 10, "page": 1}))
                        .send()
                        .await
                        .unwrap()
                        .bytes()
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Cache hits on `ids` from [`PARALLEL`] connections until `stop`; how many.
async fn hits(
    client: reqwest::Client,
    url: String,
    ids: Vec<String>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut tasks = Vec::new();
    for w in 0..PARALLEL {
        let (client, url, ids, stop) = (client.clone(), url.clone(), ids.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = &ids[(w + n as usize * PARALLEL) % ids.len()];
                let resp = client
                    .get(format!("{url}{DISK}/info/{id}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                resp.bytes().await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

/// One gateway, one run: creates alone or beside the hits. Prints and returns bytes per record.
async fn run(bin: &str, sim: &str, n: usize, with_hits: bool) -> f64 {
    let dir = std::env::temp_dir().join(format!("fgw-mix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        "[cache]\nmax_bytes = 1073741824\n[cache.routes.\"disk.info\"]\nttl = \"1h\"\n\
         [cache.routes.\"disk.list\"]\nttl = \"1h\"\n\
         [create]\nmax_records_per_client = 1000000\nrecords_max_bytes = 1073741824\n\
         [create.routes.\"disk.create\"]\nrate = \"1000000/1s\"\nburst = 1000000\n\
         [token]\nmin_lifetime = \"0s\"\nmin_refresh_interval = \"0s\"\n\
         [log]\nlevel = \"info,finovy_gateway::access=warn\"\n",
    )
    .unwrap();
    // A free port for the admin listener, whose address the start does not read.
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut cmd = pinned(bin);
    cmd.args(["serve", "--config", config.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", &admin])
        .args(["--upstream", &format!("http://{sim}")])
        .env("MIMALLOC_ALLOW_THP", "0");
    let (gw, addr) = start(cmd, "gateway listening", None);
    let pid = gw.0.id();
    let url = format!("http://{addr}");
    let client = reqwest::Client::new();

    // 100 disks to hit, read once so they are cached.
    let mut ids = Vec::new();
    for _ in 0..100 {
        let v: serde_json::Value = client
            .post(format!("{url}{DISK}/create"))
            .json(&serde_json::json!({"area": 0, "memory": 20, "isMount": 0}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = v["data"].as_str().expect("created").to_string();
        client
            .get(format!("{url}{DISK}/info/{id}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        ids.push(id);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flood = with_hits.then(|| {
        tokio::spawn(hits(
            reqwest::Client::new(),
            url.clone(),
            ids.clone(),
            stop.clone(),
        ))
    });
    creates(&client, &url, 1_000).await;
    let records0 = gauge(&client, &admin, "finovy_gateway_records_bytes").await;
    let rss0 = rss(pid);
    let t0 = Instant::now();
    creates(&client, &url, n).await;
    let secs = t0.elapsed().as_secs_f64();
    let rss1 = rss(pid);
    let records1 = gauge(&client, &admin, "finovy_gateway_records_bytes").await;
    stop.store(true, Ordering::Relaxed);
    let hit_count = match flood {
        Some(f) => f.await.unwrap(),
        None => 0,
    };
    let per_record = (rss1 as f64 - rss0 as f64) / n as f64;
    let accounted = (records1 - records0) / n as f64;
    println!(
        "{:>13}: {n} creates in {secs:.1}s, {:.0} hits/s; RSS {} → {} MiB: {per_record:.0} B \
         resident per record, {accounted:.0} B accounted ({:.2}×)",
        if with_hits {
            "beside hits"
        } else {
            "creates alone"
        },
        hit_count as f64 / secs,
        rss0 >> 20,
        rss1 >> 20,
        per_record / accounted,
    );
    drop(gw);
    per_record
}

fn main() {
    let bin = env!("CARGO_BIN_EXE_finovy-gateway");
    let n = std::env::var("FGW_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut cmd = Command::new(bin);
    cmd.args([
        "sim",
        "--listen",
        "127.0.0.1:0",
        "--create-min-interval",
        "0ms",
    ]);
    let (_sim, sim) = start(cmd, "simulator listening", None);
    rt.block_on(async {
        let alone = run(bin, &sim, n, false).await;
        let mixed = run(bin, &sim, n, true).await;
        println!("beside hits / alone: {:.2}", mixed / alone);
    });
}
