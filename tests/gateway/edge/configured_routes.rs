//! Routes from configuration (`[[routes]]`): an upstream endpoint the gateway does not compile in,
//! forwarded like any route (token injected, client key kept back, metrics, allow-lists), cached
//! only when given a cache table, never when it is a mutation; bad entries refused by name.
//! The simulator serves `GET /v1/pve/open/balance/{id}`, which the compiled table does not know.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::*;

const KEY: &str = "fgw_config_routes_key_1";
const OTHER_KEY: &str = "fgw_config_routes_key_2";

const BALANCE: &str = "[[routes]]\nname = \"billing.balance\"\nmethod = \"GET\"\npath = \"/v1/pve/open/balance/{id}\"\nkind = \"read\"\n";

fn balance_url(gw: &Gw, id: &str) -> String {
    format!("{}/v1/pve/open/balance/{id}", gw.url)
}

/// A GET with the client key `key` (none when empty).
async fn get(url: &str, key: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = http().get(url);
    if !key.is_empty() {
        req = req.bearer_auth(key);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap())
}

/// The simulator's log entries for `path`.
async fn received(sim: &Sim, path: &str) -> Vec<Value> {
    sim.requests()
        .await
        .into_iter()
        .filter(|r| r["path"] == path)
        .collect()
}

#[tokio::test]
async fn a_configured_read_route_is_forwarded_with_the_gateway_token_and_counted() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        &format!("{BALANCE}{}", client_entry("billing", KEY, "")),
        &sim.url,
        demo_env(),
    )
    .await;
    let (status, headers, body) = get(&balance_url(&gw, "acct-1"), KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"], 0, "{body}");
    assert_eq!(body["data"]["id"], "acct-1", "{body}");
    // Not cached: no cache table.
    assert_eq!(cache_status(&headers), "", "{headers:?}");

    let seen = received(&sim, "/v1/pve/open/balance/acct-1").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    let h = &seen[0]["headers"];
    let token = h["finovy-access-token"]
        .as_str()
        .expect("a token was injected");
    assert!(!token.is_empty() && !token.contains(KEY), "{h}");
    assert!(
        h.get("authorization").is_none(),
        "client key forwarded: {h}"
    );
    assert!(!h.to_string().contains(KEY), "client key forwarded: {h}");

    // A second call goes upstream again (no cache table), and both are counted under the name.
    let (status, _, _) = get(&balance_url(&gw, "acct-1"), KEY).await;
    assert_eq!(status, 200);
    assert_eq!(sim.calls("balance").await, 2);
    assert_eq!(
        gw.metric(
            "finovy_gateway_requests_total",
            &[("route", "billing.balance"), ("status", "200")]
        )
        .await,
        2.0
    );
    // Undeclared query parameters are refused before the upstream, as for compiled routes.
    let (status, _, body) = get(&format!("{}?r=1", balance_url(&gw, "acct-1")), KEY).await;
    assert_eq!((status, body["code"].as_i64()), (400, Some(1007)), "{body}");
    assert!(
        body["msg"].as_str().unwrap().contains("billing.balance"),
        "{body}"
    );
    assert_eq!(sim.calls("balance").await, 2);
    gw.stop().await;
}

#[tokio::test]
async fn a_configured_read_route_with_a_cache_table_is_cached() {
    // Its own `[routes.cache]` table, or `[cache.routes."<name>"]`: the same effect.
    for table in [
        "[routes.cache]\nttl = \"30s\"\n".to_string(),
        "[cache.routes.\"billing.balance\"]\nttl = \"30s\"\n".to_string(),
    ] {
        let sim = Sim::start(sim_config()).await;
        let gw = Gw::start(&format!("{BALANCE}{table}"), &sim.url, demo_env()).await;
        let url = balance_url(&gw, "acct-2");
        let (status, first, body) = get(&url, "").await;
        assert_eq!(status, 200, "{table}: {body}");
        assert!(
            cache_status(&first).contains("stored"),
            "{table}: {first:?}"
        );
        let (status, second, again) = get(&url, "").await;
        assert_eq!(status, 200);
        assert!(cache_status(&second).contains("hit"), "{table}: {second:?}");
        assert_eq!(again, body, "{table}");
        assert_eq!(sim.calls("balance").await, 1, "{table}");
        assert_eq!(
            gw.metric(
                "finovy_gateway_cache_lookups_total",
                &[("route", "billing.balance"), ("result", "hit")]
            )
            .await,
            1.0,
            "{table}"
        );
        gw.stop().await;
    }
}

