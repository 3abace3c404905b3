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
    let (status, h, v) = answer(req).await;
    let ct = h.get("content-type").map(|v| v.to_str().unwrap());
    assert_eq!(ct, Some("application/json"), "{path}");
    (status, v)
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
            Some(json!({"packageId": "pkg-south-3090", "imageId": "img-win10"})),
        ),
        (
            "createRent",
            Method::POST,
            "/v1/pve/open/createRent".into(),
            Some(
                json!({"packageId": "pkg-south-3090-rent", "imageId": "img-ubuntu2204", "periodNumber": 1, "periodType": 1}),
            ),
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
        let (status, answer) = call(&gw.url, method.clone(), &path, body.clone()).await;
        assert_eq!(
            sim.calls(endpoint).await,
            before + 1,
            "{endpoint} reached the simulator once"
        );
        // What reached the simulator is what was sent: method, path and query, and body.
        let seen = sim.requests().await.pop().expect("a request was logged");
        assert_eq!(seen["method"], method.as_str(), "{endpoint}");
        assert_eq!(seen["path"], path.as_str(), "{endpoint}");
        match &body {
            Some(b) => {
                let forwarded: Value = serde_json::from_str(seen["body"].as_str().unwrap())
                    .unwrap_or_else(|e| panic!("{endpoint}: forwarded body is not JSON: {e}"));
                assert_eq!(&forwarded, b, "{endpoint}");
            }
            None => assert_eq!(seen["body"], "", "{endpoint}"),
        }
        // The simulator's own answer comes back: success where the request can succeed, its
        // documented error code where the host does not exist.
        assert_eq!(status, 200, "{endpoint}: {answer}");
        assert!(
            answer["traceId"].as_str().is_some_and(|t| !t.is_empty()),
            "{endpoint}: {answer}"
        );
        let code = answer["code"].as_i64().unwrap();
        match endpoint {
            "pveCreate" => assert_eq!(code, 220016, "{endpoint}: {answer}"),
            "operate" | "reboot" | "one" | "delete" => {
                assert_ne!(code, 0, "{endpoint}: a host that does not exist: {answer}");
            }
            _ => assert_eq!(code, 0, "{endpoint}: {answer}"),
        }
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
        let direct = send_json(
            http()
                .get(format!("{}{path}", sim.url))
                .header("Finovy-Access-Token", &token),
        )
        .await
        .1;
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

#[tokio::test(flavor = "multi_thread")]
async fn only_allow_listed_headers_travel_upstream() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    let resp = http()
        .get(format!("{}{DISK}/memoryTotal/0", gw.url))
        .header("Accept-Language", "zh-CN")
        .header("tracestate", "vendor=abc")
        .header("User-Agent", "render-scheduler/1.0")
        .header("X-Unknown", "must-not-travel")
        .header("Forwarded", "for=10.0.0.1")
        .header("X-Forwarded-For", "10.0.0.1")
        .header("Finovy-Access-Token", "a-token-of-the-callers")
        .header("Cookie", "session=x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = sim.requests().await.pop().unwrap();
    let h = &seen["headers"];
    assert_eq!(h["accept-language"], "zh-CN", "{seen}");
    assert_eq!(h["tracestate"], "vendor=abc", "{seen}");
    assert_eq!(h["user-agent"], "render-scheduler/1.0", "{seen}");
    for dropped in ["x-unknown", "forwarded", "x-forwarded-for", "cookie"] {
        assert!(h.get(dropped).is_none(), "{dropped} travelled: {seen}");
    }
    // The gateway's own token replaces the caller's.
    assert_ne!(h["finovy-access-token"], "a-token-of-the-callers", "{seen}");
    assert!(
        h["finovy-access-token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
}

/// An upstream that answers every call with headers a client must never see: session state,
/// hop-by-hop fields, and a field that its own `Connection` names as hop-by-hop.
async fn rude_upstream() -> String {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = if req.uri().path() == "/v1/auth/getToken" {
                            r#"{"code":0,"success":true,"msg":"success","data":{"token":"t","effectiveTime":1800000},"traceId":"x"}"#
                        } else {
                            r#"{"code":0,"success":true,"msg":"success","data":{"memory":0},"traceId":"y"}"#
                        };
                        let resp = hyper::Response::builder()
                            .header("content-type", "application/json")
                            .header("set-cookie", "upstream-session=secret")
                            .header("connection", "x-hop")
                            .header("x-hop", "hop-by-hop")
                            .header("keep-alive", "timeout=5")
                            .header("proxy-authenticate", "Basic")
                            .header("x-upstream", "kept")
                            .body(Full::new(Bytes::from_static(body.as_bytes())))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_and_session_headers_never_come_back() {
    let upstream = rude_upstream().await;
    let gw = Gw::start("", &upstream, demo_env()).await;
    for h2 in [false, true] {
        let client = if h2 {
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .unwrap()
        } else {
            http()
        };
        let resp = client
            .get(format!("{}{DISK}/memoryTotal/0", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        for gone in ["set-cookie", "x-hop", "keep-alive", "proxy-authenticate"] {
            assert!(h.get(gone).is_none(), "h2={h2}: {gone} came back: {h:?}");
        }
        if let Some(c) = h.get("connection") {
            assert!(!c.to_str().unwrap().contains("x-hop"), "{h:?}");
        }
        assert_eq!(h["x-upstream"], "kept", "other headers pass through");
    }
}
