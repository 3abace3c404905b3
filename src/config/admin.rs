//! `[admin]`: the key guarding `/admin/*` (its digest only) and the admin listener's TLS files.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::check::parse_digest;
use super::error::ConfigError;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AdminConfig {
    /// SHA-256 (hex) of the admin key guarding `/admin/*`; unset = those endpoints are disabled.
    pub(crate) key_sha256: Option<String>,
    /// TLS on `admin_listen`, as the data plane's `[server] tls_*` keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_client_ca_file: Option<PathBuf>,
}

impl AdminConfig {
    /// The admin key's digest, when set; the TLS files are resolved with the listeners' TLS
    /// ([`super::tls`]).
    pub(super) fn resolve(&self) -> Result<Option<[u8; 32]>, ConfigError> {
        self.key_sha256
            .as_deref()
            .map(|d| parse_digest("admin.key_sha256", d))
            .transpose()
    }
}
