//! Every route reaches the simulator and its answer comes back unchanged.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::*;

/// The answer without its `traceId`, which differs per call.
fn without_trace(mut v: Value) -> Value {
    v.as_object_mut().expect("an envelope").remove("traceId");
    v
}

async fn call(base: &str, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = http().request(method, format!("{base}{path}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(ct.as_deref(), Some("application/json"), "{path}");
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_reaches_the_simulator() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    let (_, created) = call(
        &gw.url,
        Method::POST,
        &format!("{DISK}/create"),
        Some(json!({"area": 0, "memory": 20, "isMount": 0})),
    )
    .await;
    assert_eq!(created["code"], 0, "{created}");
    let id = created["data"].as_str().expect("disk id").to_string();
    let host = "doesNotExist";
    let cases: Vec<(&str, Method, String, Option<Value>)> = vec![
        ("info", Method::GET, format!("{DISK}/info/{id}"), None),
        (
            "getList",
            Method::POST,
            format!("{DISK}/getList"),
            Some(json!({"page": 1, "pageSize": 10})),
        ),
        (
            "memoryTotal",
            Method::GET,
            format!("{DISK}/memoryTotal/0"),
            None,
        ),
        (
            "pveCreate",
            Method::POST,
            format!("{DISK}/pveCreate"),
            Some(json!({"id": id, "pveId": host})),
        ),
        (
            "updateStatus",
            Method::PUT,
            format!("{DISK}/updateStatus"),
            Some(json!({"id": id, "status": "5"})),
        ),
        ("image", Method::GET, "/v1/pve/open/image".into(), None),
        (
            "packAge",
            Method::GET,
            "/v1/pve/open/packAge/0".into(),
            None,
        ),
        (
            "createQuantity",
            Method::POST,
            "/v1/pve/open/createquantity".into(),
            Some(json!({"packageId": "x", "imageId": "y"})),
        ),
        (
            "createRent",
            Method::POST,
            "/v1/pve/open/createRent".into(),
            Some(json!({"packageId": "x", "imageId": "y", "periodNumber": 1, "periodType": 1})),
        ),
        (
            "operate",
            Method::GET,
            format!("/v1/pve/open/operate/{host}?type=0"),
            None,
        ),
        (
            "reboot",
            Method::GET,
            format!("/v1/pve/open/reboot/{host}"),
            None,
        ),
        ("one", Method::GET, format!("/v1/pve/open/one/{host}"), None),
        (
            "mypage",
            Method::GET,
            "/v1/pve/open/mypage?page=1&pageSize=10".into(),
            None,
        ),
        (
            "delete",
            Method::DELETE,
            format!("/v1/pve/open/delete/{host}"),
            None,
        ),
    ];
    for (endpoint, method, path, body) in cases {
        let before = sim.calls(endpoint).await;
        let (status, answer) = call(&gw.url, method, &path, body).await;
        assert_eq!(
            sim.calls(endpoint).await,
            before + 1,
            "{endpoint} reached the simulator once"
        );
        assert_eq!(status, 200, "{endpoint}: {answer}");
        assert!(
            answer["traceId"].as_str().is_some_and(|t| !t.is_empty()),
            "{endpoint}: {answer}"
        );
        assert!(answer["code"].is_i64(), "{endpoint}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn read_answers_are_the_simulators_own() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    let token = sim.token().await;
    let (_, created) = call(
        &gw.url,
        Method::POST,
        &format!("{DISK}/create"),
        Some(json!({"area": 1, "memory": 40, "isMount": 0})),
    )
    .await;
    let id = created["data"].as_str().unwrap();
    for path in [
        format!("{DISK}/info/{id}"),
        format!("{DISK}/info/noSuchDisk"),
        format!("{DISK}/memoryTotal/1"),
        "/v1/pve/open/image".to_string(),
        "/v1/pve/open/mypage?page=1&pageSize=5".to_string(),
    ] {
        let (_, through) = call(&gw.url, Method::GET, &path, None).await;
        let direct: Value = http()
            .get(format!("{}{path}", sim.url))
            .header("Finovy-Access-Token", &token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(without_trace(through), without_trace(direct), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn business_errors_pass_through() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    let (status, answer) = call(
        &gw.url,
        Method::GET,
        &format!("{DISK}/info/noSuchDisk"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["code"], 220001, "{answer}");
    let (_, answer) = call(
        &gw.url,
        Method::POST,
        &format!("{DISK}/create"),
        Some(json!({"area": 0, "memory": 5, "isMount": 0})),
    )
    .await;
    assert_eq!(answer["code"], 220013, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_id_is_kept_and_forwarded() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    let resp = http()
        .get(format!("{}{DISK}/memoryTotal/0", gw.url))
        .header("X-Request-Id", "req-abc-123")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("Cookie", "session=should-not-travel")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-abc-123");
    let seen = sim
        .requests()
        .await
        .pop()
        .expect("a request reached the simulator");
    assert_eq!(seen["headers"]["x-request-id"], "req-abc-123");
    assert_eq!(
        seen["headers"]["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert!(seen["headers"].get("cookie").is_none(), "{seen}");

    let generated = http()
        .get(format!("{}{DISK}/memoryTotal/0", gw.url))
        .send()
        .await
        .unwrap();
    let id = generated.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(
        sim.requests().await.pop().unwrap()["headers"]["x-request-id"],
        id.as_str()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_is_served_on_the_same_port() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .get(format!("{}{DISK}/memoryTotal/2", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], 0, "{v}");
}
