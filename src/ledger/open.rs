//! The ledger a gateway starts with, from `[ledger]`: its own SQLite file, or the fleet's
//! PostgreSQL. A file that cannot be opened stops the start (it is this replica's own
//! configuration); a PostgreSQL server that does not answer yet does not: the gateway starts,
//! refuses creates until the ledger answers, and applies the migrations once it does.

use std::time::Duration;

use crate::config::LedgerConfig;

use super::db::{Ledger, LedgerError};

/// Connections to a shared PostgreSQL ledger, per replica.
const POSTGRES_CONNECTIONS: u32 = 8;

/// Opens the configured ledger.
pub(crate) async fn open(cfg: &LedgerConfig) -> Result<Ledger, LedgerError> {
    let Some(url) = &cfg.url else {
        return Ledger::sqlite(&cfg.path, cfg.timeout).await;
    };
    let ledger = Ledger::lazy(url, POSTGRES_CONNECTIONS, cfg.timeout)?;
    match tokio::time::timeout(cfg.timeout * 5, ledger.migrate()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => retry_migrations(&ledger, &e.to_string()),
        Err(_) => retry_migrations(&ledger, "no answer"),
    }
    Ok(ledger)
}

/// Applies the migrations in the background until the database answers.
fn retry_migrations(ledger: &Ledger, why: &str) {
    tracing::warn!(error = %why, "ledger: PostgreSQL is not available yet; creates are refused until it is");
    let ledger = ledger.clone();
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(500);
        loop {
            tokio::time::sleep(pause).await;
            match ledger.migrate().await {
                Ok(()) => {
                    tracing::info!("ledger: PostgreSQL answers; migrations applied");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "ledger: PostgreSQL still unavailable"),
            }
            pause = (pause * 2).min(Duration::from_secs(10));
        }
    });
}
