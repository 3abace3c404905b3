//! Fresh cache hits are answered by the stack's outermost layer (`layers::cache_hit`). These tests
//! hold it to what the layers below do for every other answer: the caller is checked, the request
//! id is kept or made, the access line, the metrics and the in-flight gauge treat a hit as they
//! treat a miss, and anything that is not a plain fresh hit takes the whole stack.

use serde_json::{Value, json};

use crate::harness::*;

const KEY_A: &str = "key-a-0000000000000000";
const KEY_CREATOR: &str = "key-c-0000000000000000";

/// Two clients of the default account: `a` may call anything, `creator` only `disk.create`.
fn two_clients() -> String {
    format!(
        "[cache.routes.\"disk.info\"]\nttl = \"60s\"\n{}{}",
        client_entry("a", KEY_A, ""),
        client_entry("creator", KEY_CREATOR, "routes = [\"disk.create\"]"),
    )
}

async fn create(url: &str, key: &str) -> String {
    let (status, v) = send_json(
        http()
            .post(format!("{url}{DISK}/create"))
            .header("Authorization", format!("Bearer {key}"))
            .json(&json!({"area": 0, "memory": 20, "isMount": 0})),
    )
    .await;
    assert_eq!((status, &v["code"]), (200, &json!(0)), "{v}");
    v["data"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hit_checks_the_caller_keeps_the_request_id_and_is_logged() {
    let sim = Sim::start(sim_config()).await;
    let gw = Bin::serve(
        &two_clients(),
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    let id = create(&gw.url, KEY_CREATOR).await;
    let url = format!("{}{DISK}/info/{id}", gw.url);
    let bearer_a = format!("Bearer {KEY_A}");
    let first = http()
        .get(&url)
        .header("Authorization", &bearer_a)
        .send()
        .await
        .unwrap();
    assert!(cache_status(first.headers()).contains("stored"));
    let first_body: Value = first.json().await.unwrap();

    // A hit: the client's own request id comes back, with the stored answer and its headers.
    let hit = http()
        .get(&url)
        .header("Authorization", &bearer_a)
        .header("X-Request-Id", "poll-7f3a")
        .send()
        .await
        .unwrap();
    assert_eq!(hit.status(), 200);
    let h = hit.headers().clone();
    assert_eq!(h["x-request-id"], "poll-7f3a");
    assert!(
        cache_status(&h).starts_with("finovy-gateway; hit; ttl="),
        "{h:?}"
    );
    assert!(h.get("age").is_some(), "{h:?}");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(hit.json::<Value>().await.unwrap(), first_body);

    // Without one (or with one not fit for a log line), each hit gets an id of its own.
    let mut made = Vec::new();
    for sent in [None, Some("has spaces"), None] {
        let mut req = http().get(&url).header("Authorization", &bearer_a);
        if let Some(v) = sent {
            req = req.header("X-Request-Id", v);
        }
        let r = req.send().await.unwrap();
        assert!(cache_status(r.headers()).contains("hit"));
        made.push(r.headers()["x-request-id"].to_str().unwrap().to_string());
    }
    for m in &made {
        assert!(
            m.len() == 32 && m.bytes().all(|b| b.is_ascii_hexdigit()),
            "{made:?}"
        );
    }
    assert!(made[0] != made[1] && made[1] != made[2], "{made:?}");

    // The entry is there, but a caller the stack would refuse is refused, never answered from it.
    for (auth, status) in [
        (None, 401),
        (Some("Bearer not-a-key-000000000000".to_string()), 401),
        (Some(format!("Bearer {KEY_CREATOR}")), 403),
    ] {
        let mut req = http().get(&url);
        if let Some(a) = &auth {
            req = req.header("Authorization", a);
        }
        let (got, h, body) = answer(req).await;
        assert_eq!(got, status, "{auth:?}");
        assert!(h.get("cache-status").is_none(), "{auth:?}");
        assert_eq!(body["code"], if status == 401 { 401 } else { 1001 });
        assert!(body.get("data").is_none_or(Value::is_null), "{body}");
    }
    assert_eq!(sim.calls("info").await, 1);

    // One access line per hit, as for any answer: the client, the route, the upstream's traceId.
    let log = gw.wait_for_log("request_id=poll-7f3a", 1).await;
    let line = log
        .lines()
        .find(|l| l.contains("request_id=poll-7f3a"))
        .unwrap();
    for field in [
        "finovy_gateway::access",
        "method=GET",
        "route=disk.info",
        "status=200",
        "client=a",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    let trace = line.split("upstream_trace_id=").nth(1).unwrap().trim();
    assert_eq!(trace, first_body["traceId"].as_str().unwrap(), "{line}");
    gw.wait_for_log("status=403", 1).await;

    let metrics = get_text(&format!("{}/metrics", gw.admin_url)).await;
    for (series, n) in [
        (
            "finovy_gateway_requests_total{method=\"GET\",route=\"disk.info\",status=\"200\"}",
            5,
        ),
        (
            "finovy_gateway_requests_total{method=\"GET\",route=\"disk.info\",status=\"401\"}",
            2,
        ),
        (
            "finovy_gateway_requests_total{method=\"GET\",route=\"disk.info\",status=\"403\"}",
            1,
        ),
        (
            "finovy_gateway_cache_lookups_total{result=\"hit\",route=\"disk.info\"}",
            4,
        ),
        (
            "finovy_gateway_request_duration_seconds_count{route=\"disk.info\"}",
            8,
        ),
    ] {
        assert!(
            metrics.contains(&format!("{series} {n}\n")),
            "{series} {n}:\n{metrics}"
        );
    }
}

/// An anonymous gateway with `[server]` settings `server`, and the `info` URL of a disk whose
/// entry it holds.
async fn with_a_cached_disk(server: &str) -> (Sim, Gw, String) {
    let sim = Sim::start(sim_config()).await;
    let toml = format!("[cache.routes.\"disk.info\"]\nttl = \"60s\"\n[server]\n{server}\n");
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let url = new_disk_info_url(&gw.url).await;
    get_text(&url).await;
    (sim, gw, url)
}

#[tokio::test(flavor = "multi_thread")]
async fn what_is_not_a_plain_fresh_hit_takes_the_whole_stack() {
    let (sim, _gw, url) = with_a_cached_disk("max_body_bytes = 64").await;
    // A body on a GET is read, with the limit, by the stack: a small one still hits there...
    let r = http().get(&url).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(cache_status(r.headers()).contains("hit"));
    // ...and one over the limit is refused there, whatever the cache holds.
    let r = http().get(&url).body("x".repeat(100)).send().await.unwrap();
    assert_eq!(r.status(), 413);
    // `no-cache` goes upstream; an undeclared query parameter is refused there, never a hit.
    let r = http()
        .get(&url)
        .header("Cache-Control", "no-cache")
        .send()
        .await
        .unwrap();
    assert!(cache_status(r.headers()).contains("fwd=request"));
    let r = http().get(format!("{url}?x=1")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(sim.calls("info").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn hits_are_answered_while_the_stack_sheds_load() {
    let (sim, gw, url) = with_a_cached_disk("max_concurrency = 1").await;
    sim.fault("slow", "3s").await;
    // One slow upstream call holds the only slot...
    let total = format!("{}{DISK}/memoryTotal/0", gw.url);
    let slow = tokio::spawn(async move { http().get(total).send().await.unwrap().status() });
    gw.wait_inflight(1).await;
    // ...so another upstream call is shed, while a hit, which takes no slot, is answered.
    let shed = http()
        .get(format!("{}{DISK}/memoryTotal/1", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(shed.status(), 503);
    let hit = http().get(&url).send().await.unwrap();
    assert_eq!(hit.status(), 200);
    assert!(cache_status(hit.headers()).contains("hit"));
    assert_eq!(slow.await.unwrap(), 200);
}

/// The fields of an access line other than its request id, duration and timestamp.
fn same_fields(line: &str) -> Vec<&str> {
    line.split_whitespace()
        .filter(|f| {
            f.contains('=') && !f.starts_with("request_id=") && !f.starts_with("duration_ms=")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hit_is_logged_and_counted_as_its_miss_was() {
    let sim = Sim::start(sim_config()).await;
    let toml = format!(
        "[cache.routes.\"disk.info\"]\nttl = \"60s\"\n{}",
        client_entry("a", KEY_A, "")
    );
    let gw = Bin::serve(
        &toml,
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    let (status, created) = send_json(
        http()
            .post(format!("{}{DISK}/create", gw.url))
            .bearer_auth(KEY_A)
            .json(&json!({"area": 0, "memory": 20, "isMount": 0})),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let url = format!(
        "{}{DISK}/info/{}",
        gw.url,
        created["data"].as_str().unwrap()
    );

    let ids = ["miss-0", "hit-1", "hit-2", "hit-3"];
    let mut bodies = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let r = http()
            .get(&url)
            .bearer_auth(KEY_A)
            .header("X-Request-Id", *id)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-request-id"], *id);
        let cs = cache_status(r.headers());
        assert!(
            if n == 0 {
                cs.contains("fwd=miss")
            } else {
                cs.contains("; hit;")
            },
            "{id}: {cs}"
        );
        bodies.push(r.json::<Value>().await.unwrap());
    }
    assert!(bodies.iter().all(|b| b == &bodies[0]));
    assert_eq!(sim.calls("info").await, 1);

    // One line each, and the hits' lines say what the miss's said: client, route, status, method
    // and the upstream's traceId (the stored answer's).
    let log = gw.wait_for_log("request_id=hit-3", 1).await;
    let line_of = |id: &str| access_lines(&log, id);
    let miss = line_of("miss-0");
    assert_eq!(miss.len(), 1, "{log}");
    let expected = same_fields(miss[0]);
    let trace = format!(
        "upstream_trace_id={}",
        bodies[0]["traceId"].as_str().unwrap()
    );
    for field in [
        "method=GET",
        "route=disk.info",
        "status=200",
        "client=a",
        trace.as_str(),
    ] {
        assert!(expected.contains(&field), "{field} in {}", miss[0]);
    }
    for id in &ids[1..] {
        let lines = line_of(id);
        assert_eq!(lines.len(), 1, "{id}: {log}");
        assert_eq!(same_fields(lines[0]), expected, "{}", lines[0]);
    }

    // Counted on one series, timed, and out of flight once answered.
    let metrics = get_text(&format!("{}/metrics", gw.admin_url)).await;
    for (name, labels, n) in [
        (
            "finovy_gateway_requests_total",
            &[("route", "disk.info"), ("method", "GET"), ("status", "200")][..],
            4.0,
        ),
        (
            "finovy_gateway_request_duration_seconds_count",
            &[("route", "disk.info")][..],
            4.0,
        ),
        (
            "finovy_gateway_cache_lookups_total",
            &[("route", "disk.info"), ("result", "hit")][..],
            3.0,
        ),
        (
            "finovy_gateway_cache_lookups_total",
            &[("route", "disk.info"), ("result", "miss")][..],
            1.0,
        ),
        ("finovy_gateway_inflight_requests", &[][..], 0.0),
    ] {
        assert_eq!(
            metric(&metrics, name, labels),
            n,
            "{name} {labels:?}:\n{metrics}"
        );
    }
}