#[tokio::test]
async fn a_client_whose_allow_list_lacks_a_configured_route_is_refused() {
    let sim = Sim::start(sim_config()).await;
    let config = format!(
        "{BALANCE}{}{}",
        client_entry("info-only", KEY, "routes = [\"disk.info\"]"),
        client_entry("billing", OTHER_KEY, "routes = [\"billing.balance\"]"),
    );
    let gw = Gw::start(&config, &sim.url, demo_env()).await;
    let (status, _, body) = get(&balance_url(&gw, "acct-3"), KEY).await;
    assert_eq!((status, body["code"].as_i64()), (403, Some(1001)), "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(
        sim.calls("balance").await,
        0,
        "a refused call reached the upstream"
    );
    let (status, _, body) = get(&balance_url(&gw, "acct-3"), OTHER_KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sim.calls("balance").await, 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_configured_mutation_is_never_cached_and_its_body_goes_as_sent() {
    let sim = Sim::start(sim_config()).await;
    // A GET mutation on a path the simulator serves, and a POST one it does not know (404).
    let config = "[[routes]]\nname = \"billing.refresh\"\nmethod = \"GET\"\npath = \"/v1/pve/open/balance/{id}\"\nkind = \"mutation\"\n\
                  [[routes]]\nname = \"billing.topup\"\nmethod = \"POST\"\npath = \"/v1/pve/open/topup\"\nkind = \"mutation\"\nquery = [\"mode\"]\n";
    let gw = Gw::start(config, &sim.url, demo_env()).await;
    let url = balance_url(&gw, "acct-4");
    for _ in 0..3 {
        let (status, headers, _) = get(&url, "").await;
        assert_eq!(status, 200);
        assert_eq!(cache_status(&headers), "", "{headers:?}");
    }
    assert_eq!(sim.calls("balance").await, 3, "each mutation goes upstream");

    // Bytes as sent (key order, spacing), not re-serialised; the upstream's 404 passes through.
    let body = "{\"b\": 1,  \"a\":[2]}";
    let r = http()
        .post(format!("{}/v1/pve/open/topup?mode=now", gw.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let seen = received(&sim, "/v1/pve/open/topup?mode=now").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["body"], body);
    assert_eq!(seen[0]["method"], "POST");
    assert!(seen[0]["headers"]["finovy-access-token"].is_string());
    assert_eq!(
        gw.metric(
            "finovy_gateway_requests_total",
            &[("route", "billing.topup")]
        )
        .await,
        1.0
    );
    gw.stop().await;
}

#[test]
fn check_config_refuses_bad_routes_naming_the_key() {
    let ok_path = "/v1/pve/open/balance/{id}";
    let entry = |name: &str, method: &str, path: &str, kind: &str, extra: &str| {
        format!(
            "[[routes]]\nname = {name:?}\nmethod = {method:?}\npath = {path:?}\nkind = {kind:?}\n{extra}"
        )
    };
    let cases = [
        (
            entry("disk.info", "GET", ok_path, "read", ""),
            "routes[0].name",
        ),
        (
            entry("billing.balance", "PATCH", ok_path, "read", ""),
            "routes[0].method",
        ),
        (
            entry("billing.balance", "GET", "/v1/x/{a}/{b}", "read", ""),
            "routes[0].path",
        ),
        (
            entry("billing.balance", "GET", "/v1/pve/open/one/{x}", "read", ""),
            "routes[0].path",
        ),
        (
            entry("billing.balance", "POST", ok_path, "spend", ""),
            "routes[0].kind",
        ),
        // A {param} that can match /_gateway/token or /v1/auth/getToken, or a compiled spend
        // route's path in another letter case.
        (
            entry("billing.balance", "GET", "/{x}/token", "read", ""),
            "routes[0].path",
        ),
        (
            entry(
                "billing.balance",
                "POST",
                "/v1/{x}/getToken",
                "mutation",
                "",
            ),
            "routes[0].path",
        ),
        (
            entry(
                "billing.balance",
                "POST",
                "/v1/pve/open/CreateRent",
                "mutation",
                "",
            ),
            "routes[0].path",
        ),
        (
            entry(
                "billing.balance",
                "POST",
                ok_path,
                "mutation",
                "[routes.cache]\nttl = \"5s\"\n",
            ),
            "routes[0].cache",
        ),
        (
            format!(
                "{}[cache.routes.\"billing.balance\"]\nttl = \"5s\"\n",
                entry("billing.balance", "POST", ok_path, "mutation", "")
            ),
            "cache.routes.\"billing.balance\"",
        ),
        (
            format!(
                "{BALANCE}{}",
                client_entry("c", KEY, "routes = [\"billing.nope\"]")
            ),
            "clients[0].routes",
        ),
    ];
    for (text, key) in cases {
        let config = temp_file("routes.toml", &text);
        let out = binary()
            .args(["check-config", "--config"])
            .arg(&config)
            .envs(demo_env())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}: accepted");
        assert!(stderr.contains(key), "{text}: expected {key} in {stderr}");
    }
    // A good entry checks, and is shown in the effective settings.
    let config = temp_file(
        "routes.toml",
        &format!("{BALANCE}[routes.cache]\nttl = \"5s\"\n"),
    );
    let out = binary()
        .args(["check-config", "--config"])
        .arg(&config)
        .envs(demo_env())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("billing.balance"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_change_only_with_a_restart() {
    const ADMIN_KEY: &str = "fgw_config_routes_admin_key_9c1e";
    let config = |body: &str| {
        format!(
            "{body}\n[admin]\nkey_sha256 = \"{}\"\n{LOOSE_TOKENS}",
            hex::encode(Sha256::digest(ADMIN_KEY.as_bytes()))
        )
    };
    let sim = Sim::start(sim_config()).await;
    let gw = Bin::serve(
        &config(""),
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    let url = format!("{}/v1/pve/open/balance/acct-5", gw.url);
    assert_eq!(send_json(http().get(&url)).await.0, 404);

    // Adding a route on reload is named as needing a restart, and changes nothing meanwhile.
    std::fs::write(&gw.config, config(BALANCE)).unwrap();
    let (status, body) = send_json(
        http()
            .post(format!("{}/admin/reload", gw.admin_url))
            .bearer_auth(ADMIN_KEY),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["restart_needed"],
        serde_json::json!(["routes"]),
        "{body}"
    );
    let (status, body) = send_json(http().get(&url)).await;
    assert_eq!((status, body["code"].as_i64()), (404, Some(404)), "{body}");
    assert_eq!(sim.calls("balance").await, 0);
}

/// A request is matched in the letter case of the route's path only, and the gateway's own
/// endpoints come before the table: a path in another case, or under `/v1/auth`, is 404 and never
/// forwarded, beside a configured route with a parameter.
#[tokio::test]
async fn another_letter_case_or_a_reserved_path_matches_no_route() {
    let sim = Sim::start(sim_config()).await;
    let config = format!(
        "{BALANCE}{}",
        client_entry("billing", KEY, "token_lease = true")
    );
    let gw = Gw::start(&config, &sim.url, demo_env()).await;
    let sent = r#"{"area":0,"memory":20,"isMount":0}"#;
    for (method, path) in [
        ("POST", "/v1/pve/open/CreateRent"),
        ("POST", "/v1/PveMachineHardDisk/open/Create"),
        ("GET", "/V1/pve/open/balance/acct-6"),
        ("POST", "/v1/auth/getToken"),
        ("GET", "/_GATEWAY/token"),
    ] {
        let (status, body) = send_json(
            http()
                .request(method.parse().unwrap(), format!("{}{path}", gw.url))
                .bearer_auth(KEY)
                .header("content-type", "application/json")
                .body(sent),
        )
        .await;
        assert_eq!(
            (status, body["code"].as_i64()),
            (404, Some(404)),
            "{path}: {body}"
        );
    }
    let (status, body) = send_json(
        http()
            .get(format!("{}/_gateway/token", gw.url))
            .bearer_auth(KEY),
    )
    .await;
    assert_eq!(status, 200, "the lease endpoint still answers: {body}");
    let forwarded: Vec<Value> = sim
        .requests()
        .await
        .into_iter()
        // The gateway's own token fetches aside; a forwarded request would carry this body.
        .filter(|r| r["path"] != "/v1/auth/getToken" || r["body"] == sent)
        .collect();
    assert!(forwarded.is_empty(), "{forwarded:?}");
    gw.stop().await;
}
