//! The operator console's JSON views, read from the outside after known traffic through the real
//! binary: `GET /admin/overview`, `/admin/budgets` and `/admin/clients` count exactly the
//! creates (bought, refused by a budget, replayed), reads (hits and misses), token lease and
//! refusals sent; the admin key guards them (401), they are off without one (404), and a query
//! parameter is refused (400); refused credentials show as a failing token with the reason.
//! Operator actions are logged with the request id the operator's tool sent; a reload that adds
//! a client lists it. With two replicas sharing Redis, each says so, and budgets are the fleet's.

use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::redis::RedisServer;
use crate::harness::*;

const OPS: &str = "fgw_console_ops_client_5e6f7a8b9c";
const IDLE: &str = "fgw_console_idle_client_1a2b3c4d";
const ADMIN: &str = "fgw_console_admin_key_0f1e2d3c4b";
const ZONE: &str = "Asia/Shanghai";

/// `GET admin_url + path` with the admin key: status and JSON body.
async fn view(admin_url: &str, path: &str) -> (u16, Value) {
    send_json(http().get(format!("{admin_url}{path}")).bearer_auth(ADMIN)).await
}

/// The start of today and of tomorrow in `zone`, in epoch milliseconds.
fn today_in(zone: &str) -> (i64, i64) {
    let now = Timestamp::now().to_zoned(TimeZone::get(zone).unwrap());
    let start = now.date().to_zoned(now.time_zone().clone()).unwrap();
    let next = now
        .date()
        .tomorrow()
        .unwrap()
        .to_zoned(now.time_zone().clone())
        .unwrap();
    (
        start.timestamp().as_millisecond(),
        next.timestamp().as_millisecond(),
    )
}

