//! Starts the pieces of a test on loopback: the simulator and the gateway in process, or the real
//! binary as a child process whose log lines are captured. Every address is bound on port 0.
//! Tests also send through here ([`answer`] and its shorthands), read metrics here ([`metric`]),
//! and wait here ([`eventually`], [`eventually_some`], [`poll`]) rather than with loops of their own.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use finovy_gateway::config::{FileConfig, Overrides, Settings};
use finovy_gateway::server::Server;
use finovy_gateway::sim::{SimConfig, Simulator};
use reqwest::header::HeaderMap;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

pub(crate) const DISK: &str = "/v1/PveMachineHardDisk/open";

/// A simulator with test-friendly defaults: no create interval, short mounts.
pub(crate) fn sim_config() -> SimConfig {
    SimConfig {
        create_min_interval: Duration::ZERO,
        mount_delay: Duration::from_millis(200),
        ..SimConfig::default()
    }
}

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

pub(crate) struct Sim {
    pub addr: SocketAddr,
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Sim {
    pub(crate) async fn start(cfg: SimConfig) -> Sim {
        let sim = Simulator::bind("127.0.0.1:0".parse().unwrap(), cfg)
            .await
            .expect("bind simulator");
        let addr = sim.local_addr();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(sim.run(async move {
            let _ = rx.await;
        }));
        Sim {
            addr,
            url: format!("http://{addr}"),
            stop: Some(tx),
        }
    }

    pub(crate) async fn stats(&self) -> Value {
        http()
            .get(format!("{}/_sim/stats", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Calls that reached the simulator for one endpoint (`getToken`, `info`, ...).
    pub(crate) async fn calls(&self, endpoint: &str) -> u64 {
        self.stats().await["calls"][endpoint].as_u64().unwrap_or(0)
    }

    /// Every call that reached the simulator, whatever its path.
    pub(crate) async fn total(&self) -> u64 {
        self.stats().await["total"].as_u64().expect("stats.total")
    }

    pub(crate) async fn fault(&self, mode: &str, latency: &str) {
        let r = http()
            .post(format!("{}/_sim/fault", self.url))
            .json(&serde_json::json!({"mode": mode, "latency": latency}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "fault {mode}");
    }

    pub(crate) async fn revoke_tokens(&self) {
        let r = http()
            .post(format!("{}/_sim/revoke-tokens", self.url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// The requests the simulator received, oldest first.
    pub(crate) async fn requests(&self) -> Vec<Value> {
        http()
            .get(format!("{}/_sim/requests", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A token straight from the simulator, as another system holding one would have it.
    pub(crate) async fn token(&self) -> String {
        let v: Value = http()
            .post(format!("{}/v1/auth/getToken", self.url))
            .json(&serde_json::json!({"uuid": "demo-uuid", "secret": "demo-secret"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["data"]["token"].as_str().expect("token").to_string()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The demo credentials the simulator accepts by default.
pub(crate) fn demo_env() -> Vec<(&'static str, String)> {
    vec![
        ("FINOVY_UUID", "demo-uuid".to_string()),
        ("FINOVY_SECRET", "demo-secret".to_string()),
    ]
}

/// A create policy for tests that are not about rate limits.
pub(crate) const FAST_CREATES: &str =
    "[create.routes.\"disk.create\"]\nrate = \"1000/1s\"\nburst = 1000\n";

/// Token bounds for tests that are not about them: no minimum lifetime or refresh interval.
pub(crate) const LOOSE_TOKENS: &str =
    "[token]\nmin_lifetime = \"0s\"\nmin_refresh_interval = \"0s\"\n";

/// A fresh `Idempotency-Key`, so equal bodies still make distinct disks.
pub(crate) fn fresh_key() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A `[cache.routes."disk.info"]` table with `extra` in it.
pub(crate) fn info_policy(extra: &str) -> String {
    format!("[cache.routes.\"disk.info\"]\n{extra}\n")
}

/// An answer's `Cache-Status` (empty when it has none).
pub(crate) fn cache_status(h: &reqwest::header::HeaderMap) -> String {
    h.get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// A `[[clients]]` entry for `key`.
pub(crate) fn client_entry(name: &str, key: &str, extra: &str) -> String {
    format!(
        "[[clients]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\n{extra}\n",
        hex::encode(Sha256::digest(key.as_bytes()))
    )
}

/// A gateway in this process, listening on loopback ports chosen by the OS.
pub(crate) struct Gw {
    pub url: String,
    pub admin_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Gw {
    /// `toml` is a config file's text; the upstream defaults to `upstream`, credentials to `env`.
    /// Unless `toml` sets a `[create]` policy, creates are limited only loosely, so tests that
    /// create many disks do not wait for the production rate. Unless it sets `[token]`, tokens
    /// are taken for the lifetime the simulator gives and refetched as often as needed
    /// ([`LOOSE_TOKENS`]), so tests of short-lived tokens need not wait out the production bounds.
    pub(crate) async fn start(toml: &str, upstream: &str, env: Vec<(&'static str, String)>) -> Gw {
        let gw = Gw::start_unready(toml, upstream, env).await;
        // `/readyz` answers once the startup getToken has settled, so tests count from a quiet state.
        http()
            .get(format!("{}/readyz", gw.admin_url))
            .send()
            .await
            .expect("readyz answers");
        gw
    }

    /// [`Gw::start`] without waiting for readiness: the startup getToken may still be in flight.
    pub(crate) async fn start_unready(
        toml: &str,
        upstream: &str,
        env: Vec<(&'static str, String)>,
    ) -> Gw {
        let toml = if toml.contains("[create") {
            toml.to_string()
        } else {
            format!("{toml}\n{FAST_CREATES}")
        };
        let toml = if toml.contains("[token]") {
            toml
        } else {
            format!("{toml}\n{LOOSE_TOKENS}")
        };
        let file = FileConfig::parse(&toml, std::path::Path::new("test.toml"))
            .expect("test config parses");
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            upstream: Some(upstream.to_string()),
            ..Overrides::default()
        };
        let env: HashMap<&str, String> = env.into_iter().collect();
        let lookup = move |name: &str| env.get(name).cloned();
        let settings = Settings::resolve(file, &overrides, &lookup).expect("test config is valid");
        let server = Server::bind(settings).await.expect("gateway binds");
        let url = format!("http://{}", server.local_addr());
        let admin_url = format!("http://{}", server.admin_addr());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Gw {
            url,
            admin_url,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// A gateway with anonymous access on loopback and the demo credentials.
    pub(crate) async fn anonymous(sim: &Sim) -> Gw {
        Gw::start("", &sim.url, demo_env()).await
    }

    /// One metric of this gateway, summed over the samples with these labels.
    pub(crate) async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.metrics().await, name, labels)
    }

    pub(crate) async fn metrics(&self) -> String {
        metrics_at(&self.admin_url).await
    }

    /// Waits until this gateway has `n` data-plane requests in flight.
    pub(crate) async fn wait_inflight(&self, n: usize) {
        eventually(
            &format!("{n} requests in flight"),
            Duration::from_secs(20),
            || async {
                let text = self.metrics().await;
                metric_opt(&text, "finovy_gateway_inflight_requests", &[]) == Some(n as f64)
            },
        )
        .await;
    }

    /// Stops accepting, drains, and waits until the server has returned.
    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server ran");
        }
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// `N` replicas started at the same time with one config (shared mode when it names a Redis).
pub(crate) async fn replicas<const N: usize>(
    toml: &str,
    upstream: &str,
    env: Vec<(&'static str, String)>,
) -> [Gw; N] {
    let started =
        futures_util::future::join_all((0..N).map(|_| Gw::start(toml, upstream, env.clone())))
            .await;
    started
        .try_into()
        .unwrap_or_else(|_: Vec<Gw>| unreachable!("N started"))
}

/// The Prometheus text of the admin listener at `admin_url`.
pub(crate) async fn metrics_at(admin_url: &str) -> String {
    get_text(&format!("{admin_url}/metrics")).await
}

/// The access lines of the request with id `id` in a gateway's log text.
pub(crate) fn access_lines<'a>(log: &'a str, id: &str) -> Vec<&'a str> {
    let needle = format!("request_id={id} ");
    log.lines().filter(|l| l.contains(&needle)).collect()
}

/// Sums the samples of metric `name` in Prometheus `text` whose labels include every
/// `name="value"` of `labels`; 0 when there is none.
pub(crate) fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_opt(text, name, labels).unwrap_or(0.0)
}

/// [`metric`], or `None` when no such sample is exported (a series that must exist, or must not).
pub(crate) fn metric_opt(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(None, |sum, v| Some(sum.unwrap_or(0.0) + v))
}

/// A unique file under the temporary directory holding `text`.
pub(crate) fn temp_file(name: &str, text: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "fgw-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&path, text).expect("write temp file");
    path
}

pub(crate) fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_finovy-gateway"))
}

/// The `listen` field of a log line, human (`listen=ADDR`) or JSON (`"listen":"ADDR"`).
fn listen_field(line: &str) -> Option<String> {
    let rest = line
        .split("listen=")
        .nth(1)
        .or_else(|| line.split("\"listen\":\"").nth(1))?;
    let addr: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    Some(addr)
}

/// The real binary running `serve`, with its log lines captured.
pub(crate) struct Bin {
    pub child: Child,
    pub url: String,
    pub admin_url: String,
    pub logs: Arc<Mutex<Vec<String>>>,
    lines: tokio::sync::watch::Receiver<usize>,
    /// The config file it was started with (rewrite it, then reload).
    pub config: PathBuf,
}

impl Bin {
    /// Starts `serve --config <toml>` on loopback port 0 and waits for both listeners' log lines.
    /// Without a `[token]` table in `toml`, [`LOOSE_TOKENS`] applies, as for [`Gw::start`].
    pub(crate) fn serve(toml: &str, upstream: &str, env: &[(&str, &str)]) -> Bin {
        Bin::serve_args(toml, upstream, env, &[])
    }

    /// [`Bin::serve`] with more arguments for `serve` (e.g. `--log-format json`).
    pub(crate) fn serve_args(
        toml: &str,
        upstream: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Bin {
        let config = if toml.contains("[token]") {
            temp_file("gateway.toml", toml)
        } else {
            temp_file("gateway.toml", &format!("{toml}\n{LOOSE_TOKENS}"))
        };
        let mut cmd = binary();
        cmd.args(["serve", "--config"])
            .arg(&config)
            .args(args)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--upstream",
                upstream,
            ])
            .env_remove("FINOVY_UUID")
            .env_remove("FINOVY_SECRET")
            .env_remove("FINOVY_TOKEN")
            .env_remove("FINOVY_UUID_FILE")
            .env_remove("FINOVY_SECRET_FILE")
            .env_remove("FINOVY_TOKEN_FILE")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the gateway binary");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        // The number of lines read so far: a waiter for a line wakes when it moves.
        let (lines_tx, lines) = tokio::sync::watch::channel(0usize);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for (marker, which) in [("gateway listening", "data"), ("admin listening", "admin")]
                {
                    if line.contains(marker)
                        && let Some(addr) = listen_field(&line)
                    {
                        let _ = tx.send((which, addr));
                    }
                }
                let mut sink = sink.lock().unwrap();
                sink.push(line);
                lines_tx.send_replace(sink.len());
            }
        });
        let mut url = None;
        let mut admin_url = None;
        while url.is_none() || admin_url.is_none() {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(("data", a)) => url = Some(format!("http://{a}")),
                Ok((_, a)) => admin_url = Some(format!("http://{a}")),
                Err(e) => panic!(
                    "the gateway did not start ({e}); its log:\n{}",
                    logs.lock().unwrap().join("\n")
                ),
            }
        }
        Bin {
            child,
            url: url.unwrap(),
            admin_url: admin_url.unwrap(),
            logs,
            lines,
            config,
        }
    }

    /// One metric of this process, as [`Gw::metric`].
    pub(crate) async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&metrics_at(&self.admin_url).await, name, labels)
    }

    pub(crate) fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until `count` log lines contain `needle` (the gateway writes its log in batches),
    /// woken by each line the reader takes in.
    pub(crate) async fn wait_for_log(&self, needle: &str, count: usize) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut lines = self.lines.clone();
        loop {
            let text = self.log_text();
            if text.lines().filter(|l| l.contains(needle)).count() >= count {
                return text;
            }
            match tokio::time::timeout_at(deadline, lines.changed()).await {
                // The process is gone (its stderr closed): nothing more will come.
                Ok(Err(_)) if text == self.log_text() => {
                    panic!("{count} lines with {needle:?} never came:\n{text}")
                }
                Ok(Ok(()) | Err(_)) => {}
                Err(e) => panic!("{count} lines with {needle:?} never came ({e}):\n{text}"),
            }
        }
    }

    /// Sends SIGTERM.
    pub(crate) fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Sends SIGHUP: reload the configuration.
    pub(crate) fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit (up to 30 s) and returns its exit code.
    pub(crate) fn wait_exit(&mut self) -> Option<i32> {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the gateway did not exit within 30 s");
    }
}

impl Drop for Bin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 20 ms until it holds; fails naming `what` once `within` has passed. For
/// states only another process can show (the simulator's counters, a replica's readiness).
pub(crate) async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_some(what, within, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await;
}

/// [`eventually`] for a check that finds something: polls until `check` gives `Some`, and
/// returns what it found.
pub(crate) async fn eventually_some<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll(within, || {
        let found = check();
        async move { found.await.ok_or(()) }
    })
    .await
    .unwrap_or_else(|()| panic!("{what}: not within {within:?}"))
}

/// Polls `check` every 20 ms until it gives `Ok`, for `within` at most; its last `Err` when time
/// is up, for a caller that reports what it saw rather than failing at once.
pub(crate) async fn poll<T, E, F, Fut>(within: Duration, mut check: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(found) => return Ok(found),
            Err(last) if tokio::time::Instant::now() >= deadline => return Err(last),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// `/readyz` of `admin_url`: its status and its JSON body.
pub(crate) async fn readyz(admin_url: &str) -> (u16, Value) {
    send_json(http().get(format!("{admin_url}/readyz"))).await
}

/// Polls `/readyz` of `admin_url` until it answers `status` (20 s at most); its body.
pub(crate) async fn readyz_until(admin_url: &str, status: u16) -> String {
    eventually_some(
        &format!("/readyz answers {status}"),
        Duration::from_secs(20),
        || async move {
            let r = http()
                .get(format!("{admin_url}/readyz"))
                .send()
                .await
                .ok()?;
            if r.status().as_u16() != status {
                return None;
            }
            r.text().await.ok()
        },
    )
    .await
}

/// The real binary as a replica with the demo credentials, once its `/readyz` says ready.
pub(crate) async fn replica_process(toml: &str, upstream: &str) -> Bin {
    let bin = Bin::serve(
        toml,
        upstream,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    readyz_until(&bin.admin_url, 200).await;
    bin
}

/// Sends `req`: the answer's status, headers and JSON body (the envelope). Every test sends its
/// requests through here, so that an answer that is not JSON fails the same way everywhere.
pub(crate) async fn answer(req: reqwest::RequestBuilder) -> (u16, HeaderMap, Value) {
    try_answer(req).await.unwrap_or_else(|e| panic!("{e}"))
}

/// [`answer`], or why there is none: no answer at all (a dead replica, a reset), or one whose
/// body is not JSON.
pub(crate) async fn try_answer(
    req: reqwest::RequestBuilder,
) -> Result<(u16, HeaderMap, Value), String> {
    let resp = req.send().await.map_err(|e| format!("no answer: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .json()
        .await
        .map_err(|e| format!("{status}: not a JSON body: {e}"))?;
    Ok((status, headers, body))
}

/// `GET url` with `headers`, through [`answer`].
pub(crate) async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, HeaderMap, Value) {
    let mut req = http().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    answer(req).await
}

/// Sends `req` and returns the answer's status and JSON body.
pub(crate) async fn send_json(req: reqwest::RequestBuilder) -> (u16, Value) {
    let (status, _, v) = answer(req).await;
    (status, v)
}

/// A GET's body as text.
pub(crate) async fn get_text(url: &str) -> String {
    http()
        .get(url)
        .send()
        .await
        .expect("an answer")
        .text()
        .await
        .expect("a body")
}

/// Buys a disk through the gateway at `gw_url` (anonymous, area 0, 20 GB) under a fresh
/// `Idempotency-Key`, so that two calls are two purchases; its `info` URL there.
pub(crate) async fn new_disk_info_url(gw_url: &str) -> String {
    let (status, created) = send_json(
        http()
            .post(format!("{gw_url}{DISK}/create"))
            .header("Idempotency-Key", fresh_key())
            .json(&serde_json::json!({"area": 0, "memory": 20, "isMount": 0})),
    )
    .await;
    assert_eq!(
        (status, &created["code"]),
        (200, &serde_json::json!(0)),
        "{created}"
    );
    format!("{gw_url}{DISK}/info/{}", created["data"].as_str().unwrap())
}

/// `n` GETs of `url` at once; their JSON answers.
pub(crate) async fn concurrent_gets(url: &str, n: usize) -> Vec<Value> {
    let client = http();
    let handles: Vec<_> = (0..n)
        .map(|_| tokio::spawn(send_json(client.get(url))))
        .collect();
    let mut out = Vec::with_capacity(n);
    for h in handles {
        out.push(h.await.expect("request task").1);
    }
    out
}
