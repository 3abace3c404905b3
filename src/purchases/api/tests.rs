//! The endpoints in process, against a real SQLite ledger in a temporary folder.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::Value;

use super::*;
use crate::ledger::{NewEntry, Outcome, Settlement};
use crate::purchases::csv::tests::parse;

/// A folder removed when dropped, and the ledger in it.
struct Books {
    dir: std::path::PathBuf,
    ledger: Ledger,
}

impl Drop for Books {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn books() -> Books {
    let dir = std::env::temp_dir().join(format!("fgw-purchases-{:016x}", rand::random::<u64>()));
    let ledger = Ledger::sqlite(&dir.join("l.sqlite"), Duration::from_secs(5))
        .await
        .unwrap();
    Books { dir, ledger }
}

/// Base instant of the entries: 2026-12-07T00:00:00Z.
const T0: u64 = 1_796_601_600_000;

fn id_at(at_ms: u64, n: u64) -> String {
    format!("{at_ms:012x}{n:016x}")
}

struct Spec<'a> {
    n: u64,
    at_ms: u64,
    client: &'a str,
    key: Option<&'a str>,
    outcome: Outcome,
}

/// Opens and settles one entry; returns its id.
async fn put(l: &Ledger, s: &Spec<'_>) -> String {
    let id = id_at(s.at_ms, s.n);
    l.open(&NewEntry {
        id: id.clone(),
        at_ms: s.at_ms,
        account: "default".into(),
        client: s.client.into(),
        route: "disk.create".into(),
        order: r#"{"area":"A, \"north\"","memory":20}"#.into(),
        gb: Some(20),
        idempotency_key: s.key.map(Into::into),
        fingerprint: "fp".into(),
        request_id: format!("req-{}", s.n),
        traceparent: None,
        replica: "here".into(),
    })
    .await
    .unwrap();
    if s.outcome != Outcome::Open {
        let mut settle = Settlement::new(s.outcome, s.at_ms + 5);
        if s.outcome.is_purchase() {
            settle.resource_id = Some(format!("disk{}", s.n));
        }
        if s.outcome == Outcome::Refused {
            settle.reason = Some("=HYPERLINK(\"x\"), said \"no\"\nreally".into());
            settle.upstream_code = Some(220_013);
        }
        l.settle(&id, &settle).await.unwrap();
        if s.outcome == Outcome::Bought {
            l.set_amount(&id, "0.4").await.unwrap();
        }
    }
    id
}

/// 30 entries a minute apart: clients a and b in turn, every fifth refused, every seventh
/// keyed, the rest bought.
async fn thirty(l: &Ledger) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..30u64 {
        let outcome = if n % 5 == 0 {
            Outcome::Refused
        } else {
            Outcome::Bought
        };
        let key = format!("-key {n}, \"q\"");
        ids.push(
            put(
                l,
                &Spec {
                    n,
                    at_ms: T0 + n * 60_000,
                    client: if n % 2 == 0 { "a" } else { "b" },
                    key: (n % 7 == 0).then_some(key.as_str()),
                    outcome,
                },
            )
            .await,
        );
    }
    ids
}

fn json_headers() -> HeaderMap {
    HeaderMap::new()
}

fn csv_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::ACCEPT,
        HeaderValue::from_static("text/csv, application/json;q=0.5"),
    );
    h
}

/// An answer as status, headers and body; refusals rendered as the admin listener does.
async fn get_list(l: &Ledger, query: &str, headers: &HeaderMap) -> (StatusCode, HeaderMap, Bytes) {
    let q = (!query.is_empty()).then_some(query);
    let resp = list(l, q, headers, "rid")
        .await
        .unwrap_or_else(|e| e.into_response("rid"));
    (resp.status(), resp.headers().clone(), resp.body().clone())
}

async fn page(l: &Ledger, query: &str) -> Value {
    let (status, _, body) = get_list(l, query, &json_headers()).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::OK, "{query}: {v}");
    v["data"].clone()
}

