//! The purchase ledger: one entry per request to a spend route, written before anything is sent
//! upstream and settled with its outcome (CONTRACT.md, `GET /admin/purchases`). An embedded SQLite
//! file for one replica, PostgreSQL for a fleet: one schema in portable SQL, through sqlx's `Any`
//! driver, its migrations applied at start (under PostgreSQL's advisory lock, so that the first
//! replica to start applies them and the others wait).
//!
//! This module is the store: writes ([`write`]), reads ([`read`]), and the types ([`entry`]). The
//! spend pipeline's layer (`crate::layers::ledger`) decides what is written.

#[doc(hidden)]
pub mod bench;
pub(crate) mod entry;
mod read;
mod write;

use std::borrow::Cow;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor, SqlSafeStr};

pub(crate) use entry::{Entry, NewEntry, Outcome, Prior, Settlement, StoredAnswer, new_id};
pub(crate) use read::{Filter, Page, SpendRow};

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

/// The ledger's database, and what kind it is.
#[derive(Clone)]
pub(crate) struct Ledger {
    pool: AnyPool,
    backend: Backend,
}

const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "purchases",
    include_str!("migrations/0001_purchases.sql"),
)];

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
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(timeout)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: readers never wait for the writer; FULL: a commit is on disk when
                        // it returns, so an entry written before a purchase survives a power cut.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        migrator().run(&pool).await?;
        Ok(Ledger { pool, backend })
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
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Ledger::connect(&url, 4, timeout).await
    }

    pub(crate) fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool: pending writes finish, new ones fail.
    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests;
