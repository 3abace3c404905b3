//! The upstream simulator, driven over real HTTP on loopback as the gateway and developers use it.
//!
//! - `client`: a simulator in this process and a client with a method per endpoint;
//! - `tokens`: `getToken`, 401s, expiry and revocation;
//! - `disks`: create rules, mounting, statuses, lists and totals;
//! - `hosts`: host endpoints and power states;
//! - `control`: the `/_sim/*` counters, request log, faults, latency and reset;
//! - `serving`: unknown paths, odd input, h2c and shutdown.

mod client;
mod control;
mod disks;
mod hosts;
mod serving;
mod tokens;
