//! Idempotency that outlives the shared records: a keyed create that finds no record (Redis
//! restarted empty, was flushed, or this replica's memory is new) asks the purchase ledger whether
//! the same client already made a request under the same key. Its answer then stands in for the
//! lost record: replayed when the order is the same, 422 when not, settled as an unknown outcome
//! when it never settled.

use crate::svc::BoxFuture;

use super::intent::Intent;
use crate::protect::records::Record;

/// Where an earlier request under a key can be found when its record is gone.
pub(crate) trait Priors: Send + Sync {
    /// The record the earlier request under `intent`'s key would have left, if one is known.
    /// Unreadable counts as unknown: `None`, and the flow goes on as it would without a ledger.
    fn find(&self, intent: &Intent) -> BoxFuture<Option<Record>>;
}