fn ids(data: &Value) -> Vec<String> {
    data["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn filters_narrow_the_listing_newest_first() {
    let b = books().await;
    let all = thirty(&b.ledger).await;
    let newest_first: Vec<String> = all.iter().rev().cloned().collect();
    assert_eq!(ids(&page(&b.ledger, "").await), newest_first);
    let count = |d: Value| d["entries"].as_array().unwrap().len();
    assert_eq!(count(page(&b.ledger, "client=a").await), 15);
    assert_eq!(count(page(&b.ledger, "outcome=refused").await), 6);
    assert_eq!(count(page(&b.ledger, "client=a&outcome=refused").await), 3);
    assert_eq!(count(page(&b.ledger, "account=default").await), 30);
    assert_eq!(count(page(&b.ledger, "account=other").await), 0);
    assert_eq!(count(page(&b.ledger, "route=disk.create").await), 30);
    assert_eq!(count(page(&b.ledger, "outcome=open").await), 0);
    // The key as the request sent it, percent-encoded in the query.
    let keyed = page(&b.ledger, "key=-key+7%2C+%22q%22").await;
    assert_eq!(ids(&keyed), [all[7].clone()]);
    // since is inclusive, until exclusive; a date is midnight UTC, and ms and RFC 3339 agree.
    let window = page(&b.ledger, "since=2026-12-07T00:10:00Z&until=1796602500000").await;
    assert_eq!(
        ids(&window),
        all[10..15].iter().rev().cloned().collect::<Vec<_>>()
    );
    assert_eq!(count(page(&b.ledger, "since=2026-12-07").await), 30);
    assert_eq!(count(page(&b.ledger, "until=2026-12-07").await), 0);
    // In Shanghai, 2026-12-07 began eight hours earlier and ended at 16:00Z.
    assert_eq!(
        count(page(&b.ledger, "until=2026-12-07&tz=Asia%2FShanghai").await),
        0
    );
    assert_eq!(
        count(page(&b.ledger, "until=2026-12-08&tz=Asia/Shanghai").await),
        30
    );
    let first = &page(&b.ledger, "limit=1").await["entries"][0];
    assert_eq!(first["outcome"], "bought");
    assert_eq!(first["resourceId"], "disk29");
    assert_eq!(first["amount"], "0.4");
    assert_eq!(first["order"]["memory"], 20);
}

#[tokio::test]
async fn a_cursor_walks_every_page_once() {
    let b = books().await;
    let all = thirty(&b.ledger).await;
    for (filter, expected) in [
        ("", all.iter().rev().cloned().collect::<Vec<_>>()),
        ("client=b&", all.iter().rev().step_by(2).cloned().collect()),
    ] {
        let mut seen: Vec<String> = Vec::new();
        let mut query = format!("{filter}limit=7");
        let mut pages = 0;
        loop {
            let (status, h, body) = get_list(&b.ledger, &query, &json_headers()).await;
            assert_eq!(status, StatusCode::OK);
            let v: Value = serde_json::from_slice(&body).unwrap();
            seen.extend(ids(&v["data"]));
            pages += 1;
            let link = h.get(header::LINK).map(|l| l.to_str().unwrap().to_string());
            match v["data"]["next"].as_str() {
                Some(next) => {
                    let link = link.expect("a Link header beside next");
                    assert!(
                        link.starts_with(&format!("</admin/purchases?cursor={next}&")),
                        "{link}"
                    );
                    assert!(link.ends_with(">; rel=\"next\""), "{link}");
                    // The next query is the Link's.
                    query = link
                        .trim_start_matches("</admin/purchases?")
                        .trim_end_matches(">; rel=\"next\"")
                        .to_string();
                    assert!(query.contains("limit=7"), "{query}");
                }
                None => {
                    assert!(link.is_none());
                    break;
                }
            }
        }
        assert_eq!(seen, expected, "{filter}");
        assert_eq!(pages, expected.len().div_ceil(7), "{filter}");
    }
}

#[tokio::test]
async fn limit_defaults_to_100_and_stops_at_1000() {
    let b = books().await;
    for n in 0..150u64 {
        put(
            &b.ledger,
            &Spec {
                n,
                at_ms: T0 + n,
                client: "a",
                key: None,
                outcome: Outcome::Bought,
            },
        )
        .await;
    }
    let d = page(&b.ledger, "").await;
    assert_eq!(d["entries"].as_array().unwrap().len(), 100);
    assert!(d["next"].is_string());
    let d = page(&b.ledger, "limit=1000").await;
    assert_eq!(d["entries"].as_array().unwrap().len(), 150);
    assert!(d["next"].is_null());
    for over in ["limit=1001", "limit=0", "limit=99999999999"] {
        let (status, _, body) = get_list(&b.ledger, over, &json_headers()).await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status, v["code"].as_i64()),
            (StatusCode::BAD_REQUEST, Some(1007))
        );
        assert!(v["msg"].as_str().unwrap().contains("1 to 1000"), "{v}");
    }
}

