//! Typed settings: the TOML file, then the environment, then command-line flags.
//!
//! Everything is parsed once, at start, into the types below; unknown keys and bad values are
//! errors that name the key. Secrets (upstream uuid, secret and token) live in
//! [`Secret`](crate::secret::Secret), whose `Debug` and `Serialize` print a mask, so
//! `check-config` and logs can never show them.
//!
//! One file per section of the config file. A section whose keys are only checked has
//! `validate(&self)`; one that becomes something else (a digest, TLS files, accounts, clients)
//! has `resolve(..)`, as `[cache]` and `[create]` have in their own modules; `[[routes]]` is
//! built into the route table. [`Settings::resolve`] calls each of them, in one list whose order
//! is the order errors are found in.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;

use crate::cache::policy::CacheSettings;
use crate::protect::policy::CreateSettings;
use crate::routes::{Route, RouteTable};
use crate::tls::TlsFiles;

mod accounts;
mod admin;
mod auth;
mod check;
mod clients;
mod env;
pub(crate) mod error;
mod file;
mod ledger;
mod load;
mod log;
mod mask;
mod overrides;
mod redis;
mod server;
mod telemetry;
mod tls;
mod token;
mod upstream;
mod webhooks;

pub use crate::protect::budget::settings::ClientBudget;
pub use accounts::DEFAULT_ACCOUNT;
pub(crate) use accounts::{Account, Credentials};
pub(crate) use auth::AuthConfig;
pub use check::is_name;
pub use clients::ClientConfig;
pub(crate) use clients::{ANONYMOUS, Client};
pub(crate) use env::EnvLookup;
pub use env::{ENV_SECRET, ENV_UUID, process_env};
pub(crate) use error::ConfigError;
pub use file::{DEFAULT_CONFIG_PATH, FileConfig};
pub(crate) use ledger::{LedgerConfig, OnFailure};
pub use log::{LogConfig, LogFormat};
use mask::mask_opt;
pub use overrides::Overrides;
pub use redis::{CreatesWhenDown, RedisConfig};
pub use server::ServerConfig;
pub(crate) use telemetry::{Sampling, TraceSettings};
pub(crate) use token::TokenConfig;
pub(crate) use upstream::Egress;
pub use upstream::UpstreamConfig;
#[cfg(test)]
pub(crate) use webhooks::test_key as webhooks_key;
pub(crate) use webhooks::{EventKind, Webhook};

// === the resolved settings ===

/// Everything the gateway runs with, validated.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub(crate) server: ServerConfig,
    pub(crate) upstream: UpstreamConfig,
    pub(crate) auth: AuthConfig,
    pub(crate) token: TokenConfig,
    pub log: LogConfig,
    pub(crate) cache: CacheSettings,
    pub(crate) create: CreateSettings,
    pub(crate) ledger: LedgerConfig,
    /// `[telemetry]`: traces, when exported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) traces: Option<TraceSettings>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "mask_opt")]
    pub(crate) admin_key_sha256: Option<[u8; 32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) redis: Option<RedisConfig>,
    pub(crate) accounts: Vec<Account>,
    pub(crate) clients: Vec<Client>,
    /// Every route: the compiled ones and `[[routes]]`.
    #[serde(
        skip_serializing_if = "crate::routes::no_configured",
        serialize_with = "crate::routes::serialize_configured"
    )]
    pub(crate) routes: Arc<RouteTable>,
    /// `[auth] anonymous_routes`, checked against the route table.
    #[serde(skip)]
    pub(crate) anonymous_routes: BTreeSet<Route>,
    /// TLS of the data-plane and admin listeners (`[server] tls_*`, `[admin] tls_*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) listen_tls: Option<TlsFiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) admin_tls: Option<TlsFiles>,
    /// `[[webhooks]]`, their keys read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) webhooks: Vec<Webhook>,
}

impl Settings {
    /// Validates the file, then applies the environment and the flags.
    pub fn resolve(
        file: FileConfig,
        overrides: &Overrides,
        env: EnvLookup<'_>,
    ) -> Result<Settings, ConfigError> {
        Settings::resolve_with(file, overrides, env, true)
    }

    /// [`Settings::resolve`] for a reload: the listeners' certificate files are not loaded here
    /// (a reload loads them itself and keeps the old certificate when they do not load), so a
    /// half-done certificate rotation does not hold back the rest of the file.
    pub(crate) fn resolve_for_reload(
        file: FileConfig,
        overrides: &Overrides,
        env: EnvLookup<'_>,
    ) -> Result<Settings, ConfigError> {
        Settings::resolve_with(file, overrides, env, false)
    }

