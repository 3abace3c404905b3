//! What is checked is what is sent: a create reaches the upstream as its validated order, in one
//! fixed form, whatever the client wrote; anything the order cannot say is refused before the
//! upstream; variants of one order are one intent; key-less de-duplication is per client unless
//! widened; and shared-mode records hold digests, never a body. The simulator's request log
//! (`/_sim/requests`) is the witness of the bytes that reached the upstream.

use std::time::Duration;

use finovy_gateway::sim::seed::HOST_AREA1;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::redis::{RedisServer, Resp};
use crate::harness::*;

const CREATE: &str = "/v1/PveMachineHardDisk/open/create";
const QUANTITY: &str = "/v1/pve/open/createquantity";
const RENT: &str = "/v1/pve/open/createRent";

/// POSTs `body` as JSON to `path`, with an optional client key and `Idempotency-Key`.
async fn post(
    gw: &Gw,
    path: &str,
    body: &str,
    client: Option<&str>,
    key: Option<&str>,
) -> (u16, HeaderMap, Value) {
    let mut req = http()
        .post(format!("{}{path}", gw.url))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(c) = client {
        req = req.header("Authorization", format!("Bearer {c}"));
    }
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    answer(req).await
}

fn replayed(h: &HeaderMap) -> bool {
    h.get("idempotent-replayed").is_some_and(|v| v == "true")
}

/// The requests to `path` that reached the simulator, oldest first.
async fn received(sim: &Sim, path: &str) -> Vec<Value> {
    sim.requests()
        .await
        .into_iter()
        .filter(|r| r["path"] == path)
        .collect()
}

