//! `Server-Timing` end to end: a hit, a miss, a miss joined to another's fill, a create that
//! waited for its rate slot, a create and a mount joined to identical ones in flight, the
//! gateway's own refusals, and `[server] server_timing = false`.

use std::time::{Duration, Instant};

use finovy_gateway::sim::SimConfig;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::harness::*;

/// The header's metrics as `(name, desc or dur)`, in order.
fn timing(h: &HeaderMap) -> Vec<(String, String)> {
    let text = h
        .get("server-timing")
        .unwrap_or_else(|| panic!("no Server-Timing: {h:?}"))
        .to_str()
        .unwrap();
    text.split(", ")
        .map(|m| {
            let (name, param) = m.split_once(';').unwrap_or_else(|| panic!("{text}"));
            let value = param
                .strip_prefix("desc=")
                .or_else(|| param.strip_prefix("dur="))
                .unwrap_or_else(|| panic!("{text}"));
            (name.to_string(), value.to_string())
        })
        .collect()
}

/// The metrics' names, in order.
fn names(h: &HeaderMap) -> Vec<String> {
    timing(h).into_iter().map(|(n, _)| n).collect()
}

/// One metric's duration in milliseconds.
fn dur(h: &HeaderMap, name: &str) -> f64 {
    timing(h)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} in {h:?}"))
        .1
        .parse()
        .unwrap()
}

fn desc(h: &HeaderMap) -> String {
    timing(h)
        .into_iter()
        .find(|(n, _)| n == "cache")
        .map(|(_, d)| d)
        .unwrap_or_default()
}

