//! The listeners' TLS keys, `[server] tls_*` and `[admin] tls_*`, as the files a listener loads
//! ([`crate::tls`] reads them).

use std::path::PathBuf;

use super::error::{ConfigError, invalid};
use crate::tls::TlsFiles;

/// A listener's TLS keys: certificate and key together, the client CA only with them; with
/// `load`, the files are loaded here once so that `check-config` finds what `serve` would refuse.
pub(super) fn resolve(
    section: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    client_ca: &Option<PathBuf>,
    load: bool,
) -> Result<Option<TlsFiles>, ConfigError> {
    let files = match (cert, key) {
        (Some(cert), Some(key)) => TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: client_ca.clone(),
        },
        (None, None) if client_ca.is_none() => return Ok(None),
        (None, None) => {
            return Err(invalid(
                format!("{section}.tls_client_ca_file"),
                "needs tls_cert_file and tls_key_file",
            ));
        }
        (Some(_), None) => {
            return Err(invalid(
                format!("{section}.tls_key_file"),
                "expected with tls_cert_file",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                format!("{section}.tls_cert_file"),
                "expected with tls_key_file",
            ));
        }
    };
    if load {
        crate::tls::ServerTls::load(files.clone())
            .map_err(|e| invalid(format!("{section}.tls_cert_file"), e.to_string()))?;
    }
    Ok(Some(files))
}
