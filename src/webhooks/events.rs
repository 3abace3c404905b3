//! What each event says: `{"type": NAME, "timestamp": RFC 3339, "data": {...}}`. A purchase's
//! data is its ledger entry's id and what the entry records of its outcome; never a secret, a
//! client key, a token, or the order's body.

use serde_json::{Value, json};

use crate::config::EventKind;
use crate::ledger::{Outcome, Settlement};
use crate::protect::budget::BudgetEvent;

/// One event, before it is written for each receiver that wants it.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) kind: EventKind,
    /// Events sharing a key (one purchase's) are delivered in the order they were raised.
    pub(crate) ordering_key: Option<String>,
    pub(crate) data: Value,
}

/// Where a purchase's event comes from: its entry, as the ledger knows it.
pub(crate) struct Purchase<'a> {
    pub(crate) id: &'a str,
    pub(crate) account: &'a str,
    /// The client's name (never its key); `None` where the entry is another request's.
    pub(crate) client: Option<&'a str>,
    pub(crate) route: &'a str,
    pub(crate) settlement: &'a Settlement,
}

impl Event {
    /// The body as sent, `now_ms` its timestamp.
    pub(crate) fn body(&self, now_ms: u64) -> String {
        let timestamp = jiff::Timestamp::from_millisecond(i64::try_from(now_ms).unwrap_or(0))
            .map(|t| t.to_string())
            .unwrap_or_default();
        json!({
            "type": self.kind.as_str(),
            "timestamp": timestamp,
            "data": self.data,
        })
        .to_string()
    }

    /// A settled purchase's event: bought, unknown, reconciled or refused (other outcomes, such
    /// as a replay or a failure before sending, tell no one anything new).
    pub(crate) fn purchase(p: &Purchase<'_>) -> Option<Event> {
        let outcome = p.settlement.outcome();
        let kind = purchase_kind(outcome)?;
        let s = p.settlement;
        Some(Event {
            kind,
            ordering_key: Some(p.id.to_owned()),
            data: json!({
                "id": p.id,
                "account": p.account,
                "client": p.client,
                "route": p.route,
                "outcome": outcome.as_str(),
                "resourceId": s.resource_id,
                "amount": Value::Null,
                "upstreamCode": s.upstream_code,
                "reason": s.reason,
            }),
        })
    }

    /// A spending cap's threshold reached, or the cap spent.
    pub(crate) fn budget(event: &BudgetEvent) -> Event {
        let (kind, cap, used) = match event {
            BudgetEvent::Threshold { cap, used } => (EventKind::BudgetThreshold, cap, Some(*used)),
            BudgetEvent::Exhausted(cap) => (EventKind::BudgetExhausted, cap, None),
        };
        Event {
            kind,
            ordering_key: None,
            data: json!({
                "scope": cap.scope,
                "name": cap.who,
                "cap": cap.cap,
                "used": used.unwrap_or(cap.limit),
                "limit": cap.limit,
                "resetsInSeconds": cap.resets_in.as_secs(),
            }),
        }
    }

    /// An account without a token for longer than `[[webhooks]] token_failing_after`.
    pub(crate) fn token_failing(account: &str, since_ms: u64) -> Event {
        let since = jiff::Timestamp::from_millisecond(i64::try_from(since_ms).unwrap_or(0))
            .map(|t| t.to_string())
            .unwrap_or_default();
        Event {
            kind: EventKind::TokenFailing,
            ordering_key: Some(format!("token:{account}")),
            data: json!({ "account": account, "since": since }),
        }
    }

    /// Redis found without its data by `replica`.
    pub(crate) fn redis_reset(replica: &str) -> Event {
        Event {
            kind: EventKind::RedisReset,
            ordering_key: None,
            data: json!({ "replica": replica }),
        }
    }
}

/// The event a purchase's outcome raises, if any.
pub(crate) fn purchase_kind(outcome: Outcome) -> Option<EventKind> {
    match outcome {
        Outcome::Bought => Some(EventKind::PurchaseBought),
        Outcome::Unknown => Some(EventKind::PurchaseUnknown),
        Outcome::Reconciled => Some(EventKind::PurchaseReconciled),
        Outcome::Refused => Some(EventKind::PurchaseRefused),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bought_purchase_names_its_entry_and_no_order() {
        let mut s = Settlement::new(Outcome::Bought, 1);
        s.resource_id = Some("disk-1".into());
        let e = Event::purchase(&Purchase {
            id: "entry-1",
            account: "default",
            client: Some("ci"),
            route: "disk.create",
            settlement: &s,
        })
        .unwrap();
        assert_eq!(e.kind, EventKind::PurchaseBought);
        let body: Value = serde_json::from_str(&e.body(1_700_000_000_000)).unwrap();
        assert_eq!(body["type"], "purchase.bought");
        assert_eq!(body["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(body["data"]["id"], "entry-1");
        assert_eq!(body["data"]["resourceId"], "disk-1");
    }

    #[test]
    fn replays_raise_nothing() {
        let s = Settlement::new(Outcome::Replayed, 1);
        let p = Purchase {
            id: "e",
            account: "a",
            client: None,
            route: "disk.create",
            settlement: &s,
        };
        assert!(Event::purchase(&p).is_none());
    }
}
