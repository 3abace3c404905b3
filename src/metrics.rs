//! The metric set of CONTRACT.md, registered once on a registry this struct owns (not the global
//! default, so parallel tests never share counters). Labels are bounded: route names, methods,
//! status codes and outcome words, never an id, a key or a raw path.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::Settings;

/// Every `op` label of `finovy_gateway_redis_errors_total`: the operations [`crate::fleet::Fleet::run`] is
/// given, and the invalidation subscription's.
pub(crate) const REDIS_OPS: &[&str] = &[
    "budget",
    "cache_get",
    "cache_invalidate",
    "cache_lock",
    "cache_put",
    "marker",
    "ping",
    "rate_limit",
    "record_begin",
    "record_get",
    "record_hold",
    "record_holds_other",
    "record_lock",
    "record_release",
    "record_remove",
    "record_renew",
    "record_set",
    "record_unlock",
    "subscribe",
    "token",
    "token_gate",
    "token_lock",
];

pub struct Metrics {
    registry: Registry,
    pub(crate) requests: IntCounterVec,
    pub(crate) request_duration: HistogramVec,
    pub(crate) upstream_requests: IntCounterVec,
    pub(crate) upstream_duration: HistogramVec,
    pub(crate) token_refreshes: IntCounterVec,
    pub(crate) token_expires_in: IntGauge,
    pub(crate) inflight: IntGauge,
    pub(crate) cache_lookups: IntCounterVec,
    pub(crate) cache_entries: IntGauge,
    pub(crate) cache_bytes: IntGauge,
    /// Idempotency and de-duplication records held in this process's memory, and their bytes.
    pub(crate) records: IntGauge,
    pub(crate) records_bytes: IntGauge,
    pub(crate) cache_invalidations: IntCounterVec,
    pub(crate) rate_limited: IntCounterVec,
    pub(crate) dedup: IntCounterVec,
    pub(crate) budget_refused: IntCounterVec,
    /// Soft thresholds (`[create.budget] warn_at`) reached, by scope and cap.
    pub(crate) budget_warnings: IntCounterVec,
    /// What each set cap has used in its window, and its limit, by scope, name and cap.
    budget_used: IntGaugeVec,
    budget_limit: IntGaugeVec,
    /// The label sets of the two above now exported, to drop those whose cap is no longer set.
    budget_series: std::sync::Mutex<std::collections::BTreeSet<[String; 3]>>,
    pub(crate) redis_errors: IntCounterVec,
    /// Times Redis was found without its data (the fleet marker gone).
    pub(crate) redis_resets: IntCounter,
    /// 1 while Redis's `maxmemory-policy` could evict records (anything but `noeviction`).
    pub(crate) redis_eviction_unsafe: IntGauge,
    pub(crate) invalidation_lag: Histogram,
    pub(crate) build_info: IntGaugeVec,
    /// Upstream tokens leased to clients (`/_gateway/token`), by client.
    pub(crate) token_leases: IntCounterVec,
    /// Reloads of the configuration, by result (`ok`, `error`).
    pub(crate) config_reloads: IntCounterVec,
    /// When the configuration last loaded or reloaded successfully (Unix seconds).
    pub(crate) config_last_reload_success: Gauge,
    /// Connections the gateway closed before their peer did, by listener and reason.
    pub(crate) connections_closed: IntCounterVec,
    /// Open connections, by listener.
    pub(crate) connections_open: IntGaugeVec,
    /// Purchase-ledger writes by result (`ok`, `error`), their time, and entries still open.
    pub(crate) ledger_writes: IntCounterVec,
    pub(crate) ledger_write_seconds: Histogram,
    pub(crate) ledger_open_entries: IntGauge,
    /// Webhook delivery attempts by result (`delivered`, `failed`, `dropped`), and the outbox's
    /// rows not yet delivered.
    pub(crate) webhook_deliveries: IntCounterVec,
    pub(crate) webhook_backlog: IntGauge,
}

