//! The cache-hit bench's traces mode: what exporting traces costs a cache hit. The same load as
//! the main mode (wrk on CPU 1, 64 connections, a random one of the 1,000 disks per request)
//! against three gateways on CPU 0 that differ only in `[telemetry]`: traces off (no collector
//! named, so no span is made), and exporting to an OTLP/HTTP receiver this bench runs itself at
//! `sample_ratio = 0.01` and at `1.0`. The receivers ([`sink`], one per exporting gateway, on CPU 1
//! beside wrk, so that their work is not the gateway's) decode each export and count its spans.
//!
//! Rounds run each gateway once, in rotating order; a gateway's ratios to "off" are taken within
//! a round (this machine's speed drifts), and their median and range reported: requests/s, p99 and
//! CPU per hit (the gateway's own process, its export thread included). Also per gateway: spans
//! received per hit over the measured runs, and `finovy_gateway_spans_dropped_total`.
//! `FGW_BENCH_BEFORE=<another finovy-gateway binary>` adds that build, traces off, and its ratio
//! (off / before: a build from before traces existed says whether "off" costs what it did).
//!
//! Run with: `cargo bench --bench cache_hits -- --traces` (`FGW_BENCH_SECS`, `FGW_BENCH_ROUNDS`
//! as in the main mode).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::{PATH, Result_, common, median, spread, wrk};

/// The variables that would name a collector or a sampler for every gateway alike: the bench
/// decides, in each gateway's file.
const OTEL_VARS: [&str; 5] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SDK_DISABLED",
];

/// The OTLP/HTTP receiver (`--otlp-sink`): takes `POST /v1/traces`, decodes it and counts its
/// spans, answers an empty success; `GET /count` answers `<exports> <spans>`.
pub(super) fn sink() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        eprintln!(
            "otlp sink listening listen={}",
            listener.local_addr().unwrap()
        );
        let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let counts = counts.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let counts = counts.clone();
                        async move {
                            if req.method() == http::Method::GET {
                                let (exports, spans) = (
                                    counts.0.load(Ordering::Relaxed),
                                    counts.1.load(Ordering::Relaxed),
                                );
                                let text = format!("{exports} {spans}");
                                return Ok(http::Response::new(Full::new(Bytes::from(text))));
                            }
                            let body = req.into_body().collect().await?.to_bytes();
                            let spans: usize =
                                ExportTraceServiceRequest::decode(body).map_or(0, |e| {
                                    e.resource_spans
                                        .iter()
                                        .flat_map(|r| &r.scope_spans)
                                        .map(|s| s.spans.len())
                                        .sum()
                                });
                            counts.0.fetch_add(1, Ordering::Relaxed);
                            counts.1.fetch_add(spans as u64, Ordering::Relaxed);
                            let ok = http::Response::builder()
                                .header("content-type", "application/x-protobuf")
                                .body(Full::new(Bytes::new()))
                                .unwrap();
                            Ok::<_, hyper::Error>(ok)
                        }
                    });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// A free loopback port (for a gateway's admin listener, read at the end).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One gateway under test: its process, data and admin addresses.
struct Gateway {
    name: &'static str,
    proc: common::Proc,
    addr: String,
    admin: String,
}

fn gateway(
    name: &'static str,
    bin: &str,
    dir: &Path,
    file: &str,
    telemetry: &str,
    upstream: &str,
) -> Gateway {
    let config = dir.join(format!("{file}.toml"));
    std::fs::write(
        &config,
        format!("[cache.routes.\"disk.info\"]\nttl = \"1h\"\n{telemetry}"),
    )
    .unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", bin, "serve", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", &admin])
        .args(["--upstream", upstream]);
    for var in OTEL_VARS {
        cmd.env_remove(var);
    }
    let (proc, addr) = common::start(
        cmd,
        "gateway listening",
        Some(&dir.join(format!("{file}.log"))),
    );
    Gateway {
        name,
        proc,
        addr,
        admin,
    }
}

