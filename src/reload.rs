//! Reload without restart (`SIGHUP`, `POST /admin/reload`): the config file and the credential
//! files are read again, checked exactly as `check-config` checks them, and what may change at
//! run time is swapped in: clients (keys, routes, accounts), `[auth]`, cache policies, create
//! policies (rates, budgets, de-dup settings), the log level, the admin key and the accounts'
//! credentials. A file that does not check changes nothing. A change that needs a restart
//! (listen addresses, Redis, `[server]`, `[upstream]`, `[token]`, the accounts themselves) is
//! logged as such and otherwise ignored.
//!
//! The files are read on a blocking thread, never on the threads that serve requests, within
//! [`RELOAD_TIMEOUT`]: a file that never answers (a hung network mount) fails the reload, and
//! until that read returns, further reloads are refused rather than stuck beside it. Listener
//! certificates that do not load keep the old ones without holding back the rest of the reload.
//!
//! Each swappable setting sits behind a [`Swap`]: a request reads it once, as it starts, and
//! keeps that `Arc` to its end, so requests in flight finish under the settings they began with.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crate::cache::Cache;
use crate::clock::now_secs_f64;
use crate::config::{EnvLookup, FileConfig, Overrides, Settings};
use crate::counters::ClientRegistry;
use crate::layers::auth::{Authenticator, ClientEntry};
use crate::metrics::Metrics;
use crate::protect::budget::Budget;
use crate::protect::policy::CreateSettings;
use crate::swap::Swap;
use crate::upstream::AccountHandle;

/// Where the settings come from again: the config file (`None`: `config/gateway.toml` when
/// present) and the command-line flags, which keep overriding the file.
#[derive(Clone, Debug, Default)]
pub struct Source {
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
}

/// How long a reload may take to read its files.
pub(crate) const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// What a reload applied.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Keys whose change was ignored because it needs a restart.
    pub(crate) restart_needed: Vec<String>,
    /// What was kept as it was because its files did not load: `"server TLS certificate: why"`.
    pub(crate) kept: Vec<String>,
}

/// A TLS listener, and its new config or why its files did not load.
type TlsReread = (
    &'static str,
    Arc<crate::tls::ServerTls>,
    Result<Arc<rustls::ServerConfig>, crate::tls::TlsError>,
);

/// Everything a reload read, built before anything is swapped.
struct Prepared {
    new: Settings,
    auth: Authenticator,
    tls: Vec<TlsReread>,
}

/// The running gateway's swappable settings, and the last settings applied (to tell changes).
pub(crate) struct Reloader {
    pub(crate) source: OnceLock<Source>,
    pub(crate) current: Mutex<Settings>,
    pub(crate) accounts: Vec<Arc<AccountHandle>>,
    pub(crate) auth: Arc<Swap<Authenticator>>,
    /// Each client's counts for the console, kept across reloads.
    pub(crate) client_counts: Arc<ClientRegistry>,
    pub(crate) cache: Arc<Cache>,
    pub(crate) create: Arc<Swap<CreateSettings>>,
    pub(crate) budget: Arc<Budget>,
    pub(crate) admin_key: Arc<Swap<Option<[u8; 32]>>>,
    pub(crate) metrics: Arc<Metrics>,
    /// The listeners' TLS: certificates are read again with the rest.
    pub(crate) tls: OnceLock<crate::tls::ListenerTls>,
    /// Set while a reload's files are being read, and until that read returns.
    pub(crate) reading: AtomicBool,
}

/// Why a reload changed nothing (the message names the key, never a secret).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error("reload is not available: this gateway was not started by `serve`")]
    Unavailable,
    #[error("{0}")]
    Invalid(String),
    /// The files did not answer within [`RELOAD_TIMEOUT`], or a reload is still reading them.
    #[error("{0}")]
    Stuck(String),
}

