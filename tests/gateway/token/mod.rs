//! The upstream token, end to end.
//!
//! - `broker`: one `getToken` for many, refresh across expiries, a retry after a 401, one per account;
//! - `lease`: `/_gateway/token` leases to granted clients, reports of rejected tokens, and the fleet.

mod broker;
mod lease;
