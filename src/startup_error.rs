//! Why the gateway (or the simulator beside it) did not start, or stopped serving: one enum for
//! every startup path of `serve`, `dev` and `sim`, each variant naming what failed. `main` prints
//! it as `finovy-gateway: {error}`; the texts are the ones operators and tests already know.

use std::net::SocketAddr;

use crate::config::error::ConfigError;
use crate::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config file did not load, or a key's value is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The settings check, but `serve` may not run with them (protected mode, an account without
    /// credentials): every reason, one after another.
    #[error("cannot start: {}", .0.join("; "))]
    Refused(Vec<String>),
    /// Shared mode: the Redis client could not be set up from `[redis]`.
    #[error("cannot start: {0}")]
    Redis(String),
    /// The purchase ledger (its SQLite file, or a PostgreSQL URL that does not parse).
    #[error("cannot start: the purchase ledger: {0}")]
    Ledger(String),
    /// The upstream client (its proxy, its trusted CAs) could not be built.
    #[error("cannot start: {0}")]
    Upstream(String),
    /// An account's credentials give no way to a token.
    #[error("cannot start: account {0:?} has no credentials")]
    NoCredentials(String),
    /// The clients could not be matched with the accounts this process runs.
    #[error("cannot start: {0}")]
    Clients(String),
    /// A listener's certificate, key or client CA did not load.
    #[error("cannot start: {0}")]
    Tls(#[from] TlsError),
    /// A listener could not bind its address (in use, not ours, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// `dev`: the simulator could not bind its address.
    #[error("cannot start the simulator on {addr}: {source} (try --sim-listen 127.0.0.1:0)")]
    Simulator {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// `dev`: the gateway did not start; the hint says how to let the system pick free ports.
    #[error("{0} (try --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0)")]
    Dev(Box<StartError>),
    /// Serving stopped with an error once started (a listener's address, a signal handler).
    #[error(transparent)]
    Serve(std::io::Error),
}
