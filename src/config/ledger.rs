//! `[ledger]`: where the purchase ledger lives. An embedded SQLite file by default (`path`); a
//! PostgreSQL URL (`url`, `FGW_LEDGER_URL`, or a file holding it: `url_file`,
//! `FGW_LEDGER_URL_FILE`) for a fleet, every replica writing to the one ledger.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::env::{CredentialSource, ENV_LEDGER_URL, ENV_LEDGER_URL_FILE, EnvLookup};
use super::error::{ConfigError, invalid};
use super::mask::mask_url;
use crate::duration;

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LedgerConfig {
    /// One replica: the SQLite file (created with its folder).
    pub(crate) path: PathBuf,
    /// A fleet: `postgres://user@host/db` (TLS: `?sslmode=verify-full&sslrootcert=FILE`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "mask_opt_url"
    )]
    pub(crate) url: Option<String>,
    /// A file holding the whole URL, password included (a mounted Secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) url_file: Option<PathBuf>,
    /// How long entries are kept; older ones are removed in the background.
    #[serde(with = "duration")]
    pub(crate) retention: Duration,
    /// What a create does when its entry cannot be written.
    pub(crate) on_failure: OnFailure,
    /// Longest wait for a connection from the pool; past it the write counts as failed.
    #[serde(with = "duration")]
    pub(crate) timeout: Duration,
    /// Whether a bought disk's price is read (its info, through the cache: one upstream call at
    /// most) and recorded with its entry.
    pub(crate) record_amount: bool,
}

fn mask_opt_url<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_str(&mask_url(u)),
        None => s.serialize_none(),
    }
}

impl fmt::Debug for LedgerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LedgerConfig")
            .field("path", &self.path)
            .field("url", &self.url.as_deref().map(mask_url))
            .field("url_file", &self.url_file)
            .field("retention", &self.retention)
            .field("on_failure", &self.on_failure)
            .field("timeout", &self.timeout)
            .field("record_amount", &self.record_amount)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnFailure {
    /// 503 (code 1005): no purchase goes unrecorded.
    Refuse,
    /// The create goes on, unrecorded (logged and counted).
    Allow,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            path: PathBuf::from("data/ledger.sqlite"),
            url: None,
            url_file: None,
            retention: Duration::from_secs(400 * 86_400),
            on_failure: OnFailure::Refuse,
            timeout: Duration::from_secs(2),
            record_amount: true,
        }
    }
}

impl LedgerConfig {
    /// The URL from the environment or the files, then the file's `url`; checks the rest.
    pub(super) fn resolve(mut self, env: EnvLookup<'_>) -> Result<LedgerConfig, ConfigError> {
        let from_file = match env(ENV_LEDGER_URL_FILE) {
            Some(path) => Some((PathBuf::from(path), ENV_LEDGER_URL_FILE.to_string())),
            None => self.url_file.clone().map(|p| (p, "ledger.url_file".into())),
        };
        let url = match from_file {
            Some((file, file_key)) => CredentialSource {
                var: ENV_LEDGER_URL,
                file: Some(file),
                file_key,
            }
            .read(env)?,
            None => env(ENV_LEDGER_URL).or(self.url.take()),
        };
        self.url = url.filter(|u| !u.is_empty());
        if let Some(url) = &self.url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "ledger.url",
                format!("expected postgres://..., got {}", mask_url(url)),
            ));
        }
        if self.url.is_none() && self.path.as_os_str().is_empty() {
            return Err(invalid("ledger.path", "expected a file path"));
        }
        if self.retention < Duration::from_secs(86_400) {
            return Err(invalid("ledger.retention", "expected at least 1d"));
        }
        super::check::check_nonzero("ledger.timeout", self.timeout)?;
        Ok(self)
    }

    /// Whether the ledger is shared by a fleet (PostgreSQL) rather than this replica's own file.
    pub(crate) fn is_shared(&self) -> bool {
        self.url.is_some()
    }
}
