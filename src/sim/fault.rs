//! Injected failures (`POST /_sim/fault`), so that a client's error handling can be exercised
//! against the failures a real upstream produces now and then.

use std::time::Duration;

use serde_json::{Value, json};

use crate::sim::bounded;
use crate::sim::params;

/// How long `slow` holds an answer back when no `latency` is given.
const DEFAULT_SLOW: Duration = Duration::from_secs(1);
/// How large a `huge` answer is when no `size` is given.
const DEFAULT_HUGE: u64 = 2 * 1024 * 1024;
/// The largest `huge` answer: 1 GiB.
const MAX_HUGE: u64 = 1 << 30;
/// The `Retry-After` of `too_frequent` when no `retry_after` is given.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The failure applied to every API answer until changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Answer normally.
    None,
    /// HTTP 500 with envelope code 500, nothing done.
    Error,
    /// Do the work, then hold the answer back this long: a client that times out cannot conclude
    /// that nothing happened, just as with the real upstream.
    Slow(Duration),
    /// HTTP 200 with a body that is not JSON, nothing done.
    Garbage,
    /// Close the connection without any answer, nothing done.
    Reset,
    /// A valid success envelope of `size` bytes, streamed in chunks, after doing the work (an
    /// upstream gone wrong, or a proxy in front of it); with `announce`, `Content-Length` says so
    /// up front, else the answer is chunked and only its end tells.
    Huge { size: u64, announce: bool },
    /// Code 220025 (too frequent, nothing done) with `Retry-After` in whole seconds.
    TooFrequent(Duration),
}

impl Fault {
    /// Reads `{"mode": "none"|"error"|"slow"|"garbage"|"reset"|"huge"|"too_frequent",
    /// "latency": "2s", "size": 104857600, "announce": false, "retry_after": "1s"}`.
    pub(super) fn parse(body: &[u8]) -> Result<Fault, String> {
        let obj = params::object(body).map_err(|e| e.msg)?;
        let latency = match params::field(&obj, "latency") {
            None => DEFAULT_SLOW,
            Some(v) => {
                let text = v
                    .as_str()
                    .ok_or("latency must be a duration string such as \"2s\"")?;
                humantime::parse_duration(text)
                    .map(bounded)
                    .map_err(|e| format!("latency {text:?} is not a duration: {e}"))?
            }
        };
        let duration = |name: &str, default: Duration| -> Result<Duration, String> {
            match params::field(&obj, name) {
                None => Ok(default),
                Some(v) => {
                    let text = v
                        .as_str()
                        .ok_or(format!("{name} must be a duration string such as \"2s\""))?;
                    humantime::parse_duration(text)
                        .map(bounded)
                        .map_err(|e| format!("{name} {text:?} is not a duration: {e}"))
                }
            }
        };
        match params::field(&obj, "mode").and_then(Value::as_str) {
            Some("huge") => {
                let size = match params::field(&obj, "size") {
                    None => DEFAULT_HUGE,
                    Some(v) => v
                        .as_u64()
                        .filter(|n| *n <= MAX_HUGE)
                        .ok_or("size must be a number of bytes, at most 1 GiB")?,
                };
                let announce = params::field(&obj, "announce")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                Ok(Fault::Huge { size, announce })
            }
            Some("too_frequent") => Ok(Fault::TooFrequent(duration(
                "retry_after",
                DEFAULT_RETRY_AFTER,
            )?)),
            Some("none") => Ok(Fault::None),
            Some("error") => Ok(Fault::Error),
            Some("slow") => Ok(Fault::Slow(latency)),
            Some("garbage") => Ok(Fault::Garbage),
            Some("reset") => Ok(Fault::Reset),
            _ => Err(
                "mode is required: none, error, slow, garbage, reset, huge or too_frequent"
                    .to_owned(),
            ),
        }
    }

    /// The fault as `/_sim/fault` reports it back.
    pub(super) fn to_json(self) -> Value {
        match self {
            Fault::None => json!({"mode": "none"}),
            Fault::Error => json!({"mode": "error"}),
            Fault::Slow(d) => json!({
                "mode": "slow",
                "latency": humantime::format_duration(d).to_string(),
            }),
            Fault::Garbage => json!({"mode": "garbage"}),
            Fault::Reset => json!({"mode": "reset"}),
            Fault::Huge { size, announce } => {
                json!({"mode": "huge", "size": size, "announce": announce})
            }
            Fault::TooFrequent(d) => json!({
                "mode": "too_frequent",
                "retry_after": humantime::format_duration(d).to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_and_too_frequent_parse_with_defaults_and_bounds() {
        let parse = |s: &str| Fault::parse(s.as_bytes());
        assert_eq!(
            parse(r#"{"mode":"huge"}"#),
            Ok(Fault::Huge {
                size: DEFAULT_HUGE,
                announce: false
            })
        );
        let huge = parse(r#"{"mode":"huge","size":1000,"announce":true}"#).unwrap();
        assert_eq!(
            huge,
            Fault::Huge {
                size: 1000,
                announce: true
            }
        );
        assert_eq!(
            Fault::parse(huge.to_json().to_string().as_bytes()),
            Ok(huge)
        );
        assert!(parse(r#"{"mode":"huge","size":-1}"#).is_err());
        assert!(parse(r#"{"mode":"huge","size":2000000000000}"#).is_err());
        let tf = parse(r#"{"mode":"too_frequent","retry_after":"1h"}"#).unwrap();
        assert_eq!(tf, Fault::TooFrequent(Duration::from_secs(3600)));
        assert_eq!(Fault::parse(tf.to_json().to_string().as_bytes()), Ok(tf));
        assert!(parse(r#"{"mode":"too_frequent","retry_after":"soon"}"#).is_err());
    }
}
