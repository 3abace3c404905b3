//! Cache hits under load: the gateway (whole stack on: request id, access log, metrics, auth,
//! routing, cache) answering `disk.info` for 1,000 cached disks, again with its access log off
//! (`finovy_gateway::access=warn`, the cost of the stack alone), beside a minimal hyper server that
//! answers the same bodies from a moka cache, and nginx `proxy_cache` in front of the simulator
//! (twice: with `access_log off`, its best case, and with its default access log, like ours).
//! Each server is pinned to CPU 0, wrk to CPU 1 (64 connections, a random id of the 1,000 per
//! request). Reports requests/s, p50, p99 and CPU microseconds per request (the server's own
//! process CPU time, user and system, over the measured run ÷ the requests wrk counted) for each,
//! and the gateway's ratios.
//!
//! Needs `wrk`, `nginx`, `redis-server` and `taskset` (Debian: `apt-get install wrk nginx
//! redis-server util-linux`).
//! Run with: `cargo bench --bench cache_hits` (`FGW_BENCH_SECS` per run, default 5;
//! `FGW_BENCH_ROUNDS`, default 3: every server runs once per round, in rotating order).
//! `FGW_BENCH_BEFORE=<path of another finovy-gateway binary>` adds that build as one more server
//! in the same rounds (say, the last release's), and its ratio to this one.
//!
//! Traces mode, `cargo bench --bench cache_hits -- --traces` (needs `wrk` and `taskset` only):
//! the same hits against the gateway with traces off, and exporting at `sample_ratio` 0.01 and
//! 1.0 to an OTLP/HTTP receiver the bench runs itself (see `cache_hits/traces.rs`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;

const DISKS: usize = 1000;
const PATH: &str = "/v1/PveMachineHardDisk/open/info/";

mod common;
#[path = "cache_hits/traces.rs"]
mod traces;

use common::{Proc, demo_token, start};

