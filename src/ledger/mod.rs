//! The purchase ledger: one entry per request to a spend route, written before anything is sent
//! upstream and settled with its outcome (CONTRACT.md, `GET /admin/purchases`). An embedded SQLite
//! file for one replica, PostgreSQL for a fleet: one schema in portable SQL, through sqlx's `Any`
//! driver, its migrations applied at start (under PostgreSQL's advisory lock, so that the first
//! replica to start applies them and the others wait).
//!
//! This module is the store: writes ([`write`]), reads ([`read`]), and the types ([`entry`]). The
//! spend pipeline's layer (`crate::layers::ledger`) decides what is written.

#[doc(hidden)]
pub mod bench;
mod db;
pub(crate) mod entry;
mod open;
mod read;
mod write;

pub(crate) use db::{Ledger, LedgerError};
pub(crate) use entry::{Entry, NewEntry, Outcome, Settlement, StoredAnswer, new_id};
pub(crate) use open::open;
pub(crate) use read::{Filter, Page, SpendRow};
pub(crate) use write::Swept;

#[cfg(test)]
mod tests;
