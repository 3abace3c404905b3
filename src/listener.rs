//! Accepted connections, for the data plane and the admin listener alike: at most `max` open at
//! once (a permit is taken before `accept`, so more wait in the kernel's listen backlog rather
//! than in our memory), each closed once it has had no request in flight for `idle_timeout`
//! (HTTP/1 and h2 alike, and a connection that never sends a byte; one that does not go within
//! another `idle_timeout` is dropped), and all of them closed
//! gracefully on shutdown: what is in flight finishes, then [`Connections::close_all`] returns.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::tls::ServerTls;

/// The open connections of one listener.
pub(crate) struct Connections {
    permits: Arc<Semaphore>,
    max: u32,
    idle_timeout: Duration,
    closing: watch::Sender<bool>,
}

/// An accepted connection's place among the open ones, and what it is doing.
pub(crate) struct Slot {
    pub(crate) peer: SocketAddr,
    pub(crate) activity: Arc<Activity>,
    permit: OwnedSemaphorePermit,
}

impl Connections {
    /// `max` is at most 1,000,000 (the config checks it).
    pub(crate) fn new(max: usize, idle_timeout: Duration) -> Connections {
        Connections {
            permits: Arc::new(Semaphore::new(max)),
            max: max as u32,
            idle_timeout,
            closing: watch::channel(false).0,
        }
    }

    /// The next connection, once fewer than `max` are open; `None` once `shutdown` resolves.
    pub(crate) async fn accept(
        &self,
        listener: &TcpListener,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Option<(TcpStream, Slot)> {
        let permit = tokio::select! {
            () = shutdown.as_mut() => return None,
            p = self.permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        loop {
            let accepted = tokio::select! {
                () = shutdown.as_mut() => return None,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let slot = Slot {
                        peer,
                        activity: Arc::new(Activity::new()),
                        permit,
                    };
                    return Some((stream, slot));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Runs `conn` (a hyper connection on `slot`'s stream) in its own task until it ends, closing
    /// it with `graceful` when it has been idle too long or when every connection is closed.
    pub(crate) fn spawn<C, E>(&self, slot: Slot, conn: C, graceful: fn(Pin<&mut C>))
    where
        C: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let Slot {
            peer,
            activity,
            permit,
        } = slot;
        let idle = self.idle_timeout;
        let mut closing = self.closing.subscribe();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::pin!(conn);
            let mut deadline = activity.idle_deadline(idle);
            let mut state = Closing::Open;
            loop {
                tokio::select! {
                    ended = conn.as_mut() => {
                        if let Err(e) = ended {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        return;
                    }
                    _ = closing.wait_for(|c| *c), if state == Closing::Open => {
                        // The drain: what is in flight finishes, within the drain timeout.
                        state = Closing::Draining;
                        graceful(conn.as_mut());
                    }
                    () = tokio::time::sleep_until(deadline), if state != Closing::Draining => {
                        if state == Closing::Idle {
                            // A peer that does not complete the goodbye (an h2 client that
                            // never answers the closing PING) is dropped.
                            tracing::debug!(%peer, "an idle connection did not close; dropping it");
                            return;
                        }
                        deadline = activity.idle_deadline(idle);
                        if deadline <= Instant::now() {
                            tracing::debug!(%peer, "closing an idle connection");
                            state = Closing::Idle;
                            graceful(conn.as_mut());
                            deadline = Instant::now() + idle;
                        }
                    }
                }
            }
        });
    }

    /// As [`Connections::spawn`], for a TLS listener: the handshake runs in the connection's own
    /// task (a slow one holds no accept), within `handshake_timeout`, and then `serve` makes the
    /// connection. A connection closed while still in its handshake is dropped.
    pub(crate) fn spawn_tls<C, E>(
        &self,
        slot: Slot,
        stream: TcpStream,
        acceptor: TlsAcceptor,
        handshake_timeout: Duration,
        serve: impl FnOnce(TlsStream<TcpStream>) -> C + Send + 'static,
        graceful: fn(Pin<&mut C>),
    ) where
        C: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let peer = slot.peer;
        let handshake = async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => Ok(serve(tls)),
                Ok(Err(e)) => Err(format!("TLS handshake with {peer} failed: {e}").into()),
                Err(_) => Err(format!("TLS handshake with {peer} timed out").into()),
            }
        };
        let conn = TlsConnection {
            state: TlsState::Handshake(Box::pin(handshake)),
            graceful,
        };
        self.spawn(slot, conn, TlsConnection::close);
    }

    /// Serves HTTP/1.1 and h2 on an accepted connection with `builder` and `svc`, over TLS when
    /// the listener has it (the handshake bounded by `handshake_timeout`).
    pub(crate) fn serve_http<S, B>(
        &self,
        slot: Slot,
        stream: TcpStream,
        builder: &auto::Builder<TokioExecutor>,
        svc: S,
        tls: Option<&ServerTls>,
        handshake_timeout: Duration,
    ) where
        S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        match tls {
            Some(tls) => {
                let builder = builder.clone();
                let serve = move |stream| {
                    builder
                        .serve_connection(TokioIo::new(stream), svc)
                        .into_owned()
                };
                self.spawn_tls(
                    slot,
                    stream,
                    tls.acceptor(),
                    handshake_timeout,
                    serve,
                    auto::Connection::graceful_shutdown,
                );
            }
            None => {
                let conn = builder
                    .serve_connection(TokioIo::new(stream), svc)
                    .into_owned();
                self.spawn(slot, conn, auto::Connection::graceful_shutdown);
            }
        }
    }

