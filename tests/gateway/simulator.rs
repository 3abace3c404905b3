//! The upstream simulator, driven over real HTTP on loopback as the gateway and developers use it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use finovy_gateway::sim::seed::{
    HOST_AREA0, HOST_AREA1, HOST_AREA2, HOST_NEVER_ON, HOST_PREPAID, HOST_RUNNING,
};
use finovy_gateway::sim::{SimConfig, Simulator};
use reqwest::{Client, Method, StatusCode, Version};
use serde_json::{Value, json};

use crate::harness::{answer, eventually, eventually_some};

const DISK: &str = "/v1/PveMachineHardDisk/open";
const HOST: &str = "/v1/pve/open";
/// Generous, for a loaded 2-core machine: only a broken simulator comes near it.
const DEADLINE: Duration = Duration::from_secs(20);
/// Long enough that a transition never completes during a test.
const FOREVER: Duration = Duration::from_secs(3600);

/// A running simulator and a client holding a token for it.
struct Sim {
    base: String,
    client: Client,
    token: String,
}

/// No create interval, short mounts: most tests want neither in their way.
fn quick() -> SimConfig {
    SimConfig {
        create_min_interval: Duration::ZERO,
        mount_delay: Duration::from_millis(300),
        ..SimConfig::default()
    }
}

fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(DEADLINE)
        .build()
        .expect("client")
}

async fn spawn(cfg: SimConfig) -> SocketAddr {
    let sim = Simulator::bind(SocketAddr::from(([127, 0, 0, 1], 0)), cfg)
        .await
        .expect("bind");
    let addr = sim.local_addr();
    tokio::spawn(sim.run(std::future::pending()));
    addr
}

async fn start(cfg: SimConfig) -> Sim {
    let addr = spawn(cfg).await;
    let mut sim = Sim {
        base: format!("http://{addr}"),
        client: client(),
        token: String::new(),
    };
    sim.token = sim.new_token().await;
    sim
}

