//! The simulator and gateways in this process, each on loopback ports the OS chose, and the
//! config snippets tests build them with.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use finovy_gateway::config::{FileConfig, Overrides, Settings};
use finovy_gateway::server::Server;
use finovy_gateway::sim::{SimConfig, Simulator};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::*;

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

    /// Disks of these sizes made in `area` straight at the simulator, bypassing the gateway:
    /// what a reconciliation's list has to look through.
    pub(crate) async fn make_disks(&self, area: u32, sizes: impl IntoIterator<Item = u32>) {
        let token = self.token().await;
        for gb in sizes {
            let v: Value = http()
                .post(format!("{}/v1/PveMachineHardDisk/open/create", self.url))
                .header("Finovy-Access-Token", &token)
                .json(&serde_json::json!({"area": area, "memory": gb, "isMount": 0}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(v["code"].as_i64(), Some(0), "{v}");
        }
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
    /// The folder of this gateway's own SQLite ledger, removed when it is dropped.
    ledger_dir: Option<std::path::PathBuf>,
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
        let (toml, ledger_dir) = super::binary::with_ledger(&toml);
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
            ledger_dir,
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
        if let Some(dir) = self.ledger_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
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
