//! Budgets in the terms an operator plans in: calendar days and months in a configured zone, a
//! client's own caps, a soft threshold reported once per window, and gauges of what each set cap
//! has used, fleet-wide in shared mode.

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::harness::redis::RedisServer;
use crate::harness::*;

const USED: &str = "finovy_gateway_budget_used";
const LIMIT: &str = "finovy_gateway_budget_limit";

/// One disk of `memory` GB, new (its own key), as `client` (a bearer key) or anonymously.
async fn create(url: &str, client: Option<&str>, memory: u32) -> (u16, HeaderMap, Value) {
    let mut req = http()
        .post(format!("{url}{DISK}/create"))
        .header("Idempotency-Key", fresh_key())
        .json(&json!({"area": 0, "memory": memory, "isMount": 0}));
    if let Some(key) = client {
        req = req.header("Authorization", format!("Bearer {key}"));
    }
    answer(req).await
}

/// Seconds from now to the next 1st of a month, 00:00 in `zone`.
fn to_next_month(zone: &str) -> i64 {
    let now = Timestamp::now().to_zoned(TimeZone::get(zone).unwrap());
    let next = now
        .date()
        .first_of_month()
        .checked_add(1.month())
        .unwrap()
        .to_zoned(now.time_zone().clone())
        .unwrap();
    next.timestamp().as_second() - now.timestamp().as_second()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_month_cap_refuses_the_next_create_until_the_1st_in_the_zone() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-month:\"\ntimeout = \"2s\"\n{FAST_CREATES}\
         [create.budget]\ntimezone = \"Asia/Shanghai\"\n\
         [create.budget.account]\ncreates_per_month = 2\ngb_per_day = 1000\n",
        redis.url()
    );
    let [a, b] = replicas::<2>(&toml, &sim.url, demo_env()).await;
    assert_eq!(create(&a.url, None, 20).await.0, 200);
    assert_eq!(create(&b.url, None, 21).await.0, 200);
    // The third, on either replica, passes the fleet's month cap; it may go on the 1st, 00:00
    // in Shanghai.
    for gw in [&a, &b] {
        let expected = to_next_month("Asia/Shanghai");
        let (status, h, v) = create(&gw.url, None, 22).await;
        assert_eq!((status, v["code"].as_i64()), (429, Some(220025)), "{v}");
        assert!(
            v["msg"].as_str().unwrap().contains("creates_per_month"),
            "{v}"
        );
        let retry: i64 = h["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(
            (expected - 5..=expected + 1).contains(&retry),
            "Retry-After {retry}, the month ends in {expected}s"
        );
    }
    assert_eq!(sim.calls("create").await, 2, "refused before the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_budget_applies_to_that_client_alone() {
    let sim = Sim::start(sim_config()).await;
    let toml = format!(
        "{FAST_CREATES}[create.budget.client]\ncreates_per_day = 3\n{}{}",
        client_entry("tight", "key-tight", "budget = { creates_per_day = 1 }"),
        client_entry("plain", "key-plain", "")
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    assert_eq!(create(&gw.url, Some("key-tight"), 20).await.0, 200);
    let (status, _, v) = create(&gw.url, Some("key-tight"), 20).await;
    assert_eq!(status, 429, "{v}");
    assert!(
        v["msg"].as_str().unwrap().contains("creates_per_day"),
        "{v}"
    );
    for _ in 0..3 {
        let (status, _, v) = create(&gw.url, Some("key-plain"), 20).await;
        assert_eq!(status, 200, "the other client keeps the common cap: {v}");
    }
    assert_eq!(create(&gw.url, Some("key-plain"), 20).await.0, 429);
    let text = gw.metrics().await;
    for (name, limit, used) in [("tight", 1.0, 1.0), ("plain", 3.0, 3.0)] {
        let labels = [
            ("scope", "client"),
            ("name", name),
            ("cap", "creates_per_day"),
        ];
        assert_eq!(metric_opt(&text, LIMIT, &labels), Some(limit), "{text}");
        assert_eq!(metric_opt(&text, USED, &labels), Some(used), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reaching_warn_at_logs_once_and_counts_once_per_window() {
    let sim = Sim::start(sim_config()).await;
    let toml = format!(
        "{FAST_CREATES}[create.budget]\nwarn_at = 0.5\n[create.budget.client]\ncreates_per_day = 4\n"
    );
    let env = demo_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gw = Bin::serve(&toml, &sim.url, &env);
    let labels = [("scope", "client"), ("cap", "creates_per_day")];
    let counter = "finovy_gateway_budget_warnings_total";
    assert_eq!(gw.metric(counter, &labels).await, 0.0, "exported at 0");
    let mut last_id = String::new();
    for _ in 0..4 {
        let (status, h, v) = create(&gw.url, None, 20).await;
        assert_eq!(status, 200, "{v}");
        last_id = h["x-request-id"].to_str().unwrap().to_string();
    }
    assert_eq!(create(&gw.url, None, 20).await.0, 429);
    assert_eq!(gw.metric(counter, &labels).await, 1.0);
    // Every line before the last create's access line is written: one warning among them.
    let log = gw.wait_for_log(&last_id, 1).await;
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("warning threshold"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    for field in [
        "scope=\"client\"",
        "cap=\"creates_per_day\"",
        "used=2",
        "limit=4",
    ] {
        assert!(warnings[0].contains(field), "{field} in {}", warnings[0]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gauges_show_the_fleets_use_of_each_set_cap() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-gauges:\"\ntimeout = \"2s\"\n{FAST_CREATES}\
         [create.budget.account]\ncreates_per_day = 10\ngb_per_month = 1000\n",
        redis.url()
    );
    let [a, b] = replicas::<2>(&toml, &sim.url, demo_env()).await;
    let account = |cap| [("scope", "account"), ("name", "default"), ("cap", cap)];
    let before = a.metrics().await;
    assert_eq!(
        metric_opt(&before, USED, &account("creates_per_day")),
        Some(0.0)
    );
    assert_eq!(create(&a.url, None, 20).await.0, 200);
    assert_eq!(create(&b.url, None, 30).await.0, 200);
    for gw in [&a, &b] {
        let text = gw.metrics().await;
        let read = |name, cap| metric_opt(&text, name, &account(cap));
        assert_eq!(read(USED, "creates_per_day"), Some(2.0), "{text}");
        assert_eq!(read(LIMIT, "creates_per_day"), Some(10.0), "{text}");
        assert_eq!(read(USED, "gb_per_month"), Some(50.0), "{text}");
        assert_eq!(read(LIMIT, "gb_per_month"), Some(1000.0), "{text}");
        for unset in ["creates_per_hour", "creates_per_month", "gb_per_day"] {
            assert_eq!(read(USED, unset), None, "{unset} is not set: {text}");
            assert_eq!(read(LIMIT, unset), None, "{unset} is not set: {text}");
        }
        assert_eq!(
            metric_opt(&text, USED, &[("scope", "client")]),
            None,
            "no client cap is set: {text}"
        );
        let budget_lines = text
            .lines()
            .filter(|l| l.starts_with("finovy_gateway_budget_"));
        assert!(budget_lines.clone().all(|l| !l.contains("Inf")), "{text}");
    }
}