/// Sends raw bytes and reads the answer until the server closes: (status, body).
async fn raw(gw: &Gw, request: &[u8]) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(gw.url.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(request).await.unwrap();
    let mut text = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut text))
        .await
        .expect("the gateway answers and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// An error envelope of the gateway's own: HTTP 400, code 1007, `msg` naming `names`.
fn assert_refused(what: &str, status: u16, v: &Value, names: &str) {
    assert_eq!(
        (status, v["code"].as_i64()),
        (400, Some(1007)),
        "{what}: {v}"
    );
    assert_eq!(v["success"], false, "{what}: {v}");
    assert!(v["data"].is_null(), "{what}: {v}");
    assert!(
        v["traceId"].as_str().is_some_and(|t| !t.is_empty()),
        "{what}: {v}"
    );
    let msg = v["msg"].as_str().unwrap_or("");
    assert!(msg.contains(names), "{what}: the msg names {names:?}: {v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_receives_the_validated_order_byte_for_byte() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    // (route path, what the client sends, what the upstream must receive)
    let cases = [
        (
            CREATE,
            // The seed page's own example: area as a string, buyNumber 1, an empty pveId.
            r#"{"pveId":"","area":"1","buyNumber":1,"memory":32,"isMount":0}"#,
            r#"{"area":1,"memory":32,"isMount":0}"#,
        ),
        (
            CREATE,
            "{ \"isMount\" : \"1\",\n\t\"pveId\": \"hostWest01\", \"memory\": 64.0, \"area\": 1 }",
            r#"{"area":1,"memory":64,"isMount":1,"pveId":"hostWest01"}"#,
        ),
        (
            CREATE,
            r#"{"area":2,"memory":21,"isMount":0,"pveId":"not sent without isMount"}"#,
            r#"{"area":2,"memory":21,"isMount":0}"#,
        ),
        (
            QUANTITY,
            r#"{"imageId":"img-win10","buyNumber":"1","packageId":"pkg-south-3090"}"#,
            r#"{"packageId":"pkg-south-3090","imageId":"img-win10"}"#,
        ),
        (
            RENT,
            r#"{"periodType":"3","periodNumber":2,"imageId":"img-win10","packageId":"pkg-south-3090-rent"}"#,
            r#"{"packageId":"pkg-south-3090-rent","imageId":"img-win10","periodNumber":2,"periodType":3}"#,
        ),
    ];
    for (path, sent, expected) in cases {
        let before = received(&sim, path).await.len();
        let (status, _, v) = post(&gw, path, sent, None, Some(&fresh_key())).await;
        assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{sent}: {v}");
        let got = received(&sim, path).await;
        assert_eq!(got.len(), before + 1, "{sent}: one upstream call");
        let last = got.last().unwrap();
        assert_eq!(last["body"], expected, "{sent}");
        assert_eq!(
            last["headers"]["content-type"], "application/json",
            "{sent}"
        );
    }
    // The mount really happened on the host named: the order's pveId was sent.
    let page = send_json(
        http()
            .post(format!("{}{DISK}/getList", gw.url))
            .json(&json!({"page": 1, "pageSize": 100, "pveId": HOST_AREA1})),
    )
    .await
    .1;
    assert_eq!(page["data"]["totalCounts"], 1, "{page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_order_cannot_say_is_refused_before_the_upstream() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    let before = sim.total().await;
    let cases = [
        // The body from the issue: a case variant and a buyNumber of 50.
        (
            CREATE,
            r#"{"area":0,"memory":20,"isMount":0,"buyNumber":50,"Memory":20000}"#,
            "Memory",
        ),
        (
            CREATE,
            r#"{"area":0,"memory":20,"isMount":0,"buyNumber":50}"#,
            "buyNumber",
        ),
        (
            CREATE,
            r#"{"area":0,"memory":20,"isMount":0,"buyNumber":0}"#,
            "buyNumber",
        ),
        (
            CREATE,
            r#"{"area":0,"memory":20,"isMount":0,"buyNumber":"2"}"#,
            "buyNumber",
        ),
        (
            CREATE,
            r#"{"area":0,"memory":20,"memory":20000,"isMount":0}"#,
            "\"memory\"",
        ),
        (
            CREATE,
            r#"{"area":0,"memory":20,"\u006Demory":20000,"isMount":0}"#,
            "\"memory\"",
        ),
        (
            CREATE,
            r#"{"area":0,"memory":20,"isMount":0,"AREA":1}"#,
            "AREA",
        ),
        (
            CREATE,
            r#"{"area":0,"memory":20,"isMount":0,"diskCount":3}"#,
            "diskCount",
        ),
        (
            CREATE,
            r#"{"area":0,"memory":20,"isMount":1,"pveId":{"id":"hostSouth0"}}"#,
            "pveId",
        ),
        (
            QUANTITY,
            r#"{"packageId":"pkg-south-3090","imageId":"img-win10","quantity":5}"#,
            "quantity",
        ),
        (
            QUANTITY,
            r#"{"packageId":"pkg-south-3090","imageId":"img-win10","buyNumber":2}"#,
            "buyNumber",
        ),
        (
            RENT,
            r#"{"packageId":"p","imageId":"i","periodNumber":1,"periodType":1,"periodNumber":100}"#,
            "periodNumber",
        ),
        (
            RENT,
            r#"{"packageId":"p","imageId":"i","periodNumber":1,"PeriodType":1}"#,
            "PeriodType",
        ),
    ];
    for (path, body, names) in cases {
        let (status, h, v) = post(&gw, path, body, None, None).await;
        assert_refused(body, status, &v, names);
        let id = h.get("x-request-id").unwrap().to_str().unwrap();
        assert_eq!(v["traceId"], id, "{body}");
    }
    // Not JSON by its Content-Type, whatever the bytes.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=iso-8859-1"),
    ] {
        let mut req = http()
            .post(format!("{}{CREATE}", gw.url))
            .body(r#"{"area":0,"memory":20,"isMount":0}"#);
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let (status, v) = send_json(req).await;
        assert_refused(&format!("{content_type:?}"), status, &v, "application/json");
    }
    // Bytes a client library would not send: two Content-Types; a body that is not UTF-8.
    let body = r#"{"area":0,"memory":20,"isMount":0}"#;
    let (status, v) = raw(
        &gw,
        format!(
            "POST {CREATE} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    assert_refused("two content types", status, &v, "application/json");
    let not_utf8: &[u8] = b"{\"area\":0,\"memory\":20,\"isMount\":0,\"\xff\":1}";
    let mut bad = format!(
        "POST {CREATE} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        not_utf8.len()
    )
    .into_bytes();
    bad.extend_from_slice(not_utf8);
    let (status, v) = raw(&gw, &bad).await;
    assert_refused("invalid UTF-8", status, &v, "JSON");

    // Nor in the query, which would travel upstream as it is.
    let (status, _, v) = post(
        &gw,
        &format!("{CREATE}?buyNumber=50"),
        r#"{"area":0,"memory":20,"isMount":0}"#,
        None,
        None,
    )
    .await;
    assert_refused("a query", status, &v, "buyNumber");

    assert_eq!(sim.total().await, before, "nothing reached the simulator");
    // Nothing was recorded either: the valid order afterwards is a fresh purchase, not a replay.
    let (status, h, v) = post(
        &gw,
        CREATE,
        r#"{"area":0,"memory":20,"isMount":0}"#,
        None,
        None,
    )
    .await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    assert!(!replayed(&h));
    assert_eq!(sim.calls("create").await, 1);
    assert!(
        metric(&gw.metrics().await, "finovy_gateway_dedup_total", &[]) == 0.0,
        "no de-dup record was touched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn variants_of_one_order_are_one_intent() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    let variants = [
        r#"{"area":0,"memory":20,"isMount":0}"#,
        "{ \"isMount\": 0,\n  \"memory\": 20,\n  \"area\": \"0\" }",
        r#"{"area":" 0","memory":20.0,"isMount":"0","buyNumber":1,"pveId":null}"#,
        r#"{"memory":20,"buyNumber":"1","area":0,"pveId":"","isMount":0}"#,
    ];
    // Key-less: one purchase, the rest replayed.
    let (status, h, first) = post(&gw, CREATE, variants[0], None, None).await;
    assert_eq!((status, first["code"].as_i64()), (200, Some(0)), "{first}");
    assert!(!replayed(&h));
    for body in &variants[1..] {
        let (status, h, v) = post(&gw, CREATE, body, None, None).await;
        assert_eq!(status, 200, "{body}: {v}");
        assert!(replayed(&h), "{body}: {v}");
        assert_eq!(v["data"], first["data"], "{body}");
    }
    assert_eq!(sim.calls("create").await, 1);
    // Under one Idempotency-Key: every variant is the same request, a replay and never a 422.
    let key = fresh_key();
    let (_, _, keyed) = post(&gw, CREATE, variants[1], None, Some(&key)).await;
    assert_eq!(keyed["code"], 0, "{keyed}");
    assert_ne!(keyed["data"], first["data"], "a key makes its own purchase");
    for body in variants {
        let (status, h, v) = post(&gw, CREATE, body, None, Some(&key)).await;
        assert_eq!(status, 200, "{body}: {v}");
        assert!(replayed(&h), "{body}: {v}");
        assert_eq!(v["data"], keyed["data"], "{body}");
    }
    // A different order under that key is a different request.
    let (status, _, v) = post(
        &gw,
        CREATE,
        r#"{"area":0,"memory":21,"isMount":0}"#,
        None,
        Some(&key),
    )
    .await;
    assert_eq!((status, v["code"].as_i64()), (422, Some(1003)), "{v}");
    assert_eq!(sim.calls("create").await, 2);
}

/// Two clients of one account, `scope` for `disk.create`'s key-less de-dup.
async fn two_clients(sim: &Sim, scope: Option<&str>) -> Gw {
    let scope = scope.map_or(String::new(), |s| format!("dedup_scope = \"{s}\"\n"));
    let toml = format!(
        "{}{}{FAST_CREATES}{scope}",
        client_entry("render", "render-key-00000000000000", ""),
        client_entry("archive", "archive-key-0000000000000", ""),
    );
    Gw::start(&toml, &sim.url, demo_env()).await
}

/// Both clients send the same key-less order at once (the upstream slow, so that both are in
/// flight together); their answers.
async fn both_at_once(gw: &Gw, sim: &Sim) -> [(u16, HeaderMap, Value); 2] {
    sim.fault("slow", "500ms").await;
    let order = r#"{"area":0,"memory":20,"isMount":0}"#;
    let (a, b) = tokio::join!(
        post(gw, CREATE, order, Some("render-key-00000000000000"), None),
        post(gw, CREATE, order, Some("archive-key-0000000000000"), None),
    );
    sim.fault("none", "0s").await;
    [a, b]
}

#[tokio::test(flavor = "multi_thread")]
async fn two_clients_buying_the_same_disk_get_a_disk_each() {
    let sim = Sim::start(sim_config()).await;
    let gw = two_clients(&sim, None).await;
    let [(sa, ha, a), (sb, hb, b)] = both_at_once(&gw, &sim).await;
    assert_eq!((sa, a["code"].as_i64()), (200, Some(0)), "{a}");
    assert_eq!((sb, b["code"].as_i64()), (200, Some(0)), "{b}");
    assert!(!replayed(&ha) && !replayed(&hb));
    assert_ne!(a["data"], b["data"], "two disks");
    assert_eq!(sim.calls("create").await, 2);
    // Each client's own repeat still collapses onto its own disk.
    let (_, h, again) = post(
        &gw,
        CREATE,
        r#"{"isMount":0,"memory":20,"area":0}"#,
        Some("archive-key-0000000000000"),
        None,
    )
    .await;
    assert!(replayed(&h), "{again}");
    assert_eq!(again["data"], b["data"]);
    assert_eq!(sim.calls("create").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_account_scope_the_clients_share_one_disk() {
    let sim = Sim::start(sim_config()).await;
    let gw = two_clients(&sim, Some("account")).await;
    let [(sa, _, a), (sb, _, b)] = both_at_once(&gw, &sim).await;
    assert_eq!((sa, sb), (200, 200), "{a} {b}");
    assert_eq!(a["code"], 0, "{a}");
    assert_eq!(a["data"], b["data"], "one disk between them");
    assert_eq!(sim.calls("create").await, 1);
}

/// Every byte Redis holds for `key`, whatever its type.
async fn contents(redis: &RedisServer, key: &str) -> Vec<u8> {
    fn flatten(r: &Resp, out: &mut Vec<u8>) {
        match r {
            Resp::Simple(s) | Resp::Error(s) => out.extend_from_slice(s.as_bytes()),
            Resp::Int(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Resp::Bulk(b) => out.extend_from_slice(b.as_deref().unwrap_or_default()),
            Resp::Array(items) => {
                for item in items.iter().flatten() {
                    flatten(item, out);
                    out.push(b'\n');
                }
            }
        }
    }
    let kind = redis.command(&["TYPE", key]).await;
    let read: &[&str] = match kind.text().as_deref() {
        Some("string") => &["GET"],
        Some("hash") => &["HGETALL"],
        Some("set") => &["SMEMBERS"],
        Some("zset") => &["ZRANGE", "0", "-1", "WITHSCORES"],
        Some("list") => &["LRANGE", "0", "-1"],
        Some("none") => return Vec::new(),
        other => panic!("{key}: unexpected type {other:?}"),
    };
    let mut args = vec![read[0], key];
    args.extend_from_slice(&read[1..]);
    let mut out = Vec::new();
    flatten(&redis.command(&args).await, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_records_hold_digests_never_a_body() {
    let redis = RedisServer::start();
    let sim = Sim::start(sim_config()).await;
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"sb:\"\ntimeout = \"1s\"\n{FAST_CREATES}",
        redis.url()
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    // Distinctive values, so that any copy of the body would be found.
    let keyless = r#"{"area":2,"memory":4321,"isMount":0}"#;
    let keyed = r#"{"area":1,"memory":1234,"isMount":1,"pveId":"hostWest01"}"#;
    let (_, _, a) = post(&gw, CREATE, keyless, None, None).await;
    assert_eq!(a["code"], 0, "{a}");
    let (_, _, b) = post(&gw, CREATE, keyed, None, Some("order-body-check")).await;
    assert_eq!(b["code"], 0, "{b}");
    // Replays come from those records, across the variants.
    let (_, h, again) = post(
        &gw,
        CREATE,
        r#"{"isMount":"0","memory":4321,"area":"2"}"#,
        None,
        None,
    )
    .await;
    assert!(replayed(&h) && again["data"] == a["data"], "{again}");

    let keys = redis.keys("sb:*").await;
    let records: Vec<&String> = keys.iter().filter(|k| k.contains("rec:")).collect();
    let dedup = records
        .iter()
        .find(|k| k.contains("rec:dedup|"))
        .expect("a key-less record");
    let digest = dedup.rsplit('|').next().unwrap();
    assert!(
        digest.len() == 64 && digest.bytes().all(|c| c.is_ascii_hexdigit()),
        "{dedup}"
    );
    assert!(records.iter().any(|k| k.contains("rec:idem|")), "{keys:?}");
    for key in &keys {
        assert!(key.len() < 256, "bounded: {key}");
        let mut all = key.as_bytes().to_vec();
        all.extend(contents(&redis, key).await);
        let text = String::from_utf8_lossy(&all);
        for fragment in [
            "\"memory\"",
            "isMount",
            "pveId",
            "\"area\"",
            ":4321",
            ":1234",
            "hostWest01",
        ] {
            assert!(
                !text.contains(fragment),
                "{key} holds {fragment:?} of a create's body: {text:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn in_shared_mode_the_scope_holds_across_replicas() {
    let redis = RedisServer::start();
    let sim = Sim::start(sim_config()).await;
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"sc:\"\ntimeout = \"1s\"\n{}{}{FAST_CREATES}",
        redis.url(),
        client_entry("render", "render-key-00000000000000", ""),
        client_entry("archive", "archive-key-0000000000000", ""),
    );
    let [a, b] = replicas::<2>(&toml, &sim.url, demo_env()).await;
    let order = r#"{"area":0,"memory":20,"isMount":0}"#;
    let render = Some("render-key-00000000000000");
    let archive = Some("archive-key-0000000000000");
    let (_, _, first) = post(&a, CREATE, order, render, None).await;
    assert_eq!(first["code"], 0, "{first}");
    // The same client on the other replica: the shared record answers.
    let (_, h, same) = post(&b, CREATE, order, render, None).await;
    assert!(replayed(&h), "{same}");
    assert_eq!(same["data"], first["data"]);
    // Another client on either replica: its own disk.
    let (_, h, other) = post(&b, CREATE, order, archive, None).await;
    assert!(!replayed(&h), "{other}");
    assert_eq!(other["code"], 0, "{other}");
    assert_ne!(other["data"], first["data"]);
    assert_eq!(sim.calls("create").await, 2);
    assert_eq!(redis.keys("sc:*rec:dedup|*").await.len(), 2);
}

#[test]
fn check_config_shows_the_scope_and_names_a_bad_one() {
    let run = |scope: &str| {
        let path = temp_file(
            "scope.toml",
            &format!("[create.routes.\"host.create_quantity\"]\ndedup_scope = \"{scope}\"\n"),
        );
        binary()
            .args(["check-config", "--config"])
            .arg(&path)
            .env_remove("FINOVY_UUID")
            .env_remove("FINOVY_SECRET")
            .env_remove("FINOVY_TOKEN")
            .output()
            .expect("check-config runs")
    };
    let good = run("account");
    let shown = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{shown}");
    let section = |route: &str| {
        let start = shown
            .find(&format!("[create.routes.\"{route}\"]"))
            .unwrap_or_else(|| panic!("{route} shown: {shown}"));
        shown[start..].split("\n\n").next().unwrap().to_string()
    };
    assert!(
        section("host.create_quantity").contains("dedup_scope = \"account\""),
        "{shown}"
    );
    assert!(
        section("disk.create").contains("dedup_scope = \"client\""),
        "the default: {shown}"
    );
    let bad = run("team");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "{err}");
    assert!(
        err.contains("create.routes.\"host.create_quantity\".dedup_scope") && err.contains("team"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_spending_guard_counts_what_is_sent() {
    let sim = Sim::start(sim_config()).await;
    let toml =
        format!("{FAST_CREATES}[create.budget.account]\ngb_per_day = 45\ncreates_per_day = 3\n");
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    // Spellings of 20 GB and 25 GB; what reaches the upstream adds up to the cap exactly.
    for body in [
        r#"{"area":"0","memory":20.0,"isMount":"0","buyNumber":1}"#,
        r#"{"memory":25,"area":1,"isMount":0,"pveId":""}"#,
    ] {
        let (status, _, v) = post(&gw, CREATE, body, None, None).await;
        assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{body}: {v}");
    }
    let sent: i64 = received(&sim, CREATE)
        .await
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
            body["memory"].as_i64().unwrap()
        })
        .sum();
    assert_eq!(sent, 45);
    // Full: one more GB is refused before the upstream, and so is a body that once hid a size.
    let (status, _, v) = post(
        &gw,
        CREATE,
        r#"{"area":2,"memory":20,"isMount":0}"#,
        None,
        None,
    )
    .await;
    assert_eq!((status, v["code"].as_i64()), (429, Some(220025)), "{v}");
    assert!(v["msg"].as_str().unwrap().contains("gb_per_day"), "{v}");
    let (status, _, v) = post(
        &gw,
        CREATE,
        r#"{"area":0,"memory":20,"isMount":0,"buyNumber":50,"Memory":20000}"#,
        None,
        None,
    )
    .await;
    assert_eq!((status, v["code"].as_i64()), (400, Some(1007)), "{v}");
    assert_eq!(sim.calls("create").await, 2);
}
