//! What every scenario stands on: the pieces of a test started on loopback (every address bound on
//! port 0), requests sent and metrics read through one place, and waits with deadlines rather
//! than loops of a test's own. Scenarios take it all with `use crate::harness::*`.
//!
//! - `in_process`: the simulator and gateways in this process, and config snippets;
//! - `binary`: the real binary as a child process, its log lines captured;
//! - `certificates`: a test's own certificate authority and the certificates it signs;
//! - `requests`: [`answer`] and its shorthands, [`metric`], access lines, `/readyz`;
//! - `wait`: [`eventually`], [`eventually_some`] and [`poll`];
//! - `properties`: proptest settings for the property tests;
//! - `redis`: a real `redis-server` and a bare RESP client (`crate::harness::redis`);
//! - `postgres`: a real PostgreSQL server for the ledger, and its `[ledger]` table
//!   (`crate::harness::postgres`);
//! - `browser`: a real headless Chromium driven over WebDriver (`crate::harness::browser`).

mod binary;
pub(crate) mod browser;
mod certificates;
mod in_process;
pub(crate) mod postgres;
mod properties;
pub(crate) mod redis;
mod requests;
mod wait;

pub(crate) use binary::*;
pub(crate) use certificates::*;
pub(crate) use in_process::*;
pub(crate) use properties::*;
pub(crate) use requests::*;
pub(crate) use wait::*;
