//! The token lease (`/_gateway/token`): only granted clients get the account's token, in the
//! envelope and never stored; a lease ends no later than the gateway's own refresh and never costs
//! a `getToken`; a rejected token is replaced once however many report it, and reports are
//! rate-limited; in shared mode every replica leases the fleet's one token. The simulator is the
//! witness of every `getToken` and of the tokens that work.

use std::cell::RefCell;
use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use finovy_gateway::sim::SimConfig;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::harness::redis::RedisServer;
use crate::harness::*;

const LESSEE: &str = "key-of-the-lessee-0000000000";
const SECOND: &str = "key-of-another-lessee-000000";
const THIRD: &str = "key-of-a-third-lessee-000000";
const PLAIN: &str = "key-of-a-plain-client-000000";

/// Three clients granted the lease (the first also held to `disk.info`), one not.
fn clients() -> String {
    [
        client_entry(
            "lessee",
            LESSEE,
            "token_lease = true\nroutes = [\"disk.info\"]",
        ),
        client_entry("second", SECOND, "token_lease = true"),
        client_entry("third", THIRD, "token_lease = true"),
        client_entry("plain", PLAIN, ""),
    ]
    .concat()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn lease(gw_url: &str, key: &str) -> (u16, HeaderMap, Value) {
    answer(
        http()
            .get(format!("{gw_url}/_gateway/token"))
            .bearer_auth(key),
    )
    .await
}

async fn report(gw_url: &str, key: &str, body: &str) -> (u16, HeaderMap, Value) {
    answer(
        http()
            .post(format!("{gw_url}/_gateway/token/rejected"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await
}

/// The leased token of a 200 answer, after checking the whole envelope.
fn leased(status: u16, headers: &HeaderMap, v: &Value) -> String {
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (&v["code"], &v["success"], &v["msg"]),
        (&json!(0), &json!(true), &json!("success")),
        "{v}"
    );
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(v["traceId"], headers["x-request-id"].to_str().unwrap());
    assert_eq!(v["data"]["account"], "default", "{v}");
    assert!(v["data"]["expiresAt"].as_u64().is_some(), "{v}");
    let token = v["data"]["token"].as_str().expect("a token");
    assert!(!token.is_empty());
    token.to_string()
}

/// An error envelope's code, after checking its shape.
fn refused(v: &Value, headers: &HeaderMap) -> i64 {
    assert_eq!(v["success"], false, "{v}");
    assert!(v["data"].is_null(), "nothing leased: {v}");
    assert_eq!(v["traceId"], headers["x-request-id"].to_str().unwrap());
    v["code"].as_i64().expect("a code")
}

/// A 503's `Retry-After`, which every 503 of the lease endpoints carries, in seconds.
fn retry_after(headers: &HeaderMap, v: &Value) -> u64 {
    headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("a 503 with Retry-After: {v}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Whether the simulator accepts `token` (its own 401 otherwise).
async fn works(sim: &Sim, token: &str) -> bool {
    let v = send_json(
        http()
            .get(format!("{}{DISK}/memoryTotal/0", sim.url))
            .header("Finovy-Access-Token", token),
    )
    .await
    .1;
    v["code"] == 0
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_granted_client_leases_the_token_the_gateway_itself_sends() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(&clients(), &sim.url, demo_env()).await;
    assert_eq!(sim.calls("getToken").await, 1);
    let before = sim.total().await;

    // No key, a wrong key: 401. A client without the grant: 403, code 1001.
    let url = format!("{}/_gateway/token", gw.url);
    let (s, h, v) = answer(http().get(&url)).await;
    assert_eq!((s, refused(&v, &h)), (401, 401), "{v}");
    let (s, h, v) = lease(&gw.url, "not-a-key-0000000000000000").await;
    assert_eq!((s, refused(&v, &h)), (401, 401), "{v}");
    let (s, h, v) = lease(&gw.url, PLAIN).await;
    assert_eq!((s, refused(&v, &h)), (403, 1001), "{v}");
    assert!(v["msg"].as_str().unwrap().contains("token_lease"), "{v}");
    let (s, h, v) = report(&gw.url, PLAIN, r#"{"token":"x"}"#).await;
    assert_eq!((s, refused(&v, &h)), (403, 1001), "{v}");
    // Not the endpoints: another method, a query string.
    let (s, h, v) = answer(http().post(&url).bearer_auth(LESSEE)).await;
    assert_eq!((s, refused(&v, &h)), (404, 404), "{v}");
    let (s, h, v) = answer(http().get(format!("{url}?fresh=1")).bearer_auth(LESSEE)).await;
    assert_eq!((s, refused(&v, &h)), (400, 1007), "{v}");

    // The granted client: the account's token, valid now, for a while.
    let sent = now_ms();
    let (s, h, v) = lease(&gw.url, LESSEE).await;
    let token = leased(s, &h, &v);
    let expires = v["data"]["expiresAt"].as_u64().unwrap();
    assert!(expires > sent + 60_000, "{expires} vs {sent}: {v}");
    assert!(
        expires <= now_ms() + 30 * 60_000,
        "never later than the token's expiry: {v}"
    );
    // Asking again costs nothing upstream: still one getToken, the same token, and nothing
    // at all reached the simulator for the endpoints.
    for _ in 0..20 {
        let (s, h, v) = lease(&gw.url, SECOND).await;
        assert_eq!(leased(s, &h, &v), token);
    }
    assert_eq!(sim.calls("getToken").await, 1);
    assert_eq!(sim.total().await, before, "nothing forwarded");

    // It is the token the gateway sends, and the upstream takes it.
    let (s, _, v) = answer(
        http()
            .get(format!("{}{DISK}/memoryTotal/0", gw.url))
            .bearer_auth(SECOND),
    )
    .await;
    assert_eq!((s, v["code"].as_i64()), (200, Some(0)), "{v}");
    let seen = sim.requests().await.pop().unwrap();
    assert_eq!(seen["headers"]["finovy-access-token"], token.as_str());
    assert!(works(&sim, &token).await);
    // The grant is not a route: the lessee is still held to its allow-list.
    let (s, h, v) = answer(
        http()
            .get(format!("{}{DISK}/memoryTotal/0", gw.url))
            .bearer_auth(LESSEE),
    )
    .await;
    assert_eq!((s, refused(&v, &h)), (403, 1001), "{v}");

    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "finovy_gateway_token_leases_total",
            &[("client", "lessee")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "finovy_gateway_token_leases_total",
            &[("client", "second")]
        ),
        20.0
    );
    assert_eq!(
        metric(
            &m,
            "finovy_gateway_token_leases_total",
            &[("client", "plain")]
        ),
        0.0
    );
    for (method, route, status, n) in [
        ("GET", "gateway.token_lease", "200", 21.0),
        ("GET", "gateway.token_lease", "403", 1.0),
        ("POST", "gateway.token_rejected", "403", 1.0),
        ("GET", "gateway.token_lease", "400", 1.0),
    ] {
        let labels = [("method", method), ("route", route), ("status", status)];
        assert_eq!(
            metric(&m, "finovy_gateway_requests_total", &labels),
            n,
            "{labels:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_clients_nobody_leases_and_a_fixed_token_leases_for_a_minute() {
    let sim = Sim::start(sim_config()).await;
    // Anonymous on loopback: every route, but no lease, since only a client entry grants it.
    let gw = Gw::anonymous(&sim).await;
    let (s, h, v) = answer(http().get(format!("{}/_gateway/token", gw.url))).await;
    assert_eq!((s, refused(&v, &h)), (401, 401), "{v}");
    drop(gw);

    let fixed = sim.token().await;
    let fetched = sim.calls("getToken").await;
    let toml = client_entry("lessee", LESSEE, "token_lease = true");
    let gw = Gw::start(&toml, &sim.url, vec![("FINOVY_TOKEN", fixed.clone())]).await;
    let sent = now_ms();
    let (s, h, v) = lease(&gw.url, LESSEE).await;
    assert_eq!(leased(s, &h, &v), fixed);
    let expires = v["data"]["expiresAt"].as_u64().unwrap();
    assert!(
        (sent + 59_000..=now_ms() + 60_000).contains(&expires),
        "{v}"
    );
    // A fixed token cannot be replaced: once reported refused it is not leased as if good, but
    // 503 with Retry-After until a reload changes it, and no getToken.
    let (s, h, v) = report(&gw.url, LESSEE, &json!({"token": fixed}).to_string()).await;
    assert_eq!((s, refused(&v, &h)), (503, 503), "{v}");
    assert_eq!(retry_after(&h, &v), 60, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("FINOVY_TOKEN"), "{v}");
    let (s, h, v) = lease(&gw.url, LESSEE).await;
    assert_eq!((s, refused(&v, &h)), (503, 503), "{v}");
    assert_eq!(retry_after(&h, &v), 60, "{v}");
    assert_eq!(sim.calls("getToken").await, fetched, "none by the gateway");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fixed_token_the_upstream_refused_is_leased_again_only_once_replaced() {
    let sim = Sim::start(sim_config()).await;
    let first = sim.token().await;
    let token_file = temp_file("token", &first);
    let gw = Bin::serve(
        &client_entry("lessee", LESSEE, "token_lease = true"),
        &sim.url,
        &[("FINOVY_TOKEN_FILE", token_file.to_str().unwrap())],
    );
    let (s, h, v) = lease(&gw.url, LESSEE).await;
    assert_eq!(leased(s, &h, &v), first);
    // The upstream forgets it: the gateway's own request sees the refusal (passed on as is).
    sim.revoke_tokens().await;
    let (_, _, v) = answer(
        http()
            .get(format!("{}{DISK}/memoryTotal/0", gw.url))
            .bearer_auth(LESSEE),
    )
    .await;
    assert_ne!(v["code"], 0, "{v}");
    let (s, h, v) = lease(&gw.url, LESSEE).await;
    assert_eq!(
        (s, refused(&v, &h)),
        (503, 503),
        "not leased as if good: {v}"
    );
    assert_eq!(retry_after(&h, &v), 60, "{v}");
    // Replaced in its file and reloaded: leased again.
    let second = sim.token().await;
    std::fs::write(&token_file, format!("{second}\n")).unwrap();
    gw.hangup();
    let fresh = eventually_some(
        "the new fixed token leased",
        Duration::from_secs(20),
        || async {
            let (s, h, v) = lease(&gw.url, LESSEE).await;
            (s == 200).then(|| leased(s, &h, &v))
        },
    )
    .await;
    assert_eq!(fresh, second);
    assert_eq!(sim.calls("getToken").await, 2, "only the test's own");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_ends_no_later_than_the_gateways_own_refresh() {
    // Tokens of 2 s: the gateway replaces each at 1.5 s (a quarter of its life ahead).
    let sim = Sim::start(SimConfig {
        token_ttl: Duration::from_secs(2),
        ..sim_config()
    })
    .await;
    let gw = Gw::start(&clients(), &sim.url, demo_env()).await;
    // (sent, received, token, expiresAt), all in epoch ms.
    let leases: RefCell<Vec<(u64, u64, String, u64)>> = RefCell::default();
    eventually("four tokens leased", Duration::from_secs(30), || async {
        let sent = now_ms();
        let (s, h, v) = lease(&gw.url, SECOND).await;
        let token = leased(s, &h, &v);
        let received = now_ms();
        let expires = v["data"]["expiresAt"].as_u64().unwrap();
        assert!(expires >= sent, "a lease is not over when made: {v}");
        assert!(
            expires <= received + 1_500,
            "never past the refresh planned 1.5 s into the token's life: {v}"
        );
        let mut leases = leases.borrow_mut();
        leases.push((sent, received, token, expires));
        leases.iter().map(|l| &l.2).collect::<HashSet<_>>().len() >= 4
    })
    .await;
    let leases = leases.into_inner();
    // A token seen replaced at some moment was leased only until before that moment: no lease
    // outlives its token's replacement.
    for l in &leases {
        for m in leases.iter().filter(|m| m.2 != l.2 && m.0 > l.1) {
            assert!(
                m.1 >= l.3,
                "{} was leased until {} but replaced by {}",
                l.2,
                l.3,
                m.1
            );
        }
    }
    let distinct = leases.iter().map(|l| &l.2).collect::<HashSet<_>>().len() as u64;
    let fetched = sim.calls("getToken").await;
    assert!(
        (distinct..=distinct + 1).contains(&fetched),
        "{} leases, {distinct} tokens, {fetched} getToken: only the gateway's own refreshes",
        leases.len()
    );
    for l in leases.iter().rev().take(1) {
        assert!(works(&sim, &l.2).await, "the last lease's token works");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_token_is_replaced_once_however_many_report_it() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(&clients(), &sim.url, demo_env()).await;
    let (s, h, v) = lease(&gw.url, LESSEE).await;
    let old = leased(s, &h, &v);
    assert_eq!(sim.calls("getToken").await, 1);
    sim.revoke_tokens().await;
    assert!(!works(&sim, &old).await);

    // Two clients report it, twice each, at once: one getToken, one new token for all four.
    let body = json!({ "token": old }).to_string();
    let reports: Vec<_> = [LESSEE, LESSEE, SECOND, SECOND]
        .into_iter()
        .map(|key| {
            let (url, body) = (gw.url.clone(), body.clone());
            tokio::spawn(async move { report(&url, key, &body).await })
        })
        .collect();
    let mut fresh = HashSet::new();
    for r in reports {
        let (s, h, v) = r.await.unwrap();
        fresh.insert(leased(s, &h, &v));
    }
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    let new = fresh.into_iter().next().unwrap();
    assert_ne!(new, old);
    assert!(works(&sim, &new).await);
    assert_eq!(sim.calls("getToken").await, 2, "exactly one refresh");

    // A report of a token that is no longer current changes nothing: the current lease.
    let (s, h, v) = report(&gw.url, THIRD, &body).await;
    assert_eq!(leased(s, &h, &v), new);
    assert_eq!(sim.calls("getToken").await, 2);

    // A client reporting faster than 1 per 5 s (burst 2): 429, code 220025, Retry-After.
    let (s, h, v) = report(&gw.url, LESSEE, &body).await;
    assert_eq!((s, refused(&v, &h)), (429, 220025), "{v}");
    let wait: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&wait), "{wait}");

    // Bad reports are refused and charge nothing: the third client still has one report left.
    for bad in [
        "",
        "not json",
        r"{}",
        r#"{"token":""}"#,
        r#"{"token":1}"#,
        r#"{"token":"x","more":1}"#,
    ] {
        let (s, h, v) = report(&gw.url, THIRD, bad).await;
        assert_eq!((s, refused(&v, &h)), (400, 1007), "{bad}: {v}");
    }
    let (s, h, v) = report(&gw.url, THIRD, &body).await;
    assert_eq!(leased(s, &h, &v), new);

    // The data plane uses the new token: no 401 on the way, no further getToken.
    let (s, _, v) = answer(
        http()
            .get(format!("{}{DISK}/memoryTotal/0", gw.url))
            .bearer_auth(SECOND),
    )
    .await;
    assert_eq!((s, v["code"].as_i64()), (200, Some(0)), "{v}");
    assert_eq!(sim.calls("getToken").await, 2);
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "finovy_gateway_token_leases_total",
            &[("client", "third")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "finovy_gateway_requests_total",
            &[
                ("method", "POST"),
                ("route", "gateway.token_rejected"),
                ("status", "429")
            ]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_within_min_refresh_interval_is_not_leased_and_replaced_once_allowed() {
    let sim = Sim::start(sim_config()).await;
    // One getToken per 5 s at most: the startup one holds the replacement back (long enough
    // that the steps below run within it on a loaded machine).
    let toml = format!("{}[token]\nmin_refresh_interval = \"5s\"\n", clients());
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let (s, h, v) = lease(&gw.url, LESSEE).await;
    let token = leased(s, &h, &v);
    // No getToken may go yet: 503, with when to ask again.
    let (s, h, v) = report(&gw.url, LESSEE, &json!({ "token": token }).to_string()).await;
    assert_eq!((s, refused(&v, &h)), (503, 503), "{v}");
    assert!((1..=5).contains(&retry_after(&h, &v)), "{v}");
    assert!(!v["msg"].as_str().unwrap().contains(&token), "{v}");
    // Nobody leases it meanwhile, whatever they report.
    let (s, h, v) = lease(&gw.url, SECOND).await;
    assert_eq!((s, refused(&v, &h)), (503, 503), "{v}");
    assert!((1..=5).contains(&retry_after(&h, &v)), "{v}");
    let (s, h, v) = report(&gw.url, SECOND, r#"{"token":"an-older-token"}"#).await;
    assert_eq!((s, refused(&v, &h)), (503, 503), "{v}");
    assert!((1..=5).contains(&retry_after(&h, &v)), "{v}");
    // The claim is the client's word: the gateway's own requests keep sending the token until
    // the upstream refuses it (here it does not), and they ask for no getToken.
    let (s, _, v) = answer(
        http()
            .get(format!("{}{DISK}/memoryTotal/0", gw.url))
            .bearer_auth(SECOND),
    )
    .await;
    assert_eq!((s, v["code"].as_i64()), (200, Some(0)), "{v}");
    let seen = sim
        .requests()
        .await
        .into_iter()
        .rev()
        .find(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.contains("memoryTotal"))
        })
        .unwrap();
    assert_eq!(seen["headers"]["finovy-access-token"], token.as_str());
    // With nothing asking for a token, the replacement is fetched once the interval allows.
    eventually(
        "the refresher replaces the refused token",
        Duration::from_secs(15),
        || async { sim.calls("getToken").await == 2 },
    )
    .await;
    let (s, h, v) = lease(&gw.url, THIRD).await;
    let fresh = leased(s, &h, &v);
    assert_ne!(fresh, token);
    assert!(works(&sim, &fresh).await);
    assert_eq!(sim.calls("getToken").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_lease_the_fleets_one_token_and_one_report_replaces_it() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-lease:\"\ntimeout = \"1s\"\n{}",
        redis.url(),
        clients()
    );
    let (a, b, c) = tokio::join!(
        Gw::start(&toml, &sim.url, demo_env()),
        Gw::start(&toml, &sim.url, demo_env()),
        Gw::start(&toml, &sim.url, demo_env()),
    );
    let mut held = HashSet::new();
    for gw in [&a, &b, &c] {
        let (s, h, v) = lease(&gw.url, SECOND).await;
        held.insert(leased(s, &h, &v));
    }
    assert_eq!(held.len(), 1, "one token for the fleet");
    let old = held.into_iter().next().unwrap();
    assert_eq!(sim.calls("getToken").await, 1);

    // Reported through A: one refresh for the fleet.
    sim.revoke_tokens().await;
    let body = json!({ "token": old }).to_string();
    let (s, h, v) = report(&a.url, LESSEE, &body).await;
    let new = leased(s, &h, &v);
    assert_ne!(new, old);
    // B still holds the old token, and is told of it too: it takes the fleet's new one.
    let (s, h, v) = report(&b.url, THIRD, &body).await;
    assert_eq!(leased(s, &h, &v), new);
    // C, told nothing, leases the fleet's token, not the one it held.
    let (s, h, v) = lease(&c.url, SECOND).await;
    assert_eq!(leased(s, &h, &v), new, "C follows the fleet's token");
    assert_eq!(sim.calls("getToken").await, 2, "one refresh for the fleet");
    assert!(works(&sim, &new).await);
    // And B's and C's own requests carry it: no 401, no getToken of their own.
    for gw in [&b, &c] {
        let (s, _, v) = answer(
            http()
                .get(format!("{}{DISK}/memoryTotal/0", gw.url))
                .bearer_auth(SECOND),
        )
        .await;
        assert_eq!((s, v["code"].as_i64()), (200, Some(0)), "{v}");
        let seen = sim.requests().await.pop().unwrap();
        assert_eq!(seen["headers"]["finovy-access-token"], new.as_str());
    }
    assert_eq!(sim.calls("getToken").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_lease_is_an_access_line_naming_client_and_account_never_the_token() {
    let sim = Sim::start(sim_config()).await;
    let gw = Bin::serve(
        &clients(),
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    let (s, h, v) = answer(
        http()
            .get(format!("{}/_gateway/token", gw.url))
            .bearer_auth(SECOND)
            .header("X-Request-Id", "lease-1"),
    )
    .await;
    let token = leased(s, &h, &v);
    let (s, _, _) = report(&gw.url, PLAIN, r#"{"token":"x"}"#).await;
    assert_eq!(s, 403);
    let log = gw.wait_for_log("route=gateway.token_rejected", 1).await;
    let line = log
        .lines()
        .find(|l| l.contains("request_id=lease-1"))
        .expect("the lease's access line");
    for field in [
        "finovy_gateway::access",
        "method=GET",
        "route=gateway.token_lease",
        "status=200",
        "client=second",
        "account=default",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    assert!(!log.contains(&token), "the token is never logged:\n{log}");
}
