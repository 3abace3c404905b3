//! The ledger's database: a pool over SQLite or PostgreSQL (sqlx's `Any` driver), its
//! migrations, and why a read or write failed.

use std::borrow::Cow;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor, SqlSafeStr};

/// Why the ledger could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LedgerError {
    #[error("ledger database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("ledger migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("ledger: {0}")]
    Invalid(String),
}

/// Which database holds the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// The ledger's database.
#[derive(Clone)]
pub(crate) struct Ledger {
    /// Where entries open (every commit on disk when it returns), and migrations run.
    pub(super) pool: AnyPool,
    /// Everything else: outcomes, prices, sweeps, reads.
    pub(super) rest: AnyPool,
    pub(super) backend: Backend,
}

pub(super) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "purchases",
        include_str!("migrations/0001_purchases.sql"),
    ),
    (
        2,
        "webhook outbox",
        include_str!("migrations/0002_outbox.sql"),
    ),
];

fn migrator() -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}

impl Ledger {
    /// Connects to `url` (`sqlite://FILE` or `postgres://...`) and applies the migrations.
    pub(crate) async fn connect(
        url: &str,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<Ledger, LedgerError> {
        let ledger = Ledger::lazy(url, max_connections, timeout)?;
        ledger.migrate().await?;
        Ok(ledger)
    }

    /// A pool for `url` that connects when first used: a database that is down at start does not
    /// stop the gateway (creates are refused until it answers; see [`Ledger::migrate`]).
    pub(crate) fn lazy(
        url: &str,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<Ledger, LedgerError> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(LedgerError::Invalid(
                "the ledger's URL must start with sqlite: or postgres://".into(),
            ));
        };
        // SQLite: an entry opens in a commit that is on disk when it returns (FULL), so it
        // survives a power cut as well as a crash; what follows (outcomes, prices, reads) runs on
        // connections that leave the sync to the next durable commit or checkpoint (NORMAL, which
        // WAL keeps safe against a crash of the process): a lost outcome reads as open, then
        // unknown, and its retry settles it. PostgreSQL: one pool, every commit durable.
        // One SQLite file takes one write at a time: one connection opens entries.
        let durable_connections = match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => max_connections,
        };
        let durable = pool(backend, url, durable_connections, timeout, "FULL")?;
        let rest = match backend {
            Backend::Sqlite => pool(backend, url, max_connections, timeout, "NORMAL")?,
            Backend::Postgres => durable.clone(),
        };
        Ok(Ledger {
            pool: durable,
            rest,
            backend,
        })
    }

    /// Applies the migrations not yet applied. On PostgreSQL they run under an advisory lock: of
    /// replicas starting together, one applies them and the others wait, then find them done.
    pub(crate) async fn migrate(&self) -> Result<(), LedgerError> {
        migrator().run(&self.pool).await?;
        Ok(())
    }

    /// Which database this is, as the console names it.
    pub(crate) fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// The pool, for the tables that live beside the ledger (the webhook outbox).
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes the pool: writes under way finish, new ones fail.
    pub(crate) async fn close(&self) {
        self.pool.close().await;
        self.rest.close().await;
    }

    /// An embedded SQLite file at `path` (created, with its folder, when missing).
    pub(crate) async fn sqlite(
        path: &std::path::Path,
        timeout: Duration,
    ) -> Result<Ledger, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                LedgerError::Invalid(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let url = format!("sqlite://{}?mode=rwc", url_path(path)?);
        // Writes to one file take turns anyway; a second connection serves reads meanwhile.
        Ledger::connect(&url, 2, timeout).await
    }
}

/// A lazily connecting pool; on SQLite, each connection in WAL mode with `synchronous` as given,
/// a short busy wait and 256 KiB of page cache (the ledger's memory stays small and bounded,
/// whatever the file grows to).
fn pool(
    backend: Backend,
    url: &str,
    max_connections: u32,
    timeout: Duration,
    synchronous: &'static str,
) -> Result<AnyPool, LedgerError> {
    let pool = AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(timeout)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    let sync = if synchronous == "FULL" {
                        "PRAGMA synchronous = FULL"
                    } else {
                        "PRAGMA synchronous = NORMAL"
                    };
                    conn.execute(sync).await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA cache_size = -256").await?;
                }
                Ok(())
            })
        })
        .connect_lazy(url)?;
    Ok(pool)
}

/// A file path as a URL's path: percent-encoded but for `/` and the unreserved characters, so a
/// folder named with a space, `?` or `#` is still that folder.
fn url_path(path: &std::path::Path) -> Result<String, LedgerError> {
    let text = path
        .to_str()
        .ok_or_else(|| LedgerError::Invalid(format!("{} is not UTF-8", path.display())))?;
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(out)
}
