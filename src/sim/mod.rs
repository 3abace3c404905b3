//! The upstream simulator: a local stand-in for the xuandashi (渲大师) open API.
//!
//! The real upstream costs money on every create, needs an account with real-name verification and
//! cannot be made to fail on demand. This module serves the same API on a loopback port so that the
//! gateway can be developed, demonstrated (`finovy-gateway dev`), tested and benchmarked without it.
//!
//! # What it models
//!
//! * `POST /v1/auth/getToken` trades the configured uuid/secret for a token valid for
//!   [`SimConfig::token_ttl`]; every other call needs a live token in `Finovy-Access-Token`, else it
//!   gets code 401 (missing, unknown or expired token).
//! * Every cloud-disk endpoint (`/v1/PveMachineHardDisk/open/...`) with its documented validation and
//!   error codes. A mount passes through status 1 (mounting) to 2 (in use) after
//!   [`SimConfig::mount_delay`]; a destroyed disk shows status 4 for the same delay, then is gone.
//!   A create accepted less than [`SimConfig::create_min_interval`] after the previous accepted one is
//!   refused with code 220025, as the real upstream does.
//! * The host API (`/v1/pve/open/...`), simply: images, packages, creating, powering, rebooting,
//!   listing and deleting hosts. It starts with the hosts of [`seed`], chosen so that every host-related
//!   error of a mount can be provoked.
//! * [`SimConfig::latency`] is added to every API answer.
//!
//! Business errors are HTTP 200 with a non-zero `code`, like the real upstream; an unknown path or
//! method is HTTP 404 with code 404. Wallet balance, real-name verification and arrears (disk status
//! 3) are not modelled.
//!
//! # Control endpoints
//!
//! On the same port, outside the upstream API, never delayed, never faulted, no token needed:
//!
//! * `GET /_sim/stats`: calls per endpoint (every request that reached the API, unauthorised and
//!   faulted ones included, `other` for unknown paths), how many creates were refused as too frequent,
//!   how many disks (a destroyed one until it is gone) and hosts exist.
//! * `GET /_sim/requests`: the last 200 API requests as received (method, path, headers, body), so
//!   that a test can prove what a client forwarded.
//! * `POST /_sim/fault`: makes every API answer fail until told otherwise. Modes: `error` (HTTP 500,
//!   code 500, nothing done), `slow` (the request is carried out at once and its answer held back by
//!   `latency`, default 1s, so a client that gives up cannot assume nothing happened), `garbage`
//!   (HTTP 200 with a body that is not JSON, nothing done), `reset` (the connection is closed without
//!   any answer, nothing done), `huge` (the request is carried out, then answered with a valid
//!   envelope of `size` bytes, streamed; `Content-Length` only with `announce`), `too_frequent`
//!   (code 220025 with `Retry-After` of `retry_after`, nothing done), `none` (normal). Faulted
//!   requests are still counted and logged.
//! * `POST /_sim/reset`: counters, request log, disks, hosts, fault and the create timer back to the
//!   start. Tokens already issued stay valid, so a client holding one is not disturbed.
//! * `POST /_sim/revoke-tokens`: forgets every issued token, so that a client's next call gets code
//!   401 and it has to fetch a new token.
//!
//! ```text
//! TOKEN=$(curl -s -XPOST localhost:18080/v1/auth/getToken \
//!   -d '{"uuid":"demo-uuid","secret":"demo-secret"}' | jq -r .data.token)
//! curl -s -XPOST localhost:18080/v1/PveMachineHardDisk/open/create -H "Finovy-Access-Token: $TOKEN" \
//!   -d '{"area":0,"memory":20,"isMount":1,"pveId":"hostSouth0"}'
//! curl -s -XPOST localhost:18080/_sim/fault -d '{"mode":"slow","latency":"3s"}'
//! curl -s -XPOST localhost:18080/_sim/fault -d '{"mode":"none"}'
//! curl -s localhost:18080/_sim/stats
//! ```
//!
//! HTTP/1.1 and HTTP/2 without TLS (h2c, prior knowledge) are served on the same port.

mod api;
mod auth;
mod control;
mod disks;
mod envelope;
mod fault;
mod hosts;
mod params;
pub mod seed;
mod service;
mod state;
mod stats;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::sim::state::Shared;

