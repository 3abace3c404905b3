//! What the simulator saw: calls per endpoint and the last requests, for `/_sim/stats` and
//! `/_sim/requests`, so that tests can prove what a client sent and how often.

use std::collections::{BTreeMap, VecDeque};

use http::request::Parts;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::sim::api::Call;

/// How many requests `/_sim/requests` remembers.
const LOG_CAPACITY: usize = 200;
/// A logged body is cut here, so that the log stays small whatever clients send.
const LOGGED_BODY_LIMIT: usize = 64 * 1024;

/// Counters and the request log, reset by `/_sim/reset`.
#[derive(Default)]
pub(crate) struct Stats {
    calls: [u64; Call::ALL.len()],
    /// Requests that matched no endpoint.
    other: u64,
    /// Creates refused with 220025.
    pub(crate) too_frequent: u64,
    log: VecDeque<LoggedRequest>,
}

/// One API request as received.
#[derive(Serialize)]
struct LoggedRequest {
    method: String,
    /// Path and query, raw.
    path: String,
    /// Lower-case names; repeated headers joined with ", ".
    headers: BTreeMap<String, String>,
    /// UTF-8, invalid sequences replaced, cut at [`LOGGED_BODY_LIMIT`] bytes.
    body: String,
}

impl Stats {
    /// Counts a request that reached the API (`None`: it matched no endpoint) and logs it.
    pub(super) fn record(&mut self, call: Option<Call>, parts: &Parts, body: &[u8]) {
        match call {
            Some(call) => self.calls[call as usize] += 1,
            None => self.other += 1,
        }
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in &parts.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        let path = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.to_string(), |pq| pq.as_str().to_owned());
        let body = &body[..body.len().min(LOGGED_BODY_LIMIT)];
        if self.log.len() == LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(LoggedRequest {
            method: parts.method.to_string(),
            path,
            headers,
            body: String::from_utf8_lossy(body).into_owned(),
        });
    }

    /// The `/_sim/stats` document.
    pub(super) fn to_json(&self, disks: usize, hosts: usize) -> Value {
        let mut calls: Map<String, Value> = Call::ALL
            .iter()
            .map(|call| (call.name().to_owned(), json!(self.calls[*call as usize])))
            .collect();
        calls.insert("other".to_owned(), json!(self.other));
        json!({
            "calls": calls,
            "total": self.calls.iter().sum::<u64>() + self.other,
            "tooFrequent": self.too_frequent,
            "disks": disks,
            "hosts": hosts,
        })
    }

    /// The `/_sim/requests` document, oldest first.
    pub(super) fn requests_json(&self) -> Value {
        serde_json::to_value(&self.log).unwrap_or(Value::Null)
    }
}
