//! Notifications (CONTRACT.md, `[[webhooks]]` and "Webhook events"): what happened to a purchase,
//! a spending cap, an account's token or the fleet's Redis, told to the receivers that asked,
//! signed as the Standard Webhooks specification says.
//!
//! Delivered at least once. An event is first written to the outbox in the ledger's database
//! ([`outbox`]), in a task of its own so that the request that caused it never waits; a worker per
//! replica ([`deliver`]) takes due rows under a lease (one replica of a fleet delivers each),
//! posts them signed ([`sign`]), and retries a failure with exponential backoff (1 s doubling to
//! 10 min) for up to [`deliver::GIVE_UP_AFTER`] (3 days), after which the row is dropped and
//! counted. Rows of one purchase are delivered in order. [`events`] builds the bodies; [`watch`]
//! raises `token.failing`.

pub(crate) mod deliver;
pub(crate) mod events;
mod outbox;
mod sign;
pub(crate) mod watch;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::clock::now_ms;
use crate::config::Webhook;
use crate::ledger::{Ledger, new_id};
use crate::metrics::Metrics;

pub(crate) use events::Event;

/// The handle hooks raise events through: cheap to clone; one that no receiver configured (or a
/// gateway without `[[webhooks]]`) does nothing.
#[derive(Clone, Default)]
pub(crate) struct Notifier(Option<Arc<Inner>>);

struct Inner {
    hooks: Vec<Webhook>,
    /// Set once the ledger is open (it opens last at start); events before it are not kept.
    ledger: OnceLock<Ledger>,
    metrics: Arc<Metrics>,
    /// Wakes the worker when a row is written, so delivery starts at once.
    wake: tokio::sync::Notify,
    /// The writes still running: the drain waits for them.
    work: TaskTracker,
}

impl Notifier {
    /// A notifier for `hooks` (none: one that does nothing).
    pub(crate) fn new(hooks: Vec<Webhook>, metrics: Arc<Metrics>, work: TaskTracker) -> Notifier {
        if hooks.is_empty() {
            return Notifier(None);
        }
        Notifier(Some(Arc::new(Inner {
            hooks,
            ledger: OnceLock::new(),
            metrics,
            wake: tokio::sync::Notify::new(),
            work,
        })))
    }

    /// Where the outbox lives: the ledger's database.
    pub(crate) fn attach(&self, ledger: &Ledger) {
        if let Some(inner) = &self.0 {
            let _ = inner.ledger.set(ledger.clone());
        }
    }

    /// Whether some receiver is configured: building an event is worth it.
    pub(crate) fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Writes `event` to the outbox for every receiver that wants it, in a task of its own.
    pub(crate) fn send(&self, event: Event) {
        self.write(event, None);
    }

    /// Writes `event` for the receiver at `url` only (if it wants it).
    pub(crate) fn send_to(&self, event: Event, url: &str) {
        self.write(event, Some(url));
    }

    fn write(&self, event: Event, only: Option<&str>) {
        let Some(inner) = self.0.clone() else {
            return;
        };
        let Some(ledger) = inner.ledger.get().cloned() else {
            return;
        };
        let now = now_ms();
        let wanted: Vec<_> = inner
            .hooks
            .iter()
            .filter(|h| h.wants(event.kind) && only.is_none_or(|u| u == h.url))
            .collect();
        if wanted.is_empty() {
            return;
        }
        // Made only for an event a receiver wants.
        let body = event.body(now);
        let rows: Vec<_> = wanted
            .into_iter()
            .map(|h| outbox::NewRow {
                id: new_id(now),
                webhook: h.url.clone(),
                event: event.kind.as_str(),
                body: body.clone(),
                created_at_ms: now,
                ordering_key: event.ordering_key.clone(),
            })
            .collect();
        inner.work.clone().spawn(async move {
            // A write that fails is tried again for a while: the database may be restarting.
            let mut pause = Duration::from_millis(100);
            for _ in 0..10 {
                match outbox::enqueue(ledger.pool(), &rows).await {
                    Ok(()) => {
                        inner.metrics.webhook_backlog.add(rows.len() as i64);
                        inner.wake.notify_one();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(event = rows[0].event, error = %e, "webhooks: writing an event to the outbox failed; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(10));
                    }
                }
            }
            tracing::error!(
                event = rows[0].event,
                "webhooks: an event could not be written to the outbox; it is lost"
            );
        });
    }
}