    /// Closes every connection gracefully and waits until all are gone.
    pub(crate) async fn close_all(&self) {
        self.close_all_later();
        let _ = self.permits.acquire_many(self.max).await;
    }

    /// Closes every connection gracefully, without waiting.
    pub(crate) fn close_all_later(&self) {
        self.closing.send_replace(true);
    }
}

/// Where a connection is in its closing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Closing {
    Open,
    /// Closed gracefully for being idle; dropped if it is not gone one idle timeout later.
    Idle,
    /// Closed gracefully by the drain.
    Draining,
}

/// What a connection is doing: requests in flight, and when the last one ended.
pub(crate) struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `born` when the connection last became idle.
    idle_since: AtomicU64,
}

/// A request in flight on its connection, counted until dropped.
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let ms = self.0.born.elapsed().as_millis() as u64;
        self.0.idle_since.store(ms, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
        }
    }

    /// Counts a request in flight until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// When the connection will have been idle for `idle` (later than now while busy).
    fn idle_deadline(&self, idle: Duration) -> Instant {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Instant::now() + idle;
        }
        let since = self.born + Duration::from_millis(self.idle_since.load(Ordering::Acquire));
        since + idle
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A TLS connection: its handshake, then the connection served over it.
struct TlsConnection<C> {
    state: TlsState<C>,
    graceful: fn(Pin<&mut C>),
}

enum TlsState<C> {
    Handshake(Pin<Box<dyn Future<Output = Result<C, BoxError>> + Send>>),
    Serving(Pin<Box<C>>),
    Closed,
}

impl<C> TlsConnection<C> {
    fn close(mut self: Pin<&mut Self>) {
        let graceful = self.graceful;
        match &mut self.state {
            TlsState::Handshake(_) => self.state = TlsState::Closed,
            TlsState::Serving(conn) => graceful(conn.as_mut()),
            TlsState::Closed => {}
        }
    }
}

impl<C, E> Future for TlsConnection<C>
where
    C: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match &mut self.state {
                TlsState::Handshake(handshake) => match ready!(handshake.as_mut().poll(cx)) {
                    Ok(conn) => self.state = TlsState::Serving(Box::pin(conn)),
                    Err(e) => {
                        self.state = TlsState::Closed;
                        return Poll::Ready(Err(e));
                    }
                },
                TlsState::Serving(conn) => return conn.as_mut().poll(cx).map_err(Into::into),
                TlsState::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}