/// The listeners, as named in the connection metrics.
pub(crate) const LISTENERS: [&str; 2] = ["data", "admin"];
/// Why the gateway closed a connection (`finovy_gateway_connections_closed_total`'s `reason`).
pub(crate) const CLOSE_REASONS: [&str; 4] = [
    "idle_at_cap",
    "handshake_timeout",
    "per_ip_cap",
    "idle_timeout",
];

/// Buckets from 1 ms to 30 s: a cache hit is sub-millisecond, a slow upstream several seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let histogram = |name: &str, help: &str| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
                &["route"],
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let m = Metrics {
            requests: counter(
                "finovy_gateway_requests_total",
                "Requests answered on the data plane.",
                &["route", "method", "status"],
            ),
            request_duration: histogram(
                "finovy_gateway_request_duration_seconds",
                "Time from request to answer on the data plane.",
            ),
            upstream_requests: counter(
                "finovy_gateway_upstream_requests_total",
                "Calls sent to the upstream, by outcome (ok, server_error, error, timeout, invalid, too_large).",
                &["route", "outcome"],
            ),
            upstream_duration: histogram(
                "finovy_gateway_upstream_request_duration_seconds",
                "Time of one upstream call.",
            ),
            token_refreshes: counter(
                "finovy_gateway_token_refreshes_total",
                "getToken calls, by outcome.",
                &["outcome"],
            ),
            token_expires_in: gauge(
                "finovy_gateway_token_expires_in_seconds",
                "Seconds until the soonest-expiring held upstream token expires (0 when none is held).",
            ),
            inflight: gauge(
                "finovy_gateway_inflight_requests",
                "Data-plane requests being handled.",
            ),
            cache_lookups: counter(
                "finovy_gateway_cache_lookups_total",
                "Requests of cached routes, by result (hit, stale, miss, coalesced, bypass).",
                &["route", "result"],
            ),
            cache_entries: gauge("finovy_gateway_cache_entries", "Entries held by the cache."),
            cache_bytes: gauge(
                "finovy_gateway_cache_bytes",
                "Bytes held by the cache (estimated).",
            ),
            records: gauge(
                "finovy_gateway_records",
                "Idempotency and de-duplication records held in memory (0 in shared mode, where \
                 Redis holds them).",
            ),
            records_bytes: gauge(
                "finovy_gateway_records_bytes",
                "Bytes held by the records in memory, as records_max_bytes counts them (estimated).",
            ),
            cache_invalidations: counter(
                "finovy_gateway_cache_invalidations_total",
                "Cache entries dropped, by route and reason (mutation, purge, no_cache, gone).",
                &["route", "reason"],
            ),
            rate_limited: counter(
                "finovy_gateway_rate_limited_total",
                "Creates refused by a rate limit (scope tenant, client, or upstream after max_wait).",
                &["route", "scope"],
            ),
            dedup: counter(
                "finovy_gateway_dedup_total",
                "Repeated requests answered without a new upstream call, by result \
                 (joined, replayed, conflict, mismatch, reconciled).",
                &["route", "result"],
            ),
            budget_refused: counter(
                "finovy_gateway_budget_refused_total",
                "Creates refused by the spending guard, by scope (account, client) and cap.",
                &["scope", "cap"],
            ),
            budget_warnings: counter(
                "finovy_gateway_budget_warnings_total",
                "Spending caps whose use reached [create.budget] warn_at of their limit, once per \
                 window and cap, by scope (account, client) and cap.",
                &["scope", "cap"],
            ),
            budget_used: gauge_vec(
                "finovy_gateway_budget_used",
                "What each set spending cap has used in its current window (creates, or GB), by \
                 scope (account, client), name (the account or client) and cap; fleet-wide in \
                 shared mode, read when scraped.",
                &["scope", "name", "cap"],
            ),
            budget_limit: gauge_vec(
                "finovy_gateway_budget_limit",
                "The limit of each set spending cap, by scope, name and cap.",
                &["scope", "name", "cap"],
            ),
            budget_series: std::sync::Mutex::default(),
            redis_errors: counter(
                "finovy_gateway_redis_errors_total",
                "Shared-state (Redis) operations that failed or timed out, by operation.",
                &["op"],
            ),
            redis_resets: {
                let c = IntCounter::new(
                    "finovy_gateway_redis_resets_total",
                    "Times this replica found Redis without its data (the fleet marker gone: a \
                     restart without persistence, a failover that lost writes, FLUSHALL).",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("registered once");
                c
            },
            redis_eviction_unsafe: gauge(
                "finovy_gateway_redis_eviction_unsafe",
                "1 while Redis's maxmemory-policy could evict idempotency records (anything but \
                 noeviction, or unreadable): creates are refused unless [redis] \
                 allow_eviction_policy = true.",
            ),
            invalidation_lag: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "finovy_gateway_invalidation_lag_seconds",
                        "Shared mode: from an invalidation on another replica to its arrival here \
                         (the replicas' clocks included).",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
                    ]),
                )
                .expect("valid metric");
                registry
                    .register(Box::new(h.clone()))
                    .expect("registered once");
                h
            },
            build_info: {
                let g = IntGaugeVec::new(
                    Opts::new("finovy_gateway_build_info", "Always 1."),
                    &["version"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("registered once");
                g
            },
            token_leases: counter(
                "finovy_gateway_token_leases_total",
                "Upstream tokens leased to clients at /_gateway/token (or after a rejection), by client.",
                &["client"],
            ),
            config_reloads: counter(
                "finovy_gateway_config_reloads_total",
                "Configuration reloads (SIGHUP, POST /admin/reload), by result (ok, error).",
                &["result"],
            ),
            config_last_reload_success: {
                let g = Gauge::new(
                    "finovy_gateway_config_last_reload_success_timestamp_seconds",
                    "When the configuration last loaded successfully, at start or by a reload \
                     (Unix time).",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("registered once");
                g
            },
            connections_closed: counter(
                "finovy_gateway_connections_closed_total",
                "Connections closed by the gateway, by listener (data, admin) and reason \
                 (idle_at_cap, handshake_timeout, per_ip_cap, idle_timeout).",
                &["listener", "reason"],
            ),
            connections_open: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "finovy_gateway_connections_open",
                        "Open connections, by listener (data, admin).",
                    ),
                    &["listener"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("registered once");
                g
            },
            ledger_writes: counter(
                "finovy_gateway_ledger_writes_total",
                "Purchase-ledger writes (an entry opened, settled, priced), by result (ok, error).",
                &["result"],
            ),
            ledger_write_seconds: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "finovy_gateway_ledger_write_seconds",
                        "Time of one purchase-ledger write.",
                    )
                    .buckets(BUCKETS.to_vec()),
                )
                .expect("valid metric");
                registry
                    .register(Box::new(h.clone()))
                    .expect("registered once");
                h
            },
            ledger_open_entries: gauge(
                "finovy_gateway_ledger_open_entries",
                "Purchase-ledger entries with no final outcome yet.",
            ),
            webhook_deliveries: counter(
                "finovy_gateway_webhook_deliveries_total",
                "Webhook delivery attempts, by result (delivered; failed: to be tried again; \
                 dropped: given up after failing for too long).",
                &["result"],
            ),
            webhook_backlog: gauge(
                "finovy_gateway_webhook_backlog",
                "Webhook events in the outbox not yet delivered (for the whole fleet).",
            ),
            registry,
        };
        // The trace exporter is one per process, and so is its drop counter: every gateway's
        // registry shows it.
        m.registry
            .register(Box::new(crate::telemetry::SPANS_DROPPED.clone()))
            .expect("registered once");
        for listener in LISTENERS {
            m.connections_open.with_label_values(&[listener]);
            for reason in CLOSE_REASONS {
                m.connections_closed.with_label_values(&[listener, reason]);
            }
        }
        // Both results exported from the start, so an alert on errors sees 0 before the first.
        for result in ["ok", "error"] {
            m.config_reloads.with_label_values(&[result]);
        }
        m.config_last_reload_success
            .set(crate::clock::now_secs_f64());
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    /// Exports at 0 every series of the counters whose label values the configuration defines
    /// (routes it caches or protects, caps it sets, clients it lets lease, Redis when it has one),
    /// so a dashboard or an alert on a fresh deployment reads 0 rather than no data. Called at
    /// start and after each reload; a series once exported stays, as counters do.
    pub(crate) fn export_known(&self, settings: &Settings) {
        for result in ["ok", "error"] {
            self.ledger_writes.with_label_values(&[result]);
        }
        // Always, like the backlog gauge: the alerts read them whether or not webhooks are set.
        for result in ["delivered", "failed", "dropped"] {
            self.webhook_deliveries.with_label_values(&[result]);
        }
        for route in settings.cache.routes.keys() {
            for result in ["hit", "stale", "miss", "coalesced", "bypass"] {
                self.cache_lookups
                    .with_label_values(&[route.as_str(), result]);
            }
            for reason in ["mutation", "purge", "no_cache", "gone"] {
                self.cache_invalidations
                    .with_label_values(&[route.as_str(), reason]);
            }
        }
        for route in settings.create.routes.keys() {
            for result in ["joined", "replayed", "conflict", "mismatch", "reconciled"] {
                self.dedup.with_label_values(&[route.as_str(), result]);
            }
            for scope in ["tenant", "client", "upstream"] {
                self.rate_limited
                    .with_label_values(&[route.as_str(), scope]);
            }
        }
        let budget = &settings.create.budget;
        let client_caps =
            std::iter::once(budget.client).chain(budget.clients.values().map(|c| c.1));
        let scopes = std::iter::once(("account", budget.account))
            .chain(client_caps.map(|caps| ("client", caps)));
        for (scope, caps) in scopes {
            for cap in caps.set() {
                self.budget_refused.with_label_values(&[scope, cap.name]);
                if budget.warn_at.is_some() {
                    self.budget_warnings.with_label_values(&[scope, cap.name]);
                }
            }
        }
        if settings.redis.is_some() {
            for op in REDIS_OPS {
                self.redis_errors.with_label_values(&[op]);
            }
        }
        for outcome in ["ok", "error", "throttled"] {
            self.token_refreshes.with_label_values(&[outcome]);
        }
        for client in settings.clients.iter().filter(|c| c.token_lease) {
            self.token_leases.with_label_values(&[&client.name]);
        }
    }

    /// Sets the budget gauges to `uses` (every set cap's use), dropping the series of caps no
    /// longer set.
    pub(crate) fn set_budget_gauges(&self, uses: &[crate::protect::budget::CapUse]) {
        let mut series = self.budget_series.lock().expect("budget series");
        let now: std::collections::BTreeSet<[String; 3]> = uses
            .iter()
            .map(|u| [u.scope.to_string(), u.who.clone(), u.cap.to_string()])
            .collect();
        for gone in series.difference(&now) {
            let labels = [gone[0].as_str(), gone[1].as_str(), gone[2].as_str()];
            let _ = self.budget_used.remove_label_values(&labels);
            let _ = self.budget_limit.remove_label_values(&labels);
        }
        for u in uses {
            let labels = [u.scope, u.who.as_str(), u.cap];
            self.budget_used
                .with_label_values(&labels)
                .set(u.used as i64);
            self.budget_limit
                .with_label_values(&labels)
                .set(u.limit as i64);
        }
        *series = now;
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding does not fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    pub(crate) fn observe_upstream(&self, route: &str, outcome: &str, seconds: f64) {
        self.upstream_requests
            .with_label_values(&[route, outcome])
            .inc();
        self.upstream_duration
            .with_label_values(&[route])
            .observe(seconds);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
