//! `[log]`: the format of log lines and the filter that picks them (`RUST_LOG` wins when set).

use serde::{Deserialize, Serialize};

use super::error::{ConfigError, invalid};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `finovy_gateway=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

impl LogConfig {
    /// The level must parse as a tracing filter.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        tracing_subscriber::EnvFilter::try_new(&self.level).map_err(|e| {
            invalid(
                "log.level",
                format!("expected a filter such as \"info\": {e}"),
            )
        })?;
        Ok(())
    }
}
