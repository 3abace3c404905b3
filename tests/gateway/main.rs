//! The gateway's end-to-end tests, and the simulator's: real HTTP over loopback, the simulator as
//! the witness of what reached it. One test binary (it builds once), one folder per capability.
//!
//! - `harness`: starting the pieces, sending, reading metrics, waiting; a real `redis-server`;
//! - `edge`: authentication, request limits, capacity, forwarding, TLS, hostile callers;
//! - `cache`: fills, freshness, hits and invalidation;
//! - `creates`: purchases never made twice, their rates, budgets, records and bodies;
//! - `token`: the upstream token and its lease to clients;
//! - `shared`: a fleet of replicas sharing state through Redis;
//! - `operations`: the real binary, reloads, readiness, logs, metrics, egress and faults;
//! - `simulator`: the upstream simulator itself.

mod cache;
mod creates;
mod edge;
mod harness;
mod operations;
mod shared;
mod simulator;
mod token;
