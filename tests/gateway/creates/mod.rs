//! Creates (purchases) end to end: never bought twice, within the upstream's rate and the spending
//! caps, and checked before they leave the gateway. The simulator's counters witness every purchase.
//!
//! - `budgets`: month caps in a zone, a client's own caps, warn_at, the budget gauges;
//! - `create_protection`: idempotency keys, de-dup, rates, budgets, reconciliation of unknown outcomes;
//! - `dedup_window`: an identical create after `dedup_window` buys again;
//! - `ledger`: every spend on record once, through restarts, crashes and lost records;
//! - `order_properties`: the create validator over arbitrary input (proptest);
//! - `record_bounds`: each client's bound on live records, for one replica and for the fleet;
//! - `replay_from_another_replica`: a create carried out elsewhere is replayed here from its record;
//! - `replica_crash`: a killed replica's purchases settle within their lease, a live one renews it;
//! - `spend_body`: what is checked is what is sent, and variants of one order are one intent.

mod budgets;
mod create_protection;
mod dedup_window;
mod ledger;
mod order_properties;
mod record_bounds;
mod replay_from_another_replica;
mod replica_crash;
mod spend_body;
