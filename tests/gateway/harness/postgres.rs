//! A real PostgreSQL server for the purchase ledger's end-to-end tests: the library's own test
//! server (`src/store/conformance/postgres_server.rs`), a cluster of its own on a free loopback
//! port, stopped and started again at will, shut down on drop; a missing installation fails the
//! test. A gateway writes to it when its config holds [`ledger_config`]:
//!
//! ```ignore
//! let mut pg = PgServer::start();
//! let [a, b] = replicas::<2>(&ledger_config(&pg, ""), &sim.url, demo_env()).await;
//! pg.stop();        // the ledger is down
//! pg.start_again(); // and back, its data kept
//! pg.sql("SELECT count(*) FROM purchases");
//! ```

// Each scenario takes what it needs of the server's surface.
#![allow(dead_code, unused_imports)]

#[path = "../../../src/store/conformance/postgres_server.rs"]
mod server;

pub(crate) use server::{DATABASE, PgServer, SUPERUSER, TlsFiles};

/// A `[ledger]` table naming `pg`'s database, then `extra` (more `[ledger]` keys): every gateway
/// started with it writes to the one ledger.
pub(crate) fn ledger_config(pg: &PgServer, extra: &str) -> String {
    format!("[ledger]\nurl = \"{}\"\n{extra}\n", pg.url())
}
