//! A simulator started in this process and a client holding a token for it, with a method per
//! endpoint, so that each scenario reads as calls to the upstream's API.

use std::net::SocketAddr;
use std::time::Duration;

use finovy_gateway::sim::{SimConfig, Simulator};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{answer, eventually_some};

pub(super) const DISK: &str = "/v1/PveMachineHardDisk/open";
pub(super) const HOST: &str = "/v1/pve/open";
/// Generous, for a loaded 2-core machine: only a broken simulator comes near it.
pub(super) const DEADLINE: Duration = Duration::from_secs(20);
/// Long enough that a transition never completes during a test.
pub(super) const FOREVER: Duration = Duration::from_secs(3600);

/// A running simulator and a client holding a token for it.
pub(super) struct Sim {
    pub(super) base: String,
    pub(super) client: Client,
    pub(super) token: String,
}

/// No create interval, short mounts: most tests want neither in their way.
pub(super) fn quick() -> SimConfig {
    SimConfig {
        create_min_interval: Duration::ZERO,
        mount_delay: Duration::from_millis(300),
        ..SimConfig::default()
    }
}

pub(super) fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(DEADLINE)
        .build()
        .expect("client")
}

/// A client that speaks h2 without TLS (prior knowledge).
pub(super) fn h2_client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(DEADLINE)
        .http2_prior_knowledge()
        .build()
        .expect("h2 client")
}

pub(super) async fn spawn(cfg: SimConfig) -> SocketAddr {
    let sim = Simulator::bind(SocketAddr::from(([127, 0, 0, 1], 0)), cfg)
        .await
        .expect("bind");
    let addr = sim.local_addr();
    tokio::spawn(sim.run(std::future::pending()));
    addr
}

pub(super) async fn start(cfg: SimConfig) -> Sim {
    let addr = spawn(cfg).await;
    let mut sim = Sim {
        base: format!("http://{addr}"),
        client: client(),
        token: String::new(),
    };
    sim.token = sim.new_token().await;
    sim
}

pub(super) fn code(envelope: &Value) -> i64 {
    envelope["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("no code in {envelope}"))
}

impl Sim {
    pub(super) fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// Sends and returns the HTTP status and the parsed JSON body.
    pub(super) async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let (status, headers, value) = answer(req).await;
        assert_eq!(headers["content-type"], "application/json");
        (StatusCode::from_u16(status).expect("a status"), value)
    }

    /// An API call with this client's token; business answers are always HTTP 200.
    pub(super) async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.call_as(Some(&self.token), method, path, body).await
    }

    pub(super) async fn call_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let mut req = self.request(method, path);
        if let Some(token) = token {
            req = req.header("Finovy-Access-Token", token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let (status, value) = self.send(req).await;
        assert_eq!(status, StatusCode::OK, "{value}");
        assert_eq!(value["success"], json!(code(&value) == 0), "{value}");
        value
    }

    pub(super) async fn get(&self, path: &str) -> Value {
        self.call(Method::GET, path, None).await
    }

    pub(super) async fn post(&self, path: &str, body: Value) -> Value {
        self.call(Method::POST, path, Some(body)).await
    }

    pub(super) async fn new_token(&self) -> String {
        let answer = self
            .call_as(
                None,
                Method::POST,
                "/v1/auth/getToken",
                Some(json!({"uuid": "demo-uuid", "secret": "demo-secret"})),
            )
            .await;
        assert_eq!(code(&answer), 0, "{answer}");
        answer["data"]["token"].as_str().expect("token").to_owned()
    }

    pub(super) async fn create(&self, body: Value) -> Value {
        self.post(&format!("{DISK}/create"), body).await
    }

    /// Creates a disk that must be accepted; answers its id.
    pub(super) async fn create_ok(&self, body: Value) -> String {
        let answer = self.create(body).await;
        assert_eq!(code(&answer), 0, "{answer}");
        answer["data"].as_str().expect("disk id").to_owned()
    }

    pub(super) async fn info(&self, id: &str) -> Value {
        self.get(&format!("{DISK}/info/{id}")).await
    }

    pub(super) async fn update_status(&self, id: &str, status: Value) -> Value {
        self.call(
            Method::PUT,
            &format!("{DISK}/updateStatus"),
            Some(json!({"id": id, "status": status})),
        )
        .await
    }

    pub(super) async fn memory_total(&self, area: &str) -> Value {
        self.get(&format!("{DISK}/memoryTotal/{area}")).await
    }

    pub(super) async fn list(&self, body: Value) -> Value {
        self.post(&format!("{DISK}/getList"), body).await
    }

    /// Polls `path` until `field` equals `want`; panics past the deadline.
    pub(super) async fn wait_for(&self, path: &str, field: &str, want: Value) -> Value {
        let what = format!("{path}: {field} becomes {want}");
        eventually_some(&what, DEADLINE, || async {
            let answer = self.get(path).await;
            (answer["data"][field] == want).then_some(answer)
        })
        .await
    }

    pub(super) async fn wait_disk_status(&self, id: &str, status: &str) -> Value {
        self.wait_for(&format!("{DISK}/info/{id}"), "status", json!(status))
            .await
    }

    pub(super) async fn wait_host_status(&self, id: &str, status: i64) -> Value {
        self.wait_for(&format!("{HOST}/one/{id}"), "status", json!(status))
            .await
    }

    pub(super) async fn control(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.request(method, path);
        if let Some(body) = body {
            req = req.json(&body);
        }
        self.send(req).await
    }

    pub(super) async fn stats(&self) -> Value {
        let (status, stats) = self.control(Method::GET, "/_sim/stats", None).await;
        assert_eq!(status, StatusCode::OK);
        stats
    }

    pub(super) async fn fault(&self, body: Value) -> Value {
        let (status, answer) = self.control(Method::POST, "/_sim/fault", Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(code(&answer), 0, "{answer}");
        answer
    }
}
