//! Shared mode: the state that replicas of one fleet share through Redis. This module holds what
//! every shared part needs (key names, a deadline on each command, error counting, health);
//! `conn` knows where Redis is (one server, a Cluster, or Sentinel); each part lives in its own
//! file beside the memory version it stands in for:
//! - `records`: idempotency and de-dup records ([`crate::protect::records::RecordStore`]);
//! - `limiter`: the GCRA create limit ([`crate::protect::gcra::RateLimiter`]);
//! - `tally`: the spending guard's counters ([`crate::protect::budget::tally::Tally`]);
//! - `cache`: the two-level cache store ([`crate::store::CacheStore`]);
//! - `token`: the account's upstream token, one for the fleet;
//! - `codec`: how answers, entries and records are written into Redis values.
//!
//! Redis may lose its data (a restart without persistence, a failover that lost writes, FLUSHALL)
//! and answer as if nothing happened. A marker key, with a random value written once, tells: it is
//! read before the first create after every (re)connect and every second; when it is gone, or
//! another replica wrote a new one, the data is gone, and for a grace window (the longest a
//! create's outcome can stay open) creates that find no record are refused, since they may be
//! retries of creates whose records were lost. The script that begins a record reads the marker
//! in the same round trip, so a create that follows a loss by less than a second is refused too.
//! `eviction` reads Redis's eviction policy with each check: one that could drop records by itself
//! refuses creates as well.
//!
//! Every command runs under `[redis] timeout`, so a dead Redis costs a request that long at most.
//! The connection reconnects by itself; until it does, each part falls back as docs/shared-mode.md
//! says (cache and token: the replica's own; creates: refused unless opted out).

pub(crate) mod cache;
pub(crate) mod codec;
pub(crate) mod conn;
pub(crate) mod eviction;
pub(crate) mod limiter;
pub mod records;
pub(crate) mod tally;
pub(crate) mod token;

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use conn::{Conn, Connector};

// Re-exported where it was first public: the shared clock now lives in its own leaf.
pub use crate::clock::now_ms;
use crate::config::RedisConfig;
// Re-exported where it was first public: store errors now live in their own leaf.
use crate::metrics::Metrics;
pub use crate::store::error::StoreError;

/// The fleet's Redis: one multiplexed connection per replica (re-established by itself), and the
/// health it last showed.
pub struct Fleet {
    connector: Connector,
    prefix: String,
    timeout: Duration,
    pub(crate) lock_ttl: Duration,
    creates_when_down: crate::config::CreatesWhenDown,
    pub(crate) required_for_readiness: bool,
    metrics: Arc<Metrics>,
    /// The last failure, until a command succeeds again (for `/readyz`).
    last_error: Mutex<Option<StoreError>>,
    /// After a failure, commands fail at once until then instead of each waiting out the timeout.
    resting_until: Mutex<Option<tokio::time::Instant>>,
    /// The fleet marker as this replica last saw it, and the last loss of data it noticed.
    marker: Mutex<Marker>,
    /// False after a failure (the next connection may reach a Redis that lost its data): the
    /// marker is checked before the next create.
    marker_checked: AtomicBool,
    /// How long creates without a record are refused after a loss (milliseconds).
    reset_grace_ms: AtomicU64,
    /// One check at a time: an answer read before a loss is never compared after a later one.
    checking: tokio::sync::Mutex<()>,
    /// The marker's script, hashed once rather than at every check.
    marker_script: redis::Script,
    /// Redis's `maxmemory-policy`, read with every marker check.
    pub(crate) eviction: eviction::Eviction,
    /// Where a loss of Redis's data is told (`redis.reset` webhooks), and this replica's name.
    notify: std::sync::OnceLock<(crate::webhooks::Notifier, Arc<str>)>,
}

#[derive(Default)]
struct Marker {
    seen: Option<String>,
    /// When the loss was noticed (epoch ms) and until when creates without a record are refused.
    lost: Option<(u64, tokio::time::Instant)>,
}

/// How often the marker is read besides after a reconnect (a FLUSHALL breaks no connection).
const MARKER_CHECK: Duration = Duration::from_secs(1);

