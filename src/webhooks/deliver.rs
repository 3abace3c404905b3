//! The delivery worker, one per replica: takes due rows of the outbox under a lease, posts each
//! to its receiver signed, and writes down how it went. A 2xx answer delivers; anything else, or
//! no answer within [`ATTEMPT_TIMEOUT`], is tried again after a pause that doubles from 1 s to
//! 10 min; a row still failing [`GIVE_UP_AFTER`] after it was written is dropped (counted).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

use super::outbox::{self, Due};
use super::sign::sign;
use super::{Inner, Notifier};
use crate::clock::now_ms;
use crate::ledger::Ledger;

/// Longest one delivery attempt may take.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a row is held by the replica delivering it: an attempt and then some. A replica
/// that stops mid-attempt leaves its rows to the others once this has passed.
const LEASE: Duration = Duration::from_secs(30);
/// How long a failing row is tried before it is dropped.
pub(crate) const GIVE_UP_AFTER: Duration = Duration::from_secs(3 * 86_400);
/// The longest pause between two attempts.
const MAX_PAUSE: Duration = Duration::from_secs(600);
/// How often the outbox is looked at when nothing woke the worker (rows other replicas wrote,
/// retries coming due).
const POLL: Duration = Duration::from_millis(500);
/// Rows taken at once; they go to their receivers concurrently.
const BATCH: u32 = 32;
/// How long delivered and dropped rows are kept, for an operator's look.
const KEEP_DONE: Duration = Duration::from_secs(7 * 86_400);

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The pause before attempt `attempts + 1`, after `attempts` failed ones.
pub(crate) fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    (Duration::from_secs(1) * 2u32.pow(doublings)).min(MAX_PAUSE)
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    Failed(String),
    /// The worker was stopped during the attempt: the row is let go, untried.
    Stopped,
}

fn client() -> Result<HttpClient, String> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(crate::tls::upstream_roots(None)?)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https))
}

/// Delivers until `stop` is cancelled; returns at once for a gateway without `[[webhooks]]`.
pub(crate) async fn run(notifier: Notifier, stop: CancellationToken) {
    let Some(inner) = notifier.0 else {
        return;
    };
    let Some(ledger) = inner.ledger.get().cloned() else {
        return;
    };
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks: no HTTP client; nothing will be delivered");
            return;
        }
    };
    let mut last_purge = 0u64;
    while !stop.is_cancelled() {
        let now = now_ms();
        if now.saturating_sub(last_purge) > 3_600_000 {
            last_purge = now;
            let before = now.saturating_sub(KEEP_DONE.as_millis() as u64);
            if let Err(e) = outbox::remove_done_before(ledger.pool(), before).await {
                tracing::debug!(error = %e, "webhooks: removing old outbox rows failed");
            }
        }
        // A database that does not answer does not hold the shutdown back (a row claimed
        // meanwhile is free again once its lease ends).
        let taken = tokio::select! {
            () = stop.cancelled() => return,
            taken = take(&ledger, now) => taken,
        };
        if let Ok(n) = outbox::backlog(ledger.pool()).await {
            inner.metrics.webhook_backlog.set(n);
        }
        if taken.is_empty() {
            tokio::select! {
                () = stop.cancelled() => return,
                () = inner.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
            continue;
        }
        let attempts = taken
            .into_iter()
            .map(|row| attend(&inner, &ledger, &client, row, &stop));
        futures_util::future::join_all(attempts).await;
    }
}

/// The due rows this replica won the lease of.
async fn take(ledger: &Ledger, now: u64) -> Vec<Due> {
    let rows = match outbox::due_rows(ledger.pool(), now, BATCH).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::debug!(error = %e, "webhooks: reading the outbox failed");
            return Vec::new();
        }
    };
    let mut taken = Vec::with_capacity(rows.len());
    for row in rows {
        // Each lease runs from its own claim: the claims before it (and the purge before them)
        // must not eat into the time its delivery has before another replica may take it.
        let at = now_ms();
        let until = at + LEASE.as_millis() as u64;
        if let Ok(true) = outbox::claim(ledger.pool(), &row.id, at, until).await {
            taken.push(row);
        }
    }
    taken
}

