//! Listeners and connections: the data plane (HTTP/1.1 and h2c on one port) and the admin
//! listener, the token refreshers, and the graceful drain on shutdown: stop accepting, let what is
//! in flight finish (up to `drain_timeout`), then return.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::cache::Cache;
use crate::config::CreatesWhenDown;
use crate::config::Settings;
use crate::counters::ClientRegistry;
use crate::fleet::Fleet;
use crate::fleet::cache::TwoLevel;
use crate::fleet::limiter::RedisLimiter;
use crate::fleet::records::RedisRecords;
use crate::fleet::tally::RedisTally;
use crate::fleet::token::TokenStore;
use crate::layers::budget::BudgetGuardLayer;
use crate::layers::collapse::CollapseLayer;
use crate::layers::dedup::DedupLayer;
use crate::layers::ledger::{Books, LedgerLayer, LedgerPriors};
use crate::layers::rate_limit::RateLimitLayer;
use crate::metrics::Metrics;
use crate::protect::budget::Budget;
use crate::protect::budget::tally::{MemoryTally, Tally};
use crate::protect::gcra::{MemoryLimiter, RateLimiter};
use crate::protect::records::{MemoryRecords, RecordStore};
use crate::reload::{self, Reloader, Source};
use crate::serve::{self, Plane};
use crate::stack::Protection;
use crate::stack::{self, Edge};
pub use crate::startup_error::StartError;
use crate::store::CacheStore;
use crate::store::memory::MemoryStore;
use crate::swap::Swap;
// Re-exported where it was first public: the listeners' TLS lives with the rest of TLS.
pub use crate::tls::ListenerTls;
use crate::tls::ServerTls;
use crate::upstream::{AccountHandle, TokenBroker, UpstreamClient};
use crate::webhooks::Notifier;

/// Everything a running gateway holds, built from validated settings.
pub(crate) struct Gateway {
    pub(crate) settings: Settings,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) accounts: Vec<Arc<AccountHandle>>,
    pub(crate) cache: Arc<Cache>,
    /// The idempotency and de-duplication records, for their gauges.
    pub(crate) records: Arc<dyn RecordStore>,
    /// Creates that run to their end whoever waits: the drain waits for them.
    pub(crate) work: TaskTracker,
    /// The purchase ledger and how this replica writes to it.
    pub(crate) books: Arc<Books>,
    /// Shared mode: the fleet's Redis, and the cache store that listens for invalidations.
    pub(crate) fleet: Option<Arc<Fleet>>,
    two_level: Option<Arc<TwoLevel>>,
    edge: Arc<Edge<Incoming>>,
    /// The settings that change at run time, and how to read them again.
    reloader: Arc<Reloader>,
}

/// Where the state of the data plane lives.
struct Stores {
    store: Arc<dyn CacheStore>,
    records: Arc<dyn RecordStore>,
    tally: Arc<dyn Tally>,
    limiter: Arc<dyn RateLimiter>,
}

/// This replica's name in the ledger: its host name (a pod's name) and data-plane port.
fn replica_name(port: u16) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into());
    format!("{host}:{port}")
}

/// The longest a create's execution may run: the rate-limit wait, then a token fetch, the upstream
/// call, and after a rejected token one more of each. Past it the outcome counts as unknown.
fn execution_limit(settings: &Settings) -> Duration {
    let max_wait = settings
        .create
        .routes
        .values()
        .map(|p| p.max_wait)
        .max()
        .unwrap_or_default();
    max_wait + settings.upstream.timeout * 4
}