/// Who may call, as which account, from validated settings and the running accounts (`Err` when
/// a client names an account this process does not run: accounts change only with a restart).
pub(crate) fn authenticator(
    settings: &Settings,
    accounts: &[Arc<AccountHandle>],
    counts: &ClientRegistry,
) -> Result<Authenticator, String> {
    let find = |name: &str| accounts.iter().find(|a| &*a.name == name).cloned();
    let mut clients = Vec::new();
    for c in &settings.clients {
        let account = find(&c.account).ok_or_else(|| {
            format!(
                "client {:?} names account {:?}, which this process does not run (new accounts need a restart)",
                c.name, c.account
            )
        })?;
        clients.push(ClientEntry {
            name: c.name.as_str().into(),
            key_sha256: c.key_sha256,
            account,
            routes: c.routes.clone(),
            token_lease: c.token_lease,
            counts: counts.of(&c.name),
        });
    }
    let anonymous = settings
        .anonymous_allowed()
        .then(|| find(crate::config::DEFAULT_ACCOUNT))
        .flatten();
    // With clients configured, a caller without a key gets only `[auth] anonymous_routes`.
    let anonymous_routes =
        (!settings.clients.is_empty()).then(|| settings.anonymous_routes.clone());
    Ok(Authenticator::new(clients, anonymous, anonymous_routes)
        .with_anonymous_counts(counts.of(crate::config::ANONYMOUS)))
}

/// Whether two sections differ, compared as their serialised (masked) form.
fn differs<T: serde::Serialize>(a: &T, b: &T) -> bool {
    serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
}

impl Reloader {
    /// Reads the file and the credential files again and applies them; counted in the metrics
    /// and logged either way.
    pub(crate) async fn reload(self: &Arc<Self>, trigger: &str) -> Result<Applied, ReloadError> {
        let result = match self.clone().read_files().await {
            Ok(prepared) => Ok(self.apply(prepared)),
            Err(e) => Err(e),
        };
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .config_reloads
            .with_label_values(&[label])
            .inc();
        match &result {
            Ok(applied) => {
                self.metrics.config_last_reload_success.set(now_secs_f64());
                tracing::info!(trigger, restart_needed = ?applied.restart_needed, kept = ?applied.kept, "configuration reloaded");
            }
            Err(e) => {
                tracing::error!(trigger, error = %e, "configuration reload failed; the running settings stay");
            }
        }
        result
    }