/// One attempt at `row`, and what it leaves written.
async fn attend(
    inner: &Inner,
    ledger: &Ledger,
    client: &HttpClient,
    row: Due,
    stop: &CancellationToken,
) {
    let pool = ledger.pool();
    let Some(hook) = inner.hooks.iter().find(|h| h.url == row.webhook) else {
        // A receiver this replica does not know (configured on another replica, or removed):
        // left for a replica that knows it, until it is too old.
        let now = now_ms();
        let result = if now.saturating_sub(row.created_at_ms) > GIVE_UP_AFTER.as_millis() as u64 {
            inner
                .metrics
                .webhook_deliveries
                .with_label_values(&["dropped"])
                .inc();
            outbox::dropped(pool, &row.id, row.attempts, now).await
        } else {
            outbox::retry_at(pool, &row.id, row.attempts, now + LEASE.as_millis() as u64).await
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "webhooks: updating an outbox row failed");
        }
        return;
    };
    let outcome = tokio::select! {
        () = stop.cancelled() => Attempt::Stopped,
        a = post(client, &hook.url, hook.secret.expose(), &row) => a,
    };
    let now = now_ms();
    let attempts = row.attempts.saturating_add(1);
    let result = match outcome {
        Attempt::Delivered => {
            inner
                .metrics
                .webhook_deliveries
                .with_label_values(&["delivered"])
                .inc();
            outbox::delivered(pool, &row.id, now).await
        }
        Attempt::Stopped => outbox::retry_at(pool, &row.id, row.attempts, now).await,
        Attempt::Failed(why)
            if now.saturating_sub(row.created_at_ms) >= GIVE_UP_AFTER.as_millis() as u64 =>
        {
            tracing::error!(webhook = %row.id, error = %why, attempts, "webhooks: an event failed for too long; dropped");
            inner
                .metrics
                .webhook_deliveries
                .with_label_values(&["dropped"])
                .inc();
            outbox::dropped(pool, &row.id, attempts, now).await
        }
        Attempt::Failed(why) => {
            let pause = backoff(attempts);
            tracing::debug!(webhook = %row.id, error = %why, attempts, retry_in = ?pause, "webhooks: delivery failed");
            inner
                .metrics
                .webhook_deliveries
                .with_label_values(&["failed"])
                .inc();
            outbox::retry_at(pool, &row.id, attempts, now + pause.as_millis() as u64).await
        }
    };
    if let Err(e) = result {
        // The lease runs out and the row is tried again: at least once.
        tracing::warn!(webhook = %row.id, error = %e, "webhooks: writing a delivery's result failed");
    }
}

/// Posts `row` to `url`, signed with `key` as of now.
async fn post(client: &HttpClient, url: &str, key: &[u8], row: &Due) -> Attempt {
    let timestamp = crate::clock::now_secs();
    let signature = sign(key, &row.id, timestamp, row.body.as_bytes());
    let req = Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "finovy-gateway-webhooks")
        .header("webhook-id", &row.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(Full::new(Bytes::from(row.body.clone())));
    let req = match req {
        Ok(r) => r,
        Err(e) => return Attempt::Failed(e.to_string()),
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, client.request(req)).await {
        Err(_) => Attempt::Failed("no answer in time".into()),
        // The whole chain ("client error (Connect): tcp connect error: Connection refused"),
        // never the request itself.
        Ok(Err(e)) => Attempt::Failed(crate::upstream::client::describe(&e)),
        Ok(Ok(resp)) if resp.status().is_success() => Attempt::Delivered,
        Ok(Ok(resp)) => Attempt::Failed(format!("answered HTTP {}", resp.status())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_second_to_ten_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(10), Duration::from_secs(512));
        assert_eq!(backoff(11), MAX_PAUSE);
        assert_eq!(backoff(u32::MAX), MAX_PAUSE);
    }
}