/// Logs and nginx's cache go on tmpfs where there is one: on disk, the kernel writes one run's
/// log back while a later run is being measured.
fn workdir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("fgw-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts `program` pinned to CPU 0; its address from its `<marker> listen=` log line. The rest
/// of its log (the access log, for the gateway) goes to `log`.
fn start_pinned(program: &str, args: &[&str], marker: &str, log: &Path) -> (Proc, String) {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", program]).args(args);
    start(cmd, marker, Some(log))
}

struct Result_ {
    name: &'static str,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The server's CPU time (user + system, its processes only) per request, in microseconds.
    cpu_us: f64,
}

/// CPU ticks (user + system) of `pid` and its live children: nginx's work is its worker's.
/// Only the server's processes are read, never wrk's, so the figure is the server's own cost.
fn cpu_ticks(pid: u32) -> u64 {
    // Fields after the command (which may hold spaces): state is field 3, ppid 4, utime 14, stime 15.
    let stat = |p: &str| -> Option<(u32, u64)> {
        let text = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        let rest: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
        Some((rest.get(1)?.parse().ok()?, ticks))
    };
    let own = stat(&pid.to_string()).map_or(0, |(_, t)| t);
    let children: u64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| stat(e.file_name().to_str()?))
        .filter(|&(ppid, _)| ppid == pid)
        .map(|(_, t)| t)
        .sum();
    own + children
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat`'s times.
fn ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn parse_ms(s: &str) -> f64 {
    let s = s.trim();
    if let Some(v) = s.strip_suffix("us") {
        v.parse::<f64>().unwrap() / 1000.0
    } else if let Some(v) = s.strip_suffix("ms") {
        v.parse().unwrap()
    } else if let Some(v) = s.strip_suffix('s') {
        v.parse::<f64>().unwrap() * 1000.0
    } else {
        f64::NAN
    }
}

/// One wrk run against `base`, served by process `pid`; a short warm-up first.
fn wrk(name: &'static str, base: &str, pid: u32, script: &Path, secs: u64) -> Result_ {
    let run = |d: u64| {
        let out = Command::new("taskset")
            .args([
                "-c",
                "1",
                "wrk",
                "-t1",
                "-c64",
                &format!("-d{d}s"),
                "--latency",
                "-s",
            ])
            .arg(script)
            .arg(base)
            .output()
            .expect("run wrk (is it installed?)");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    run(2);
    let cpu_before = cpu_ticks(pid);
    let text = run(secs);
    let cpu = (cpu_ticks(pid) - cpu_before) as f64 / ticks_per_sec();
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("{prefix} in wrk output:\n{text}"))
    };
    let non2xx = text.lines().any(|l| l.contains("Non-2xx"));
    assert!(!non2xx, "{name}: errors in the run:\n{text}");
    // `64190 requests in 5.00s, ...`
    let requests: f64 = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk output:\n{text}"));
    Result_ {
        cpu_us: cpu * 1e6 / requests,
        name,
        rps: field("Requests/sec:").parse().unwrap(),
        p50_ms: parse_ms(&field("50%")),
        p99_ms: parse_ms(&field("99%")),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

/// `1.23x [1.10-1.31]`: the median of per-round ratios, and their range.
fn spread(v: Vec<f64>) -> String {
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    format!("{:.2}x [{lo:.2}-{hi:.2}]", median(v))
}

/// The baseline: hyper answering the stored bodies from moka, nothing else.
fn baseline_server(bodies_file: &str) {
    let text = std::fs::read_to_string(bodies_file).unwrap();
    let cache: moka::sync::Cache<String, Bytes> = moka::sync::Cache::new(100_000);
    for line in text.lines() {
        let (id, body) = line.split_once('\t').unwrap();
        cache.insert(format!("{PATH}{id}"), Bytes::from(body.to_string()));
    }
    let cache = Arc::new(cache);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        eprintln!(
            "baseline listening listen={}",
            listener.local_addr().unwrap()
        );
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let cache = cache.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let body = cache.get(req.uri().path());
                        async move {
                            let resp = match body {
                                Some(b) => http::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(b)),
                                None => http::Response::builder()
                                    .status(404)
                                    .body(Full::new(Bytes::new())),
                            };
                            Ok::<_, std::convert::Infallible>(resp.unwrap())
                        }
                    });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

fn nginx_config(dir: &Path, sim: &str, token: &str) -> PathBuf {
    let conf = dir.join("nginx.conf");
    let cache = dir.join("nginx-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, logged_port) = (free(), free());
    let text = format!(
        r#"worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    # Temp files in the bench's own directory: Debian's default, /var/lib/nginx, is not writable
    # by the worker user, and an answer buffered there then fails mid-body.
    client_body_temp_path {dir}/nginx-client-body;
    proxy_temp_path {dir}/nginx-proxy-temp;
    fastcgi_temp_path {dir}/nginx-fastcgi;
    uwsgi_temp_path {dir}/nginx-uwsgi;
    scgi_temp_path {dir}/nginx-scgi;
    proxy_cache_path {cache} levels=1:2 keys_zone=disks:16m max_size=256m inactive=1h;
    upstream sim {{ server {sim}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Finovy-Access-Token "{token}";
            proxy_cache disks;
            proxy_cache_key $uri;
            proxy_cache_valid 200 1h;
            proxy_cache_lock on;
        }}
    }}
    server {{
        listen 127.0.0.1:{logged_port};
        # nginx's default: an access line per request, written as it happens.
        access_log {dir}/nginx-access.log;
        location / {{
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Finovy-Access-Token "{token}";
            proxy_cache disks;
            proxy_cache_key $uri;
            proxy_cache_valid 200 1h;
            proxy_cache_lock on;
        }}
    }}
}}
"#,
        dir = dir.display(),
        cache = cache.display()
    );
    std::fs::write(&conf, text).unwrap();
    eprintln!("nginx will listen on 127.0.0.1:{port}");
    std::fs::write(dir.join("nginx.port"), port.to_string()).unwrap();
    std::fs::write(dir.join("nginx-logged.port"), logged_port.to_string()).unwrap();
    conf
}

/// Stops at once, naming what is missing, rather than panicking mid-run.
fn require_tools(tools: &[&str]) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !std::env::split_paths(&path).any(|d| d.join(t).is_file()))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "cache_hits needs {} on PATH (Debian: apt-get install wrk nginx redis-server util-linux)",
            missing.join(", ")
        );
        std::process::exit(2);
    }
}

/// The simulator (pinned to CPU 0) with [`DISKS`] disks, their bodies in a file (for the
/// baseline) and wrk's script asking for them at random.
struct Upstream {
    sim_proc: Proc,
    sim: String,
    token: String,
    ids: Vec<String>,
    script: PathBuf,
    bodies_file: PathBuf,
}

fn upstream(bin: &str, dir: &Path, rt: &tokio::runtime::Runtime) -> Upstream {
    let (sim_proc, sim) = start_pinned(
        bin,
        &[
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--create-min-interval",
            "0ms",
        ],
        "simulator listening",
        &dir.join("sim.log"),
    );
    let client = reqwest::Client::new();
    let (token, ids, bodies) = rt.block_on(async {
        let token = demo_token(&client, &format!("http://{sim}")).await;
        let mut ids = Vec::new();
        let mut bodies = String::new();
        for i in 0..DISKS {
            let v: serde_json::Value = client
                .post(format!("http://{sim}/v1/PveMachineHardDisk/open/create"))
                .header("Finovy-Access-Token", &token)
                .json(&serde_json::json!({"area": i % 3, "memory": 20 + i, "isMount": 0}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let id = v["data"].as_str().expect("created").to_string();
            let body = client
                .get(format!("http://{sim}{PATH}{id}"))
                .header("Finovy-Access-Token", &token)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            bodies.push_str(&format!("{id}\t{body}\n"));
            ids.push(id);
        }
        (token, ids, bodies)
    });
    let bodies_file = dir.join("bodies.tsv");
    std::fs::write(&bodies_file, bodies).unwrap();
    let script = dir.join("ids.lua");
    let list: Vec<String> = ids.iter().map(|id| format!("\"{id}\"")).collect();
    std::fs::write(
        &script,
        format!(
            "local ids = {{{}}}\nmath.randomseed(7)\nrequest = function()\n  return wrk.format(\"GET\", \"{PATH}\" .. ids[math.random(#ids)])\nend\n",
            list.join(",")
        ),
    )
    .unwrap();

    Upstream {
        sim_proc,
        sim,
        token,
        ids,
        script,
        bodies_file,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--baseline") {
        return baseline_server(&args[i + 1]);
    }
    if args.iter().any(|a| a == "--otlp-sink") {
        return traces::sink();
    }
    if args.iter().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` asks benches to list tests: there are none
    }
    let traces_mode = args.iter().any(|a| a == "--traces");
    if traces_mode {
        require_tools(&["wrk", "taskset"]);
    } else {
        require_tools(&["wrk", "nginx", "redis-server", "taskset"]);
    }
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (secs, rounds) = (
        env("FGW_BENCH_SECS", 5).max(1),
        env("FGW_BENCH_ROUNDS", 3).max(1) as usize,
    );
    let dir = workdir();
    let bin = env!("CARGO_BIN_EXE_finovy-gateway");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let Upstream {
        sim_proc: _sim,
        sim,
        token,
        ids,
        script,
        bodies_file,
    } = upstream(bin, &dir, &rt);
    if traces_mode {
        traces::run(bin, &dir, &sim, &ids, &script, secs, rounds);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let client = reqwest::Client::new();
    let config = dir.join("gateway.toml");
    std::fs::write(&config, "[cache.routes.\"disk.info\"]\nttl = \"1h\"\n").unwrap();
    let upstream = format!("http://{sim}");
    let quiet = dir.join("gateway-quiet.toml");
    std::fs::write(
        &quiet,
        "[cache.routes.\"disk.info\"]\nttl = \"1h\"\n[log]\nlevel = \"info,finovy_gateway::access=warn\"\n",
    )
    .unwrap();
    let gateway_with = |config: &Path, extra: &[&str], log: &str| {
        let mut args = vec![
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
        ];
        args.extend_from_slice(extra);
        start_pinned(bin, &args, "gateway listening", &dir.join(log))
    };
    let gateway = |extra: &[&str], log: &str| gateway_with(&config, extra, log);
    let (gw_proc, gw) = gateway(&[], "gateway.log");
    let (quiet_proc, quiet_gw) = gateway_with(&quiet, &[], "gateway-quiet.log");
    // The same gateway in shared mode: hits come from its own memory (L1), never from Redis.
    let redis_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = Command::new("taskset")
        .args(["-c", "1", "redis-server", "--port"])
        .arg(redis_port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server (is it installed?)");
    let _redis = Proc(redis);
    // Shared mode is measured only once Redis answers: a replica without it would still serve.
    let pong = (0..250).any(|_| {
        use std::io::{Read, Write};
        let answered =
            std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_ok_and(|mut c| {
                let mut buf = [0u8; 7];
                c.write_all(b"PING\r\n").is_ok()
                    && c.read_exact(&mut buf).is_ok()
                    && &buf == b"+PONG\r\n"
            });
        if !answered {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        answered
    });
    assert!(pong, "redis-server did not answer PING");
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let (shared_proc, shared) = gateway(&["--redis", &redis_url], "gateway-shared.log");
    // Another build of the gateway, for a before/after in the same rounds.
    let before = common::before_build().map(|path| {
        let args = [
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
        ];
        start_pinned(
            &path,
            &args,
            "gateway listening",
            &dir.join("gateway-before.log"),
        )
    });
    let self_exe = std::env::current_exe().unwrap();
    let (base_proc, base) = start_pinned(
        self_exe.to_str().unwrap(),
        &["--baseline", bodies_file.to_str().unwrap()],
        "baseline listening",
        &dir.join("baseline.log"),
    );
    let conf = nginx_config(&dir, &sim, &token);
    let nginx = Command::new("taskset")
        .args(["-c", "0", "nginx", "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx (is it installed?)");
    let nginx_pid = nginx.id();
    let _nginx = Proc(nginx);
    let port_of = |file: &str| {
        format!(
            "127.0.0.1:{}",
            std::fs::read_to_string(dir.join(file)).unwrap()
        )
    };
    let (nginx_addr, nginx_logged) = (port_of("nginx.port"), port_of("nginx-logged.port"));
    rt.block_on(async {
        // Warm every cache with every id; wait for nginx to listen.
        for _ in 0..100 {
            if client
                .get(format!("http://{nginx_addr}/"))
                .send()
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for id in &ids {
            // Both nginx servers share one cache zone, so warming one warms both.
            let before_addr = before.as_ref().map(|(_, a)| a);
            for addr in [&gw, &quiet_gw, &shared, &nginx_addr]
                .into_iter()
                .chain(before_addr)
            {
                let r = client
                    .get(format!("http://{addr}{PATH}{id}"))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
            }
        }
    });

    let mut targets = vec![
        (
            "baseline (hyper + moka)",
            format!("http://{base}"),
            base_proc.0.id(),
        ),
        (
            "nginx proxy_cache",
            format!("http://{nginx_addr}"),
            nginx_pid,
        ),
        (
            "nginx proxy_cache + log",
            format!("http://{nginx_logged}"),
            nginx_pid,
        ),
        ("finovy-gateway", format!("http://{gw}"), gw_proc.0.id()),
        (
            "finovy-gateway, shared mode",
            format!("http://{shared}"),
            shared_proc.0.id(),
        ),
        (
            "finovy-gateway, access log off",
            format!("http://{quiet_gw}"),
            quiet_proc.0.id(),
        ),
    ];
    if let Some((proc, addr)) = &before {
        targets.push((
            "finovy-gateway, before",
            format!("http://{addr}"),
            proc.0.id(),
        ));
    }
    // Rounds, each running every server once, in an order that rotates: this machine's speed
    // drifts over a minute, so ratios are taken within a round and their median reported.
    let mut runs: Vec<Vec<Result_>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..targets.len() {
            let t = (round + k) % targets.len();
            let (name, url, pid) = &targets[t];
            let r = wrk(name, url, *pid, &script, secs);
            eprintln!(
                "  round {round}: {name:<28} {:>9.0} req/s   p50 {:>5.2} ms   p99 {:>5.2} ms   CPU {:>5.1} us/req",
                r.rps, r.p50_ms, r.p99_ms, r.cpu_us
            );
            runs[t].push(r);
        }
    }
    println!(
        "cache hits: {DISKS} disks, wrk -t1 -c64 -d{secs}s on CPU 1, each server on CPU 0, \
         {rounds} rounds (medians; ratios within a round, median [min-max])"
    );
    for r in &runs {
        let field = |f: fn(&Result_) -> f64| median(r.iter().map(f).collect());
        println!(
            "  {:<28} {:>9.0} req/s   p50 {:>5.2} ms   p99 {:>5.2} ms   CPU {:>5.1} us/req",
            r[0].name,
            field(|x| x.rps),
            field(|x| x.p50_ms),
            field(|x| x.p99_ms),
            field(|x| x.cpu_us)
        );
    }
    let ratio = |label: &str, a: usize, b: usize| {
        let rps: Vec<f64> = (0..rounds)
            .map(|i| runs[a][i].rps / runs[b][i].rps)
            .collect();
        let p99: Vec<f64> = (0..rounds)
            .map(|i| runs[a][i].p99_ms / runs[b][i].p99_ms)
            .collect();
        let cpu: Vec<f64> = (0..rounds)
            .map(|i| runs[a][i].cpu_us / runs[b][i].cpu_us)
            .collect();
        println!(
            "  {label}: {} req/s, p99 {}, CPU/req {}",
            spread(rps),
            spread(p99),
            spread(cpu)
        );
    };
    ratio("gateway / nginx (access_log off)", 3, 1);
    ratio("gateway / nginx (access log on, its default)", 3, 2);
    ratio("gateway / baseline", 3, 0);
    ratio("gateway, access log off / baseline", 5, 0);
    ratio("shared mode / single replica", 4, 3);
    if before.is_some() {
        ratio("gateway / before", 3, 6);
        ratio("before / baseline", 6, 0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
