//! Accepted connections, for the data plane and the admin listener alike: one way of keeping
//! connections ([`Connections`]), which [`crate::serve::serve`] runs for both, so that the two
//! cannot drift apart.
//!
//! - At most `max` open at once. At the cap, a new connection takes the place of the open one
//!   that has been idle longest with no request in flight (as nginx reuses idle keep-alive
//!   connections when it runs out), so idle or silent sockets cannot shut anyone out; only when
//!   every connection has a request in flight do new ones wait in the kernel's listen backlog.
//! - At most `max_connections_per_ip` from one source address (an IPv6 /64): past it a new
//!   connection takes the place of that address's own longest-idle connection (a client's pool
//!   that grew in a burst keeps working), and is closed at once when every one of that address's
//!   connections has a request in flight, so one host cannot take every place.
//! - A connection that has not completed its TLS handshake and its first request head within
//!   `handshake_timeout` is closed.
//! - A connection with no request in flight for `idle_timeout` is closed (HTTP/1 and h2 alike;
//!   one that does not go within another `idle_timeout` is dropped).
//! - On shutdown all are closed gracefully: what is in flight finishes, then
//!   [`Connections::close_all`] returns.
//!
//! Every close the gateway decides is counted in `finovy_gateway_connections_closed_total`.
//! Accept errors (out of file descriptors, most often) back off and are logged at most once per
//! [`ACCEPT_LOG_EVERY`].

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus::{IntCounter, IntGauge};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::tls::ServerTls;

/// How often the listener looks again while it waits for room at the cap: for the connection it
/// closed to be gone, or, when all are busy, for one to become idle.
const EVICT_WAIT: Duration = Duration::from_millis(100);
/// A connection closed at the cap that has not gone within this is dropped (an h2 peer that
/// does not answer the goodbye, an HTTP/1 head that does not finish).
const EVICT_GRACE: Duration = Duration::from_secs(1);

/// At most one log line per this long about failing accepts.
pub(crate) const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);
/// The pause after a failed accept doubles from the first to the last.
const ACCEPT_PAUSE_FIRST: Duration = Duration::from_millis(10);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// The open connections of one listener.
pub(crate) struct Connections {
    shared: Arc<Shared>,
    max: usize,
    per_source: usize,
    idle_timeout: Duration,
    handshake_timeout: Duration,
    closing: watch::Sender<bool>,
    closes: Closes,
    accept_errors: Mutex<AcceptErrors>,
}

/// What the connections' tasks and the listener share.
struct Shared {
    open: Mutex<Open>,
    /// How many are open, to wait on (always `open.conns.len()`).
    count: watch::Sender<usize>,
    gauge: IntGauge,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    conns: HashMap<u64, Arc<Activity>>,
    /// Open connections by source address (see [`source_of`]).
    per_source: HashMap<IpAddr, usize>,
}

/// One listener's counters of `finovy_gateway_connections_closed_total`, by reason.
#[derive(Clone)]
struct Closes {
    idle_at_cap: IntCounter,
    handshake_timeout: IntCounter,
    per_ip_cap: IntCounter,
    idle_timeout: IntCounter,
}

/// An accepted connection's place among the open ones, and what it is doing.
pub(crate) struct Slot {
    pub(crate) peer: SocketAddr,
    pub(crate) activity: Arc<Activity>,
    place: Place,
}

