//! The environment: the variables the gateway reads, how it reads them (a function, so tests pass
//! their own), and where one credential comes from, a variable or a file.

use std::path::PathBuf;

use super::error::{ConfigError, invalid};

/// The environment variables of the default account's credentials (CONTRACT.md, "Configuration").
pub const ENV_UUID: &str = "FINOVY_UUID";
pub const ENV_SECRET: &str = "FINOVY_SECRET";
pub(crate) const ENV_TOKEN: &str = "FINOVY_TOKEN";
/// The same credentials read from files (Kubernetes Secret volumes), re-read on reload.
pub(crate) const ENV_UUID_FILE: &str = "FINOVY_UUID_FILE";
pub(crate) const ENV_SECRET_FILE: &str = "FINOVY_SECRET_FILE";
pub(crate) const ENV_TOKEN_FILE: &str = "FINOVY_TOKEN_FILE";
pub(crate) const ENV_REDIS_URL: &str = "FGW_REDIS_URL";
/// A file holding the Redis password (a mounted Secret), put into `[redis] url` at load.
pub(crate) const ENV_REDIS_PASSWORD_FILE: &str = "FGW_REDIS_PASSWORD_FILE";
/// The purchase ledger's PostgreSQL URL, or a file holding it (its password inside).
pub(crate) const ENV_LEDGER_URL: &str = "FGW_LEDGER_URL";
pub(crate) const ENV_LEDGER_URL_FILE: &str = "FGW_LEDGER_URL_FILE";

/// Reads the environment; a trait-free function pointer so tests can pass their own.
pub(crate) type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Where one credential comes from: an environment variable (`var`, empty for none) or a file.
pub(super) struct CredentialSource<V> {
    pub(super) var: V,
    pub(super) file: Option<PathBuf>,
    /// What names the file in an error: `FINOVY_SECRET_FILE` or `accounts[1].secret_file`.
    pub(super) file_key: String,
}

impl<V: AsRef<str>> CredentialSource<V> {
    /// The credential, if set. A file's one trailing newline is not part of it (`echo` and
    /// editors add one); a file that cannot be read, or is empty, is an error naming it.
    pub(super) fn read(&self, env: EnvLookup<'_>) -> Result<Option<String>, ConfigError> {
        let var = self.var.as_ref();
        let from_env = if var.is_empty() { None } else { env(var) };
        let Some(path) = &self.file else {
            return Ok(from_env);
        };
        if from_env.is_some() {
            return Err(invalid(
                &self.file_key,
                format!("both {var} and this file are set; keep one"),
            ));
        }
        let text = crate::files::read_text(path, crate::files::SMALL_FILE_MAX).map_err(|e| {
            invalid(
                &self.file_key,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.is_empty() {
            return Err(invalid(
                &self.file_key,
                format!("{} is empty", path.display()),
            ));
        }
        Ok(Some(text.to_string()))
    }

    /// How to set it, for the error of an account without credentials.
    pub(super) fn hint(&self) -> Option<String> {
        let var = self.var.as_ref();
        match (&self.file, var.is_empty()) {
            (Some(_), _) => Some(self.file_key.clone()),
            (None, true) => None,
            (None, false) => Some(var.to_string()),
        }
    }
}