/// The marker's lifetime from the last check: it outlives any record, yet a fleet that is gone
/// leaves nothing behind for ever.
const MARKER_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Returns the marker and 1 (renewing its lifetime), or writes `ARGV[1]` and returns it and 0.
const MARKER: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {v, 1}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {ARGV[1], 0}
";

/// How long commands rest after a failure before Redis is tried again.
const REST: Duration = Duration::from_millis(250);

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Prepares the connection without waiting for Redis: a replica starts (and serves from its own
    /// state) while Redis is down, and connects when it comes up.
    pub fn new(cfg: &RedisConfig, metrics: Arc<Metrics>) -> Result<Arc<Fleet>, String> {
        let ca = match &cfg.tls_ca_file {
            Some(path) => Some(
                crate::files::read_limited(path, crate::files::SMALL_FILE_MAX).map_err(|e| {
                    format!("redis.tls_ca_file: cannot read {}: {e}", path.display())
                })?,
            ),
            None => None,
        };
        let connector =
            Connector::new(&cfg.url, cfg.timeout, ca).map_err(|e| format!("redis.url: {e}"))?;
        Ok(Arc::new(Fleet {
            connector,
            prefix: cfg.prefix.clone(),
            timeout: cfg.timeout,
            lock_ttl: cfg.lock_ttl,
            creates_when_down: cfg.creates_when_down,
            required_for_readiness: cfg.required_for_readiness,
            last_error: Mutex::new(None),
            resting_until: Mutex::new(None),
            marker: Mutex::new(Marker::default()),
            marker_checked: AtomicBool::new(false),
            reset_grace_ms: AtomicU64::new(0),
            checking: tokio::sync::Mutex::new(()),
            marker_script: redis::Script::new(MARKER),
            eviction: eviction::Eviction::new(
                cfg.allow_eviction_policy,
                metrics.redis_eviction_unsafe.clone(),
            ),
            notify: std::sync::OnceLock::new(),
            metrics,
        }))
    }

    /// A key of one account: `{prefix}{account}:` then the parts. The braces are a Redis Cluster
    /// hash tag: every key of one account lives in one slot, so that a script may touch several.
    pub(crate) fn account_key(&self, account: &str, parts: &[&str]) -> String {
        let mut k = format!("{}{{{account}}}", self.prefix);
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    /// A key of the fleet: the prefix, then the parts joined by `:`.
    pub(crate) fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                k.push(':');
            }
            k.push_str(p);
        }
        k
    }

    /// A connection for pub/sub.
    pub(crate) async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        self.connector.pubsub().await
    }

    /// Changes when the primary moved (Sentinel): a subscription then subscribes again.
    pub(crate) fn primary_moved(&self) -> tokio::sync::watch::Receiver<u64> {
        self.connector.moved()
    }

    /// Follows the primary (Sentinel) and checks the fleet marker every second, until `shutdown`.
    pub(crate) async fn watch_primary(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let marker = async {
            loop {
                // A failure is counted and logged by `run`; the next round tries again.
                let _ = self.check_marker().await;
                tokio::time::sleep(MARKER_CHECK).await;
            }
        };
        tokio::select! {
            () = shutdown => {}
            _ = async { tokio::join!(self.connector.watch_primary(), marker) } => {}
        }
    }

    /// Sets how long creates without a record are refused after Redis lost its data: the
    /// longest a create's outcome can stay open (execution limit + lease).
    pub(crate) fn set_reset_grace(&self, grace: Duration) {
        self.reset_grace_ms
            .store(grace.as_millis() as u64, Ordering::Relaxed);
    }

    /// Tells `notify` when this replica (`replica`) finds Redis without its data.
    pub(crate) fn notify_resets(&self, notify: crate::webhooks::Notifier, replica: Arc<str>) {
        let _ = self.notify.set((notify, replica));
    }

    /// [`Fleet::check_marker`] when it was not checked since the last failure.
    pub(crate) async fn check_marker_if_due(&self) -> Result<(), StoreError> {
        if self.marker_checked.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.check_marker().await
    }

    /// The fleet marker's key.
    pub(crate) fn marker_key(&self) -> String {
        self.key(&["fleet-marker"])
    }

    /// The fleet marker as this replica last read it; empty before the first read.
    pub(crate) fn marker_seen(&self) -> String {
        let m = self.marker.lock().expect("fleet marker");
        m.seen.clone().unwrap_or_default()
    }

    /// A Redis Cluster: the marker and a record live in different slots, so no one script reads
    /// both.
    pub(crate) fn is_cluster(&self) -> bool {
        self.connector.is_cluster()
    }

    /// Reads the fleet marker (writing one when there is none), and Redis's eviction policy. The
    /// marker gone, or replaced by another replica, though this replica saw one: Redis lost its
    /// data.
    pub(crate) async fn check_marker(&self) -> Result<(), StoreError> {
        let _one = self.checking.lock().await;
        let key = self.marker_key();
        let fresh = fence();
        let mut inv = self.marker_script.key(&key);
        inv.arg(&fresh).arg(px(MARKER_TTL));
        let ((value, found), info): ((String, i64), _) = self
            .run("marker", |mut c| async move {
                let marker = inv.invoke_async(&mut c).await?;
                // A Redis that refuses INFO (renamed, not allowed to this user) is no failure of
                // Redis: the policy is then unknown, which refuses creates like an evicting one.
                let info = match redis::cmd("INFO")
                    .arg("memory")
                    .query_async::<redis::Value>(&mut c)
                    .await
                {
                    Ok(info) => info,
                    Err(e)
                        if matches!(
                            e.kind(),
                            redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
                        ) =>
                    {
                        redis::Value::Nil
                    }
                    Err(e) => return Err(e),
                };
                Ok((marker, info))
            })
            .await?;
        self.eviction.saw(&eviction::policy_of(&info));
        let lost = {
            let mut m = self.marker.lock().expect("fleet marker");
            let lost = m.seen.as_ref().is_some_and(|s| *s != value);
            if m.seen.is_none() && found == 0 {
                tracing::info!(
                    "wrote the fleet marker (a new fleet, or a Redis this replica never saw)"
                );
            }
            m.seen = Some(value);
            if lost {
                let grace = Duration::from_millis(self.reset_grace_ms.load(Ordering::Relaxed));
                m.lost = Some((now_ms(), tokio::time::Instant::now() + grace));
                tracing::error!(
                    refusing_for = %humantime::format_duration(grace),
                    "Redis lost its data (the fleet marker is gone): idempotency and de-dup records \
                     are lost, so creates that find no record are refused for a while; exact \
                     replay across a loss of Redis needs Redis persistence (appendonly)"
                );
            }
            lost
        };
        if lost {
            self.metrics.redis_resets.inc();
            if let Some((notify, replica)) = self.notify.get() {
                notify.send(crate::webhooks::Event::redis_reset(replica));
            }
        }
        self.marker_checked.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// While creates that find no record are refused after a loss of data: how long still.
    pub(crate) fn refusing_new_creates(&self) -> Option<Duration> {
        let m = self.marker.lock().expect("fleet marker");
        let (_, until) = m.lost?;
        until
            .checked_duration_since(tokio::time::Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// For `/readyz`: the last loss of data this replica noticed, and what it still refuses.
    pub(crate) fn reset_note(&self) -> Option<String> {
        let at_ms = self.marker.lock().expect("fleet marker").lost?.0;
        let ago = Duration::from_secs(now_ms().saturating_sub(at_ms) / 1000);
        let mut note = format!(
            "Redis lost its data {} ago (fleet marker gone); records of creates before then are lost",
            humantime::format_duration(ago)
        );
        if let Some(left) = self.refusing_new_creates() {
            note.push_str(&format!(
                "; creates that find no record are refused (503, code 1005) for {}s more",
                left.as_secs_f64().ceil() as u64
            ));
        }
        Some(note)
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs one Redis operation under the command timeout; a failure is counted under `op` (one
    /// of [`crate::metrics::REDIS_OPS`]). With traces on and Redis spans asked for, the operation
    /// is a span of its own ([`crate::telemetry::span::redis`]).
    pub(crate) async fn run<T, F, Fut>(&self, op: &'static str, command: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let span = crate::telemetry::span::redis(op);
        let outcome = self.run_untraced(op, command).await;
        if let (Some(span), Err(e)) = (&span, &outcome) {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", e.kind());
        }
        outcome
    }

    async fn run_untraced<T, F, Fut>(&self, op: &'static str, command: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let resting = *self.resting_until.lock().expect("fleet health");
        if let Some(until) = resting
            && tokio::time::Instant::now() < until
        {
            let e = match self.last_failure() {
                Some(e) => StoreError::Resting(Box::new(e)),
                None => StoreError::Subscription("resting"),
            };
            self.metrics.redis_errors.with_label_values(&[op]).inc();
            return Err(e);
        }
        let fut = async {
            let c = self.connector.conn().await?;
            command(c).await
        };
        let outcome = match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Redis(e.to_string())),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        match &outcome {
            Ok(_) => {
                let mut last = self.last_error.lock().expect("fleet health");
                if last.is_some() {
                    tracing::info!("redis answers again");
                    *last = None;
                    *self.resting_until.lock().expect("fleet health") = None;
                }
            }
            Err(e) => {
                self.connector.failed();
                self.failed(op, e);
            }
        }
        outcome
    }

    /// Counts a failure of the subscription, which runs on its own connection: it says nothing
    /// about the commands' connection, so it does not make commands rest.
    pub(crate) fn subscription_failed(&self, e: &StoreError) {
        self.metrics
            .redis_errors
            .with_label_values(&["subscribe"])
            .inc();
        tracing::debug!(error = %e.detail(), "cannot subscribe to the fleet's cache invalidations");
    }

    /// Counts and remembers a failed command; commands rest for a moment.
    fn failed(&self, op: &'static str, e: &StoreError) {
        self.metrics.redis_errors.with_label_values(&[op]).inc();
        self.marker_checked.store(false, Ordering::SeqCst);
        let mut last = self.last_error.lock().expect("fleet health");
        if last.is_none() {
            tracing::warn!(op, error = %e.detail(), "redis failed; falling back where configured");
        }
        *last = Some(e.clone());
        *self.resting_until.lock().expect("fleet health") =
            Some(tokio::time::Instant::now() + REST);
    }

    /// What creates do while Redis is down, in words.
    pub(crate) fn creates_when_down(&self) -> &'static str {
        match self.creates_when_down {
            crate::config::CreatesWhenDown::Refuse => "refused (503)",
            crate::config::CreatesWhenDown::Local => "protected by this replica alone",
        }
    }

    /// The failure Redis is in, if it is in one.
    fn last_failure(&self) -> Option<StoreError> {
        self.last_error.lock().expect("fleet health").clone()
    }

    /// `Ok` when Redis answers a PING now.
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.run("ping", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(|_| ())
    }
}

/// A random value naming one lock holder, so that a holder only ever frees its own lock.
pub(crate) fn fence() -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    format!("{n:032x}")
}

/// Frees a lock only if `ARGV[1]` still holds it (a holder past its lock's lifetime frees nothing).
pub(crate) const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Whole milliseconds for `PX`, at least 1.
pub(crate) fn px(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use crate::metrics::REDIS_OPS;

    /// Every operation this module names when it calls Redis is one of [`REDIS_OPS`], so its
    /// error counter is exported at 0 from the start.
    #[test]
    fn every_operation_called_is_one_of_the_exported_ops() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/fleet");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            // The code, without the tests (this one names the calls it looks for).
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for call in [".run(", ".set_nx("] {
                for rest in code.split(call).skip(1) {
                    if let Some(literal) = rest.trim_start().strip_prefix('"') {
                        let op = literal.split('"').next().unwrap_or_default();
                        assert!(REDIS_OPS.contains(&op), "{op:?} is not in REDIS_OPS");
                        seen += 1;
                    }
                }
            }
        }
        assert!(seen > 10, "only {seen} operations found");
    }
}
