//! Reading the purchase ledger (CONTRACT.md, "Admin"; issue "Reading it"): the admin API's
//! `GET /admin/purchases`, `GET /admin/purchases/{id}` and `GET /admin/spend` ([`api`]), and the
//! `finovy-gateway purchases` command ([`run`]). Both check their parameters by one set of rules
//! ([`params`]) and write CSV with one writer ([`csv`]), so an operator's cron job and the
//! console read the same rows the same way.

mod api;
mod cli;
mod csv;
mod params;
mod spend;

pub(crate) use api::{list, one, spend};
pub use cli::{Format, Options, run};