    /// Reads every file on a blocking thread, within [`RELOAD_TIMEOUT`]. One read at a time: a
    /// read that never returns keeps its thread, and no other joins it.
    async fn read_files(self: Arc<Self>) -> Result<Prepared, ReloadError> {
        if self.source.get().is_none() {
            return Err(ReloadError::Unavailable);
        }
        if self.reading.swap(true, Ordering::AcqRel) {
            return Err(ReloadError::Stuck(
                "another reload is still reading its files (still running, or one of its files has \
                 not answered); nothing changed: try again"
                    .into(),
            ));
        }
        let reloader = self.clone();
        let read = tokio::task::spawn_blocking(move || {
            // Cleared however the read ends, a panic included: else no reload would run again.
            struct Done<'a>(&'a AtomicBool);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Release);
                }
            }
            let _done = Done(&reloader.reading);
            reloader.prepare()
        });
        match tokio::time::timeout(RELOAD_TIMEOUT, read).await {
            Ok(Ok(prepared)) => prepared,
            Ok(Err(e)) => Err(ReloadError::Invalid(format!("the reload failed: {e}"))),
            // What it read, if it ever returns, is dropped: this reload changed nothing.
            Err(_) => Err(ReloadError::Stuck(format!(
                "the configuration or credential files did not answer within {RELOAD_TIMEOUT:?} \
                 (a hung mount?); nothing changed"
            ))),
        }
    }

    /// Reads and checks the file, the credential files and the certificates; swaps nothing.
    fn prepare(&self) -> Result<Prepared, ReloadError> {
        let source = self.source.get().ok_or(ReloadError::Unavailable)?;
        let env: EnvLookup<'_> = &crate::config::process_env;
        let new = FileConfig::load(source.path.as_deref())
            .and_then(|file| Settings::resolve_for_reload(file, &source.overrides, env))
            .map_err(|e| ReloadError::Invalid(e.to_string()))?;
        let blockers = new.serve_blockers();
        if !blockers.is_empty() {
            return Err(ReloadError::Invalid(blockers.join("; ")));
        }
        tracing_subscriber::EnvFilter::try_new(&new.log.level)
            .map_err(|e| ReloadError::Invalid(format!("log.level: {e}")))?;
        let auth = authenticator(&new, &self.accounts, &self.client_counts)
            .map_err(ReloadError::Invalid)?;
        let mut tls = Vec::new();
        if let Some(listeners) = self.tls.get() {
            for (name, listener) in [("server", &listeners.listen), ("admin", &listeners.admin)] {
                if let Some(listener) = listener {
                    tls.push((name, listener.clone(), listener.prepare()));
                }
            }
        }
        Ok(Prepared { new, auth, tls })
    }

    /// Swaps in what [`Reloader::prepare`] built; reads no file.
    fn apply(&self, prepared: Prepared) -> Applied {
        let Prepared { new, auth, tls } = prepared;
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let mut restart_needed = restart_only_changes(&current, &new);
        let mut create = new.create.clone();
        // The execution limit of creates is derived from `max_wait` at start: keep it.
        for (route, policy) in &mut create.routes {
            if let Some(old) = current.create.routes.get(route)
                && old.max_wait != policy.max_wait
            {
                restart_needed.push(format!("create.routes.\"{route}\".max_wait"));
                policy.max_wait = old.max_wait;
            }
        }
        let credentials: Vec<_> = self
            .accounts
            .iter()
            .filter_map(|a| {
                let c = new.accounts.iter().find(|n| *n.name == *a.name)?;
                Some((a.clone(), c.credentials.clone()))
            })
            .collect();
        let mut kept = Vec::new();
        if new.log.level != current.log.level
            && let Err(e) = crate::telemetry::set_level(&new.log.level)
        {
            kept.push(format!("log.level: {e}"));
        }

        self.auth.store(auth);
        self.cache.set_policies(new.cache.routes.clone());
        self.budget.set_caps(create.budget.clone());
        self.create.store(create.clone());
        self.admin_key.store(new.admin_key_sha256);
        for (account, creds) in credentials {
            account.broker.set_credentials(&creds);
        }
        // New connections get the new certificates; a listener whose files did not load keeps
        // its old ones, and says so.
        for (name, listener, config) in tls {
            match config {
                Ok(config) => listener.install(config),
                Err(e) => {
                    tracing::error!(listener = name, error = %e, "TLS certificates not reloaded; the old ones stay");
                    kept.push(format!("{name} TLS certificate (the old one stays): {e}"));
                }
            }
        }
        for key in &restart_needed {
            tracing::warn!(key = %key, "this change needs a restart; ignored until then");
        }
        // What is remembered is what runs: restart-only parts stay as they were.
        let mut applied = current.clone();
        applied.auth = new.auth.clone();
        applied.anonymous_routes.clone_from(&new.anonymous_routes);
        applied.clients.clone_from(&new.clients);
        applied.cache.routes = new.cache.routes.clone();
        applied.create = create;
        applied.admin_key_sha256 = new.admin_key_sha256;
        applied.log.level.clone_from(&new.log.level);
        for a in &mut applied.accounts {
            if let Some(n) = new.accounts.iter().find(|n| n.name == a.name) {
                a.credentials = n.credentials.clone();
            }
        }
        // Routes, caps and clients the reload brought in are exported at 0 like those at start.
        self.metrics.export_known(&applied);
        *current = applied;
        Applied {
            restart_needed,
            kept,
        }
    }
}

/// The keys whose change needs a restart: what listeners, connections, stores and background
/// tasks were built from.
fn restart_only_changes(old: &Settings, new: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |key: &str, changed: bool| {
        if changed {
            out.push(key.to_string());
        }
    };
    check("server", differs(&old.server, &new.server));
    check("upstream", differs(&old.upstream, &new.upstream));
    check("token", differs(&old.token, &new.token));
    // The URL is compared as written: its serialised form masks a password.
    let url = |s: &Settings| s.redis.as_ref().map(|r| r.url.clone());
    check(
        "redis",
        differs(&old.redis, &new.redis) || url(old) != url(new),
    );
    check("log.format", old.log.format != new.log.format);
    // Certificates are reloaded, but TLS on or off, and which files, is fixed at start.
    check("admin TLS files", old.admin_tls != new.admin_tls);
    check(
        "cache.max_bytes",
        old.cache.max_bytes != new.cache.max_bytes,
    );
    check("create.lease", old.create.lease != new.create.lease);
    check(
        "create.records_max_bytes",
        old.create.records_max_bytes != new.create.records_max_bytes,
    );
    let shape = |s: &Settings| -> Vec<(String, String)> {
        s.accounts
            .iter()
            .map(|a| (a.name.clone(), a.base_url.clone()))
            .collect()
    };
    check("accounts", shape(old) != shape(new));
    // Requests are classified by the table built at start.
    check("routes", !old.routes.routes_alike(&new.routes));
    // The notifier and its delivery worker are built at start.
    check("webhooks", old.webhooks != new.webhooks);
    out
}
