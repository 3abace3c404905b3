//! The gateway's end-to-end tests, and the simulator's: real HTTP over loopback, the simulator as
//! the witness of what reached it. One test binary, one module per capability.

mod anonymous;
mod auth;
mod cache;
mod cache_state;
mod capacity;
mod config_routes;
mod crash;
mod create;
mod dedup_parts;
mod egress;
mod faults;
mod forwarding;
mod harness;
mod hits;
mod hostile;
mod limits;
mod memory_bound;
mod observability;
mod process;
mod promises;
mod properties;
mod query;
mod record_bounds;
mod redis_eviction;
mod redis_harness;
mod redis_reset;
mod reload;
mod shared;
mod shared_budget;
mod simulator;
mod spend_body;
mod tls;
mod token;
mod token_lease;
mod upstream_trust;
