//! Traces end to end: the real binary exports over OTLP/HTTP to a collector this test runs (an
//! HTTP server on loopback decoding `ExportTraceServiceRequest` with the protocol's own crate).
//! The spans of a hit (only a sampled one), of a miss joined to another's fill, of a create that
//! waited for its rate slot, of a reconciled create (its list calls under a `reconcile` span), with
//! their parents and attributes; Redis commands as spans only when debug is on for the fleet's
//! module (a real redis-server); the upstream sees the gateway's span as its parent; and a
//! collector that is down costs a request nothing while its drops are counted.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

use crate::harness::redis::RedisServer;
use crate::harness::*;

/// The collector: every span it was sent, with its service's name.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = sink.clone();
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let sink = sink.clone();
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces");
                            let body = req.into_body().collect().await?.to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).expect("protobuf");
                            let mut sink = sink.lock().unwrap();
                            for rs in export.resource_spans {
                                let service = rs
                                    .resource
                                    .iter()
                                    .flat_map(|r| &r.attributes)
                                    .find(|kv| kv.key == "service.name")
                                    .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
                                    .unwrap_or_default();
                                for ss in rs.scope_spans {
                                    for span in ss.spans {
                                        sink.push((service.clone(), span));
                                    }
                                }
                            }
                            Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::new())))
                        }
                    });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Collector {
            url: format!("http://{addr}"),
            spans,
        }
    }

    /// The spans once `enough` holds of them (the export runs a moment after the answers).
    async fn spans_when(&self, what: &str, enough: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let found = poll(Duration::from_secs(15), || {
            let spans: Vec<Span> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .map(|(_, s)| s.clone())
                .collect();
            let found = if enough(&spans) {
                Ok(spans)
            } else {
                Err(spans)
            };
            async move { found }
        })
        .await;
        found.unwrap_or_else(|spans| {
            let names: Vec<(&str, Vec<String>)> = spans
                .iter()
                .map(|s| {
                    let attrs = s.attributes.iter().map(|kv| kv.key.clone()).collect();
                    (s.name.as_str(), attrs)
                })
                .collect();
            panic!("{what}: not within 15 s; the collector has {names:?}")
        })
    }
}

fn text(v: &Any) -> Option<String> {
    match v {
        Any::StringValue(s) => Some(s.clone()),
        Any::IntValue(i) => Some(i.to_string()),
        Any::BoolValue(b) => Some(b.to_string()),
        Any::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

/// A span's attribute, as text.
fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn children<'a>(spans: &'a [Span], parent: &Span) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id)
        .collect()
}

fn traced(collector: &Collector, extra: &str) -> String {
    format!(
        "[telemetry]\notlp_endpoint = \"{}\"\nsample_ratio = 1.0\n{}{extra}",
        collector.url,
        info_policy("ttl = \"60s\"")
    )
}

const DEMO: [(&str, &str); 2] = [
    ("FINOVY_UUID", "demo-uuid"),
    ("FINOVY_SECRET", "demo-secret"),
];

