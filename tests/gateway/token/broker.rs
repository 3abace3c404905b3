//! The token broker: one getToken for many, refresh across expiries, one retry after a 401,
//! fixed tokens, and one token per account.

use std::time::{Duration, Instant};

use finovy_gateway::sim::SimConfig;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_first_requests_share_one_get_token() {
    // Every answer, getToken's too, takes 400 ms: the first requests arrive while the startup
    // getToken is still in flight, and must wait for it rather than fetch their own.
    let sim = Sim::start(SimConfig {
        latency: Duration::from_millis(400),
        ..sim_config()
    })
    .await;
    let gw = Gw::start_unready("", &sim.url, demo_env()).await;
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    let answers = concurrent_gets(&url, 200).await;
    assert_eq!(
        sim.calls("getToken").await,
        1,
        "200 first requests, one getToken"
    );
    for answer in answers {
        assert_eq!(answer["code"], 0, "{answer}");
    }
    assert_eq!(sim.calls("memoryTotal").await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_succeed_across_token_expiries() {
    let sim = Sim::start(SimConfig {
        token_ttl: Duration::from_millis(800),
        ..sim_config()
    })
    .await;
    let gw = Gw::anonymous(&sim).await;
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    let started = Instant::now();
    let mut n = 0;
    // Four token lifetimes of steady traffic.
    while started.elapsed() < Duration::from_millis(3200) {
        let (status, _, body) = get(&url, &[]).await;
        assert_eq!(
            (status, body["code"].as_i64()),
            (200, Some(0)),
            "request {n}: {body}"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One token per refresh, a quarter of a lifetime (200 ms) ahead of its expiry: about one
    // per 600 ms of what really ran (a slow last request can run past the 3.2 s), plus the
    // first; a broker that fetched per request would make one per request.
    let (fetched, ran) = (sim.calls("getToken").await, started.elapsed());
    let most = 2 + ran.as_millis() as u64 / 600;
    assert!(
        (3..=most).contains(&fetched),
        "getToken calls: {fetched} over {n} requests in {ran:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_token_is_refreshed_once_and_the_request_retried() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    assert_eq!(get(&url, &[]).await.2["code"], 0);
    assert_eq!(sim.calls("getToken").await, 1);
    sim.revoke_tokens().await;
    let before = sim.calls("memoryTotal").await;
    for answer in concurrent_gets(&url, 50).await {
        assert_eq!(answer["code"], 0, "the client never sees the 401: {answer}");
    }
    assert_eq!(
        sim.calls("getToken").await,
        2,
        "one refresh for all 50 rejections"
    );
    let sent = sim.calls("memoryTotal").await - before;
    assert!(
        (51..=100).contains(&sent),
        "each request sent at most twice: {sent}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fixed_token_is_used_and_get_token_never_called() {
    let sim = Sim::start(sim_config()).await;
    let token = sim.token().await;
    let gw = Gw::start("", &sim.url, vec![("FINOVY_TOKEN", token.clone())]).await;
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    for _ in 0..5 {
        assert_eq!(get(&url, &[]).await.2["code"], 0);
    }
    assert_eq!(
        sim.calls("getToken").await,
        1,
        "only the test's own getToken"
    );
    let seen = sim.requests().await.pop().unwrap();
    assert_eq!(seen["headers"]["finovy-access-token"], token.as_str());
    let ready = http()
        .get(format!("{}/readyz", gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_accounts_use_their_own_upstream_and_token() {
    let sim_a = Sim::start(sim_config()).await;
    let sim_b = Sim::start(SimConfig {
        uuid: "b-uuid".into(),
        secret: "b-secret".into(),
        ..sim_config()
    })
    .await;
    let toml = format!(
        "{}{}[[accounts]]\nname = \"b\"\nbase_url = \"{}\"\nuuid_env = \"B_UUID\"\nsecret_env = \"B_SECRET\"\n",
        client_entry("ka", "key-of-client-a-000000000", ""),
        client_entry("kb", "key-of-client-b-000000000", "account = \"b\""),
        sim_b.url
    );
    let mut env = demo_env();
    env.push(("B_UUID", "b-uuid".into()));
    env.push(("B_SECRET", "b-secret".into()));
    let gw = Gw::start(&toml, &sim_a.url, env).await;
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    for _ in 0..3 {
        let (_, _, a) = get(
            &url,
            &[("Authorization", "Bearer key-of-client-a-000000000")],
        )
        .await;
        assert_eq!(a["code"], 0, "{a}");
    }
    let (_, _, b) = get(
        &url,
        &[("Authorization", "Bearer key-of-client-b-000000000")],
    )
    .await;
    assert_eq!(b["code"], 0, "{b}");
    assert_eq!(
        (
            sim_a.calls("memoryTotal").await,
            sim_b.calls("memoryTotal").await
        ),
        (3, 1)
    );
    assert_eq!(
        (sim_a.calls("getToken").await, sim_b.calls("getToken").await),
        (1, 1)
    );
    let token_a = sim_a.requests().await.pop().unwrap()["headers"]["finovy-access-token"].clone();
    let token_b = sim_b.requests().await.pop().unwrap()["headers"]["finovy-access-token"].clone();
    assert_ne!(token_a, token_b);
    // Had either simulator been sent the other's token, it would have answered 401 and the
    // counts above would show a second getToken and a repeated call.
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_answer_503_and_back_off() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        "",
        &sim.url,
        vec![
            ("FINOVY_UUID", "demo-uuid".into()),
            ("FINOVY_SECRET", "bad-secret-x9".into()),
        ],
    )
    .await;
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    for _ in 0..20 {
        let (status, _, body) = get(&url, &[]).await;
        assert_eq!((status, body["code"].as_i64()), (503, Some(503)), "{body}");
        assert!(
            !body["msg"].as_str().unwrap().contains("bad-secret-x9"),
            "no secret in the answer: {body}"
        );
    }
    let fetched = sim.calls("getToken").await;
    assert!(fetched <= 3, "backoff keeps getToken calls few: {fetched}");
    assert_eq!(sim.calls("memoryTotal").await, 0);
    let ready = http()
        .get(format!("{}/readyz", gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let metrics = gw.metrics().await;
    assert!(
        metric(
            &metrics,
            "finovy_gateway_token_refreshes_total",
            &[("outcome", "error")]
        ) > 0.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_is_refreshed_in_the_background_before_it_expires() {
    let sim = Sim::start(SimConfig {
        token_ttl: Duration::from_secs(4),
        ..sim_config()
    })
    .await;
    let gw = Gw::anonymous(&sim).await; // returns once the first token is held
    let held_since = Instant::now();
    assert_eq!(sim.calls("getToken").await, 1);
    // No client traffic at all: the broker refreshes by itself, a quarter-lifetime ahead (at ~3s).
    eventually("a background refresh", Duration::from_secs(20), || async {
        sim.calls("getToken").await >= 2
    })
    .await;
    assert!(
        held_since.elapsed() < Duration::from_secs(4),
        "refreshed before the first token expired"
    );
    let metrics = gw.metrics().await;
    let expires_in = metric_opt(&metrics, "finovy_gateway_token_expires_in_seconds", &[])
        .expect("the expiry gauge") as i64;
    assert!((1..=4).contains(&expires_in), "{expires_in}");
    assert_eq!(
        metric(
            &metrics,
            "finovy_gateway_token_refreshes_total",
            &[("outcome", "ok")]
        ),
        2.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_never_aborts_the_get_token_it_started() {
    // Every answer takes 500 ms (counted by the simulator when it arrives). After a revocation a
    // request meets the 401, then its getToken goes out; its client hangs up while that is in
    // flight.
    let sim = Sim::start(SimConfig {
        latency: Duration::from_millis(500),
        ..sim_config()
    })
    .await;
    let toml = "[token]\nmin_lifetime = \"0s\"\nmin_refresh_interval = \"1s\"\n";
    let gw = Gw::start(toml, &sim.url, demo_env()).await;
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    // Past the startup getToken's interval, so the one after the revocation may go.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sim.revoke_tokens().await;
    let client = tokio::spawn({
        let url = url.clone();
        async move { http().get(&url).send().await }
    });
    eventually(
        "the revocation's getToken reached the upstream",
        Duration::from_secs(5),
        || async { sim.calls("getToken").await == 2 },
    )
    .await;
    client.abort();
    assert!(
        client.await.unwrap_err().is_cancelled(),
        "the client hung up"
    );
    // Within a second of that getToken: a broker whose call was aborted with its caller would
    // hold no token and could not send another yet (503). This request gets the token it made.
    let (status, _, body) = get(&url, &[]).await;
    assert_eq!((status, body["code"].as_i64()), (200, Some(0)), "{body}");
    assert_eq!(sim.calls("getToken").await, 2, "no second getToken");
}
