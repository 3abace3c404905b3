//! The simulator's tokens: `getToken` for the configured pair only, 401 without a known token,
//! expiry after the TTL, and revocation.

use std::time::{Duration, Instant};

use finovy_gateway::sim::SimConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::client::*;
use crate::harness::eventually_some;

#[tokio::test]
async fn get_token_accepts_only_the_configured_pair() {
    let sim = start(SimConfig {
        token_ttl: Duration::from_secs(90),
        ..quick()
    })
    .await;
    let url = "/v1/auth/getToken";
    let answer = sim
        .call_as(
            None,
            Method::POST,
            url,
            Some(json!({"uuid": "demo-uuid", "secret": "demo-secret"})),
        )
        .await;
    assert_eq!(answer["msg"], "success");
    assert_eq!(answer["data"]["effectiveTime"], 90_000);
    let token = answer["data"]["token"].as_str().expect("token");
    assert_eq!(token.len(), 22);
    assert!(token.chars().all(|c| c.is_ascii_alphanumeric()));
    let trace = answer["traceId"].as_str().expect("traceId");
    assert_eq!(trace.len(), 32);
    assert!(trace.chars().all(|c| c.is_ascii_hexdigit()));

    for body in [
        json!({"uuid": "demo-uuid", "secret": "wrong"}),
        json!({"uuid": "someone", "secret": "demo-secret"}),
        json!({"uuid": "demo-uuid"}),
        json!({"secret": "demo-secret"}),
        json!({"uuid": 1, "secret": 2}),
        json!({}),
    ] {
        let answer = sim
            .call_as(None, Method::POST, url, Some(body.clone()))
            .await;
        assert_eq!(code(&answer), 401, "{body}: {answer}");
        assert_eq!(answer["data"], Value::Null);
    }

    // Both tokens (the one from `start` and this one) are valid at once.
    for token in [sim.token.as_str(), token] {
        let answer = sim
            .call_as(
                Some(token),
                Method::GET,
                &format!("{DISK}/memoryTotal/0"),
                None,
            )
            .await;
        assert_eq!(code(&answer), 0, "{answer}");
    }
}

#[tokio::test]
async fn calls_without_a_known_token_get_401() {
    let sim = start(quick()).await;
    let path = format!("{DISK}/memoryTotal/0");
    let missing = sim.call_as(None, Method::GET, &path, None).await;
    assert_eq!(code(&missing), 401);
    assert!(
        missing["msg"].as_str().unwrap().contains("missing"),
        "{missing}"
    );
    let unknown = sim
        .call_as(Some("not-a-token"), Method::GET, &path, None)
        .await;
    assert_eq!(code(&unknown), 401);
    assert!(
        unknown["msg"].as_str().unwrap().contains("unknown"),
        "{unknown}"
    );
    // The token is checked before anything else: an invalid create gets 401, not 1007.
    let create = sim
        .call_as(
            None,
            Method::POST,
            &format!("{DISK}/create"),
            Some(json!([])),
        )
        .await;
    assert_eq!(code(&create), 401);
    assert_eq!(code(&sim.get(&path).await), 0);
}

#[tokio::test]
async fn tokens_expire_after_their_ttl() {
    let ttl = Duration::from_millis(800);
    let sim = start(SimConfig {
        token_ttl: ttl,
        ..quick()
    })
    .await;
    let issued = Instant::now();
    let token = sim.new_token().await;
    let path = format!("{DISK}/memoryTotal/0");
    let answer = eventually_some("the token expires", DEADLINE, || async {
        let answer = sim.call_as(Some(&token), Method::GET, &path, None).await;
        (code(&answer) != 0).then_some(answer)
    })
    .await;
    assert!(issued.elapsed() >= ttl);
    assert_eq!(code(&answer), 401);
    assert!(
        answer["msg"].as_str().unwrap().contains("expired"),
        "{answer}"
    );
}

#[tokio::test]
async fn revoke_tokens_forgets_every_token() {
    let sim = start(quick()).await;
    let second = sim.new_token().await;
    let (status, answer) = sim.control(Method::POST, "/_sim/revoke-tokens", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["data"]["revoked"], 2);
    let path = format!("{DISK}/memoryTotal/0");
    for token in [sim.token.as_str(), second.as_str()] {
        let answer = sim.call_as(Some(token), Method::GET, &path, None).await;
        assert_eq!(code(&answer), 401);
        assert!(
            answer["msg"].as_str().unwrap().contains("unknown"),
            "{answer}"
        );
    }
    let fresh = sim.new_token().await;
    let answer = sim.call_as(Some(&fresh), Method::GET, &path, None).await;
    assert_eq!(code(&answer), 0, "{answer}");
}
