//! One listener, served: the one function both the data plane and the admin listener run, so
//! their HTTP settings, timeouts, TLS handshake, connection accounting and graceful close cannot
//! drift apart. What differs between the two is a [`Plane`] (its name, its connection cap, its
//! TLS) and the function that answers a request; what a listener does once it stops accepting
//! (the data plane's drain, the admin's quick close) is the caller's, with the [`Connections`]
//! handed back.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::config::ServerConfig;
use crate::listener::Connections;
use crate::metrics::Metrics;
use crate::tls::ServerTls;

/// Streams an h2 client may reset before the server has accepted them (hyper's default, kept
/// explicit): past it the connection is closed.
const H2_MAX_PENDING_RESETS: usize = 20;

/// What sets one listener apart from the other.
pub(crate) struct Plane<'a> {
    /// `data` or `admin`, as in the metrics' `listener` label.
    pub(crate) name: &'static str,
    /// Open connections at most; at the cap a new one takes the longest-idle one's place.
    pub(crate) max_connections: usize,
    /// The listener's TLS, when it has one.
    pub(crate) tls: Option<&'a ServerTls>,
}

/// Serves `listener` until `shutdown` resolves: HTTP/1.1 and h2 with `cfg`'s settings and
/// timeouts (TLS when `plane` has it), each connection counted among `plane`'s, each request
/// answered by `handle` and counted busy while it runs (an idle connection may be closed, a busy
/// one is not). Returns once it stops accepting (the listener is closed by then) with the open
/// connections, for the caller to close as its listener requires.
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    plane: Plane<'_>,
    cfg: &ServerConfig,
    metrics: &Metrics,
    handle: H,
    shutdown: impl Future<Output = ()>,
) -> Connections
where
    H: Fn(http::Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Result<http::Response<Bytes>, Infallible>> + Send + 'static,
{
    let builder = http_builder(cfg);
    let connections = Connections::new(plane.name, plane.max_connections, cfg, metrics);
    tokio::pin!(shutdown);
    while let Some((stream, slot)) = connections.accept(&listener, shutdown.as_mut()).await {
        let handle = handle.clone();
        let activity = slot.activity.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let busy = activity.begin();
            let answer = handle(req);
            async move {
                let resp = answer.await?;
                drop(busy);
                Ok::<_, Infallible>(resp.map(Full::new))
            }
        });
        connections.serve_http(slot, stream, &builder, svc, plane.tls);
    }
    connections
}

/// The HTTP/1.1 and h2 settings of both listeners, from `[server]`.
fn http_builder(cfg: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(cfg.max_header_bytes)
        // Counted from when the connection waits for a head: covers a slow head and an idle
        // kept-alive connection alike.
        .header_read_timeout(cfg.request_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(cfg.max_header_bytes as u32)
        .max_concurrent_streams(cfg.h2_max_concurrent_streams)
        // Pings find dead peers, whose streams would otherwise stay open.
        .keep_alive_interval(cfg.h2_keep_alive_interval)
        .keep_alive_timeout(cfg.h2_keep_alive_timeout)
        // Rapid reset (CVE-2023-44487): streams a client opens and cancels at once.
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS);
    builder
}