#[tokio::test]
async fn bad_parameters_are_400_with_a_message() {
    let b = books().await;
    for (query, says) in [
        ("client=a&client=b", "more than once"),
        ("limit=5&limit=5", "more than once"),
        ("color=red", "unknown query parameter \"color\""),
        ("client", "no value"),
        ("since=last+week", "since"),
        ("outcome=lost", "expected one of"),
        ("cursor=%27%3B+DROP+TABLE+purchases", "cursor"),
        ("client=%27%3B+DROP", "not a name"),
        ("tz=Nowhere%2FCity", "unknown time zone"),
        ("client=%E0%A4", "percent-encoded"),
        ("&", "empty query parameter"),
    ] {
        let (status, h, body) = get_list(&b.ledger, query, &csv_headers()).await;
        // Refusals are in the envelope, even to a caller asking for CSV.
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {v}");
        assert_eq!(v["code"], 1007, "{query}");
        assert!(v["msg"].as_str().unwrap().contains(says), "{query}: {v}");
    }
}

#[tokio::test]
async fn csv_holds_the_json_rows_in_the_same_order() {
    let b = books().await;
    thirty(&b.ledger).await;
    for query in [
        "limit=12",
        "client=a&outcome=refused",
        "limit=12&cursor=placeholder",
    ] {
        let query = if query.contains("placeholder") {
            let next = page(&b.ledger, "limit=12").await["next"]
                .as_str()
                .unwrap()
                .to_string();
            query.replace("placeholder", &next)
        } else {
            query.to_string()
        };
        let (_, jh, json) = get_list(&b.ledger, &query, &json_headers()).await;
        let (status, ch, text) = get_list(&b.ledger, &query, &csv_headers()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ch[header::CONTENT_TYPE], "text/csv; charset=utf-8");
        assert_eq!(jh.get(header::LINK), ch.get(header::LINK), "{query}");
        let json: Value = serde_json::from_slice(&json).unwrap();
        let entries = json["data"]["entries"].as_array().unwrap();
        let rows = parse(std::str::from_utf8(&text).unwrap());
        assert_eq!(rows[0], csv::COLUMNS);
        assert_eq!(rows.len() - 1, entries.len(), "{query}");
        for (row, entry) in rows[1..].iter().zip(entries) {
            for (cell, column) in row.iter().zip(csv::COLUMNS) {
                let want = match &entry[column] {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                // A formula's defusing quote is the only difference.
                let cell = match want.chars().next() {
                    Some('=' | '+' | '-' | '@') => cell.strip_prefix('\'').unwrap(),
                    _ => cell.as_str(),
                };
                assert_eq!(cell, want, "{query}: {column}");
            }
        }
    }
    // The refused entries' reasons are formulas and hold quotes, commas and a line break.
    let (_, _, text) = get_list(&b.ledger, "outcome=refused&limit=1", &csv_headers()).await;
    let text = std::str::from_utf8(&text).unwrap();
    assert!(
        text.contains("\"'=HYPERLINK(\"\"x\"\"), said \"\"no\"\"\nreally\""),
        "{text}"
    );
    assert!(!text.contains(",=") && !text.contains(",-key"), "{text}");
}

#[tokio::test]
async fn one_entry_comes_with_those_answered_from_it() {
    let b = books().await;
    let spec = |n, outcome| Spec {
        n,
        at_ms: T0 + n,
        client: "a",
        key: Some("k1"),
        outcome,
    };
    let bought = put(&b.ledger, &spec(1, Outcome::Bought)).await;
    for n in [2, 3] {
        let id = put(&b.ledger, &spec(n, Outcome::Open)).await;
        let mut s = Settlement::new(
            if n == 2 {
                Outcome::Replayed
            } else {
                Outcome::Joined
            },
            T0 + 10,
        );
        s.bought_by = Some(bought.clone());
        b.ledger.settle(&id, &s).await.unwrap();
    }
    let answer = |entry: String, query: Option<&'static str>| {
        let l = b.ledger.clone();
        async move {
            let resp = one(&l, &entry, query, "rid")
                .await
                .unwrap_or_else(|e| e.into_response("rid"));
            let v: Value = serde_json::from_slice(resp.body()).unwrap();
            (resp.status(), v)
        }
    };
    let (status, v) = answer(bought.clone(), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["entry"]["id"], bought.as_str());
    let answered: Vec<&str> = v["data"]["answered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(answered, ["replayed", "joined"]);
    let (status, v) = answer(id_at(T0, 999), None).await;
    assert_eq!(
        (status, v["code"].as_i64()),
        (StatusCode::NOT_FOUND, Some(404))
    );
    for bad in [
        "",
        "xyz",
        bought.to_uppercase().as_str(),
        format!("{bought}/x").as_str(),
        "' OR 1=1",
    ] {
        let (status, v) = answer(bad.to_string(), None).await;
        assert_eq!(
            (status, v["code"].as_i64()),
            (StatusCode::BAD_REQUEST, Some(1007)),
            "{bad}"
        );
    }
    let (status, _) = answer(bought, Some("x=1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn spend_sums_per_group_and_day() {
    let b = books().await;
    thirty(&b.ledger).await;
    let now = T0 + 3_600_000;
    let get = |query: &'static str| {
        let l = b.ledger.clone();
        async move {
            let resp = spend(&l, Some(query), now, "rid")
                .await
                .unwrap_or_else(|e| e.into_response("rid"));
            let v: Value = serde_json::from_slice(resp.body()).unwrap();
            (resp.status(), v)
        }
    };
    let (status, v) = get("by=client&period=day").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let d = &v["data"];
    assert_eq!(
        (d["by"].as_str(), d["period"].as_str(), d["tz"].as_str()),
        (Some("client"), Some("day"), Some("UTC"))
    );
    let rows = d["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0]["group"].as_str(), rows[0]["period"].as_str()),
        (Some("a"), Some("2026-12-07"))
    );
    // Client a: 15 entries, 3 refused (0, 10, 20), 12 bought at 0.4 and 20 GB each.
    assert_eq!(rows[0]["purchases"], 12);
    assert_eq!(rows[0]["gb"], 240);
    assert_eq!(rows[0]["amount"], "4.8");
    assert_eq!(rows[0]["refused"], 3);
    // In Los Angeles the entries fall on the 6th.
    let (_, v) = get("by=account&tz=America/Los_Angeles").await;
    let rows = v["data"]["rows"].as_array().unwrap();
    assert_eq!(
        (rows.len(), rows[0]["period"].as_str()),
        (1, Some("2026-12-06"))
    );
    assert_eq!(rows[0]["purchases"], 24);
    let (_, v) = get("since=2026-12-08").await;
    assert_eq!(v["data"]["rows"], Value::Array(vec![]));
    let (status, v) = get("by=disk").await;
    assert_eq!(
        (status, v["code"].as_i64()),
        (StatusCode::BAD_REQUEST, Some(1007))
    );
    let (status, _) = get("period=day&period=day").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[test]
fn csv_is_chosen_by_its_media_range() {
    let with = |accept: &'static str| {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static(accept));
        wants_csv(&h)
    };
    assert!(with("text/csv"));
    assert!(with("Text/CSV; charset=utf-8"));
    assert!(with("application/json;q=0.9, text/csv"));
    assert!(!with("text/csv;q=0"));
    assert!(!with("application/json"));
    assert!(!with("*/*"));
    assert!(!wants_csv(&HeaderMap::new()));
}
