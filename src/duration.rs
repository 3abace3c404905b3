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

pub(crate) fn serialize<S: serde::Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*value).to_string())
}