impl Gateway {
    /// `port`: the data plane's, which names this replica in the ledger.
    pub(crate) async fn new(settings: Settings, port: u16) -> Result<Gateway, StartError> {
        let blockers = settings.serve_blockers();
        if !blockers.is_empty() {
            return Err(StartError::Refused(blockers));
        }
        let metrics = Arc::new(Metrics::new());
        metrics.export_known(&settings);
        let fleet = match &settings.redis {
            Some(cfg) => Some(Fleet::new(cfg, metrics.clone()).map_err(StartError::Redis)?),
            None => None,
        };
        if let Some(f) = &fleet {
            // After a loss of Redis's data, the longest a create's outcome can stay open.
            f.set_reset_grace(execution_limit(&settings) + settings.create.lease);
        }
        let fall_back = settings
            .redis
            .as_ref()
            .is_some_and(|r| r.creates_when_down == CreatesWhenDown::Local);
        let token_store = fleet.clone().map(|f| Arc::new(TokenStore::new(f)));
        let default_egress = settings
            .accounts
            .iter()
            .find(|a| a.name == crate::config::DEFAULT_ACCOUNT)
            .map(|a| a.egress.clone())
            .unwrap_or_default();
        let client = UpstreamClient::new(
            &settings.upstream,
            &default_egress,
            &settings.accounts,
            metrics.clone(),
        )
        .map_err(StartError::Upstream)?;
        let mut accounts = Vec::new();
        for a in &settings.accounts {
            let broker = TokenBroker::new(
                &a.name,
                a.base_url.trim_end_matches('/'),
                &a.credentials,
                client.clone(),
                settings.token.clone(),
                metrics.clone(),
            )
            .ok_or_else(|| StartError::NoCredentials(a.name.clone()))?;
            let broker = match &token_store {
                Some(store) => broker.with_shared(store.clone()),
                None => broker,
            };
            accounts.push(Arc::new(AccountHandle {
                name: a.name.as_str().into(),
                base_url: a.base_url.trim_end_matches('/').to_string(),
                broker: Arc::new(broker),
            }));
        }
        let client_counts = Arc::new(ClientRegistry::default());
        let auth = Arc::new(Swap::new(
            reload::authenticator(&settings, &accounts, &client_counts)
                .map_err(StartError::Clients)?,
        ));
        // Where state lives: this replica's memory, or the fleet's Redis.
        let two_level = fleet.clone().map(|f| {
            let names = accounts.iter().map(|a| a.name.clone()).collect();
            Arc::new(TwoLevel::new(
                f,
                names,
                settings.routes.clone(),
                settings.cache.max_bytes,
                metrics.clone(),
            ))
        });
        let Stores {
            store,
            records,
            tally,
            limiter,
        } = match (&fleet, &two_level) {
            (Some(f), Some(two)) => Stores {
                store: two.clone(),
                records: Arc::new(RedisRecords::new(f.clone(), fall_back)),
                tally: Arc::new(RedisTally::new(f.clone(), fall_back)),
                limiter: Arc::new(RedisLimiter::new(f.clone(), fall_back)),
            },
            _ => Stores {
                store: Arc::new(MemoryStore::new(settings.cache.max_bytes)),
                records: Arc::new(MemoryRecords::new(settings.create.records_max_bytes)),
                tally: Arc::new(MemoryTally::default()),
                limiter: Arc::new(MemoryLimiter::new()),
            },
        };
        let cache = Arc::new(Cache::new(&settings.cache, store, metrics.clone()));
        let work = TaskTracker::new();
        let create = Arc::new(Swap::new(settings.create.clone()));
        let budget = Arc::new(Budget::new(settings.create.budget.clone(), tally));
        let notify = Notifier::new(settings.webhooks.clone(), metrics.clone(), work.clone());
        // Opened once everything else checked, so a gateway refused at start leaves no file.
        let purchases = crate::ledger::open(&settings.ledger)
            .await
            .map_err(|e| StartError::Ledger(e.to_string()))?;
        if settings.redis.is_some() && !settings.ledger.is_shared() {
            tracing::warn!(
                path = %settings.ledger.path.display(),
                "shared mode with a local purchase ledger: it holds only this replica's purchases; \
                 set [ledger] url to the fleet's PostgreSQL"
            );
        }
        let books = Arc::new(Books {
            ledger: purchases,
            on_failure: settings.ledger.on_failure,
            replica: replica_name(port).into(),
            metrics: metrics.clone(),
            work: work.clone(),
            timeout: settings.ledger.timeout,
            max_open: execution_limit(&settings) + settings.create.lease,
            record_amount: settings.ledger.record_amount,
            started_ms: crate::clock::now_ms(),
            shared: settings.redis.is_some(),
            notify: notify.clone(),
        });
        notify.attach(&books.ledger);
        if let Some(f) = &fleet {
            f.notify_resets(notify.clone(), books.replica.clone());
        }
        let protection = Protection {
            ledger: LedgerLayer::new(books.clone()),
            dedup: DedupLayer::new(
                records.clone(),
                execution_limit(&settings),
                create.clone(),
                metrics.clone(),
                work.clone(),
            )
            .with_priors(Arc::new(LedgerPriors(books.clone()))),
            collapse: CollapseLayer::new(metrics.clone(), work.clone()),
            budget: BudgetGuardLayer::new(budget.clone(), metrics.clone())
                .with_notify(notify.clone()),
            rate_limit: RateLimitLayer::new(limiter, create.clone(), metrics.clone()),
        };
        let edge = Arc::new(stack::build(
            &settings,
            metrics.clone(),
            auth.clone(),
            cache.clone(),
            protection,
            client,
        ));
        let reloader = Arc::new(Reloader {
            source: std::sync::OnceLock::new(),
            current: Mutex::new(settings.clone()),
            accounts: accounts.clone(),
            auth,
            client_counts,
            cache: cache.clone(),
            create,
            budget,
            admin_key: Arc::new(Swap::new(settings.admin_key_sha256)),
            metrics: metrics.clone(),
            tls: std::sync::OnceLock::new(),
            reading: std::sync::atomic::AtomicBool::new(false),
        });
        Ok(Gateway {
            settings,
            metrics,
            accounts,
            cache,
            records,
            work,
            books,
            fleet,
            two_level,
            edge,
            reloader,
        })
    }
}