fn code(envelope: &Value) -> i64 {
    envelope["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("no code in {envelope}"))
}

impl Sim {
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// Sends and returns the HTTP status and the parsed JSON body.
    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let (status, headers, value) = answer(req).await;
        assert_eq!(headers["content-type"], "application/json");
        (StatusCode::from_u16(status).expect("a status"), value)
    }

    /// An API call with this client's token; business answers are always HTTP 200.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.call_as(Some(&self.token), method, path, body).await
    }

    async fn call_as(
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

    async fn get(&self, path: &str) -> Value {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn new_token(&self) -> String {
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

    async fn create(&self, body: Value) -> Value {
        self.post(&format!("{DISK}/create"), body).await
    }

    /// Creates a disk that must be accepted; answers its id.
    async fn create_ok(&self, body: Value) -> String {
        let answer = self.create(body).await;
        assert_eq!(code(&answer), 0, "{answer}");
        answer["data"].as_str().expect("disk id").to_owned()
    }

    async fn info(&self, id: &str) -> Value {
        self.get(&format!("{DISK}/info/{id}")).await
    }

    async fn update_status(&self, id: &str, status: Value) -> Value {
        self.call(
            Method::PUT,
            &format!("{DISK}/updateStatus"),
            Some(json!({"id": id, "status": status})),
        )
        .await
    }

    async fn memory_total(&self, area: &str) -> Value {
        self.get(&format!("{DISK}/memoryTotal/{area}")).await
    }

    async fn list(&self, body: Value) -> Value {
        self.post(&format!("{DISK}/getList"), body).await
    }

    /// Polls `path` until `field` equals `want`; panics past the deadline.
    async fn wait_for(&self, path: &str, field: &str, want: Value) -> Value {
        let what = format!("{path}: {field} becomes {want}");
        eventually_some(&what, DEADLINE, || async {
            let answer = self.get(path).await;
            (answer["data"][field] == want).then_some(answer)
        })
        .await
    }

    async fn wait_disk_status(&self, id: &str, status: &str) -> Value {
        self.wait_for(&format!("{DISK}/info/{id}"), "status", json!(status))
            .await
    }

    async fn wait_host_status(&self, id: &str, status: i64) -> Value {
        self.wait_for(&format!("{HOST}/one/{id}"), "status", json!(status))
            .await
    }

    async fn control(
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

    async fn stats(&self) -> Value {
        let (status, stats) = self.control(Method::GET, "/_sim/stats", None).await;
        assert_eq!(status, StatusCode::OK);
        stats
    }

    async fn fault(&self, body: Value) -> Value {
        let (status, answer) = self.control(Method::POST, "/_sim/fault", Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(code(&answer), 0, "{answer}");
        answer
    }
}

#[tokio::test]
async fn get_token_accepts_only_the_configured_pair() {
    let sim = start(SimConfig {
        token_ttl: Duration::from_secs(90),
        ..quick()
    })
    .await;
    let url = "/v1/auth/getToken";
    let answer = sim
        .call_as(
            None,
            Method::POST,
            url,
            Some(json!({"uuid": "demo-uuid", "secret": "demo-secret"})),
        )
        .await;
    assert_eq!(answer["msg"], "success");
    assert_eq!(answer["data"]["effectiveTime"], 90_000);
    let token = answer["data"]["token"].as_str().expect("token");
    assert_eq!(token.len(), 22);
    assert!(token.chars().all(|c| c.is_ascii_alphanumeric()));
    let trace = answer["traceId"].as_str().expect("traceId");
    assert_eq!(trace.len(), 32);
    assert!(trace.chars().all(|c| c.is_ascii_hexdigit()));

    for body in [
        json!({"uuid": "demo-uuid", "secret": "wrong"}),
        json!({"uuid": "someone", "secret": "demo-secret"}),
        json!({"uuid": "demo-uuid"}),
        json!({"secret": "demo-secret"}),
        json!({"uuid": 1, "secret": 2}),
        json!({}),
    ] {
        let answer = sim
            .call_as(None, Method::POST, url, Some(body.clone()))
            .await;
        assert_eq!(code(&answer), 401, "{body}: {answer}");
        assert_eq!(answer["data"], Value::Null);
    }

    // Both tokens (the one from `start` and this one) are valid at once.
    for token in [sim.token.as_str(), token] {
        let answer = sim
            .call_as(
                Some(token),
                Method::GET,
                &format!("{DISK}/memoryTotal/0"),
                None,
            )
            .await;
        assert_eq!(code(&answer), 0, "{answer}");
    }
}

#[tokio::test]
async fn calls_without_a_known_token_get_401() {
    let sim = start(quick()).await;
    let path = format!("{DISK}/memoryTotal/0");
    let missing = sim.call_as(None, Method::GET, &path, None).await;
    assert_eq!(code(&missing), 401);
    assert!(
        missing["msg"].as_str().unwrap().contains("missing"),
        "{missing}"
    );
    let unknown = sim
        .call_as(Some("not-a-token"), Method::GET, &path, None)
        .await;
    assert_eq!(code(&unknown), 401);
    assert!(
        unknown["msg"].as_str().unwrap().contains("unknown"),
        "{unknown}"
    );
    // The token is checked before anything else: an invalid create gets 401, not 1007.
    let create = sim
        .call_as(
            None,
            Method::POST,
            &format!("{DISK}/create"),
            Some(json!([])),
        )
        .await;
    assert_eq!(code(&create), 401);
    assert_eq!(code(&sim.get(&path).await), 0);
}

#[tokio::test]
async fn tokens_expire_after_their_ttl() {
    let ttl = Duration::from_millis(800);
    let sim = start(SimConfig {
        token_ttl: ttl,
        ..quick()
    })
    .await;
    let issued = Instant::now();
    let token = sim.new_token().await;
    let path = format!("{DISK}/memoryTotal/0");
    let answer = eventually_some("the token expires", DEADLINE, || async {
        let answer = sim.call_as(Some(&token), Method::GET, &path, None).await;
        (code(&answer) != 0).then_some(answer)
    })
    .await;
    assert!(issued.elapsed() >= ttl);
    assert_eq!(code(&answer), 401);
    assert!(
        answer["msg"].as_str().unwrap().contains("expired"),
        "{answer}"
    );
}

#[tokio::test]
async fn revoke_tokens_forgets_every_token() {
    let sim = start(quick()).await;
    let second = sim.new_token().await;
    let (status, answer) = sim.control(Method::POST, "/_sim/revoke-tokens", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["data"]["revoked"], 2);
    let path = format!("{DISK}/memoryTotal/0");
    for token in [sim.token.as_str(), second.as_str()] {
        let answer = sim.call_as(Some(token), Method::GET, &path, None).await;
        assert_eq!(code(&answer), 401);
        assert!(
            answer["msg"].as_str().unwrap().contains("unknown"),
            "{answer}"
        );
    }
    let fresh = sim.new_token().await;
    let answer = sim.call_as(Some(&fresh), Method::GET, &path, None).await;
    assert_eq!(code(&answer), 0, "{answer}");
}

#[tokio::test]
async fn every_create_rule_has_its_code_and_creates_nothing() {
    let sim = start(quick()).await;
    let cases = [
        (json!([1, 2]), 1007),
        (json!("text"), 1007),
        (json!({"memory": 20, "isMount": 0}), 1007),
        (json!({"area": 3, "memory": 20, "isMount": 0}), 1007),
        (json!({"area": -1, "memory": 20, "isMount": 0}), 1007),
        (json!({"area": "south", "memory": 20, "isMount": 0}), 1007),
        (json!({"area": 1.5, "memory": 20, "isMount": 0}), 1007),
        (json!({"area": 0, "isMount": 0}), 1007),
        (json!({"area": 0, "memory": "32", "isMount": 0}), 1007),
        (json!({"area": 0, "memory": 20.5, "isMount": 0}), 1007),
        (json!({"area": 0, "memory": null, "isMount": 0}), 1007),
        (json!({"area": 0, "memory": 19, "isMount": 0}), 220013),
        (json!({"area": 0, "memory": -5, "isMount": 0}), 220013),
        (json!({"area": 0, "memory": 20481, "isMount": 0}), 220014),
        (json!({"area": 0, "memory": u64::MAX, "isMount": 0}), 220014),
        (json!({"area": 0, "memory": 1e300, "isMount": 0}), 220014),
        (json!({"area": 0, "memory": 20}), 220020),
        (json!({"area": 0, "memory": 20, "isMount": 2}), 220020),
        (json!({"area": 0, "memory": 20, "isMount": "yes"}), 220020),
        (json!({"area": 0, "memory": 20, "isMount": 1}), 220015),
        (
            json!({"area": 0, "memory": 20, "isMount": 1, "pveId": ""}),
            220015,
        ),
        (
            json!({"area": 0, "memory": 20, "isMount": 1, "pveId": 7}),
            220015,
        ),
        (
            json!({"area": 0, "memory": 20, "isMount": 1, "pveId": "nohost"}),
            220016,
        ),
        (
            json!({"area": 0, "memory": 20, "isMount": 1, "pveId": HOST_RUNNING}),
            220009,
        ),
        (
            json!({"area": 0, "memory": 20, "isMount": 1, "pveId": HOST_NEVER_ON}),
            220012,
        ),
        (
            json!({"area": 0, "memory": 20, "isMount": 1, "pveId": HOST_PREPAID}),
            220017,
        ),
        (
            json!({"area": 0, "memory": 20, "isMount": 1, "pveId": HOST_AREA1}),
            220018,
        ),
        (
            json!({"area": "2", "memory": 20, "isMount": 1, "pveId": HOST_AREA0}),
            220018,
        ),
    ];
    for (body, want) in &cases {
        let answer = sim.create(body.clone()).await;
        assert_eq!(code(&answer), *want, "{body}: {answer}");
        assert!(!answer["msg"].as_str().unwrap().is_empty());
    }
    let malformed = sim
        .send(
            sim.request(Method::POST, &format!("{DISK}/create"))
                .header("Finovy-Access-Token", &sim.token)
                .body("{\"area\": 0,"),
        )
        .await;
    assert_eq!(code(&malformed.1), 1007);

    let stats = sim.stats().await;
    assert_eq!(stats["disks"], 0, "{stats}");
    assert_eq!(stats["calls"]["create"], cases.len() + 1);

    // The edges are accepted, numbers as strings included.
    sim.create_ok(json!({"area": "1", "memory": 20, "isMount": "0"}))
        .await;
    sim.create_ok(json!({"area": 2, "memory": 20480, "isMount": 0}))
        .await;
    assert_eq!(sim.stats().await["disks"], 2);
}

#[tokio::test]
async fn a_created_disk_waits_to_be_mounted() {
    let sim = start(quick()).await;
    let id = sim
        .create_ok(json!({"area": "1", "memory": 20, "isMount": 0}))
        .await;
    assert_eq!(id.len(), 10);
    assert!(id.chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
    let info = sim.info(&id).await;
    assert_eq!(code(&info), 0, "{info}");
    let disk = &info["data"];
    assert_eq!(disk["id"], id.as_str());
    assert_eq!(disk["uuid"], "demo-uuid");
    assert_eq!(disk["name"], format!("HD-{id}"));
    assert_eq!(disk["status"], "0");
    assert_eq!(disk["isMount"], 0);
    assert_eq!(disk["pveId"], Value::Null);
    assert_eq!(disk["bus"], "scsi");
    assert_eq!(disk["area"], "1");
    assert_eq!(disk["memory"], 20);
    assert_eq!(disk["useType"], "0");
    assert_eq!(disk["amount"], 0.02);
    assert!(disk["createTime"].as_u64().unwrap() > 1_700_000_000_000);

    let unknown = sim.info("NoSuchDisk").await;
    assert_eq!(code(&unknown), 220001);
    assert_eq!(unknown["data"], Value::Null);
}

#[tokio::test]
async fn a_mounting_create_goes_from_status_1_to_2() {
    let delay = Duration::from_millis(1500);
    let sim = start(SimConfig {
        mount_delay: delay,
        ..quick()
    })
    .await;
    let sent = Instant::now();
    let id = sim
        .create_ok(json!({"area": 0, "memory": 40, "isMount": 1, "pveId": HOST_AREA0}))
        .await;
    let info = sim.info(&id).await;
    let disk = &info["data"];
    assert_eq!(disk["status"], "1", "{info}");
    assert_eq!(disk["isMount"], 1);
    assert_eq!(disk["pveId"], HOST_AREA0);
    assert_eq!(disk["pveName"], "render-south-0");
    assert_eq!(disk["pveKey"], "scsi1");
    sim.wait_disk_status(&id, "2").await;
    assert!(sent.elapsed() >= delay);
}

#[tokio::test]
async fn creates_closer_than_the_minimum_interval_get_220025() {
    let interval = Duration::from_secs(2);
    let sim = start(SimConfig {
        create_min_interval: interval,
        ..quick()
    })
    .await;
    let body = json!({"area": 0, "memory": 20, "isMount": 0});
    sim.create_ok(body.clone()).await;
    let accepted = Instant::now();
    let refused = sim.create(body.clone()).await;
    assert_eq!(code(&refused), 220025, "{refused}");
    assert!(refused["msg"].as_str().unwrap().contains("too frequent"));
    let stats = sim.stats().await;
    assert_eq!(stats["tooFrequent"], 1);
    assert_eq!(stats["disks"], 1);

    // A refusal half-way through the interval: if refusals restarted it, the create at the end
    // of the first interval below would be refused too.
    tokio::time::sleep((interval / 2).saturating_sub(accepted.elapsed())).await;
    assert_eq!(code(&sim.create(body.clone()).await), 220025);
    // Passing the time the simulator measures.
    tokio::time::sleep(interval.saturating_sub(accepted.elapsed()) + Duration::from_millis(100))
        .await;
    // Neither that refusal nor an invalid create restarts the interval.
    let invalid = sim
        .create(json!({"area": 0, "memory": 1, "isMount": 0}))
        .await;
    assert_eq!(code(&invalid), 220013);
    sim.create_ok(body).await;
    assert_eq!(sim.stats().await["disks"], 2);
}

#[tokio::test]
async fn a_zero_interval_disables_the_create_rule() {
    let sim = start(quick()).await;
    for _ in 0..5 {
        sim.create_ok(json!({"area": 0, "memory": 20, "isMount": 0}))
            .await;
    }
    assert_eq!(sim.stats().await["tooFrequent"], 0);
}

#[tokio::test]
async fn pve_create_mounts_an_idle_disk_on_a_suitable_host() {
    let sim = start(quick()).await;
    let id = sim
        .create_ok(json!({"area": 0, "memory": 20, "isMount": 0}))
        .await;
    let path = format!("{DISK}/pveCreate");
    let cases = [
        (json!({"id": "NoSuchDisk", "pveId": HOST_AREA0}), 220001),
        (json!({"pveId": HOST_AREA0}), 1007),
        (json!({"id": id}), 220015),
        (json!({"id": id, "pveId": "nohost"}), 220016),
        (json!({"id": id, "pveId": HOST_RUNNING}), 220009),
        (json!({"id": id, "pveId": HOST_NEVER_ON}), 220012),
        (json!({"id": id, "pveId": HOST_PREPAID}), 220017),
        (json!({"id": id, "pveId": HOST_AREA2}), 220018),
    ];
    for (body, want) in cases {
        let answer = sim.post(&path, body.clone()).await;
        assert_eq!(code(&answer), want, "{body}: {answer}");
    }
    assert_eq!(sim.info(&id).await["data"]["status"], "0");

    let answer = sim
        .post(&path, json!({"id": id, "pveId": HOST_AREA0}))
        .await;
    assert_eq!(answer["data"], true, "{answer}");
    let info = sim.wait_disk_status(&id, "2").await;
    assert_eq!(info["data"]["pveId"], HOST_AREA0);
    assert_eq!(info["data"]["isMount"], 1);

    let again = sim
        .post(&path, json!({"id": id, "pveId": HOST_AREA0}))
        .await;
    assert_eq!(code(&again), 220002, "{again}");
}

#[tokio::test]
async fn a_host_carries_at_most_30_disks() {
    let sim = start(SimConfig {
        mount_delay: FOREVER,
        ..quick()
    })
    .await;
    let mounted = json!({"area": 1, "memory": 20, "isMount": 1, "pveId": HOST_AREA1});
    for _ in 0..30 {
        sim.create_ok(mounted.clone()).await;
    }
    let refused = sim.create(mounted).await;
    assert_eq!(code(&refused), 220010, "{refused}");
    let idle = sim
        .create_ok(json!({"area": 1, "memory": 20, "isMount": 0}))
        .await;
    let mount = sim
        .post(
            &format!("{DISK}/pveCreate"),
            json!({"id": idle, "pveId": HOST_AREA1}),
        )
        .await;
    assert_eq!(code(&mount), 220010);

    let list = sim
        .list(json!({"pveId": HOST_AREA1, "pageSize": 100}))
        .await;
    assert_eq!(list["data"]["totalCounts"], 30);
    let mut keys: Vec<String> = list["data"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["pveKey"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 30, "every disk has its own device key");
}

#[tokio::test]
async fn update_status_unmounts_and_destroys() {
    let sim = start(quick()).await;
    let id = sim
        .create_ok(json!({"area": 0, "memory": 30, "isMount": 0}))
        .await;
    for (status, want) in [(json!("7"), 1007), (json!(null), 1007), (json!("x"), 1007)] {
        let answer = sim.update_status(&id, status.clone()).await;
        assert_eq!(code(&answer), want, "{status}: {answer}");
    }
    assert_eq!(
        code(&sim.update_status("NoSuchDisk", json!("0")).await),
        220001
    );
    assert_eq!(code(&sim.update_status(&id, json!("0")).await), 220006);

    let mounted = sim
        .create_ok(json!({"area": 0, "memory": 20, "isMount": 1, "pveId": HOST_AREA0}))
        .await;
    sim.wait_disk_status(&mounted, "2").await;
    assert_eq!(code(&sim.update_status(&mounted, json!("5")).await), 220022);

    // Unmounting needs the host off.
    let on = sim
        .get(&format!("{HOST}/operate/{HOST_AREA0}?type=1"))
        .await;
    assert_eq!(on["data"], true, "{on}");
    assert_eq!(code(&sim.update_status(&mounted, json!("0")).await), 220009);
    sim.wait_host_status(HOST_AREA0, 2).await;
    assert_eq!(code(&sim.update_status(&mounted, json!("0")).await), 220009);
    sim.get(&format!("{HOST}/operate/{HOST_AREA0}?type=0"))
        .await;
    sim.wait_host_status(HOST_AREA0, 0).await;

    let answer = sim.update_status(&mounted, json!("0")).await;
    assert_eq!(answer["data"], true, "{answer}");
    let info = sim.info(&mounted).await;
    assert_eq!(
        info["data"]["status"], "0",
        "unmounting is immediate: {info}"
    );
    assert_eq!(info["data"]["pveId"], Value::Null);
    assert_eq!(
        info["data"]["isMount"], 1,
        "isMount says it was mounted once"
    );

    // Destroy: status 4, excluded from the area's total, then gone.
    assert_eq!(sim.memory_total("0").await["data"]["memory"], 50);
    let answer = sim.update_status(&id, json!(5)).await;
    assert_eq!(answer["data"], true, "{answer}");
    assert_eq!(sim.memory_total("0").await["data"]["memory"], 20);
    eventually("the destroyed disk goes", DEADLINE, || async {
        code(&sim.info(&id).await) == 220001
    })
    .await;
    assert_eq!(sim.stats().await["disks"], 1);
}

#[tokio::test]
async fn a_busy_disk_can_be_neither_unmounted_nor_destroyed_nor_mounted() {
    let sim = start(SimConfig {
        mount_delay: FOREVER,
        ..quick()
    })
    .await;
    let id = sim
        .create_ok(json!({"area": 2, "memory": 20, "isMount": 1, "pveId": HOST_AREA2}))
        .await;
    assert_eq!(sim.info(&id).await["data"]["status"], "1");
    assert_eq!(code(&sim.update_status(&id, json!("0")).await), 220007);
    assert_eq!(code(&sim.update_status(&id, json!("5")).await), 220022);

    let doomed = sim
        .create_ok(json!({"area": 2, "memory": 20, "isMount": 0}))
        .await;
    assert_eq!(sim.update_status(&doomed, json!("5")).await["data"], true);
    assert_eq!(sim.info(&doomed).await["data"]["status"], "4");
    assert_eq!(code(&sim.update_status(&doomed, json!("5")).await), 220022);
    assert_eq!(code(&sim.update_status(&doomed, json!("0")).await), 220007);
    let mount = sim
        .post(
            &format!("{DISK}/pveCreate"),
            json!({"id": doomed, "pveId": HOST_AREA2}),
        )
        .await;
    assert_eq!(code(&mount), 220002);
}

#[tokio::test]
async fn get_list_pages_and_filters() {
    let sim = start(SimConfig {
        mount_delay: FOREVER,
        ..quick()
    })
    .await;
    let mut ids = Vec::new();
    for area in [0, 1, 2, 1] {
        ids.push(
            sim.create_ok(json!({"area": area, "memory": 20, "isMount": 0}))
                .await,
        );
    }
    ids.push(
        sim.create_ok(json!({"area": 1, "memory": 20, "isMount": 1, "pveId": HOST_AREA1}))
            .await,
    );
    let ids_of = |answer: &Value| -> Vec<String> {
        answer["data"]["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{answer}"))
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };

    let all = sim.list(json!({})).await;
    assert_eq!(all["data"]["totalCounts"], 5);
    assert_eq!(ids_of(&all), ids, "creation order");
    let empty_body = sim
        .send(
            sim.request(Method::POST, &format!("{DISK}/getList"))
                .header("Finovy-Access-Token", &sim.token),
        )
        .await;
    assert_eq!(
        ids_of(&empty_body.1),
        ids,
        "an empty body means the defaults"
    );

    for (page, want) in [
        (1, &ids[0..2]),
        (2, &ids[2..4]),
        (3, &ids[4..5]),
        (4, &ids[5..5]),
    ] {
        let answer = sim.list(json!({"page": page, "pageSize": 2})).await;
        assert_eq!(ids_of(&answer), want, "page {page}");
        assert_eq!(answer["data"]["totalCounts"], 5);
    }
    let answer = sim.list(json!({"page": "2", "pageSize": "3"})).await;
    assert_eq!(ids_of(&answer), &ids[3..5]);

    let filters = [
        (json!({"area": 1}), vec![1, 3, 4]),
        (json!({"area": "2"}), vec![2]),
        (json!({"status": 0}), vec![0, 1, 2, 3]),
        (json!({"status": "1"}), vec![4]),
        (json!({"pveId": HOST_AREA1}), vec![4]),
        (json!({"useType": 0}), vec![0, 1, 2, 3, 4]),
        (json!({"useType": "1"}), vec![]),
        (json!({"area": 1, "status": 0}), vec![1, 3]),
    ];
    for (filter, want) in filters {
        let answer = sim.list(filter.clone()).await;
        let want: Vec<String> = want.into_iter().map(|i| ids[i].clone()).collect();
        assert_eq!(ids_of(&answer), want, "{filter}");
        assert_eq!(answer["data"]["totalCounts"], want.len());
    }

    for bad in [
        json!({"pageSize": 101}),
        json!({"pageSize": 0}),
        json!({"page": 0}),
        json!({"page": "first"}),
        json!({"area": "south"}),
        json!({"pveId": 5}),
        json!([]),
    ] {
        let answer = sim.list(bad.clone()).await;
        assert_eq!(code(&answer), 1007, "{bad}: {answer}");
    }
    assert_eq!(code(&sim.list(json!({"pageSize": 100})).await), 0);
}

#[tokio::test]
async fn memory_total_sums_an_area() {
    let sim = start(SimConfig {
        mount_delay: FOREVER,
        ..quick()
    })
    .await;
    for area in ["0", "1", "2"] {
        assert_eq!(sim.memory_total(area).await["data"]["memory"], 0);
    }
    let doomed = sim
        .create_ok(json!({"area": 0, "memory": 30, "isMount": 0}))
        .await;
    sim.create_ok(json!({"area": 0, "memory": 20, "isMount": 1, "pveId": HOST_AREA0}))
        .await;
    sim.create_ok(json!({"area": 1, "memory": 45, "isMount": 0}))
        .await;
    assert_eq!(sim.memory_total("0").await["data"]["memory"], 50);
    assert_eq!(sim.memory_total("1").await["data"]["memory"], 45);
    assert_eq!(sim.memory_total("2").await["data"]["memory"], 0);
    sim.update_status(&doomed, json!("5")).await;
    assert_eq!(sim.info(&doomed).await["data"]["status"], "4");
    assert_eq!(sim.memory_total("0").await["data"]["memory"], 20);
    for bad in ["3", "-1", "x", "99999999999999999999999"] {
        assert_eq!(code(&sim.memory_total(bad).await), 1007, "{bad}");
    }
}

#[tokio::test]
async fn host_endpoints_work() {
    let sim = start(quick()).await;
    let images = sim.get(&format!("{HOST}/image")).await;
    assert!(
        images["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == "img-ubuntu2204"),
        "{images}"
    );
    for kind in [0, 1] {
        let packages = sim.get(&format!("{HOST}/packAge/{kind}")).await;
        let packages = packages["data"].as_array().unwrap();
        assert!(!packages.is_empty());
        assert!(packages.iter().all(|p| p["type"] == kind));
    }
    assert_eq!(code(&sim.get(&format!("{HOST}/packAge/2")).await), 1007);

    let page = sim.get(&format!("{HOST}/mypage")).await;
    assert_eq!(page["data"]["totalCounts"], 6);
    let hosts = page["data"]["data"].as_array().unwrap();
    assert_eq!(hosts.len(), 6);
    assert!(hosts.iter().all(|h| h.get("hostPw").is_none()), "{page}");
    let second = sim.get(&format!("{HOST}/mypage?page=2&pageSize=4")).await;
    assert_eq!(second["data"]["data"].as_array().unwrap().len(), 2);
    for bad in ["pageSize=26", "pageSize=0", "page=0", "page=x"] {
        let answer = sim.get(&format!("{HOST}/mypage?{bad}")).await;
        assert_eq!(code(&answer), 1007, "{bad}");
    }

    let one = sim.get(&format!("{HOST}/one/{HOST_AREA0}")).await;
    let host = &one["data"];
    assert_eq!(host["id"], HOST_AREA0);
    assert_eq!(host["hostPw"], "demo-host-pw");
    assert_eq!(
        (host["area"].clone(), host["status"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(host["useType"], 0);
    for path in [
        format!("{HOST}/one/nohost"),
        format!("{HOST}/operate/nohost?type=1"),
        format!("{HOST}/reboot/nohost"),
    ] {
        assert_eq!(code(&sim.get(&path).await), 1021, "{path}");
    }
    let delete_unknown = sim
        .call(Method::DELETE, &format!("{HOST}/delete/nohost"), None)
        .await;
    assert_eq!(code(&delete_unknown), 1021);

    // Creating hosts.
    let create = format!("{HOST}/createquantity");
    assert_eq!(
        code(
            &sim.post(&create, json!({"packageId": "pkg-west-3090"}))
                .await
        ),
        1007
    );
    let prepaid_package = json!({"packageId": "pkg-south-3090-rent", "imageId": "img-win10"});
    assert_eq!(
        code(&sim.post(&create, prepaid_package.clone()).await),
        7005
    );
    let created = sim
        .post(
            &create,
            json!({"packageId": "pkg-west-3090", "imageId": "img-ubuntu2204"}),
        )
        .await;
    let host_id = created["data"].as_str().expect("host id").to_owned();
    let detail = sim.get(&format!("{HOST}/one/{host_id}")).await;
    assert_eq!(detail["data"]["area"], 1);
    assert_eq!(detail["data"]["status"], 0);
    assert_eq!(detail["data"]["useType"], 0);
    assert_eq!(detail["data"]["hostPw"].as_str().unwrap().len(), 12);
    let rent = format!("{HOST}/createRent");
    let mut rent_body = prepaid_package;
    rent_body["periodNumber"] = json!(1);
    rent_body["periodType"] = json!(6);
    assert_eq!(code(&sim.post(&rent, rent_body.clone()).await), 1007);
    rent_body["periodType"] = json!("3");
    let rented = sim.post(&rent, rent_body).await;
    let rented_id = rented["data"].as_str().expect("host id");
    let rented = sim.get(&format!("{HOST}/one/{rented_id}")).await;
    assert_eq!(rented["data"]["useType"], 1);
    assert_eq!(sim.stats().await["hosts"], 8);

    // A new host is delivered off after its first boot: disks mount on it.
    let disk = sim
        .create_ok(json!({"area": 1, "memory": 20, "isMount": 1, "pveId": host_id}))
        .await;
    sim.wait_disk_status(&disk, "2").await;

    // Power: on, reboot, off.
    let operate = |kind: &str| format!("{HOST}/operate/{host_id}?type={kind}");
    assert_eq!(code(&sim.get(&operate("7")).await), 1007);
    assert_eq!(
        code(&sim.get(&format!("{HOST}/operate/{host_id}")).await),
        1007
    );
    assert_eq!(
        code(&sim.get(&format!("{HOST}/reboot/{host_id}")).await),
        1003
    );
    assert_eq!(sim.get(&operate("1")).await["data"], true);
    sim.wait_host_status(&host_id, 2).await;
    assert_eq!(sim.get(&operate("1")).await["data"], true, "already on");
    let reboot = sim.get(&format!("{HOST}/reboot/{host_id}")).await;
    assert_eq!(reboot["data"], true);
    sim.wait_host_status(&host_id, 2).await;
    assert_eq!(sim.get(&operate("0")).await["data"], true);
    sim.wait_host_status(&host_id, 0).await;

    // Deleting a host detaches its disks.
    let deleted = sim
        .call(Method::DELETE, &format!("{HOST}/delete/{host_id}"), None)
        .await;
    assert_eq!(deleted["data"], true);
    assert_eq!(code(&sim.get(&format!("{HOST}/one/{host_id}")).await), 1021);
    let info = sim.info(&disk).await;
    assert_eq!(info["data"]["status"], "0");
    assert_eq!(info["data"]["pveId"], Value::Null);
    assert_eq!(sim.stats().await["hosts"], 7);
}

#[tokio::test]
async fn a_host_changing_power_state_refuses_another_change() {
    let sim = start(SimConfig {
        mount_delay: FOREVER,
        ..quick()
    })
    .await;
    let on = sim
        .get(&format!("{HOST}/operate/{HOST_AREA0}?type=1"))
        .await;
    assert_eq!(on["data"], true);
    let booting = sim.get(&format!("{HOST}/one/{HOST_AREA0}")).await;
    assert_eq!(booting["data"]["status"], 1);
    for path in [
        format!("{HOST}/operate/{HOST_AREA0}?type=0"),
        format!("{HOST}/reboot/{HOST_AREA0}"),
    ] {
        assert_eq!(code(&sim.get(&path).await), 6000, "{path}");
    }
    let off = sim
        .get(&format!("{HOST}/operate/{HOST_RUNNING}?type=0"))
        .await;
    assert_eq!(off["data"], true);
    let stopping = sim.get(&format!("{HOST}/one/{HOST_RUNNING}")).await;
    assert_eq!(stopping["data"]["status"], 4);
    let again = sim
        .get(&format!("{HOST}/operate/{HOST_RUNNING}?type=1"))
        .await;
    assert_eq!(code(&again), 6001);
}

#[tokio::test]
async fn a_host_that_never_booted_accepts_disks_after_its_first_boot() {
    let sim = start(quick()).await;
    let body = json!({"area": 0, "memory": 20, "isMount": 1, "pveId": HOST_NEVER_ON});
    assert_eq!(code(&sim.create(body.clone()).await), 220012);
    sim.get(&format!("{HOST}/operate/{HOST_NEVER_ON}?type=1"))
        .await;
    sim.wait_host_status(HOST_NEVER_ON, 2).await;
    sim.get(&format!("{HOST}/operate/{HOST_NEVER_ON}?type=0"))
        .await;
    sim.wait_host_status(HOST_NEVER_ON, 0).await;
    sim.create_ok(body).await;
}

#[tokio::test]
async fn stats_count_every_call_that_reached_the_simulator() {
    let sim = start(quick()).await;
    let stats = sim.stats().await;
    let names = [
        "getToken",
        "create",
        "info",
        "getList",
        "pveCreate",
        "updateStatus",
        "memoryTotal",
        "image",
        "packAge",
        "createQuantity",
        "createRent",
        "operate",
        "reboot",
        "one",
        "mypage",
        "delete",
        "balance",
        "other",
    ];
    assert_eq!(
        stats["calls"].as_object().unwrap().len(),
        names.len(),
        "{stats}"
    );
    for name in names {
        let want = u64::from(name == "getToken");
        assert_eq!(stats["calls"][name], want, "{name}: {stats}");
    }

    sim.info("NoSuchDisk").await;
    sim.call_as(None, Method::GET, &format!("{DISK}/info/x"), None)
        .await;
    sim.call_as(Some("bogus"), Method::POST, &format!("{DISK}/create"), None)
        .await;
    sim.get(&format!("{HOST}/mypage")).await;
    let (status, _) = sim.control(Method::GET, "/v1/no/such/path", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = sim
        .control(Method::DELETE, &format!("{DISK}/create"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Control calls are not counted.
    sim.control(Method::GET, "/_sim/requests", None).await;

    let stats = sim.stats().await;
    assert_eq!(stats["calls"]["info"], 2, "{stats}");
    assert_eq!(stats["calls"]["create"], 1);
    assert_eq!(stats["calls"]["mypage"], 1);
    assert_eq!(stats["calls"]["other"], 2);
    assert_eq!(stats["total"], 7);
    assert_eq!(stats["tooFrequent"], 0);
    assert_eq!(stats["disks"], 0);
    assert_eq!(stats["hosts"], 6);
}

#[tokio::test]
async fn the_request_log_shows_what_was_received() {
    let sim = start(quick()).await;
    let answer = sim
        .send(
            sim.request(Method::POST, &format!("{DISK}/getList?trace=1"))
                .header("Finovy-Access-Token", &sim.token)
                .header("X-Request-Id", "req-42")
                .header("X-Multi", "a")
                .header("X-Multi", "b")
                .body(r#"{"page":1}"#),
        )
        .await;
    assert_eq!(code(&answer.1), 0);
    let (_, log) = sim.control(Method::GET, "/_sim/requests", None).await;
    let log = log.as_array().expect("a list");
    assert_eq!(log.len(), 2, "getToken, then getList");
    assert_eq!(log[0]["path"], "/v1/auth/getToken");
    let last = &log[1];
    assert_eq!(last["method"], "POST");
    assert_eq!(last["path"], format!("{DISK}/getList?trace=1"));
    assert_eq!(last["headers"]["finovy-access-token"], sim.token.as_str());
    assert_eq!(last["headers"]["x-request-id"], "req-42");
    assert_eq!(last["headers"]["x-multi"], "a, b");
    assert_eq!(last["body"], r#"{"page":1}"#);

    // The log keeps the last 200, oldest first.
    for i in 0..205 {
        sim.send(sim.request(Method::GET, &format!("/v1/nothing?i={i}")))
            .await;
    }
    let (_, log) = sim.control(Method::GET, "/_sim/requests", None).await;
    let log = log.as_array().expect("a list");
    assert_eq!(log.len(), 200);
    assert_eq!(log[0]["path"], "/v1/nothing?i=5");
    assert_eq!(log[199]["path"], "/v1/nothing?i=204");
}

#[tokio::test]
async fn fault_error_answers_500_and_does_nothing() {
    let sim = start(quick()).await;
    assert_eq!(
        sim.fault(json!({"mode": "error"})).await["data"]["mode"],
        "error"
    );
    let (status, answer) = sim
        .send(
            sim.request(Method::POST, &format!("{DISK}/create"))
                .header("Finovy-Access-Token", &sim.token)
                .json(&json!({"area": 0, "memory": 20, "isMount": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(code(&answer), 500);
    assert_eq!(answer["success"], false);
    let (status, answer) = sim
        .send(
            sim.request(Method::POST, "/v1/auth/getToken")
                .json(&json!({"uuid": "demo-uuid", "secret": "demo-secret"})),
        )
        .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::INTERNAL_SERVER_ERROR, 500)
    );
    let stats = sim.stats().await;
    assert_eq!(stats["disks"], 0, "nothing was created");
    assert_eq!(stats["calls"]["create"], 1, "faulted calls are counted");
    assert_eq!(stats["calls"]["getToken"], 2);

    sim.fault(json!({"mode": "none"})).await;
    sim.create_ok(json!({"area": 0, "memory": 20, "isMount": 0}))
        .await;
}

#[tokio::test]
async fn fault_slow_holds_the_answer_back() {
    let sim = start(quick()).await;
    let latency = Duration::from_millis(700);
    let set = sim.fault(json!({"mode": "slow", "latency": "700ms"})).await;
    assert_eq!(set["data"], json!({"mode": "slow", "latency": "700ms"}));
    let started = Instant::now();
    let answer = sim.memory_total("0").await;
    assert!(started.elapsed() >= latency, "{:?}", started.elapsed());
    assert_eq!(code(&answer), 0, "answered normally: {answer}");

    // Control endpoints are never delayed.
    let started = Instant::now();
    sim.stats().await;
    assert!(started.elapsed() < latency);

    let set = sim.fault(json!({"mode": "slow"})).await;
    assert_eq!(set["data"]["latency"], "1s", "default latency");
}

#[tokio::test]
async fn fault_garbage_answers_something_that_is_not_json() {
    let sim = start(quick()).await;
    sim.fault(json!({"mode": "garbage"})).await;
    let response = sim
        .request(Method::GET, &format!("{DISK}/info/x"))
        .header("Finovy-Access-Token", &sim.token)
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.bytes().await.expect("body");
    assert!(!body.is_empty());
    assert!(serde_json::from_slice::<Value>(&body).is_err(), "{body:?}");
}

#[tokio::test]
async fn fault_reset_closes_the_connection_without_an_answer() {
    let sim = start(quick()).await;
    sim.fault(json!({"mode": "reset"})).await;
    for version_client in [client(), h2_client()] {
        let result = version_client
            .get(format!("{}{DISK}/info/x", sim.base))
            .header("Finovy-Access-Token", &sim.token)
            .send()
            .await;
        let err = result.expect_err("no HTTP answer at all");
        assert!(err.status().is_none(), "{err:?}");
    }
    let stats = sim.stats().await;
    assert_eq!(
        stats["calls"]["info"], 2,
        "the requests did reach the simulator"
    );

    sim.fault(json!({"mode": "none"})).await;
    assert_eq!(code(&sim.info("x").await), 220001, "back to normal");
}

#[tokio::test]
async fn bad_fault_requests_are_refused() {
    let sim = start(quick()).await;
    for body in [
        r#"{"mode": "explode"}"#,
        r#"{"latency": "1s"}"#,
        r#"{"mode": "slow", "latency": "soon"}"#,
        r#"{"mode": "slow", "latency": 5}"#,
        "not json",
        "[]",
    ] {
        let (status, answer) = sim
            .send(sim.request(Method::POST, "/_sim/fault").body(body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(code(&answer), 1007, "{body}");
    }
    assert_eq!(code(&sim.info("x").await), 220001, "no fault was set");
}

#[tokio::test]
async fn configured_latency_delays_api_answers_only() {
    let latency = Duration::from_millis(800);
    let sim = start(SimConfig { latency, ..quick() }).await;
    let started = Instant::now();
    sim.info("x").await;
    assert!(started.elapsed() >= latency);
    let started = Instant::now();
    sim.control(Method::GET, "/_sim/requests", None).await;
    assert!(started.elapsed() < latency);
}

#[tokio::test]
async fn reset_returns_to_the_start_but_keeps_tokens() {
    let sim = start(SimConfig {
        create_min_interval: FOREVER,
        ..quick()
    })
    .await;
    let body = json!({"area": 0, "memory": 20, "isMount": 0});
    sim.create_ok(body.clone()).await;
    assert_eq!(code(&sim.create(body.clone()).await), 220025);
    let deleted = sim
        .call(Method::DELETE, &format!("{HOST}/delete/{HOST_AREA0}"), None)
        .await;
    assert_eq!(deleted["data"], true);
    sim.get(&format!("{HOST}/operate/{HOST_RUNNING}?type=0"))
        .await;
    sim.fault(json!({"mode": "error"})).await;

    let (status, answer) = sim.control(Method::POST, "/_sim/reset", None).await;
    assert_eq!((status, code(&answer)), (StatusCode::OK, 0));

    let stats = sim.stats().await;
    assert_eq!(stats["total"], 0, "{stats}");
    assert_eq!(stats["tooFrequent"], 0);
    assert_eq!(stats["disks"], 0);
    assert_eq!(stats["hosts"], 6);
    let (_, log) = sim.control(Method::GET, "/_sim/requests", None).await;
    assert_eq!(log, json!([]));
    // No fault, the old token still valid, seeded hosts back as they were, create timer restarted.
    let one = sim.get(&format!("{HOST}/one/{HOST_AREA0}")).await;
    assert_eq!(code(&one), 0, "{one}");
    let running = sim.get(&format!("{HOST}/one/{HOST_RUNNING}")).await;
    assert_eq!(running["data"]["status"], 2);
    sim.create_ok(body).await;
}

#[tokio::test]
async fn unknown_paths_and_methods_get_404() {
    let sim = start(quick()).await;
    for (method, path) in [
        (Method::GET, "/"),
        (Method::GET, "/v1/auth/getToken"),
        (Method::GET, "/v1/PveMachineHardDisk/open/create"),
        (Method::GET, "/v1/PveMachineHardDisk/open/info/"),
        (Method::GET, "/v1/PveMachineHardDisk/open/info/a/b"),
        (Method::POST, "/v1/pve/open/one/x"),
        (Method::GET, "/_sim/nothing"),
        (Method::POST, "/_sim/stats"),
    ] {
        let (status, answer) = sim
            .send(
                sim.request(method.clone(), path)
                    .header("Finovy-Access-Token", &sim.token),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(code(&answer), 404);
        assert_eq!(answer["success"], false);
    }
}

#[tokio::test]
async fn odd_input_gets_an_answer_never_a_crash() {
    let sim = start(quick()).await;
    let token = sim.token.clone();
    let bodies: [&[u8]; 7] = [
        b"\xff\xfe\x00garbage",
        b"null",
        b"12345678901234567890123456789012345678901234567890",
        br#"{"id": [], "pveId": {}, "status": 1e400, "page": -9223372036854775808, "pageSize": 1e30}"#,
        br#"{"id": "x", "pveId": "y", "status": "-0", "page": "99999999999999999999", "area": true}"#,
        br#"{"area": 0, "memory": -9223372036854775808, "isMount": 0}"#,
        &[b'['; 10_000],
    ];
    let routes = [
        (Method::POST, "/v1/auth/getToken".to_owned()),
        (Method::POST, format!("{DISK}/create")),
        (Method::POST, format!("{DISK}/getList")),
        (Method::POST, format!("{DISK}/pveCreate")),
        (Method::PUT, format!("{DISK}/updateStatus")),
        (Method::POST, format!("{HOST}/createquantity")),
        (Method::POST, format!("{HOST}/createRent")),
        (
            Method::GET,
            format!("{HOST}/mypage?page=99999999999999999999&pageSize=-1"),
        ),
        (
            Method::GET,
            format!("{HOST}/mypage?page=9223372036854775807&pageSize=25"),
        ),
        (Method::GET, format!("{HOST}/operate/{HOST_AREA0}?type")),
        (Method::GET, format!("{DISK}/memoryTotal/%FF")),
        (Method::GET, format!("{DISK}/info/%00%FF")),
    ];
    for (method, path) in &routes {
        for body in bodies {
            let (status, answer) = sim
                .send(
                    sim.request(method.clone(), path)
                        .header("Finovy-Access-Token", &token)
                        .body(body.to_vec()),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{method} {path}");
            assert!(answer["code"].is_i64(), "{answer}");
        }
    }
    let bad_header = sim
        .send(sim.request(Method::GET, &format!("{DISK}/info/x")).header(
            "Finovy-Access-Token",
            reqwest::header::HeaderValue::from_bytes(b"\xfftoken").unwrap(),
        ))
        .await;
    assert_eq!(code(&bad_header.1), 401);
    let (status, answer) = sim
        .send(
            sim.request(Method::POST, &format!("{DISK}/create"))
                .header("Finovy-Access-Token", &token)
                .body(vec![b' '; 2 * 1024 * 1024]),
        )
        .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::PAYLOAD_TOO_LARGE, 1007)
    );
    // Still serving.
    assert_eq!(code(&sim.memory_total("0").await), 0);
}

fn h2_client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(DEADLINE)
        .http2_prior_knowledge()
        .build()
        .expect("h2 client")
}

#[tokio::test]
async fn h2c_is_served_on_the_same_port() {
    let mut sim = start(quick()).await;
    sim.client = h2_client();
    sim.token = sim.new_token().await;
    let response = sim
        .request(Method::GET, &format!("{DISK}/memoryTotal/1"))
        .header("Finovy-Access-Token", &sim.token)
        .send()
        .await
        .expect("h2 answer");
    assert_eq!(response.version(), Version::HTTP_2);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(code(&answer), 0, "{answer}");
    let id = sim
        .create_ok(json!({"area": 1, "memory": 20, "isMount": 0}))
        .await;
    assert_eq!(sim.info(&id).await["data"]["status"], "0");
}

#[tokio::test]
async fn run_returns_once_shutdown_resolves() {
    let sim = Simulator::bind(SocketAddr::from(([127, 0, 0, 1], 0)), quick())
        .await
        .expect("bind");
    let addr = sim.local_addr();
    assert_ne!(addr.port(), 0);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(sim.run(async {
        let _ = stopped.await;
    }));
    let client = client();
    let url = format!("http://{addr}/_sim/stats");
    assert!(
        client
            .get(&url)
            .send()
            .await
            .expect("served")
            .status()
            .is_success()
    );
    stop.send(()).expect("still running");
    tokio::time::timeout(DEADLINE, running)
        .await
        .expect("run returned")
        .expect("no panic")
        .expect("no error");
    assert!(client.get(&url).send().await.is_err(), "no longer serving");
}