async fn create(gw: &Gw, memory: u32) -> (u16, HeaderMap, String) {
    let (status, h, v) = answer(
        http()
            .post(format!("{}{DISK}/create", gw.url))
            .header("Idempotency-Key", fresh_key())
            .json(&json!({"area": 0, "memory": memory, "isMount": 0})),
    )
    .await;
    (
        status,
        h,
        v["data"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_miss_says_its_upstream_time_and_a_hit_says_hit() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(&info_policy("ttl = \"60s\""), &sim.url, demo_env()).await;
    let (status, h, id) = create(&gw, 20).await;
    assert_eq!(status, 200);
    // Not a cached route: no cache part, an upstream call.
    assert_eq!(names(&h), ["upstream", "total"], "{h:?}");
    assert!(dur(&h, "upstream") <= dur(&h, "total"), "{h:?}");

    let url = format!("{}{DISK}/info/{id}", gw.url);
    let (_, h, _) = get(&url, &[]).await;
    assert_eq!(names(&h), ["cache", "upstream", "total"], "{h:?}");
    assert_eq!(desc(&h), "miss");
    assert!(dur(&h, "upstream") > 0.0, "{h:?}");
    assert!(dur(&h, "upstream") <= dur(&h, "total"), "{h:?}");

    // Answered by the edge: no upstream, no wait.
    let (_, h, _) = get(&url, &[]).await;
    assert_eq!(names(&h), ["cache", "total"], "{h:?}");
    assert_eq!(desc(&h), "hit");

    // The gateway's own refusals carry it too (a route that does not exist: 404).
    let (status, h, _) = get(&format!("{}/v1/nothing/here", gw.url), &[]).await;
    assert_eq!(status, 404);
    assert_eq!(names(&h), ["total"], "{h:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_miss_joined_to_another_fill_says_it_waited() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(&info_policy("ttl = \"60s\""), &sim.url, demo_env()).await;
    let (_, _, id) = create(&gw, 20).await;
    sim.fault("slow", "400ms").await;
    let url = format!("{}{DISK}/info/{id}", gw.url);
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url, &[]).await.1 })
        })
        .collect();
    let mut answers = Vec::new();
    for h in handles {
        answers.push(h.await.unwrap());
    }
    answers.sort_by_key(|h| names(h).contains(&"wait".to_string()));
    let [leader, joined] = &answers[..] else {
        unreachable!()
    };
    assert_eq!(names(leader), ["cache", "upstream", "total"], "{leader:?}");
    assert_eq!(names(joined), ["cache", "wait", "total"], "{joined:?}");
    assert_eq!((desc(leader), desc(joined)), ("miss".into(), "miss".into()));
    assert!(dur(leader, "upstream") >= 400.0, "{leader:?}");
    // The joined one came a little later than the call went out.
    assert!(dur(joined, "wait") >= 200.0, "{joined:?}");
    assert!(dur(joined, "wait") <= dur(joined, "total"), "{joined:?}");
    assert_eq!(sim.calls("info").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_that_waited_for_its_rate_slot_says_how_long() {
    let sim = Sim::start(sim_config()).await;
    let toml = "[create.routes.\"disk.create\"]\nrate = \"1/1s\"\nburst = 1\nmax_wait = \"3s\"\n";
    let gw = Gw::start(toml, &sim.url, demo_env()).await;
    let (status, first, _) = create(&gw, 20).await;
    assert_eq!(status, 200);
    assert_eq!(names(&first), ["upstream", "total"], "{first:?}");
    let sent = Instant::now();
    let (status, second, _) = create(&gw, 21).await;
    let took = sent.elapsed().as_secs_f64() * 1e3;
    assert_eq!(status, 200);
    assert_eq!(names(&second), ["upstream", "wait", "total"], "{second:?}");
    // The slot was a second after the first's; some of that second went by already.
    let wait = dur(&second, "wait");
    assert!((300.0..=took).contains(&wait), "{second:?} in {took} ms");
    assert!(
        wait + dur(&second, "upstream") <= dur(&second, "total"),
        "{second:?}"
    );
}

/// Two identical `path` requests with `body` at once, the upstream slow: their answers, the one
/// that made the call first.
async fn two_at_once(gw: &Gw, path: &str, body: &Value) -> [(HeaderMap, Value); 2] {
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (url, body) = (format!("{}{DISK}/{path}", gw.url), body.clone());
            tokio::spawn(async move {
                let (status, h, v) = answer(http().post(url).json(&body)).await;
                assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
                (h, v)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for h in handles {
        answers.push(h.await.unwrap());
    }
    answers.sort_by_key(|(h, _)| names(h).contains(&"wait".to_string()));
    answers.try_into().unwrap()
}

/// The first made the call, the second joined it and says how long it waited for it.
fn one_called_and_one_waited(answers: &[(HeaderMap, Value); 2]) {
    let [(leader, first), (joined, second)] = answers;
    assert_eq!(first["data"], second["data"], "one answer for both");
    assert_eq!(names(leader), ["upstream", "total"], "{leader:?}");
    assert_eq!(names(joined), ["wait", "total"], "{joined:?}");
    assert!(dur(leader, "upstream") >= 400.0, "{leader:?}");
    // The joined one came a little later than the call went out.
    assert!(dur(joined, "wait") >= 200.0, "{joined:?}");
    assert!(dur(joined, "wait") <= dur(joined, "total"), "{joined:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_joined_to_an_identical_one_in_flight_says_it_waited() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start("", &sim.url, demo_env()).await;
    sim.fault("slow", "400ms").await;
    // No Idempotency-Key: identical creates in flight at once are one purchase.
    let order = json!({"area": 0, "memory": 20, "isMount": 0});
    let answers = two_at_once(&gw, "create", &order).await;
    one_called_and_one_waited(&answers);
    assert_eq!(sim.calls("create").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mount_joined_to_an_identical_one_in_flight_says_it_waited() {
    let sim = Sim::start(SimConfig {
        mount_delay: Duration::from_secs(3600),
        ..sim_config()
    })
    .await;
    let gw = Gw::anonymous(&sim).await;
    let (status, _, disk) = create(&gw, 20).await;
    assert_eq!(status, 200);
    sim.fault("slow", "400ms").await;
    let mount = json!({"id": disk, "pveId": finovy_gateway::sim::seed::HOST_AREA0});
    let answers = two_at_once(&gw, "pveCreate", &mount).await;
    one_called_and_one_waited(&answers);
    assert_eq!(sim.calls("pveCreate").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_timing_false_turns_it_off() {
    let sim = Sim::start(sim_config()).await;
    let toml = format!(
        "[server]\nserver_timing = false\n{}",
        info_policy("ttl = \"60s\"")
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let (_, h, id) = create(&gw, 20).await;
    assert!(h.get("server-timing").is_none(), "{h:?}");
    let url = format!("{}{DISK}/info/{id}", gw.url);
    for expected in ["fwd=miss", "; hit;"] {
        let (_, h, _) = get(&url, &[]).await;
        assert!(cache_status(&h).contains(expected), "{h:?}");
        assert!(h.get("server-timing").is_none(), "{h:?}");
    }
    let (status, h, _) = get(&format!("{}/v1/nothing/here", gw.url), &[]).await;
    assert_eq!(status, 404);
    assert!(h.get("server-timing").is_none(), "{h:?}");
}