/// A gateway with its listeners bound (port 0 allowed), ready to run.
pub struct Server {
    gateway: Gateway,
    listener: TcpListener,
    admin_listener: TcpListener,
    tls: ListenerTls,
}

fn load_tls(files: &Option<crate::tls::TlsFiles>) -> Result<Option<Arc<ServerTls>>, StartError> {
    files
        .clone()
        .map(ServerTls::load)
        .transpose()
        .map_err(StartError::Tls)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

impl Server {
    pub async fn bind(settings: Settings) -> Result<Server, StartError> {
        let blockers = settings.serve_blockers();
        if !blockers.is_empty() {
            return Err(StartError::Refused(blockers));
        }
        crate::fd_limit::raise(&settings);
        let listener = bind(settings.server.listen).await?;
        let admin_listener = bind(settings.server.admin_listen).await?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        let gateway = Gateway::new(settings, port).await?;
        let tls = ListenerTls {
            listen: load_tls(&gateway.settings.listen_tls)?,
            admin: load_tls(&gateway.settings.admin_tls)?,
        };
        Ok(Server {
            gateway,
            listener,
            admin_listener,
            tls,
        })
    }

    /// Lets `SIGHUP` and `POST /admin/reload` read the settings again from `source`.
    #[must_use]
    pub fn with_reload(self, source: Source) -> Server {
        let _ = self.gateway.reloader.source.set(source);
        let _ = self.gateway.reloader.tls.set(self.tls.clone());
        self
    }

    /// The listeners' TLS, to reload certificates while running.
    pub fn tls(&self) -> ListenerTls {
        self.tls.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then drains and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let Server {
            gateway,
            listener,
            admin_listener,
            tls,
        } = self;
        // Cancelled once the drain is over: the background tasks and the admin listener stop.
        let stop = CancellationToken::new();
        let stopped = || stop.clone().cancelled_owned();
        for a in &gateway.accounts {
            tokio::spawn(a.broker.clone().run_refresher(stopped()));
        }
        if let Some(two) = &gateway.two_level {
            tokio::spawn(two.subscriber(stopped()));
        }
        if let Some(fleet) = &gateway.fleet {
            tokio::spawn(fleet.clone().watch_primary(stopped()));
        }
        tokio::spawn(crate::layers::ledger::sweep(
            gateway.books.clone(),
            gateway.settings.ledger.retention,
            stopped(),
        ));
        // Webhook deliveries: until the drain is over; a row cut off mid-attempt is let go.
        let webhooks = tokio::spawn(crate::webhooks::deliver::run(
            gateway.books.notify.clone(),
            stop.clone(),
        ));
        tokio::spawn(crate::webhooks::watch::tokens(
            gateway.books.notify.clone(),
            gateway.accounts.clone(),
            stop.clone(),
        ));
        // The console's cache hit ratio: a snapshot of the lookup counts every few seconds.
        let console = crate::console::Console::new(&gateway.metrics, gateway.books.replica.clone());
        tokio::spawn(crate::console::sample(
            console.lookups.clone(),
            gateway.metrics.clone(),
            stopped(),
        ));
        let draining = Arc::new(AtomicBool::new(false));
        let admin_state = Arc::new(AdminState {
            metrics: gateway.metrics.clone(),
            accounts: gateway.accounts.clone(),
            cache: gateway.cache.clone(),
            records: gateway.records.clone(),
            admin_key_sha256: gateway.reloader.admin_key.clone(),
            reloader: gateway.reloader.clone(),
            draining: draining.clone(),
            fleet: gateway.fleet.clone(),
            two_level: gateway.two_level.clone(),
            routes: gateway.settings.routes.clone(),
            ledger: gateway.books.ledger.clone(),
            console,
        });
        let server_cfg = gateway.settings.server.clone();
        let admin_task = tokio::spawn(admin::serve(
            admin_listener,
            admin_state,
            server_cfg.clone(),
            tls.admin.clone(),
            stopped(),
        ));

        // Registered before the listening line, so a SIGHUP sent once it is out never kills.
        #[cfg(unix)]
        if gateway.reloader.source.get().is_some() {
            let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            tokio::spawn(reload_on_hangup(
                hangup,
                gateway.reloader.clone(),
                stopped(),
            ));
        }
        tracing::info!(listen = %listener.local_addr()?, "gateway listening");

        let plane = Plane {
            name: "data",
            max_connections: server_cfg.max_connections,
            tls: tls.listen.as_deref(),
        };
        let edge = gateway.edge.clone();
        let answer = move |req| edge.serve(req);
        // Returns with the listener closed.
        let connections = serve::serve(
            listener,
            plane,
            &server_cfg,
            &gateway.metrics,
            answer,
            shutdown,
        )
        .await;

        draining.store(true, Ordering::SeqCst);
        tracing::info!("draining in-flight requests");
        let drained = async {
            connections.close_all().await;
            // Creates whose clients went away still finish (their answers are kept for the retry).
            gateway.work.close();
            gateway.work.wait().await;
        };
        if tokio::time::timeout(server_cfg.drain_timeout, drained)
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?server_cfg.drain_timeout, "drain timed out; exiting with requests in flight");
        }
        stop.cancel();
        let _ = admin_task.await;
        let _ = webhooks.await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Reloads the settings at each `SIGHUP` until `shutdown`.
#[cfg(unix)]
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    reloader: Arc<Reloader>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            got = hangup.recv() => {
                if got.is_none() {
                    return;
                }
                // The outcome is logged and counted by the reload itself.
                let _ = reloader.reload("SIGHUP").await;
            }
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