async fn create(url: &str, memory: u32) -> (u16, String) {
    let (status, _, v) = answer(
        http()
            .post(format!("{url}{DISK}/create"))
            .header("Idempotency-Key", fresh_key())
            .json(&json!({"area": 0, "memory": memory, "isMount": 0})),
    )
    .await;
    (status, v["data"].as_str().unwrap_or_default().to_string())
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread")]
async fn a_miss_joined_to_a_fill_and_a_hit_are_traced_and_the_upstream_sees_our_span() {
    let collector = Collector::start().await;
    let sim = Sim::start(sim_config()).await;
    let gw = Bin::serve(&traced(&collector, ""), &sim.url, &DEMO);
    let (status, id) = create(&gw.url, 20).await;
    assert_eq!(status, 200);
    sim.fault("slow", "400ms").await;
    let url = format!("{}{DISK}/info/{id}", gw.url);
    // Two misses at once, one with the caller's trace context: one fills, the other joins it.
    let with_parent = {
        let url = url.clone();
        tokio::spawn(async move {
            let parent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
            get(
                &url,
                &[("traceparent", &parent), ("tracestate", "vendor=kept")],
            )
            .await
        })
    };
    let plain = {
        let url = url.clone();
        tokio::spawn(async move { get(&url, &[]).await })
    };
    assert_eq!(with_parent.await.unwrap().0, 200);
    assert_eq!(plain.await.unwrap().0, 200);
    sim.fault("none", "0s").await;
    let (status, h, _) = get(&url, &[]).await;
    assert_eq!(status, 200);
    assert!(cache_status(&h).contains("hit"), "{h:?}");

    let spans = collector
        .spans_when("three info requests, a fill, a wait", |s| {
            s.iter().filter(|s| s.name == "GET disk.info").count() == 3
                && s.iter().any(|s| s.name == "cache.wait")
                && s.iter().any(|s| s.name == "cache.fill")
        })
        .await;
    let service = collector.spans.lock().unwrap()[0].0.clone();
    assert_eq!(service, "finovy-gateway");
    let requests = named(&spans, "GET disk.info");
    for r in &requests {
        assert_eq!(attr(r, "http.route").as_deref(), Some("disk.info"));
        assert_eq!(attr(r, "http.response.status_code").as_deref(), Some("200"));
        assert_eq!(attr(r, "client").as_deref(), Some("anonymous"), "{r:?}");
        assert!(attr(r, "account").is_some(), "{r:?}");
        assert!(attr(r, "upstream.trace_id").is_some(), "{r:?}");
    }
    let by_cache = |c: &str| -> Vec<&Span> {
        requests
            .iter()
            .copied()
            .filter(|r| attr(r, "cache").as_deref() == Some(c))
            .collect()
    };
    assert_eq!((by_cache("miss").len(), by_cache("hit").len()), (2, 1));
    // The hit: a span of its own, no children.
    assert!(children(&spans, by_cache("hit")[0]).is_empty());

    // The caller's trace context is the parent of its request's span.
    let caller_trace = hex::decode(CALLER_TRACE).unwrap();
    let theirs = requests
        .iter()
        .find(|r| r.trace_id == caller_trace)
        .expect("the caller's trace continues");
    assert_eq!(theirs.parent_span_id, hex::decode(CALLER_SPAN).unwrap());

    // One request filled (with the upstream call), the other waited, linked to that fill.
    let fill = named(&spans, "cache.fill")[0];
    let wait = named(&spans, "cache.wait")[0];
    let leader = requests
        .iter()
        .find(|r| r.span_id == fill.parent_span_id)
        .expect("the fill is a request's child");
    let joined = requests
        .iter()
        .find(|r| r.span_id == wait.parent_span_id)
        .expect("the wait is a request's child");
    assert_ne!(leader.span_id, joined.span_id);
    assert_eq!(wait.links.len(), 1, "{wait:?}");
    assert_eq!(wait.links[0].span_id, fill.span_id);
    assert_eq!(wait.links[0].trace_id, fill.trace_id);
    let upstream: Vec<&Span> = children(&spans, leader)
        .into_iter()
        .filter(|s| s.name == "GET")
        .collect();
    assert_eq!(upstream.len(), 1, "{:?}", children(&spans, leader));
    let call = upstream[0];
    assert_eq!(call.kind, 3, "a client span");
    assert_eq!(attr(call, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(
        attr(call, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(call, "server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        attr(call, "url.full"),
        Some(format!("{}{DISK}/info/{id}", sim.url))
    );
    assert!(
        !children(&spans, joined).iter().any(|s| s.name == "GET"),
        "a joined request makes no upstream call"
    );

    // The upstream saw the call's span as its parent, in the request's trace.
    let seen = sim.requests().await;
    let info: Vec<_> = seen
        .iter()
        .filter(|r| r["path"].as_str().unwrap().contains("/info/"))
        .collect();
    assert_eq!(info.len(), 1);
    let parent = info[0]["headers"]["traceparent"].as_str().unwrap();
    assert_eq!(
        parent,
        format!(
            "00-{}-{}-01",
            hex::encode(&call.trace_id),
            hex::encode(&call.span_id)
        )
    );
    if leader.trace_id == caller_trace {
        assert_eq!(info[0]["headers"]["tracestate"], "vendor=kept");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hit_is_traced_only_when_sampled_by_the_ratio_or_its_caller() {
    let collector = Collector::start().await;
    let sim = Sim::start(sim_config()).await;
    // No new trace is sampled: only a caller's sampled trace is followed.
    let toml = format!(
        "[telemetry]\notlp_endpoint = \"{}\"\nsample_ratio = 0.0\n{}",
        collector.url,
        info_policy("ttl = \"60s\"")
    );
    let gw = Bin::serve(&toml, &sim.url, &DEMO);
    let (status, id) = create(&gw.url, 20).await;
    assert_eq!(status, 200);
    let url = format!("{}{DISK}/info/{id}", gw.url);
    let unsampled = format!("00-{}-{CALLER_SPAN}-00", "1".repeat(32));
    let sampled = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let asked: [&[(&str, &str)]; 4] = [
        &[],
        &[],
        &[("traceparent", &unsampled)],
        &[("traceparent", &sampled)],
    ];
    for (i, headers) in asked.into_iter().enumerate() {
        let (status, h, _) = get(&url, headers).await;
        assert_eq!(status, 200);
        // The first fills the entry; the others are fresh hits, answered at the edge.
        assert_eq!(cache_status(&h).contains("hit"), i > 0, "{h:?}");
    }
    let spans = collector
        .spans_when("the sampled caller's hit", |s| !s.is_empty())
        .await;
    assert_eq!(spans.len(), 1, "only the sampled hit: {spans:?}");
    let hit = &spans[0];
    assert_eq!(hit.name, "GET disk.info");
    assert_eq!(attr(hit, "cache").as_deref(), Some("hit"));
    assert_eq!(hit.trace_id, hex::decode(CALLER_TRACE).unwrap());
    assert_eq!(hit.parent_span_id, hex::decode(CALLER_SPAN).unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_that_waited_for_its_rate_slot_shows_the_wait() {
    let collector = Collector::start().await;
    let sim = Sim::start(sim_config()).await;
    let toml = traced(
        &collector,
        "[create.routes.\"disk.create\"]\nrate = \"1/1s\"\nburst = 1\nmax_wait = \"3s\"\n",
    );
    let gw = Bin::serve(&toml, &sim.url, &DEMO);
    assert_eq!(create(&gw.url, 20).await.0, 200);
    assert_eq!(create(&gw.url, 21).await.0, 200);
    let spans = collector
        .spans_when("two creates and a wait", |s| {
            s.iter().filter(|s| s.name == "POST disk.create").count() == 2
                && s.iter().any(|s| s.name == "rate_limit.wait")
        })
        .await;
    let wait = named(&spans, "rate_limit.wait")[0];
    let second = named(&spans, "POST disk.create")
        .into_iter()
        .find(|r| r.span_id == wait.parent_span_id)
        .expect("the wait is a create's child");
    let waited_ms = (wait.end_time_unix_nano - wait.start_time_unix_nano) / 1_000_000;
    assert!(waited_ms >= 300, "{waited_ms} ms");
    let kids: Vec<&str> = children(&spans, second)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    for expected in ["ledger.write", "rate_limit.wait", "POST"] {
        assert!(kids.contains(&expected), "{expected} in {kids:?}");
    }
    assert_eq!(
        attr(second, "http.response.status_code").as_deref(),
        Some("200")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_is_down_costs_no_request_anything_and_drops_are_counted() {
    // A port with nothing listening on it.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let sim = Sim::start(sim_config()).await;
    let toml = format!(
        "[telemetry]\notlp_endpoint = \"http://{down}\"\nsample_ratio = 1.0\n{}",
        info_policy("ttl = \"60s\"")
    );
    let gw = Bin::serve(&toml, &sim.url, &DEMO);
    let (status, id) = create(&gw.url, 20).await;
    assert_eq!(status, 200);
    let url = format!("{}{DISK}/info/{id}", gw.url);
    let started = Instant::now();
    for _ in 0..50 {
        let (status, _, _) = get(&url, &[]).await;
        assert_eq!(status, 200);
    }
    // Fifty hits on loopback: far from any export timeout.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    eventually(
        "spans dropped and counted",
        Duration::from_secs(15),
        || async { gw.metric("finovy_gateway_spans_dropped_total", &[]).await >= 50.0 },
    )
    .await;
    assert!(
        gw.wait_for_log("trace export failed", 1)
            .await
            .contains("trace export failed"),
        "the outage is logged once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reconciled_create_shows_its_list_calls_under_a_reconcile_span() {
    let collector = Collector::start().await;
    let sim = Sim::start(sim_config()).await;
    // 100 older disks in the area, none of the order's size: the list takes two pages.
    sim.make_disks(0, 30..130).await;
    let toml = traced(
        &collector,
        &format!("[upstream]\ntimeout = \"300ms\"\n{FAST_CREATES}"),
    );
    let gw = Bin::serve(&toml, &sim.url, &DEMO);
    let key = fresh_key();
    let create = || {
        http()
            .post(format!("{}{DISK}/create", gw.url))
            .header("Idempotency-Key", &key)
            .json(&json!({"area": 0, "memory": 20, "isMount": 0}))
    };
    // The gateway's token first, so that only the create meets the fault.
    let (status, _) = send_json(
        http()
            .post(format!("{}{DISK}/getList", gw.url))
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 200);
    // The simulator buys the disk, then holds its answer past the gateway's upstream timeout:
    // an unknown outcome.
    sim.fault("slow", "1s").await;
    let (status, _, v) = answer(create()).await;
    assert_eq!((status, v["code"].as_i64()), (504, Some(1005)), "{v}");
    eventually("the disk made", Duration::from_secs(20), || async {
        sim.stats().await["disks"] == 101
    })
    .await;
    sim.fault("none", "0s").await;
    // The retry finds that disk in the list instead of buying another.
    let (status, _, v) = answer(create()).await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    let disk = v["data"].as_str().unwrap().to_string();
    assert_eq!(
        sim.calls("create").await,
        101,
        "one purchase through the gateway"
    );

    let spans = collector
        .spans_when("the reconciled retry's spans", |s| {
            s.iter().any(|s| s.name == "reconcile")
                && s.iter().any(|s| {
                    s.name == "POST disk.create"
                        && attr(s, "dedup").as_deref() == Some("reconciled")
                })
        })
        .await;
    let retry = named(&spans, "POST disk.create")
        .into_iter()
        .find(|s| attr(s, "dedup").as_deref() == Some("reconciled"))
        .unwrap();
    assert_eq!(
        attr(retry, "http.response.status_code").as_deref(),
        Some("200")
    );
    let reconcile = named(&spans, "reconcile")[0];
    assert_eq!(
        reconcile.parent_span_id, retry.span_id,
        "a child of the retry's span"
    );
    assert_eq!(reconcile.trace_id, retry.trace_id);
    assert_eq!(attr(reconcile, "reconcile.pages").as_deref(), Some("2"));
    assert_eq!(
        attr(reconcile, "reconcile.disks_listed").as_deref(),
        Some("101")
    );
    assert_eq!(
        attr(reconcile, "reconcile.candidates").as_deref(),
        Some("1")
    );
    assert_eq!(attr(reconcile, "reconcile.found").as_deref(), Some("true"));
    // Facts only: neither the key nor the disk it found.
    for kv in &reconcile.attributes {
        let value = text(kv.value.as_ref().unwrap().value.as_ref().unwrap()).unwrap();
        assert!(!value.contains(&key) && !value.contains(&disk), "{kv:?}");
    }
    // Each page is an upstream call of its own, under the reconciliation.
    let lists = children(&spans, reconcile);
    assert_eq!(lists.len(), 2, "{lists:?}");
    for call in lists {
        assert_eq!(call.name, "POST");
        assert_eq!(call.kind, 3, "a client span");
        assert_eq!(
            attr(call, "url.full"),
            Some(format!("{}{DISK}/getList", sim.url))
        );
        assert_eq!(
            attr(call, "http.response.status_code").as_deref(),
            Some("200")
        );
    }
    // The retry made no create call of its own.
    assert!(
        !children(&spans, retry).iter().any(|s| s.name == "POST"),
        "{:?}",
        children(&spans, retry)
    );
}

/// A shared-mode gateway exporting to `collector`, with `level` as its `[log] level`.
fn shared_traced(collector: &Collector, redis: &RedisServer, level: &str) -> String {
    traced(
        collector,
        &format!(
            "[redis]\nurl = \"{}\"\n[log]\nlevel = \"{level}\"\n",
            redis.url()
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_calls_are_spans_only_with_debug_on_for_the_fleet() {
    let redis = RedisServer::start();
    let sim = Sim::start(sim_config()).await;
    let (debug, quiet) = (Collector::start().await, Collector::start().await);
    let level = "info,finovy_gateway::fleet=debug";
    let on = Bin::serve(&shared_traced(&debug, &redis, level), &sim.url, &DEMO);
    let off = Bin::serve(&shared_traced(&quiet, &redis, "info"), &sim.url, &DEMO);
    let (status, id) = create(&on.url, 20).await;
    assert_eq!(status, 200);
    // A miss on each replica: each asks Redis (the second finds the first's fill there).
    for gw in [&on, &off] {
        let url = format!("{}{DISK}/info/{id}", gw.url);
        let (status, h, _) = get(&url, &[]).await;
        assert_eq!(status, 200, "{h:?}");
    }

    let miss_with_redis = |s: &[Span]| {
        s.iter().any(|r| {
            r.name == "GET disk.info" && children(s, r).iter().any(|c| c.name.starts_with("redis "))
        })
    };
    let spans = debug
        .spans_when("a miss with its Redis calls", miss_with_redis)
        .await;
    let request = named(&spans, "GET disk.info")[0];
    assert_eq!(attr(request, "cache").as_deref(), Some("miss"));
    let calls: Vec<&Span> = children(&spans, request)
        .into_iter()
        .filter(|c| c.name.starts_with("redis "))
        .collect();
    let ops: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
    // The lookup in the request's task, and the fill's store in the task the fill runs in.
    for op in ["redis cache_get", "redis cache_put"] {
        assert!(ops.contains(&op), "{op} in {ops:?}");
    }
    for call in &calls {
        assert_eq!(call.kind, 3, "a client span");
        assert_eq!(attr(call, "db.system.name").as_deref(), Some("redis"));
        let op = attr(call, "db.operation.name").expect("db.operation.name");
        assert_eq!(call.name, format!("redis {op}"));
    }
    // Only the request's own commands: nothing of the replica's housekeeping as a trace.
    assert!(
        spans
            .iter()
            .filter(|s| s.name.starts_with("redis "))
            .all(|s| spans.iter().any(|p| p.span_id == s.parent_span_id)),
        "a Redis span without its parent"
    );

    // At the default level: the same miss, and no Redis span at all.
    let spans = quiet
        .spans_when("the other replica's miss", |s| {
            s.iter().any(|s| s.name == "GET disk.info")
        })
        .await;
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert!(!names.iter().any(|n| n.starts_with("redis")), "{names:?}");
}
