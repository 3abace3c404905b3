//! Client authentication, allow-lists, and what a client sends as a credential never travelling on.

use serde_json::Value;

use crate::harness::*;

const FULL: &str = "fgw_full_client_key_for_tests_0001";
const READER: &str = "fgw_reader_client_key_for_tests_02";

async fn gateway(sim: &Sim) -> Gw {
    let toml = client_entry("full", FULL, "")
        + &client_entry("reader", READER, "routes = [\"disk.info\"]");
    Gw::start(&toml, &sim.url, demo_env()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_wrong_and_malformed_keys_are_refused_before_the_upstream() {
    let sim = Sim::start(sim_config()).await;
    let gw = gateway(&sim).await;
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    let before = sim.total().await;
    for headers in [
        vec![],
        vec![("Authorization", "Bearer not-a-client-key")],
        vec![("Authorization", "Basic Zm9vOmJhcg==")],
        vec![("Authorization", FULL)],
        vec![("Finovy-Access-Token", "upstream-looking-token")],
    ] {
        let (status, h, body) = get(&url, &headers).await;
        let id = h["x-request-id"].to_str().unwrap();
        assert_eq!(status, 401, "{headers:?}");
        assert_eq!(body["code"], 401);
        assert_eq!(body["success"], false);
        assert_eq!(
            body["traceId"], id,
            "the envelope's traceId is the request id"
        );
    }
    assert_eq!(sim.total().await, before, "nothing reached the simulator");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_in_either_header_is_accepted() {
    let sim = Sim::start(sim_config()).await;
    let gw = gateway(&sim).await;
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    let bearer = format!("Bearer {FULL}");
    let lower = format!("bearer {FULL}");
    for headers in [
        vec![("Authorization", bearer.as_str())],
        vec![("Authorization", lower.as_str())],
        vec![("Finovy-Access-Token", FULL)],
    ] {
        let (status, _, body) = get(&url, &headers).await;
        assert_eq!(
            (status, body["code"].as_i64()),
            (200, Some(0)),
            "{headers:?}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_list_refuses_other_routes() {
    let sim = Sim::start(sim_config()).await;
    let gw = gateway(&sim).await;
    let before = sim.total().await;
    let reader = format!("Bearer {READER}");
    let (status, _, body) = get(
        &format!("{}{DISK}/memoryTotal/0", gw.url),
        &[("Authorization", &reader)],
    )
    .await;
    assert_eq!((status, body["code"].as_i64()), (403, Some(1001)), "{body}");
    assert!(body["msg"].as_str().unwrap().contains("disk.memory_total"));
    // Authorization decides when both headers are sent.
    let (status, _, _) = get(
        &format!("{}{DISK}/memoryTotal/0", gw.url),
        &[("Authorization", &reader), ("Finovy-Access-Token", FULL)],
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        sim.total().await,
        before,
        "refused calls never reach the simulator"
    );
    let (status, _, body) = get(
        &format!("{}{DISK}/info/noSuchDisk", gw.url),
        &[("Authorization", &reader)],
    )
    .await;
    assert_eq!(
        (status, body["code"].as_i64()),
        (200, Some(220001)),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_are_replaced_by_the_gateways_token() {
    let sim = Sim::start(sim_config()).await;
    let gw = gateway(&sim).await;
    let (status, _, body) = get(
        &format!("{}{DISK}/memoryTotal/0", gw.url),
        &[("Finovy-Access-Token", FULL)],
    )
    .await;
    assert_eq!((status, body["code"].as_i64()), (200, Some(0)), "{body}");
    let bearer = format!("Bearer {FULL}");
    get(
        &format!("{}{DISK}/memoryTotal/1", gw.url),
        &[("Authorization", &bearer)],
    )
    .await;
    let seen = sim.requests().await;
    let api: Vec<&Value> = seen
        .iter()
        .filter(|r| r["path"].as_str().unwrap().contains("memoryTotal"))
        .collect();
    assert_eq!(api.len(), 2);
    for r in api {
        let token = r["headers"]["finovy-access-token"]
            .as_str()
            .expect("a token was sent");
        assert_ne!(token, FULL, "the client's key never reaches the upstream");
        assert!(r["headers"].get("authorization").is_none(), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_on_loopback_ignores_a_stale_upstream_token() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    let (status, _, body) = get(
        &format!("{}{DISK}/memoryTotal/0", gw.url),
        &[("Finovy-Access-Token", "old-upstream-token")],
    )
    .await;
    assert_eq!((status, body["code"].as_i64()), (200, Some(0)), "{body}");
    let seen = sim.requests().await.pop().unwrap();
    let sent = seen["headers"]["finovy-access-token"]
        .as_str()
        .expect("the gateway sent a token of its own");
    assert_ne!(sent, "old-upstream-token");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_are_404_and_never_forwarded() {
    let sim = Sim::start(sim_config()).await;
    let gw = gateway(&sim).await;
    let before = sim.total().await;
    let bearer = format!("Bearer {FULL}");
    for (method, path) in [
        (reqwest::Method::POST, "/v1/auth/getToken"),
        (reqwest::Method::GET, "/v1/auth/getToken"),
        (reqwest::Method::GET, "/"),
        (reqwest::Method::GET, "/_sim/stats"),
        (
            reqwest::Method::POST,
            "/v1/PveMachineHardDisk/open/info/abc",
        ),
        (reqwest::Method::GET, "/v2/PveMachineHardDisk/open/info/abc"),
        (
            reqwest::Method::GET,
            "/v1/PveMachineHardDisk/open/info/a%2Fb",
        ),
    ] {
        let (status, _, body) = answer(
            http()
                .request(method.clone(), format!("{}{path}", gw.url))
                .header("Authorization", &bearer),
        )
        .await;
        assert_eq!(status, 404, "{method} {path}");
        assert_eq!(body["code"], 404);
    }
    assert_eq!(sim.total().await, before);
}
