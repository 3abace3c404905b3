//! The gateway's end-to-end tests: real HTTP over loopback, the simulator as the upstream and as
//! the witness of what reached it. One test binary, one module per capability.

mod anonymous;
mod auth;
mod cache;
mod capacity;
mod create;
mod faults;
mod forwarding;
mod harness;
mod hits;
mod limits;
mod process;
mod query;
mod redis_harness;
mod shared;
mod token;
