//! finovy-gateway: a token-brokering, caching, create-protecting gateway in front of the xuandashi
//! cloud's open API. `main.rs` parses the command line; everything it runs is built here, so tests
//! and benchmarks run exactly the gateway that ships.

pub(crate) mod admin;
pub(crate) mod admitted;
pub(crate) mod cache;
pub(crate) mod clock;
pub mod config;
pub(crate) mod console;
pub(crate) mod counters;
/// The old path of [`config::ConfigError`], kept while modules still name it.
pub mod duration;
pub(crate) mod envelope;
pub(crate) mod error;
pub(crate) mod fd_limit;
pub(crate) mod files;
pub mod fleet;
pub(crate) mod layers;
/// Public only for its bench's way in (`ledger::bench`); the store itself is the crate's.
pub mod ledger;
pub(crate) mod listener;
pub mod metrics;
pub mod protect;
pub mod purchases;
pub(crate) mod refusal;
pub mod reload;
pub mod routes;
pub(crate) mod secret;
pub(crate) mod serve;
pub mod server;
pub mod sim;
pub(crate) mod single_flight;
pub(crate) mod stack;
pub(crate) mod startup_error;
pub(crate) mod store;
pub(crate) mod swap;
pub mod telemetry;
pub mod tls;
pub(crate) mod upstream;
pub(crate) mod webhooks;

/// The types every layer speaks, named once.
pub(crate) mod svc {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;

    use bytes::Bytes;

    /// A request whose body has been read (with a limit) at the edge.
    pub(crate) type Req = http::Request<Bytes>;
    /// Every answer is a complete body: upstream answers are small JSON envelopes.
    pub(crate) type Resp = http::Response<Bytes>;
    pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
    /// What an edge service returns: every error already rendered into an envelope answer.
    pub(crate) type RespFuture = BoxFuture<Result<Resp, Infallible>>;
    pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
}