/// A create by the `ops` client; its status, answer headers and body.
async fn create(
    url: &str,
    key: Option<&str>,
    memory: u32,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = http()
        .post(format!("{url}{DISK}/create"))
        .bearer_auth(OPS)
        .json(&json!({"area": 0, "memory": memory, "isMount": 0}));
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    answer(req).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_views_count_exactly_what_was_sent() {
    let sim = Sim::start(sim_config()).await;
    let toml = format!(
        "[admin]\nkey_sha256 = \"{}\"\n{FAST_CREATES}{}\
         [create.budget]\ntimezone = \"{ZONE}\"\nwarn_at = 0.8\n\
         [create.budget.client]\ncreates_per_day = 2\n{}{}",
        hex::encode(Sha256::digest(ADMIN.as_bytes())),
        info_policy("ttl = \"60s\""),
        client_entry("ops", OPS, "token_lease = true"),
        client_entry("idle", IDLE, ""),
    );
    let gw = replica_process(&toml, &sim.url).await;

    // Creates: bought, its replay, bought, then refused by the client's daily cap of 2.
    let key = fresh_key();
    let (status, _, bought) = create(&gw.url, Some(&key), 20).await;
    assert_eq!(status, 200, "{bought}");
    let id = bought["data"].as_str().unwrap().to_owned();
    let (status, h, _) = create(&gw.url, Some(&key), 20).await;
    assert_eq!(status, 200);
    assert_eq!(h["idempotent-replayed"], "true");
    assert_eq!(create(&gw.url, None, 30).await.0, 200);
    let (status, _, v) = create(&gw.url, None, 40).await;
    assert_eq!((status, &v["code"]), (429, &json!(220025)), "{v}");
    // Reads of one disk: a miss, then three hits.
    let info = format!("{}{DISK}/info/{id}", gw.url);
    for expected in ["miss", "hit", "hit", "hit"] {
        let (status, h, v) = answer(http().get(&info).bearer_auth(OPS)).await;
        assert_eq!(status, 200, "{v}");
        assert!(cache_status(&h).contains(expected), "{h:?}");
    }
    // A query parameter the route does not declare: refused as invalid.
    let (status, _, _) = answer(http().get(format!("{info}?x=1")).bearer_auth(OPS)).await;
    assert_eq!(status, 400);
    // A token lease.
    let (status, _, v) = answer(
        http()
            .get(format!("{}/_gateway/token", gw.url))
            .bearer_auth(OPS),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    // Clients: every configured one, the idle one at 0.
    let (status, v) = view(&gw.admin_url, "/admin/clients").await;
    assert_eq!(status, 200, "{v}");
    let data = &v["data"];
    let zero = json!({"rate_limited": 0, "budget": 0, "invalid": 0, "conflict": 0,
                      "too_many_inflight": 0, "ledger_down": 0, "other": 0});
    let mut ops_refusals = zero.clone();
    ops_refusals["budget"] = 1.into();
    ops_refusals["invalid"] = 1.into();
    assert_eq!(
        data["clients"],
        json!([
            {"name": "ops", "requests": 10, "creates": 3, "tokenLeases": 1, "refusals": ops_refusals},
            {"name": "idle", "requests": 0, "creates": 0, "tokenLeases": 0, "refusals": zero},
        ]),
        "{v}"
    );
    let since = data["since"].as_i64().unwrap();

    // Overview, once every ledger entry has settled.
    let (start_of_day, next_midnight) = today_in(ZONE);
    let o: Value = eventually_some("the ledger settles", Duration::from_secs(20), || async {
        let (status, v) = view(&gw.admin_url, "/admin/overview").await;
        assert_eq!(status, 200, "{v}");
        (v["data"]["ledger"]["openEntries"] == 0).then(|| v["data"].clone())
    })
    .await;
    assert_eq!(o["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(o["startedAt"].as_i64(), Some(since));
    let now = o["now"].as_i64().unwrap();
    assert_eq!(o["uptimeSeconds"].as_i64(), Some((now - since) / 1000));
    assert_eq!(o["timezone"], ZONE);
    assert_eq!(o["mode"], "single");
    let port = gw.url.rsplit(':').next().unwrap();
    assert!(
        o["replica"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{port}")),
        "{o}"
    );
    assert_eq!(o["redis"], json!({"state": "off", "detail": null}));
    assert_eq!(
        o["ledger"],
        json!({"state": "ok", "backend": "sqlite", "openEntries": 0, "detail": null})
    );
    assert_eq!(o["webhooks"], json!({"configured": 0, "backlog": 0}));
    let accounts = o["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 1, "{o}");
    let a = &accounts[0];
    assert_eq!(
        (&a["name"], &a["token"], &a["lastError"]),
        (&json!("default"), &json!("held"), &Value::Null)
    );
    assert_eq!((&a["leases"], &a["refusals"]), (&json!(1), &json!(0)));
    assert!(a["expiresInSeconds"].as_i64().unwrap() > 0, "{a}");
    let refreshed = a["lastRefreshAt"].as_i64().unwrap();
    assert!((since..=now).contains(&refreshed), "{a}");
    let cache = &o["cache"];
    assert_eq!(
        cache["lookups"],
        json!({"hit": 3, "stale": 0, "miss": 1, "coalesced": 0}),
        "{o}"
    );
    assert_eq!(cache["hitRatio"].as_f64(), Some(0.75));
    let window = cache["windowSeconds"].as_i64().unwrap();
    assert!((0..=300).contains(&window) && window <= (now - since) / 1000 + 1);
    assert!(cache["entries"].as_u64().unwrap() >= 1, "{o}");
    assert!(cache["bytes"].as_u64().unwrap() > 0, "{o}");
    assert_eq!(cache["maxBytes"], 64 * 1024 * 1024);
    assert_eq!(
        o["purchasesToday"],
        json!({"since": start_of_day, "bought": 2, "refused": 1, "unknown": 0, "other": 1}),
        "{o}"
    );

    // Budgets: the client cap of each configured client, reset at the next midnight in the zone.
    let (status, v) = view(&gw.admin_url, "/admin/budgets").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["data"],
        json!({"timezone": ZONE, "warnAt": 0.8, "caps": [
            {"scope": "client", "name": "idle", "cap": "creates_per_day", "used": 0, "limit": 2, "resetsAt": next_midnight},
            {"scope": "client", "name": "ops", "cap": "creates_per_day", "used": 2, "limit": 2, "resetsAt": next_midnight},
        ]}),
    );

    // The admin key guards every view; a query parameter is refused.
    for path in ["/admin/overview", "/admin/budgets", "/admin/clients"] {
        let url = format!("{}{path}", gw.admin_url);
        let none = http().get(&url).send().await.unwrap().status().as_u16();
        let wrong = http().get(&url).bearer_auth(OPS).send().await.unwrap();
        assert_eq!((none, wrong.status().as_u16()), (401, 401), "{path}");
        let (status, v) = view(&gw.admin_url, &format!("{path}?since=1")).await;
        assert_eq!((status, &v["code"]), (400, &json!(1007)), "{path}: {v}");
    }

    // Operator actions: each logged once with the id the operator's tool sent, as the answer's
    // traceId; an id that is not sane is replaced.
    let (status, _, v) = answer(
        http()
            .post(format!("{}/admin/cache/purge", gw.admin_url))
            .bearer_auth(ADMIN)
            .header("X-Request-Id", "console-purge-7f3a")
            .json(&json!({"route": "disk.info", "id": id})),
    )
    .await;
    assert_eq!((status, &v["traceId"]), (200, &json!("console-purge-7f3a")));
    // The reload adds a client: listed at 0, while the others keep their counts.
    let text = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(
        &gw.config,
        format!(
            "{text}\n{}",
            client_entry("late", "fgw_console_late_client_77aa", "")
        ),
    )
    .unwrap();
    let (status, _, v) = answer(
        http()
            .post(format!("{}/admin/reload", gw.admin_url))
            .bearer_auth(ADMIN)
            .header("X-Request-Id", "console-reload-9c1d"),
    )
    .await;
    assert_eq!(
        (status, &v["traceId"]),
        (200, &json!("console-reload-9c1d"))
    );
    let (_, v) = view(&gw.admin_url, "/admin/clients").await;
    let counts: Vec<(&str, i64)> = v["data"]["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["requests"].as_i64().unwrap()))
        .collect();
    assert_eq!(counts, [("ops", 10), ("idle", 0), ("late", 0)], "{v}");
    let (_, _, v) = answer(
        http()
            .post(format!("{}/admin/cache/purge", gw.admin_url))
            .bearer_auth(ADMIN)
            .header("X-Request-Id", "not sane {}")
            .json(&json!({"all": true})),
    )
    .await;
    let generated = v["traceId"].as_str().unwrap().to_owned();
    assert_eq!(generated.len(), 32, "{v}");
    let log = gw.wait_for_log("operator action", 3).await;
    let actions: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("operator action"))
        .collect();
    assert_eq!(actions.len(), 3, "{log}");
    assert!(
        actions[0].contains("cache.purge") && actions[0].contains("request_id=console-purge-7f3a"),
        "{}",
        actions[0]
    );
    assert!(actions[0].contains(&id), "{}", actions[0]);
    assert!(
        actions[1].contains("action=\"reload\"") || actions[1].contains("action=reload"),
        "{}",
        actions[1]
    );
    assert!(
        actions[1].contains("restart_needed=[]")
            && actions[1].contains("request_id=console-reload-9c1d"),
        "{}",
        actions[1]
    );
    assert!(
        actions[2].contains(&format!("request_id={generated}")),
        "{}",
        actions[2]
    );
    assert!(!log.contains(ADMIN), "the admin key is never logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_views_are_off_without_an_admin_key() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    for path in [
        "/admin/overview",
        "/admin/budgets",
        "/admin/clients",
        "/console",
    ] {
        let url = format!("{}{path}", gw.admin_url);
        let (status, v) = send_json(http().get(&url).bearer_auth(ADMIN)).await;
        assert_eq!((status, &v["code"]), (404, &json!(404)), "{path}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_sharing_redis_say_so_and_show_the_fleets_budget() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-console:\"\ntimeout = \"2s\"\n\
         [admin]\nkey_sha256 = \"{}\"\n{FAST_CREATES}\
         [create.budget.account]\ncreates_per_day = 5\n",
        redis.url(),
        hex::encode(Sha256::digest(ADMIN.as_bytes())),
    );
    let [a, b] = replicas::<2>(&toml, &sim.url, demo_env()).await;
    new_disk_info_url(&a.url).await;
    new_disk_info_url(&b.url).await;
    let (_, next_midnight) = today_in("UTC");
    for gw in [&a, &b] {
        let (status, v) = view(&gw.admin_url, "/admin/overview").await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["data"]["mode"], "shared", "{v}");
        assert_eq!(v["data"]["redis"]["state"], "ok", "{v}");
        assert_eq!(v["data"]["timezone"], "UTC");
        // Each replica's own ledger holds its own purchase.
        assert_eq!(v["data"]["purchasesToday"]["bought"], 1, "{v}");
        let (status, v) = view(&gw.admin_url, "/admin/budgets").await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["data"],
            json!({"timezone": "UTC", "warnAt": null, "caps": [
                {"scope": "account", "name": "default", "cap": "creates_per_day", "used": 2, "limit": 5, "resetsAt": next_midnight},
            ]}),
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_whose_credentials_are_refused_shows_failing_with_the_reason() {
    let sim = Sim::start(sim_config()).await;
    let toml = format!(
        "[admin]\nkey_sha256 = \"{}\"\n",
        hex::encode(Sha256::digest(ADMIN.as_bytes()))
    );
    let env = vec![
        ("FINOVY_UUID", "demo-uuid".to_string()),
        ("FINOVY_SECRET", "not-the-secret".to_string()),
    ];
    let gw = Gw::start(&toml, &sim.url, env).await;
    let a: Value = eventually_some("the account fails", Duration::from_secs(20), || async {
        let (status, v) = view(&gw.admin_url, "/admin/overview").await;
        assert_eq!(status, 200, "{v}");
        let a = v["data"]["accounts"][0].clone();
        (a["token"] == "failing").then_some(a)
    })
    .await;
    assert!(a["refusals"].as_i64().unwrap() >= 1, "{a}");
    assert!(a["lastError"].as_str().unwrap().contains("code 401"), "{a}");
    assert_eq!(
        (&a["lastRefreshAt"], &a["expiresInSeconds"], &a["leases"]),
        (&Value::Null, &Value::Null, &json!(0))
    );
    assert!(!a.to_string().contains("not-the-secret"), "{a}");
}
