//! Create protection: what spends money goes upstream once per intent, within the rate the upstream
//! accepts. `policy` (configuration), `validate` (bodies checked before spending), `gcra` (the rate
//! limiter), `records` (idempotency and de-duplication records), `create` (the flow of a spend
//! against its records), `budget` (the spending guard). The HTTP side is in
//! `crate::layers::{validate, dedup, collapse, rate_limit}`.

pub(crate) mod budget;
pub(crate) mod create;
pub(crate) mod gcra;
pub(crate) mod policy;
pub mod records;
pub mod validate;
