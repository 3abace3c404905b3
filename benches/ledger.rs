//! The purchase ledger's cost, on the embedded SQLite file and on PostgreSQL over loopback: the
//! latency a create adds (its entry opened before the upstream call, then settled: goal p50 at
//! most 2 ms on SQLite, 5 ms on PostgreSQL), and the admin listing of one client's newest 100
//! entries among 1,000,000 spread over 50 clients (goal under 50 ms), first page and a later one.
//!
//! Both databases keep what they write as in production: the SQLite file in WAL mode with
//! `synchronous = FULL`, in the temporary folder (or `FGW_BENCH_DIR`: put it on the disk the
//! gateway will use); PostgreSQL started for the bench as the tests start it (`initdb` and
//! `postgres` from the installed package, a free loopback port) but with `fsync` on.
//!
//! Run with: `cargo bench --bench ledger` (`FGW_BENCH_N` creates timed, default 2,000, after 200
//! of warm-up; `FGW_BENCH_ROWS` entries for the listing, default 1,000,000).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use finovy_gateway::ledger::bench::BenchLedger;

#[path = "../src/store/conformance/postgres_server.rs"]
mod postgres_server;

use postgres_server::PgServer;

/// Clients the listing's entries are spread over.
const CLIENTS: u64 = 50;
/// Entries a listing page holds.
const PAGE: u32 = 100;
/// Listings timed, cycling over the clients.
const LISTINGS: usize = 200;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The `p`th percentile of `samples` (sorted here).
fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort();
    samples[(samples.len() - 1) * p / 100]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn measure(name: &str, l: &BenchLedger, creates: u64, rows: u64, goal: Duration) {
    // What a create adds: open, then settle; one after another, as one request does.
    let start = now_ms();
    for i in 0..200 {
        l.open_and_settle(start + i, "warm-up").await.unwrap();
    }
    let mut added = Vec::with_capacity(creates as usize);
    for i in 0..creates {
        let t = Instant::now();
        l.open_and_settle(start + 200 + i, "bench").await.unwrap();
        added.push(t.elapsed());
    }
    let p50 = percentile(&mut added, 50);
    println!(
        "{name}: open + settle ({creates} creates): p50 {} p99 {} max {}  (goal p50 <= {}: {})",
        ms(p50),
        ms(percentile(&mut added, 99)),
        ms(*added.last().unwrap()),
        ms(goal),
        if p50 <= goal { "met" } else { "MISSED" }
    );

    // The listing: entries older than the creates above, 10 ms apart.
    let t = Instant::now();
    l.fill(rows, CLIENTS, start - rows * 10 - 1000)
        .await
        .unwrap();
    let filled = t.elapsed();
    println!(
        "{name}: filled {rows} entries over {CLIENTS} clients in {:.1} s",
        filled.as_secs_f64()
    );
    let mut first = Vec::with_capacity(LISTINGS);
    let mut later = Vec::with_capacity(LISTINGS);
    for i in 0..LISTINGS {
        let client = format!("client-{}", i as u64 % CLIENTS);
        let t = Instant::now();
        let (n, mut next) = l.list_client(&client, PAGE, None).await.unwrap();
        first.push(t.elapsed());
        assert_eq!(n, PAGE as usize);
        // Ten pages further back, as an operator paging through would get there.
        for _ in 0..9 {
            let cursor = next.expect("a client holds more than 11 pages");
            next = l.list_client(&client, PAGE, Some(&cursor)).await.unwrap().1;
        }
        let cursor = next.expect("a client holds more than 11 pages");
        let t = Instant::now();
        let (n, _) = l.list_client(&client, PAGE, Some(&cursor)).await.unwrap();
        later.push(t.elapsed());
        assert_eq!(n, PAGE as usize);
    }
    let goal = Duration::from_millis(50);
    for (which, samples) in [("first page", &mut first), ("11th page", &mut later)] {
        let p50 = percentile(samples, 50);
        let p99 = percentile(samples, 99);
        println!(
            "{name}: one client's {PAGE} newest of {rows}, {which}: p50 {} p99 {}  \
             (goal < {}: {})",
            ms(p50),
            ms(p99),
            ms(goal),
            if p99 < goal { "met" } else { "MISSED" }
        );
    }
    l.close().await;
}

fn main() {
    let creates = env_u64("FGW_BENCH_N", 2_000);
    let rows = env_u64("FGW_BENCH_ROWS", 1_000_000);
    let base = std::env::var_os("FGW_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join(format!("fgw-ledger-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let file = dir.join("ledger.sqlite");
    println!("sqlite: {}", file.display());
    rt.block_on(async {
        let l = BenchLedger::sqlite(&file).await.unwrap();
        measure("sqlite", &l, creates, rows, Duration::from_millis(2)).await;
    });
    let _ = std::fs::remove_dir_all(&dir);

    // A production server writes its WAL to disk at each commit: so does this one.
    let pg = PgServer::start_with(&[("fsync", "on"), ("full_page_writes", "on")]);
    println!("postgres: {} (fsync on)", pg.url());
    rt.block_on(async {
        let l = BenchLedger::connect(&pg.url()).await.unwrap();
        measure("postgres", &l, creates, rows, Duration::from_millis(5)).await;
    });
}