/// A connection's entry among the open ones; dropping it frees the place.
struct Place {
    id: u64,
    source: IpAddr,
    shared: Arc<Shared>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.shared.lock();
        open.conns.remove(&self.id);
        if let Entry::Occupied(mut n) = open.per_source.entry(self.source) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
        let n = open.conns.len();
        self.shared.count.send_replace(n);
        self.shared.gauge.set(n as i64);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The address a connection counts against for `max_connections_per_ip`: an IPv4 address as it
/// is, an IPv6 one by its /64 (a single host commonly holds a whole /64), an IPv4-mapped one as
/// its IPv4 address.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The connection that has been idle longest with no request in flight, not already closing;
/// only among those from `source` when it is given.
fn longest_idle(
    conns: &HashMap<u64, Arc<Activity>>,
    source: Option<IpAddr>,
) -> Option<(u64, &Arc<Activity>)> {
    conns
        .iter()
        .filter(|(_, a)| source.is_none_or(|s| a.source == s))
        .filter(|(_, a)| a.idle() && !a.evicted.load(Ordering::Acquire))
        // Ties (within a microsecond) go to the older connection.
        .min_by_key(|(id, a)| (a.born_us + a.idle_since_us(), **id))
        .map(|(id, a)| (*id, a))
}

impl Connections {
    /// The connections of `listener` (`data` or `admin`, as in the metrics): at most `max` open
    /// (at most 1,000,000: the config checks it), with `cfg`'s per-address cap and timeouts.
    pub(crate) fn new(
        listener: &str,
        max: usize,
        cfg: &ServerConfig,
        metrics: &Metrics,
    ) -> Connections {
        let closed = |reason: &str| {
            metrics
                .connections_closed
                .with_label_values(&[listener, reason])
        };
        Connections {
            shared: Arc::new(Shared {
                open: Mutex::new(Open::default()),
                count: watch::channel(0).0,
                gauge: metrics.connections_open.with_label_values(&[listener]),
            }),
            max,
            per_source: cfg.max_connections_per_ip,
            idle_timeout: cfg.idle_timeout,
            handshake_timeout: cfg.handshake_timeout,
            closing: watch::channel(false).0,
            closes: Closes {
                idle_at_cap: closed("idle_at_cap"),
                handshake_timeout: closed("handshake_timeout"),
                per_ip_cap: closed("per_ip_cap"),
                idle_timeout: closed("idle_timeout"),
            },
            accept_errors: Mutex::new(AcceptErrors::default()),
        }
    }