    fn resolve_with(
        file: FileConfig,
        overrides: &Overrides,
        env: EnvLookup<'_>,
        load_tls: bool,
    ) -> Result<Settings, ConfigError> {
        let mut server = file.server;
        if let Some(a) = overrides.listen {
            server.listen = a;
        }
        if let Some(a) = overrides.admin_listen {
            server.admin_listen = a;
        }
        let mut upstream = file.upstream;
        if let Some(u) = &overrides.upstream {
            upstream.base_url.clone_from(u);
        }
        let mut log = file.log;
        if let Some(f) = overrides.log_format {
            log.format = f;
        }
        // Each section checks its own keys; the order is the order errors are found in.
        server.validate()?;
        upstream.validate()?;
        file.token.validate()?;
        upstream.validate_base_url()?;
        log.validate()?;
        let redis = RedisConfig::resolve(file.redis, overrides, env)?;
        let admin_key_sha256 = file.admin.resolve()?;
        let listen_tls = tls::resolve(
            "server",
            &server.tls_cert_file,
            &server.tls_key_file,
            &server.tls_client_ca_file,
            load_tls,
        )?;
        let admin_tls = tls::resolve(
            "admin",
            &file.admin.tls_cert_file,
            &file.admin.tls_key_file,
            &file.admin.tls_client_ca_file,
            load_tls,
        )?;
        let routes = Arc::new(RouteTable::with_configured(&file.routes)?);
        let cache = file.cache.resolve(&routes)?;
        let mut create = file.create.resolve(&routes)?;
        let ledger = file.ledger.resolve(env)?;
        let traces = file.telemetry.resolve(env)?;
        let accounts = accounts::resolve(&file.accounts, &upstream, env)?;
        let clients = clients::resolve(&file.clients, &accounts, &routes)?;
        create.budget.know_names(
            accounts.iter().map(|a| a.name.clone()).collect(),
            clients
                .iter()
                .map(|c| (c.name.clone(), c.account.clone(), c.budget)),
        );
        let anonymous_routes = file.auth.resolve(&routes)?;
        let webhooks = webhooks::resolve(&file.webhooks, env)?;

        Ok(Settings {
            server,
            upstream,
            auth: file.auth,
            token: file.token,
            log,
            cache,
            create,
            ledger,
            traces,
            admin_key_sha256,
            redis,
            accounts,
            clients,
            routes,
            anonymous_routes,
            listen_tls,
            admin_tls,
            webhooks,
        })
    }

    /// One client's share of `max_concurrency`: as configured, else a quarter of it. With no
    /// `[[clients]]` every caller is the one anonymous caller, so it may use all of it.
    pub(crate) fn max_inflight_per_client(&self) -> usize {
        match self.server.max_inflight_per_client {
            Some(n) => n,
            None if self.clients.is_empty() => self.server.max_concurrency,
            None => (self.server.max_concurrency / 4).max(1),
        }
    }

    /// Protected mode (CONTRACT.md): without clients, anonymous calls only on loopback or when allowed.
    pub(crate) fn anonymous_allowed(&self) -> bool {
        self.auth.allow_anonymous
            || (self.clients.is_empty() && self.server.listen.ip().is_loopback())
    }

    /// Why `serve` cannot start with these settings, if it cannot.
    pub fn serve_blockers(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.clients.is_empty() && !self.anonymous_allowed() {
            out.push(format!(
                "protected mode: no [[clients]] are configured and listen = {} is not a loopback address; \
                 add a [[clients]] entry (see `finovy-gateway keygen`), listen on 127.0.0.1, \
                 or set [auth] allow_anonymous = true",
                self.server.listen
            ));
        }
        for a in &self.accounts {
            if let Credentials::Missing { hint } = &a.credentials {
                out.push(format!(
                    "account {:?} has no upstream credentials: {hint}",
                    a.name
                ));
            }
        }
        out
    }

    /// The effective settings as TOML, every secret masked (for `check-config`).
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn env_none(_: &str) -> Option<String> {
        None
    }

    /// The settings of a config file's text, without environment or flags (for every section's
    /// tests).
    pub(super) fn resolve(text: &str) -> Result<Settings, ConfigError> {
        let file = FileConfig::parse(text, Path::new("t.toml"))?;
        Settings::resolve(file, &Overrides::default(), &env_none)
    }

    #[test]
    fn defaults_without_a_file() {
        let s = resolve("").unwrap();
        assert_eq!(s.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(s.accounts.len(), 1);
        assert!(matches!(
            s.accounts[0].credentials,
            Credentials::Missing { .. }
        ));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = resolve("[server]\nlisten_addr = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_addr"), "{e}");
    }

    #[test]
    fn bad_duration_is_named() {
        let e = resolve("[server]\nrequest_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("request_timeout") && e.contains("duration"),
            "{e}"
        );
    }

    #[test]
    fn secrets_are_masked() {
        let env = |n: &str| match n {
            "FINOVY_UUID" => Some("uuid-value-123".to_string()),
            "FINOVY_SECRET" => Some("secret-value-456".to_string()),
            _ => None,
        };
        let overrides = Overrides {
            redis: Some("redis://u:p@ss-word-789@127.0.0.1:6379/0".into()),
            ..Overrides::default()
        };
        let s = Settings::resolve(FileConfig::default(), &overrides, &env).unwrap();
        let out = s.to_masked_toml() + &format!("{s:?} {overrides:?}");
        assert!(
            !out.contains("uuid-value-123")
                && !out.contains("secret-value-456")
                && !out.contains("ss-word-789"),
            "{out}"
        );
        assert!(out.contains("redis://u:***@127.0.0.1:6379/0"), "{out}");
    }
}
