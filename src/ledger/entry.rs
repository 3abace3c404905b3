//! What the ledger holds: an entry per spend request, its outcome, and the values written when it
//! opens and when it settles.

use std::fmt;

use serde::Serialize;

/// How a spend request ended. `Open` until it settles; a crash leaves it open until the sweep
/// marks it `Unknown` and a retry (or its reconciliation) settles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    Open,
    /// Bought: the upstream answered success, with the resource's id.
    Bought,
    /// Answered from an earlier entry's record (`boughtBy`).
    Replayed,
    /// Joined to an identical request in flight (`boughtBy`).
    Joined,
    /// Refused before or by the upstream: nothing bought (`reason`, `upstreamCode`).
    Refused,
    /// Failed: nothing bought (upstream 5xx, unreachable before sending).
    Failed,
    /// Sent, no answer: the purchase may exist.
    Unknown,
    /// An unknown outcome settled to an existing resource.
    Reconciled,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 8] = [
        Outcome::Open,
        Outcome::Bought,
        Outcome::Replayed,
        Outcome::Joined,
        Outcome::Refused,
        Outcome::Failed,
        Outcome::Unknown,
        Outcome::Reconciled,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Open => "open",
            Outcome::Bought => "bought",
            Outcome::Replayed => "replayed",
            Outcome::Joined => "joined",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
            Outcome::Reconciled => "reconciled",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Whether this entry bought something (what spend sums count).
    pub(crate) fn is_purchase(self) -> bool {
        matches!(self, Outcome::Bought | Outcome::Reconciled)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A time-sortable id: the epoch milliseconds, then 64 random bits, in hex (28 characters).
/// Newer ids sort after older ones, so "newest first" is "id descending".
pub(crate) fn new_id(now_ms: u64) -> String {
    format!("{now_ms:012x}{:016x}", rand::random::<u64>())
}

/// What is written when a spend request opens its entry, before anything is sent upstream.
#[derive(Debug, Clone)]
pub(crate) struct NewEntry {
    pub(crate) id: String,
    pub(crate) at_ms: u64,
    pub(crate) account: String,
    pub(crate) client: String,
    pub(crate) route: String,
    /// The canonical order as sent upstream, secrets (`hostPw`) masked.
    pub(crate) order: String,
    /// The disk's size in GB, for disk creates.
    pub(crate) gb: Option<u64>,
    pub(crate) idempotency_key: Option<String>,
    /// A digest of the request's identity (never the body itself): links a retry to its original.
    pub(crate) fingerprint: String,
    pub(crate) request_id: String,
    pub(crate) traceparent: Option<String>,
    pub(crate) replica: String,
}

/// An answer kept with a buying entry, to replay it when the shared records are gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredAnswer {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// What is written when an entry settles.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settlement {
    pub(crate) outcome: Option<Outcome>,
    pub(crate) settled_at_ms: u64,
    pub(crate) resource_id: Option<String>,
    pub(crate) upstream_code: Option<i64>,
    pub(crate) reason: Option<String>,
    pub(crate) bought_by: Option<String>,
    pub(crate) answer: Option<StoredAnswer>,
}

impl Settlement {
    pub(crate) fn new(outcome: Outcome, settled_at_ms: u64) -> Settlement {
        Settlement {
            outcome: Some(outcome),
            settled_at_ms,
            ..Settlement::default()
        }
    }

    pub(crate) fn outcome(&self) -> Outcome {
        self.outcome.unwrap_or(Outcome::Open)
    }
}

/// One entry as read back (CONTRACT.md's field names).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) at: i64,
    pub(crate) settled_at: Option<i64>,
    pub(crate) account: String,
    pub(crate) client: String,
    pub(crate) route: String,
    pub(crate) order: serde_json::Value,
    pub(crate) gb: Option<i64>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) request_id: String,
    pub(crate) traceparent: Option<String>,
    pub(crate) replica: String,
    pub(crate) outcome: String,
    pub(crate) resource_id: Option<String>,
    pub(crate) amount: Option<String>,
    pub(crate) upstream_code: Option<i64>,
    pub(crate) reason: Option<String>,
    pub(crate) bought_by: Option<String>,
}

/// An earlier keyed entry of the same client, route and key: what a retry is answered from when
/// the shared records are gone.
#[derive(Debug, Clone)]
pub(crate) struct Prior {
    pub(crate) id: String,
    pub(crate) at_ms: i64,
    pub(crate) fingerprint: String,
    pub(crate) outcome: Outcome,
    pub(crate) answer: Option<StoredAnswer>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time() {
        let a = new_id(1_700_000_000_000);
        let b = new_id(1_700_000_000_001);
        assert_eq!(a.len(), 28);
        assert!(a < b, "{a} {b}");
    }

    #[test]
    fn outcomes_round_trip() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(Outcome::parse("Bought"), None);
    }
}