    /// The next connection, with its place among the open ones; `None` once `shutdown`
    /// resolves.
    pub(crate) async fn accept(
        &self,
        listener: &TcpListener,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Option<(TcpStream, Slot)> {
        loop {
            let accepted = tokio::select! {
                () = shutdown.as_mut() => return None,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => {
                    self.errors().succeeded();
                    a
                }
                Err(e) => {
                    let pause = self.errors().failed(&e);
                    tokio::select! {
                        () = shutdown.as_mut() => return None,
                        () = tokio::time::sleep(pause) => continue,
                    }
                }
            };
            let source = source_of(peer.ip());
            if !self.make_room_for(source) {
                self.closes.per_ip_cap.inc();
                tracing::debug!(%peer, "closing a connection over max_connections_per_ip");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let (place, activity) = tokio::select! {
                () = shutdown.as_mut() => return None,
                p = self.take_place(source) => p,
            };
            let slot = Slot {
                peer,
                activity,
                place,
            };
            return Some((stream, slot));
        }
    }

    /// Whether a new connection from `source` may stay: under its per-address cap, or at the cap
    /// with one of its own idle, which is then closed to make room (counted as `per_ip_cap`). The
    /// address may hold one more than its cap while that one says goodbye.
    fn make_room_for(&self, source: IpAddr) -> bool {
        let open = self.shared.lock();
        if open.per_source.get(&source).copied().unwrap_or(0) < self.per_source {
            return true;
        }
        let Some((_, victim)) = longest_idle(&open.conns, Some(source)) else {
            return false;
        };
        victim.evicted.store(true, Ordering::Release);
        victim.evict.notify_one();
        self.closes.per_ip_cap.inc();
        true
    }

    fn errors(&self) -> MutexGuard<'_, AcceptErrors> {
        self.accept_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a connection from `source`; at the cap, the longest-idle connection is
    /// closed to make it, and when every one is busy this waits until one is not.
    async fn take_place(&self, source: IpAddr) -> (Place, Arc<Activity>) {
        let mut count = self.shared.count.subscribe();
        // The connection closed to make room, while it is still going.
        let mut closing: Option<u64> = None;
        loop {
            {
                let mut open = self.shared.lock();
                if open.conns.len() < self.max {
                    let id = open.next_id;
                    open.next_id += 1;
                    let activity = Arc::new(Activity::new(source));
                    open.conns.insert(id, activity.clone());
                    *open.per_source.entry(source).or_default() += 1;
                    let n = open.conns.len();
                    self.shared.count.send_replace(n);
                    self.shared.gauge.set(n as i64);
                    let place = Place {
                        id,
                        source,
                        shared: self.shared.clone(),
                    };
                    return (place, activity);
                }
                // One at a time, unless the one closing got a request meanwhile (it finishes that
                // first), so that a slow goodbye does not cost more connections.
                let going = closing.is_some_and(|id| open.conns.get(&id).is_some_and(|a| a.idle()));
                if !going && let Some((id, victim)) = longest_idle(&open.conns, None) {
                    victim.evicted.store(true, Ordering::Release);
                    victim.evict.notify_one();
                    self.closes.idle_at_cap.inc();
                    closing = Some(id);
                }
            }
            let _ = tokio::time::timeout(EVICT_WAIT, count.wait_for(|n| *n < self.max)).await;
        }
    }

    /// Runs `conn` (a hyper connection on `slot`'s stream) in its own task until it ends, closing
    /// it with `graceful` when it has been idle too long, when the listener needs its place for
    /// a new connection, or when every connection is closed; dropping it when it has no request
    /// head within the handshake timeout.
    pub(crate) fn spawn<C, E>(&self, slot: Slot, conn: C, graceful: fn(Pin<&mut C>))
    where
        C: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let Slot {
            peer,
            activity,
            place,
        } = slot;
        let idle = self.idle_timeout;
        let handshake_deadline = activity.born + self.handshake_timeout;
        let closes = self.closes.clone();
        let mut closing = self.closing.subscribe();
        tokio::spawn(async move {
            let _place = place;
            tokio::pin!(conn);
            let mut deadline = activity.idle_deadline(idle);
            let mut state = Closing::Open;
            let mut handshaking = true;
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
                    () = activity.evict.notified(), if state != Closing::Draining => {
                        tracing::debug!(%peer, "closing the longest-idle connection for a new one");
                        // Gracefully, so that an answer still being written is not cut off (an
                        // idle HTTP/1 connection closes at once, h2 says GOAWAY); dropped if it
                        // has not gone within EVICT_GRACE.
                        if state == Closing::Open {
                            graceful(conn.as_mut());
                        }
                        state = Closing::Idle;
                        deadline = if activity.idle() {
                            deadline.min(Instant::now() + EVICT_GRACE)
                        } else {
                            // A request reached it after it was chosen: that one finishes, and
                            // the connection goes one idle timeout after, like any idle one.
                            activity.idle_deadline(idle)
                        };
                    }
                    () = tokio::time::sleep_until(handshake_deadline),
                        if handshaking && state == Closing::Open =>
                    {
                        handshaking = false;
                        if !activity.served.load(Ordering::Acquire) {
                            closes.handshake_timeout.inc();
                            tracing::debug!(%peer, "no request head within the handshake timeout; closing");
                            return;
                        }
                    }
                    () = tokio::time::sleep_until(deadline), if state != Closing::Draining => {
                        if state == Closing::Idle {
                            if !activity.idle() {
                                // Still answering a request (bounded by request_timeout).
                                deadline = activity.idle_deadline(idle);
                                continue;
                            }
                            // A peer that does not complete the goodbye (an h2 client that
                            // never answers the closing PING, a reader that stopped reading) is
                            // dropped.
                            tracing::debug!(%peer, "an idle connection did not close; dropping it");
                            return;
                        }
                        deadline = activity.idle_deadline(idle);
                        if deadline <= Instant::now() {
                            tracing::debug!(%peer, "closing an idle connection");
                            closes.idle_timeout.inc();
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
    /// task (a slow one holds no accept), within the handshake timeout, and then `serve` makes
    /// the connection. A connection closed while still in its handshake is dropped.
    pub(crate) fn spawn_tls<C, E>(
        &self,
        slot: Slot,
        stream: TcpStream,
        acceptor: TlsAcceptor,
        serve: impl FnOnce(TlsStream<TcpStream>) -> C + Send + 'static,
        graceful: fn(Pin<&mut C>),
    ) where
        C: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let peer = slot.peer;
        let handshake = async move {
            match acceptor.accept(stream).await {
                Ok(tls) => Ok(serve(tls)),
                Err(e) => Err(format!("TLS handshake with {peer} failed: {e}").into()),
            }
        };
        let conn = TlsConnection {
            state: TlsState::Handshake(Box::pin(handshake)),
            graceful,
        };
        self.spawn(slot, conn, TlsConnection::close);
    }

    /// Serves HTTP/1.1 and h2 on an accepted connection with `builder` and `svc`, over TLS when
    /// the listener has it.
    pub(crate) fn serve_http<S, B>(
        &self,
        slot: Slot,
        stream: TcpStream,
        builder: &auto::Builder<TokioExecutor>,
        svc: S,
        tls: Option<&ServerTls>,
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
        let _ = self.shared.count.subscribe().wait_for(|n| *n == 0).await;
    }

    /// Closes every connection gracefully, without waiting.
    pub(crate) fn close_all_later(&self) {
        self.closing.send_replace(true);
    }
}

/// Failed accepts in a row: most often the process is out of file descriptors (EMFILE, ENFILE),
/// which a retry at once would only meet again, hundreds of times a second.
#[derive(Default)]
struct AcceptErrors {
    pause: Duration,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    /// How long to pause after this failure; logs it unless a line went out lately.
    fn failed(&mut self, e: &std::io::Error) -> Duration {
        self.pause = (self.pause * 2).clamp(ACCEPT_PAUSE_FIRST, ACCEPT_PAUSE_MAX);
        if self
            .last_logged
            .is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY)
        {
            tracing::warn!(
                error = %e,
                failures_not_logged = self.unlogged,
                "accept failed; backing off (out of file descriptors? see the open-file limit and max_connections)"
            );
            self.last_logged = Some(Instant::now());
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        self.pause
    }

    fn succeeded(&mut self) {
        self.pause = Duration::ZERO;
    }
}

/// Where a connection is in its closing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Closing {
    Open,
    /// Closed gracefully for being idle (or at the cap); dropped if it is not gone one idle
    /// timeout (`EVICT_GRACE`) later.
    Idle,
    /// Closed gracefully by the drain.
    Draining,
}

/// What a connection is doing: requests in flight, and when the last one ended.
pub(crate) struct Activity {
    /// The address it counts against (see [`source_of`]).
    source: IpAddr,
    born: Instant,
    /// `born` in microseconds after the process's first connection, to compare connections.
    born_us: u64,
    in_flight: AtomicUsize,
    /// Microseconds after `born` when the connection last became idle.
    idle_since: AtomicU64,
    /// Whether a request head has arrived (the handshake timeout no longer applies).
    served: AtomicBool,
    /// Set when the listener takes this connection's place for a new one; `evict` wakes it.
    evicted: AtomicBool,
    evict: Notify,
}

/// A request in flight on its connection, counted until dropped.
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let us = self.0.born.elapsed().as_micros() as u64;
        self.0.idle_since.store(us, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new(source: IpAddr) -> Activity {
        static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let born = Instant::now();
        Activity {
            source,
            born,
            born_us: born
                .duration_since(*EPOCH.get_or_init(Instant::now))
                .as_micros() as u64,
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            served: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        }
    }

    /// Counts a request in flight until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        Busy(self.clone())
    }

    /// No request in flight.
    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    fn idle_since_us(&self) -> u64 {
        self.idle_since.load(Ordering::Acquire)
    }

    /// When the connection will have been idle for `idle` (later than now while busy).
    fn idle_deadline(&self, idle: Duration) -> Instant {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Instant::now() + idle;
        }
        let since = self.born + Duration::from_micros(self.idle_since.load(Ordering::Acquire));
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