/// `finovy_gateway_spans_dropped_total` of the gateway whose admin listener is `admin`.
async fn dropped(client: &reqwest::Client, admin: &str) -> f64 {
    let text = client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("finovy_gateway_spans_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The sink's span count so far.
async fn spans_received(client: &reqwest::Client, sink: &str) -> u64 {
    let text = client
        .get(format!("http://{sink}/count"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The traces mode: gateways off, 1 % and 100 % sampled, against the simulator at `sim` with
/// `ids` cached, loaded by wrk with `script`.
pub(super) fn run(
    bin: &str,
    dir: &Path,
    sim: &str,
    ids: &[String],
    script: &Path,
    secs: u64,
    rounds: usize,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    // A receiver for each exporting gateway, so that each one's spans are its own.
    let self_exe = std::env::current_exe().unwrap();
    let receiver = |name: &str| {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "1"]).arg(&self_exe).arg("--otlp-sink");
        let log = dir.join(format!("sink-{name}.log"));
        common::start(cmd, "otlp sink listening", Some(&log))
    };
    let (one_sink, all_sink) = (receiver("one"), receiver("all"));
    let upstream = format!("http://{sim}");
    let exporting = |sink: &str, ratio: &str| {
        format!("[telemetry]\notlp_endpoint = \"http://{sink}\"\nsample_ratio = {ratio}\n")
    };
    let mut gateways = vec![
        gateway("traces off", bin, dir, "off", "", &upstream),
        gateway(
            "traces, 1% sampled",
            bin,
            dir,
            "one",
            &exporting(&one_sink.1, "0.01"),
            &upstream,
        ),
        gateway(
            "traces, 100% sampled",
            bin,
            dir,
            "all",
            &exporting(&all_sink.1, "1.0"),
            &upstream,
        ),
    ];
    let sinks = [None, Some(&one_sink.1), Some(&all_sink.1), None];
    if let Some(before) = common::before_build() {
        gateways.push(gateway(
            "before, traces off",
            &before,
            dir,
            "before",
            "",
            &upstream,
        ));
    }
    rt.block_on(async {
        for id in ids {
            for g in &gateways {
                let r = client
                    .get(format!("http://{}{PATH}{id}", g.addr))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}: {}", g.name, r.status());
            }
        }
    });

    let mut runs: Vec<Vec<Result_>> = gateways.iter().map(|_| Vec::new()).collect();
    // Spans each gateway's receiver got during its runs, and the hits wrk counted.
    let mut spans = vec![(0u64, 0f64); gateways.len()];
    for round in 0..rounds {
        for k in 0..gateways.len() {
            let t = (round + k) % gateways.len();
            let g = &gateways[t];
            let received = || match sinks[t] {
                Some(sink) => rt.block_on(spans_received(&client, sink)),
                None => 0,
            };
            let before = received();
            let r = wrk(
                g.name,
                &format!("http://{}", g.addr),
                g.proc.0.id(),
                script,
                secs,
            );
            let after = received();
            // Counted over wrk's warm-up (2 s) and measured run, hits at the measured rate: an
            // estimate, which a batch still on its way also blurs.
            spans[t].0 += after - before;
            spans[t].1 += r.rps * (secs + 2) as f64;
            eprintln!(
                "  round {round}: {:<24} {:>9.0} req/s   p50 {:>5.2} ms   p99 {:>5.2} ms   CPU {:>5.1} us/req",
                g.name, r.rps, r.p50_ms, r.p99_ms, r.cpu_us
            );
            runs[t].push(r);
        }
    }
    let drops: Vec<f64> = rt.block_on(async {
        let mut d = Vec::new();
        for g in &gateways {
            d.push(dropped(&client, &g.admin).await);
        }
        d
    });
    println!(
        "cache hits, traces: {} disks, wrk -t1 -c64 -d{secs}s on CPU 1, each gateway on CPU 0, \
         OTLP receivers on CPU 1, {rounds} rounds (medians; ratios within a round, median [min-max])",
        ids.len()
    );
    for (i, r) in runs.iter().enumerate() {
        let field = |f: fn(&Result_) -> f64| median(r.iter().map(f).collect());
        println!(
            "  {:<24} {:>9.0} req/s   p50 {:>5.2} ms   p99 {:>5.2} ms   CPU {:>5.1} us/req   \
             spans/hit {:.3}   dropped {}",
            r[0].name,
            field(|x| x.rps),
            field(|x| x.p50_ms),
            field(|x| x.p99_ms),
            field(|x| x.cpu_us),
            spans[i].0 as f64 / spans[i].1.max(1.0),
            drops[i]
        );
    }
    let ratio = |label: &str, a: usize, b: usize| {
        let of = |f: fn(&Result_) -> f64| -> Vec<f64> {
            (0..rounds)
                .map(|i| f(&runs[a][i]) / f(&runs[b][i]))
                .collect()
        };
        println!(
            "  {label}: {} req/s, p99 {}, CPU/hit {}",
            spread(of(|x| x.rps)),
            spread(of(|x| x.p99_ms)),
            spread(of(|x| x.cpu_us))
        );
    };
    ratio("1% sampled / off", 1, 0);
    ratio("100% sampled / off", 2, 0);
    if gateways.len() > 3 {
        ratio("off / before", 0, 3);
    }
}
