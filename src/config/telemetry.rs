//! `[telemetry]`: where traces are exported (OTLP over HTTP/protobuf) and which are sampled. Off
//! unless an endpoint is configured, here or in the standard variables
//! (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, as it is; `OTEL_EXPORTER_OTLP_ENDPOINT`, the collector's
//! base URL). Sampling is parent-based: a request whose caller's `traceparent` says sampled is
//! sampled, other roots by `sample_ratio` of their trace ids; `OTEL_TRACES_SAMPLER` (and
//! `OTEL_TRACES_SAMPLER_ARG`) name another of the standard samplers. A key set in the file wins
//! over the variable, as the OpenTelemetry SDKs let code win over the environment.

use serde::{Deserialize, Serialize};

use super::env::EnvLookup;
use super::error::{ConfigError, invalid};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is added).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) otlp_endpoint: Option<String>,
    /// The share of root traces sampled (0 to 1); default [`DEFAULT_RATIO`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sample_ratio: Option<f64>,
}

/// Of root traces (no sampled parent), the share kept when nothing says otherwise.
pub(crate) const DEFAULT_RATIO: f64 = 0.01;

/// Which spans are sampled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Sampling {
    /// A parent's decision stands (`parentbased_*`).
    pub(crate) parent_based: bool,
    /// The share of trace ids sampled where no parent decides (1 always, 0 never).
    pub(crate) ratio: f64,
}

/// Traces, resolved: `None` when off.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TraceSettings {
    /// Where spans are posted (the full URL, `/v1/traces` included).
    pub(crate) endpoint: String,
    pub(crate) sampling: Sampling,
}

impl TelemetryConfig {
    pub(super) fn resolve(&self, env: EnvLookup<'_>) -> Result<Option<TraceSettings>, ConfigError> {
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let endpoint = match (
            &self.otlp_endpoint,
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        ) {
            (Some(base), _) => Some(("telemetry.otlp_endpoint", traces_url(base))),
            (None, Some(full)) => Some(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", full)),
            (None, None) => var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|base| ("OTEL_EXPORTER_OTLP_ENDPOINT", traces_url(&base))),
        };
        let Some((key, endpoint)) = endpoint else {
            return Ok(None);
        };
        let sampling = match (self.sample_ratio, var("OTEL_TRACES_SAMPLER")) {
            (Some(ratio), _) => Sampling {
                parent_based: true,
                ratio: check_ratio("telemetry.sample_ratio", ratio)?,
            },
            (None, Some(name)) => sampler(&name, var("OTEL_TRACES_SAMPLER_ARG"))?,
            (None, None) => Sampling {
                parent_based: true,
                ratio: DEFAULT_RATIO,
            },
        };
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| invalid(key, format!("not a URL: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(invalid(key, "expected an http:// or https:// URL"));
        }
        Ok(Some(TraceSettings { endpoint, sampling }))
    }
}

/// The traces URL of a collector's base URL.
fn traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim().trim_end_matches('/'))
}

fn check_ratio(key: &str, ratio: f64) -> Result<f64, ConfigError> {
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(invalid(key, "expected a number from 0 to 1"))
    }
}

/// One of the standard samplers by its `OTEL_TRACES_SAMPLER` name.
fn sampler(name: &str, arg: Option<String>) -> Result<Sampling, ConfigError> {
    let ratio = || match &arg {
        Some(a) => a
            .trim()
            .parse()
            .map_err(|_| invalid("OTEL_TRACES_SAMPLER_ARG", "expected a number from 0 to 1"))
            .and_then(|r| check_ratio("OTEL_TRACES_SAMPLER_ARG", r)),
        None => Ok(1.0),
    };
    let (parent_based, ratio) = match name.trim() {
        "always_on" => (false, 1.0),
        "always_off" => (false, 0.0),
        "traceidratio" => (false, ratio()?),
        "parentbased_always_on" => (true, 1.0),
        "parentbased_always_off" => (true, 0.0),
        "parentbased_traceidratio" => (true, ratio()?),
        _ => {
            return Err(invalid(
                "OTEL_TRACES_SAMPLER",
                "expected always_on, always_off, traceidratio or their parentbased_ forms",
            ));
        }
    };
    Ok(Sampling {
        parent_based,
        ratio,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(
        cfg: &TelemetryConfig,
        vars: &[(&str, &str)],
    ) -> Result<Option<TraceSettings>, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        cfg.resolve(&|name| vars.get(name).cloned())
    }

    #[test]
    fn traces_are_off_unless_an_endpoint_is_given_and_the_file_wins() {
        assert!(resolve(&TelemetryConfig::default(), &[]).unwrap().is_none());
        let t = resolve(
            &TelemetryConfig::default(),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.endpoint, "http://c:4318/v1/traces");
        assert_eq!(
            t.sampling,
            Sampling {
                parent_based: true,
                ratio: DEFAULT_RATIO
            }
        );
        let file = TelemetryConfig {
            otlp_endpoint: Some("http://file:4318".into()),
            sample_ratio: Some(0.5),
        };
        let t = resolve(
            &file,
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://env/x"),
                ("OTEL_TRACES_SAMPLER", "always_off"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (t.endpoint.as_str(), t.sampling.ratio),
            ("http://file:4318/v1/traces", 0.5)
        );
    }

    #[test]
    fn the_standard_sampler_variables_are_read_and_checked() {
        let env = [
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://c/v1/traces"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ];
        let t = resolve(&TelemetryConfig::default(), &env).unwrap().unwrap();
        assert_eq!(t.endpoint, "https://c/v1/traces");
        assert_eq!(
            t.sampling,
            Sampling {
                parent_based: false,
                ratio: 0.25
            }
        );
        for (vars, key) in [
            (
                &[("OTEL_TRACES_SAMPLER", "sometimes"), env[0]][..],
                "OTEL_TRACES_SAMPLER",
            ),
            (
                &[
                    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "2"),
                    env[0],
                ][..],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://x")][..],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
        ] {
            let e = resolve(&TelemetryConfig::default(), vars)
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{e}");
        }
        let bad = TelemetryConfig {
            otlp_endpoint: Some("http://c".into()),
            sample_ratio: Some(-0.1),
        };
        let e = resolve(&bad, &[]).unwrap_err().to_string();
        assert!(e.contains("telemetry.sample_ratio"), "{e}");
    }
}
