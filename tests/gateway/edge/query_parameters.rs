//! Declared query parameters: each route takes only its own (`host.operate`: `type`;
//! `host.page`: `page`, `pageSize`; the others none). Anything else is refused with 400 (code
//! 1007) naming it, before the cache, the body or the upstream, and cache keys are built from the
//! declared parameters only, in a canonical order.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

const HOST: &str = "/v1/pve/open";

/// Asserts a 400 envelope with code 1007 whose message names `name`.
async fn refused(req: reqwest::RequestBuilder, name: &str) {
    let (status, h, v) = answer(req).await;
    assert_eq!(status, 400);
    assert_eq!(v["code"], 1007, "{v}");
    assert_eq!(v["success"], false, "{v}");
    assert!(v["data"].is_null(), "{v}");
    assert_eq!(v["traceId"], h["x-request-id"].to_str().unwrap(), "{v}");
    let msg = v["msg"].as_str().unwrap();
    assert!(msg.contains(&format!("\"{name}\"")), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undeclared_parameter_is_refused_and_makes_no_entry_or_call() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    let url = new_disk_info_url(&gw.url).await;
    get_text(&url).await; // stored
    assert_eq!(sim.calls("info").await, 1);
    // While the entry is fresh (the hit path) and after, `?r=N` is refused, never a new entry.
    for n in 1..=3 {
        refused(http().get(format!("{url}?r={n}")), "r").await;
    }
    refused(http().get(format!("{url}?cb=x&r=1")), "cb").await;
    assert_eq!(
        sim.calls("info").await,
        1,
        "no upstream call for a refused query"
    );
    // A bare `?` is no parameter: the stored entry answers it.
    let r = http().get(format!("{url}?")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(cache_status(r.headers()).contains("hit"));
    assert_eq!(sim.calls("info").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_keys_come_from_the_declared_parameters_in_one_order() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        "[cache.routes.\"host.page\"]\nenabled = true\nttl = \"60s\"\n",
        &sim.url,
        demo_env(),
    )
    .await;
    let page = |q: &str| format!("{}{HOST}/mypage?{q}", gw.url);
    let r = http().get(page("page=1&pageSize=10")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(cache_status(r.headers()).contains("fwd=miss"));
    // The same parameters in another order are the same entry.
    let r = http().get(page("pageSize=10&page=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        cache_status(r.headers()).contains("hit"),
        "{:?}",
        r.headers()
    );
    assert_eq!(sim.calls("mypage").await, 1);
    // Other values are another entry; an extra parameter is refused.
    let r = http().get(page("page=2&pageSize=10")).send().await.unwrap();
    assert!(cache_status(r.headers()).contains("fwd=miss"));
    assert_eq!(sim.calls("mypage").await, 2);
    refused(http().get(page("page=1&pageSize=10&sort=x")), "sort").await;
    assert_eq!(sim.calls("mypage").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_empty_and_encoded_names_are_refused() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    let operate = |q: &str| format!("{}{HOST}/operate/someHost?{q}", gw.url);
    for (query, named) in [
        ("type=0&type=1", "type"),
        ("type=0&page=1", "page"),
        ("t%79pe=0", "t%79pe"),
    ] {
        refused(http().get(operate(query)), named).await;
    }
    for query in ["type=0&", "=0", "&type=0"] {
        let (status, _, v) = get(&operate(query), &[]).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(v["code"], 1007, "{query}: {v}");
        assert!(v["msg"].as_str().unwrap().contains("empty"), "{v}");
    }
    assert_eq!(sim.calls("operate").await, 0);
    // The declared parameter, once, goes through.
    let r = http().get(operate("type=0")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sim.calls("operate").await, 1);
    let seen = sim.requests().await.pop().unwrap();
    assert_eq!(seen["path"], format!("{HOST}/operate/someHost?type=0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_with_an_undeclared_parameter_is_refused_before_its_body() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    refused(
        http()
            .post(format!("{}{DISK}/create?dryRun=1", gw.url))
            .json(&serde_json::json!({"area": 0, "memory": 20, "isMount": 0})),
        "dryRun",
    )
    .await;
    // A body that never comes is not waited for (`body_timeout` is 10 s): the answer is at once.
    let mut s = tokio::net::TcpStream::connect(gw.url.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(
        format!(
            "POST {DISK}/create?x=1 HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{{"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answered without the body")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(sim.calls("create").await, 0);
    assert_eq!(sim.stats().await["disks"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_without_a_key_learns_nothing_of_a_routes_parameters() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        &client_entry("svc", "key-q-00000000000000000", ""),
        &sim.url,
        demo_env(),
    )
    .await;
    let url = format!("{}{DISK}/info/abc?r=1", gw.url);
    let (status, v) = send_json(http().get(&url)).await;
    assert_eq!((status, v["code"].as_i64()), (401, Some(401)), "{v}");
    let (status, v) = send_json(
        http()
            .get(&url)
            .header("Authorization", "Bearer key-q-00000000000000000"),
    )
    .await;
    assert_eq!((status, v["code"].as_i64()), (400, Some(1007)), "{v}");
    assert!(v["msg"].as_str().unwrap().contains("\"r\""), "{v}");
    assert_eq!(sim.calls("info").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateways_own_endpoints_check_a_query_only_for_a_known_caller() {
    let sim = Sim::start(sim_config()).await;
    let key = "key-q-lease-0000000000000";
    let gw = Gw::start(
        &client_entry("svc", key, "token_lease = true"),
        &sim.url,
        demo_env(),
    )
    .await;
    let url = format!("{}/_gateway/token?x=1", gw.url);
    let (status, v) = send_json(http().get(&url)).await;
    assert_eq!((status, v["code"].as_i64()), (401, Some(401)), "{v}");
    let bearer = format!("Bearer {key}");
    let (status, v) = send_json(http().get(&url).header("Authorization", &bearer)).await;
    assert_eq!((status, v["code"].as_i64()), (400, Some(1007)), "{v}");
    assert!(v["msg"].as_str().unwrap().contains("takes no query"), "{v}");
    let plain = format!("{}/_gateway/token", gw.url);
    let (status, v) = send_json(http().get(&plain).header("Authorization", &bearer)).await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_of_a_known_caller_is_logged_under_that_caller() {
    let sim = Sim::start(sim_config()).await;
    let (key, limited) = ("key-q-logged-000000000000", "key-q-limited-00000000000");
    let toml = format!(
        "{}{}",
        client_entry("svc", key, ""),
        client_entry("buyer", limited, "routes = [\"disk.create\"]")
    );
    let gw = Bin::serve(
        &toml,
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    let url = format!("{}{DISK}/info/abc", gw.url);
    // A query the route does not take (400), a route outside the client's list (403), and no
    // key at all (401).
    for (id, bearer, query) in [
        ("no-key", None, "?r=1"),
        ("with-key", Some(key), "?r=1"),
        ("not-allowed", Some(limited), ""),
    ] {
        let mut req = http()
            .get(format!("{url}{query}"))
            .header("X-Request-Id", id);
        if let Some(k) = bearer {
            req = req.bearer_auth(k);
        }
        req.send().await.unwrap();
    }
    let log = gw.wait_for_log("request_id=not-allowed ", 1).await;
    for (id, status, client) in [
        ("with-key", 400, "svc"),
        ("not-allowed", 403, "buyer"),
        // A caller without a key is nobody in the log, as in the answer.
        ("no-key", 401, "-"),
    ] {
        let lines = access_lines(&log, id);
        assert_eq!(lines.len(), 1, "one line for {id}:\n{log}");
        let l = lines[0];
        assert!(l.contains(&format!(" status={status} ")), "{l}");
        assert!(l.contains(&format!(" client={client} ")), "{l}");
    }
}
