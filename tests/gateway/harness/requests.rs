//! Sending through a gateway ([`answer`] and its shorthands), and reading what it shows: metrics,
//! access lines, `/readyz`. Every test sends through here, so an answer that is not JSON fails the
//! same way everywhere.

#![allow(dead_code)]

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::*;

/// The Prometheus text of the admin listener at `admin_url`.
pub(crate) async fn metrics_at(admin_url: &str) -> String {
    get_text(&format!("{admin_url}/metrics")).await
}

/// The access lines of the request with id `id` in a gateway's log text.
pub(crate) fn access_lines<'a>(log: &'a str, id: &str) -> Vec<&'a str> {
    let needle = format!("request_id={id} ");
    log.lines().filter(|l| l.contains(&needle)).collect()
}

/// Sums the samples of metric `name` in Prometheus `text` whose labels include every
/// `name="value"` of `labels`; 0 when there is none.
pub(crate) fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_opt(text, name, labels).unwrap_or(0.0)
}

/// [`metric`], or `None` when no such sample is exported (a series that must exist, or must not).
pub(crate) fn metric_opt(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(None, |sum, v| Some(sum.unwrap_or(0.0) + v))
}

/// `/readyz` of `admin_url`: its status and its JSON body.
pub(crate) async fn readyz(admin_url: &str) -> (u16, Value) {
    send_json(http().get(format!("{admin_url}/readyz"))).await
}

/// Polls `/readyz` of `admin_url` until it answers `status` (20 s at most); its body.
pub(crate) async fn readyz_until(admin_url: &str, status: u16) -> String {
    eventually_some(
        &format!("/readyz answers {status}"),
        Duration::from_secs(20),
        || async move {
            let r = http()
                .get(format!("{admin_url}/readyz"))
                .send()
                .await
                .ok()?;
            if r.status().as_u16() != status {
                return None;
            }
            r.text().await.ok()
        },
    )
    .await
}

/// Sends `req`: the answer's status, headers and JSON body (the envelope). Every test sends its
/// requests through here, so that an answer that is not JSON fails the same way everywhere.
pub(crate) async fn answer(req: reqwest::RequestBuilder) -> (u16, HeaderMap, Value) {
    try_answer(req).await.unwrap_or_else(|e| panic!("{e}"))
}

/// [`answer`], or why there is none: no answer at all (a dead replica, a reset), or one whose
/// body is not JSON.
pub(crate) async fn try_answer(
    req: reqwest::RequestBuilder,
) -> Result<(u16, HeaderMap, Value), String> {
    let resp = req.send().await.map_err(|e| format!("no answer: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .json()
        .await
        .map_err(|e| format!("{status}: not a JSON body: {e}"))?;
    Ok((status, headers, body))
}

/// `GET url` with `headers`, through [`answer`].
pub(crate) async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, HeaderMap, Value) {
    let mut req = http().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    answer(req).await
}

/// Sends `req` and returns the answer's status and JSON body.
pub(crate) async fn send_json(req: reqwest::RequestBuilder) -> (u16, Value) {
    let (status, _, v) = answer(req).await;
    (status, v)
}

/// A GET's body as text.
pub(crate) async fn get_text(url: &str) -> String {
    http()
        .get(url)
        .send()
        .await
        .expect("an answer")
        .text()
        .await
        .expect("a body")
}

/// Buys a disk through the gateway at `gw_url` (anonymous, area 0, 20 GB) under a fresh
/// `Idempotency-Key`, so that two calls are two purchases; its `info` URL there.
pub(crate) async fn new_disk_info_url(gw_url: &str) -> String {
    let (status, created) = send_json(
        http()
            .post(format!("{gw_url}{DISK}/create"))
            .header("Idempotency-Key", fresh_key())
            .json(&serde_json::json!({"area": 0, "memory": 20, "isMount": 0})),
    )
    .await;
    assert_eq!(
        (status, &created["code"]),
        (200, &serde_json::json!(0)),
        "{created}"
    );
    format!("{gw_url}{DISK}/info/{}", created["data"].as_str().unwrap())
}

/// `n` GETs of `url` at once; their JSON answers.
pub(crate) async fn concurrent_gets(url: &str, n: usize) -> Vec<Value> {
    let client = http();
    let handles: Vec<_> = (0..n)
        .map(|_| tokio::spawn(send_json(client.get(url))))
        .collect();
    let mut out = Vec::with_capacity(n);
    for h in handles {
        out.push(h.await.expect("request task").1);
    }
    out
}
