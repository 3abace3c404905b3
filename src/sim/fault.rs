//! Injected failures (`POST /_sim/fault`), so that a client's error handling can be exercised
//! against the failures a real upstream produces now and then.

use std::time::Duration;

use serde_json::{Value, json};

use crate::sim::bounded;
use crate::sim::params;

/// How long `slow` holds an answer back when no `latency` is given.
const DEFAULT_SLOW: Duration = Duration::from_secs(1);

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
}

impl Fault {
    /// Reads `{"mode": "none"|"error"|"slow"|"garbage"|"reset", "latency": "2s"}`.
    pub fn parse(body: &[u8]) -> Result<Fault, String> {
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
        match params::field(&obj, "mode").and_then(Value::as_str) {
            Some("none") => Ok(Fault::None),
            Some("error") => Ok(Fault::Error),
            Some("slow") => Ok(Fault::Slow(latency)),
            Some("garbage") => Ok(Fault::Garbage),
            Some("reset") => Ok(Fault::Reset),
            _ => Err("mode is required: none, error, slow, garbage or reset".to_owned()),
        }
    }

    /// The fault as `/_sim/fault` reports it back.
    pub fn to_json(self) -> Value {
        match self {
            Fault::None => json!({"mode": "none"}),
            Fault::Error => json!({"mode": "error"}),
            Fault::Slow(d) => json!({
                "mode": "slow",
                "latency": humantime::format_duration(d).to_string(),
            }),
            Fault::Garbage => json!({"mode": "garbage"}),
            Fault::Reset => json!({"mode": "reset"}),
        }
    }
}
