//! The checks several sections share: numbers and durations above zero, URLs, digests, names and
//! route allow-lists. Each error names the key it was given, so every section reads the same.

use std::collections::BTreeSet;
use std::time::Duration;

use super::error::{ConfigError, invalid};
use crate::routes::{Route, RouteTable};

pub(super) fn check_positive(key: &str, v: usize) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(invalid(key, "expected a number greater than 0"));
    }
    Ok(())
}

pub(super) fn check_nonzero(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(invalid(key, "expected a duration greater than 0"));
    }
    Ok(())
}

pub(super) fn check_base_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let uri: http::Uri = url.parse().map_err(|_| {
        invalid(
            key,
            format!("expected an http:// or https:// URL, got {url:?}"),
        )
    })?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.host().is_none() || uri.query().is_some() {
        return Err(invalid(
            key,
            format!("expected an http:// or https:// URL without a query, got {url:?}"),
        ));
    }
    Ok(())
}

pub(super) fn parse_digest(key: &str, text: &str) -> Result<[u8; 32], ConfigError> {
    let bytes = hex::decode(text.trim()).ok().filter(|b| b.len() == 32);
    bytes.and_then(|b| b.try_into().ok()).ok_or_else(|| {
        invalid(
            key,
            "expected 64 lower-case hex characters (a SHA-256 digest; see `finovy-gateway keygen`)",
        )
    })
}

/// Whether `name` may name a client or an account: letters, digits, `.`, `_` and `-`, at least
/// one. Record keys join names with `|` (`idem|account|client|route|key`), so a name holding
/// one could reach another client's records.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `name` as a client's or an account's name; the error names `key`.
pub(super) fn check_name(key: String, name: &str) -> Result<(), ConfigError> {
    if is_name(name) {
        return Ok(());
    }
    let shown: String = name.chars().take(64).collect();
    Err(invalid(
        key,
        format!("{shown:?}: expected a name of letters, digits, `.`, `_` and `-`"),
    ))
}

/// Route names (an allow-list) as routes; an unknown name is an error naming `key`.
pub(super) fn route_set(
    table: &RouteTable,
    key: &str,
    names: &[String],
) -> Result<BTreeSet<Route>, ConfigError> {
    names
        .iter()
        .map(|n| table.by_name(n).ok_or_else(|| table.unknown(key.into(), n)))
        .collect()
}
