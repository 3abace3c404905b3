//! The cache end to end, with the simulator's counters as the witness of every upstream call.
//!
//! - `disk_info`: one upstream call per disk per TTL, coalescing, stale windows, isolation, bounds;
//! - `fresh_hits`: a fresh hit is checked, logged and counted like the miss it replaces;
//! - `invalidation`: what each mutation drops, `status_ttl`, and admin purges;
//! - `what_is_kept`: an answer never stored leaves no trace in Redis; a no-cache flood joins one fill.

mod disk_info;
mod fresh_hits;
mod invalidation;
mod what_is_kept;
