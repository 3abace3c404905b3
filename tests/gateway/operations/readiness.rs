//! `/readyz` means "this replica can serve as well as its peers", against the real binary: an
//! upstream outage, which every replica meets alike, keeps it ready (and says so in the body)
//! while the cache serves its stale entries; credentials the upstream refuses make it unready.

use std::time::Duration;

use finovy_gateway::sim::SimConfig;

use crate::harness::*;

const DEMO: [(&str, &str); 2] = [
    ("FINOVY_UUID", "demo-uuid"),
    ("FINOVY_SECRET", "demo-secret"),
];

/// Polls `/readyz` until its account line says no token is held and names `why`; the answer.
async fn readyz_without_token(admin_url: &str, why: &str) -> (u16, serde_json::Value) {
    eventually_some(
        &format!("/readyz says no token ({why})"),
        Duration::from_secs(20),
        || async move {
            let (status, body) = readyz(admin_url).await;
            let line = body["accounts"]["default"].as_str().unwrap_or_default();
            (line.contains("no token") && line.contains(why)).then_some((status, body))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_outage_keeps_the_replica_ready_while_stale_entries_are_served() {
    // Tokens live 3 s, so the outage soon leaves the replica without one.
    let sim = Sim::start(SimConfig {
        token_ttl: Duration::from_secs(3),
        ..sim_config()
    })
    .await;
    let toml =
        info_policy("ttl = \"1s\"\nstale_while_revalidate = \"0s\"\nstale_if_error = \"5m\"");
    let gw = Bin::serve(&toml, &sim.url, &DEMO);
    readyz_until(&gw.admin_url, 200).await;
    let info = new_disk_info_url(&gw.url).await;
    let (status, h, _) = get(&info, &[]).await;
    assert_eq!(status, 200);
    assert!(cache_status(&h).contains("stored"), "{h:?}");

    // The upstream closes every connection: getToken fails for every replica alike.
    sim.fault("reset", "0s").await;
    let (status, body) = readyz_without_token(&gw.admin_url, "getToken failed").await;
    assert_eq!(
        status, 200,
        "an outage every replica shares keeps it ready: {body}"
    );
    assert_eq!(body["ready"], true, "{body}");
    assert!(
        body["upstream"]
            .as_str()
            .is_some_and(|u| u.contains("unreachable or failing")),
        "the body says the upstream fails: {body}"
    );
    // Meanwhile the cache answers what it holds, as it promises while the upstream fails.
    let (status, h, v) = get(&info, &[]).await;
    assert_eq!((status, &v["code"]), (200, &serde_json::json!(0)), "{v}");
    assert!(cache_status(&h).contains("stale"), "{h:?}");
    assert!(
        gw.metric(
            "finovy_gateway_token_refreshes_total",
            &[("outcome", "error")]
        )
        .await
            > 0.0
    );

    // An upstream that answers its own failure (HTTP 500, code 500) is an outage too, not a refusal.
    sim.fault("error", "0s").await;
    let (status, body) = readyz_without_token(&gw.admin_url, "code 500").await;
    assert_eq!(status, 200, "{body}");

    // Back to normal: a token again, and still ready.
    sim.fault("none", "0s").await;
    eventually("a token again", Duration::from_secs(20), || async {
        let (_, body) = readyz(&gw.admin_url).await;
        body["accounts"]["default"]
            .as_str()
            .is_some_and(|l| l.starts_with("token"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_make_the_replica_unready() {
    let sim = Sim::start(sim_config()).await;
    let gw = Bin::serve(
        "",
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "not-the-secret"),
        ],
    );
    let body = readyz_until(&gw.admin_url, 503).await;
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["ready"], false, "{body}");
    let line = body["accounts"]["default"].as_str().unwrap();
    assert!(line.contains("refused getToken (code 401)"), "{body}");
    assert!(
        body.get("upstream").is_none(),
        "a refusal is not an outage: {body}"
    );
    assert!(!body.to_string().contains("not-the-secret"), "{body}");
}
