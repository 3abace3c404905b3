//! Running the gateway: the real binary, its reloads, readiness, logs, metrics and memory, the
//! network it reaches the upstream through, and an upstream that fails.
//!
//! - `admin_endpoints`: without an admin key, `/admin/*` is off and `/healthz` answers;
//! - `config_properties`: the config loader over arbitrary text (proptest);
//! - `console_api`: the console's views count what was sent; operator actions are logged;
//! - `egress_proxy`: the upstream through an HTTP CONNECT proxy and behind an inspecting TLS CA;
//! - `log_format`: `--log-format json` writes one JSON object per line;
//! - `memory_bound`: resident memory per cache entry and record stays near what is accounted;
//! - `metric_labels`: every counter label the docs name is reached and counted;
//! - `observability`: the alert rules and dashboard of `deploy/`, checked by a real Prometheus;
//! - `process`: protected mode, secrets out of logs, SIGTERM drain, `check-config`, `dev`;
//! - `purchases`: the purchase ledger read through the admin API and the `purchases` command;
//! - `readiness`: `/readyz` through an upstream outage and refused credentials;
//! - `reload`: SIGHUP and `POST /admin/reload` change settings without a restart;
//! - `server_timing`: `Server-Timing` on hits, misses, joined fills and waiting creates, or off;
//! - `traces`: spans exported over OTLP to a collector the test runs, and one that is down;
//! - `upstream_faults`: upstream failures become 502 and 504 envelopes, and recovery;
//! - `webhooks`: notifications signed, delivered once per fleet, across a receiver outage.

mod admin_endpoints;
mod config_properties;
mod console_api;
mod egress_proxy;
mod log_format;
mod memory_bound;
mod metric_labels;
mod observability;
mod process;
mod purchases;
mod readiness;
mod reload;
mod server_timing;
mod traces;
mod upstream_faults;
mod webhooks;
