//! Durations are written as in CONTRACT.md: `250ms`, `5s`, `10m`, `24h`. Used with
//! `#[serde(with = "crate::duration")]` by every module that reads one from the config.

use std::time::Duration;

use serde::Deserialize;

pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("expected a duration such as \"250ms\", \"5s\" or \"10m\", got {text:?} ({e})")
    })
}

pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// Whole days are written in days (`400d`), as a config would say them, not as humantime's
/// calendar approximation (`1year 1month 4days 7h 26m 24s`).
pub(crate) fn serialize<S: serde::Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    let secs = value.as_secs();
    if secs >= 86_400 && secs.is_multiple_of(86_400) && value.subsec_nanos() == 0 {
        return s.serialize_str(&format!("{}d", secs / 86_400));
    }
    s.serialize_str(&humantime::format_duration(*value).to_string())
}