/// How the simulated upstream behaves. Every field has a default that matches the real upstream or
/// the documented demo credentials.
#[derive(Clone)]
pub struct SimConfig {
    /// The account id accepted by `getToken`, echoed as `uuid` in disk details.
    pub uuid: String,
    /// The secret accepted by `getToken`.
    pub secret: String,
    /// How long an issued token is valid; `getToken` answers it as `effectiveTime` in ms.
    pub token_ttl: Duration,
    /// Added to every API answer (not to `/_sim/*`).
    pub latency: Duration,
    /// The least time between two accepted creates; a create sooner gets code 220025. Zero disables.
    pub create_min_interval: Duration,
    /// How long a mount, a host power change and a disk destruction take.
    pub mount_delay: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            uuid: "demo-uuid".to_owned(),
            secret: "demo-secret".to_owned(),
            token_ttl: Duration::from_secs(30 * 60),
            latency: Duration::ZERO,
            create_min_interval: Duration::from_secs(1),
            mount_delay: Duration::from_secs(2),
        }
    }
}

/// Written by hand so that the secret never reaches a log line.
impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("uuid", &self.uuid)
            .field("secret", &"***")
            .field("token_ttl", &self.token_ttl)
            .field("latency", &self.latency)
            .field("create_min_interval", &self.create_min_interval)
            .field("mount_delay", &self.mount_delay)
            .finish()
    }
}

/// The longest duration the simulator works with. Deadlines are computed as `now + duration`, which
/// would panic on overflow; capping every configured or requested duration here (a century is
/// "forever" for a simulator) keeps that arithmetic safe.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Caps `d` at [`MAX_DURATION`].
pub(crate) fn bounded(d: Duration) -> Duration {
    d.min(MAX_DURATION)
}

/// A bound simulator, ready to [`run`](Simulator::run).
pub struct Simulator {
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Simulator {
    /// Binds the listener (port 0 allowed) and seeds the state.
    pub async fn bind(addr: SocketAddr, cfg: SimConfig) -> std::io::Result<Simulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let cfg = SimConfig {
            token_ttl: bounded(cfg.token_ttl),
            latency: bounded(cfg.latency),
            create_min_interval: bounded(cfg.create_min_interval),
            mount_delay: bounded(cfg.mount_delay),
            ..cfg
        };
        Ok(Simulator {
            listener,
            addr,
            shared: Arc::new(Shared::new(cfg)),
        })
    }

    /// The address actually bound, with the port chosen by the system when 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, then stops accepting and returns.
    ///
    /// Open connections are then asked to finish the requests in flight and close; `run` returns once
    /// they have, so a caller that stops the runtime afterwards cuts no answer in half.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Simulator {
            listener, shared, ..
        } = self;
        let builder = auto::Builder::new(TokioExecutor::new());
        let (stop_tx, stop_rx) = watch::channel(());
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let conn = serve_connection(&builder, stream, peer, shared.clone(), stop_rx.clone());
                        connections.spawn(conn);
                    }
                    Err(e) => {
                        // Accept errors (out of file descriptors, aborted handshakes) are transient:
                        // pause briefly rather than spin or give up serving.
                        tracing::warn!(error = %e, "simulator: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        // Receivers may all be gone already; nothing is left to tell then.
        let _ = stop_tx.send(());
        while connections.join_next().await.is_some() {}
        Ok(())
    }
}

/// Serves one connection (HTTP/1.1 or h2c) until the client closes it or shutdown is signalled, in
/// which case in-flight requests are finished first.
fn serve_connection(
    builder: &auto::Builder<TokioExecutor>,
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<()>,
) -> impl Future<Output = ()> + Send + 'static {
    // Small JSON answers should not wait for Nagle's algorithm.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "simulator: cannot set TCP_NODELAY");
    }
    let service = hyper::service::service_fn(move |req| service::serve(shared.clone(), req));
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    async move {
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            // One value is sent, when `run` stops; a dropped sender means `run` is gone: stop too.
            _ = stop.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        // Errors here are clients going away or the `reset` fault doing its job.
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "simulator: connection ended with an error");
        }
    }
}
