//! Notifications as a receiver sees them: a real HTTP receiver on loopback checks every
//! delivery's Standard Webhooks signature with its own HMAC-SHA256 code. Purchases made through
//! the gateway are told with their ledger entry's id; a receiver that is down while the gateway
//! restarts still gets every event, as signed, once it is back; two replicas on one PostgreSQL
//! ledger deliver each event once; a killed replica's purchase is told unknown, then reconciled,
//! in order; a spending cap's warning threshold, an account left without a token and a Redis
//! found without its data are told.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::harness::postgres::{PgServer, ledger_config};
use crate::harness::redis::RedisServer;
use crate::harness::*;

/// The receiver's key, as an operator writes it.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One delivery the receiver accepted, its signature checked.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    body: Value,
}

/// What the receiver has seen.
#[derive(Default)]
struct Seen {
    /// Accepted (2xx) deliveries, in arrival order.
    accepted: Vec<Delivery>,
    /// Attempts answered 503 while down, by `webhook-id`.
    refused: HashMap<String, usize>,
    /// Deliveries whose signature did not check, and why.
    bad: Vec<String>,
}

/// An HTTP receiver on loopback: it answers `status` (200 or 503) and checks every signature.
struct Receiver {
    url: String,
    status: Arc<AtomicU16>,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

/// The receiver's own check of a delivery: `v1,` HMAC-SHA256 of `id.timestamp.body`, in base64.
fn verify(key: &[u8], headers: &http::HeaderMap, body: &[u8]) -> Result<String, String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(format!("no {name}"))
    };
    let (id, timestamp, signature) = (
        header("webhook-id")?,
        header("webhook-timestamp")?,
        header("webhook-signature")?,
    );
    let sent: u64 = timestamp.parse().map_err(|_| "a bad timestamp")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(sent) > 300 {
        return Err(format!("timestamp {sent} is {now}'s"));
    }
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    // The header may carry several space-separated signatures; one must match.
    if signature.split(' ').any(|s| s == expected) {
        Ok(id)
    } else {
        Err(format!("signature {signature} is not {expected}"))
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let key = STANDARD
            .decode(SECRET.strip_prefix("whsec_").unwrap())
            .unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (s, k, st) = (seen.clone(), Arc::new(key), status.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, key, status) = (s.clone(), k.clone(), st.clone());
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (seen, key, status) = (seen.clone(), key.clone(), status.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let code = status.load(Ordering::SeqCst);
                        let mut seen = seen.lock().unwrap();
                        match verify(&key, &parts.headers, &body) {
                            Err(why) => seen.bad.push(why),
                            Ok(id) if code == 200 => seen.accepted.push(Delivery {
                                id,
                                body: serde_json::from_slice(&body).unwrap(),
                            }),
                            Ok(id) => *seen.refused.entry(id).or_default() += 1,
                        }
                        let resp = Response::builder()
                            .status(code)
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            url,
            status,
            seen,
            task,
        }
    }

    fn down(&self) {
        self.status.store(503, Ordering::SeqCst);
    }

    fn up(&self) {
        self.status.store(200, Ordering::SeqCst);
    }

    /// The accepted deliveries of `event`.
    fn accepted(&self, event: &str) -> Vec<Delivery> {
        let seen = self.seen.lock().unwrap();
        assert!(seen.bad.is_empty(), "bad signatures: {:?}", seen.bad);
        seen.accepted
            .iter()
            .filter(|d| d.body["type"] == event)
            .cloned()
            .collect()
    }

    /// Waits until `n` deliveries of `event` were accepted.
    async fn wait_for(&self, event: &str, n: usize) -> Vec<Delivery> {
        eventually_some(
            &format!("{n} {event} deliveries"),
            Duration::from_secs(30),
            || async {
                let got = self.accepted(event);
                (got.len() >= n).then_some(got)
            },
        )
        .await
    }

    /// Waits until `n` distinct events were refused while down.
    async fn wait_refused(&self, n: usize) -> HashSet<String> {
        eventually_some(
            &format!("{n} events refused"),
            Duration::from_secs(30),
            || async {
                let seen = self.seen.lock().unwrap();
                (seen.refused.len() >= n).then(|| seen.refused.keys().cloned().collect())
            },
        )
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `[[webhooks]]` entry for `receiver`, its key read from `HOOK_KEY`.
fn hook(receiver: &Receiver, events: &[&str]) -> String {
    format!(
        "[[webhooks]]\nurl = \"{}\"\nsecret_env = \"HOOK_KEY\"\nevents = {}\n",
        receiver.url,
        serde_json::to_string(events).unwrap()
    )
}

fn env() -> Vec<(&'static str, String)> {
    let mut env = demo_env();
    env.push(("HOOK_KEY", SECRET.to_owned()));
    env
}

/// Creates are limited only loosely (a `[create...]` table replaces the harness's own).
const LOOSE: &str = "[create.routes.\"disk.create\"]\nrate = \"1000/1s\"\nburst = 1000\n";

/// Buys a disk of `gb` GB through `url`: the `Finovy-Purchase-Id` of its entry.
async fn buy(url: &str, gb: u64) -> String {
    let (status, headers, v) = answer(
        http()
            .post(format!("{url}{DISK}/create"))
            .header("Idempotency-Key", fresh_key())
            .json(&json!({"area": 0, "memory": gb, "isMount": 0})),
    )
    .await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    headers
        .get("finovy-purchase-id")
        .expect("a purchase id")
        .to_str()
        .unwrap()
        .to_owned()
}

fn ids(deliveries: &[Delivery]) -> HashSet<String> {
    deliveries
        .iter()
        .map(|d| d.body["data"]["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A fresh folder for a ledger that outlives one gateway.
struct Folder(std::path::PathBuf);

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ledger_folder() -> Folder {
    Folder(fresh_dir("webhooks-ledger"))
}

#[tokio::test(flavor = "multi_thread")]
async fn purchases_are_told_signed_with_their_ledger_entry_id() {
    let sim = Sim::start(sim_config()).await;
    let receiver = Receiver::start().await;
    let toml = format!(
        "{LOOSE}{}",
        hook(&receiver, &["purchase.bought", "purchase.unknown"])
    );
    let gw = Gw::start(&toml, &sim.url, env()).await;
    let mut bought = HashSet::new();
    for gb in [20, 30, 40] {
        bought.insert(buy(&gw.url, gb).await);
    }
    let got = receiver.wait_for("purchase.bought", 3).await;
    assert_eq!(ids(&got), bought, "each event names its entry");
    for d in &got {
        let data = &d.body["data"];
        assert_eq!(data["outcome"], "bought", "{}", d.body);
        assert_eq!(data["route"], "disk.create", "{}", d.body);
        assert!(data["resourceId"].is_string(), "{}", d.body);
        assert!(d.body["timestamp"].as_str().unwrap().ends_with('Z'));
        let text = d.body.to_string();
        assert!(
            !text.contains("MfKQ9r8") && !text.contains("hostPw"),
            "{text}"
        );
    }
    let webhook_ids: HashSet<&str> = got.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(webhook_ids.len(), 3, "one webhook-id per event");
    assert_eq!(got.len(), 3, "each event once");
    eventually("the backlog empties", Duration::from_secs(10), || async {
        gw.metric("finovy_gateway_webhook_backlog", &[]).await == 0.0
    })
    .await;
    assert_eq!(
        gw.metric(
            "finovy_gateway_webhook_deliveries_total",
            &[("result", "delivered")]
        )
        .await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_down_while_the_gateway_restarts_gets_every_event_once_back() {
    let sim = Sim::start(sim_config()).await;
    let receiver = Receiver::start().await;
    receiver.down();
    let folder = ledger_folder();
    let toml = format!(
        "{LOOSE}{}[ledger]\npath = {:?}\nrecord_amount = false\n",
        hook(&receiver, &["purchase.bought"]),
        folder.0.join("ledger.sqlite").display().to_string()
    );
    let gw = Gw::start(&toml, &sim.url, env()).await;
    let mut bought = HashSet::new();
    for gb in [21, 31, 41] {
        bought.insert(buy(&gw.url, gb).await);
    }
    // Every event was tried, and refused, before the gateway stops.
    let tried = receiver.wait_refused(3).await;
    assert!(
        gw.metric(
            "finovy_gateway_webhook_deliveries_total",
            &[("result", "failed")]
        )
        .await
            >= 3.0
    );
    gw.stop().await;
    // A new process on the same ledger file; the receiver comes back.
    let gw = Gw::start(&toml, &sim.url, env()).await;
    receiver.up();
    let got = receiver.wait_for("purchase.bought", 3).await;
    assert_eq!(ids(&got), bought, "every purchase told");
    let delivered: HashSet<String> = got.iter().map(|d| d.id.clone()).collect();
    assert_eq!(
        delivered, tried,
        "the same events, as first signed and sent"
    );
    eventually("the backlog empties", Duration::from_secs(10), || async {
        gw.metric("finovy_gateway_webhook_backlog", &[]).await == 0.0
    })
    .await;
    assert_eq!(receiver.accepted("purchase.bought").len(), 3, "each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_postgres_ledger_deliver_each_event_once() {
    let sim = Sim::start(sim_config()).await;
    let pg = PgServer::start();
    let receiver = Receiver::start().await;
    // Down at first: the events wait in the outbox, where both replicas look for due rows.
    receiver.down();
    let toml = format!(
        "{LOOSE}{}{}",
        hook(&receiver, &["purchase.bought"]),
        ledger_config(&pg, "record_amount = false")
    );
    let gws = replicas::<2>(&toml, &sim.url, env()).await;
    let mut bought = HashSet::new();
    for i in 0..6u64 {
        bought.insert(buy(&gws[(i % 2) as usize].url, 20 + i).await);
    }
    receiver.wait_refused(6).await;
    receiver.up();
    let got = receiver.wait_for("purchase.bought", 6).await;
    assert_eq!(ids(&got), bought);
    for gw in &gws {
        eventually("the backlog empties", Duration::from_secs(10), || async {
            gw.metric("finovy_gateway_webhook_backlog", &[]).await == 0.0
        })
        .await;
    }
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for d in receiver.accepted("purchase.bought") {
        *by_id.entry(d.id).or_default() += 1;
    }
    assert_eq!(by_id.len(), 6);
    assert!(by_id.values().all(|n| *n == 1), "{by_id:?}");
    let mut delivered = 0.0;
    for gw in &gws {
        delivered += gw
            .metric(
                "finovy_gateway_webhook_deliveries_total",
                &[("result", "delivered")],
            )
            .await;
    }
    assert_eq!(delivered, 6.0, "one delivery per event for the fleet");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spending_caps_threshold_and_exhaustion_are_told_once_each() {
    let sim = Sim::start(sim_config()).await;
    let receiver = Receiver::start().await;
    let toml = format!(
        "{LOOSE}[create.budget]\nwarn_at = 0.5\n[create.budget.account]\ncreates_per_day = 4\n{}",
        hook(&receiver, &["budget.threshold", "budget.exhausted"])
    );
    let gw = Gw::start(&toml, &sim.url, env()).await;
    buy(&gw.url, 20).await;
    buy(&gw.url, 30).await;
    let got = receiver.wait_for("budget.threshold", 1).await;
    let data = &got[0].body["data"];
    assert_eq!(data["scope"], "account", "{data}");
    assert_eq!(data["cap"], "creates_per_day", "{data}");
    assert_eq!(data["limit"], 4, "{data}");
    assert_eq!(data["used"], 2, "{data}");
    buy(&gw.url, 40).await;
    buy(&gw.url, 50).await;
    // The cap is spent: every further create is refused, and told once for its window.
    for gb in [60, 70, 80] {
        let (status, v) = send_json(
            http()
                .post(format!("{}{DISK}/create", gw.url))
                .header("Idempotency-Key", fresh_key())
                .json(&json!({"area": 0, "memory": gb, "isMount": 0})),
        )
        .await;
        assert_eq!((status, v["code"].as_i64()), (429, Some(220025)), "{v}");
    }
    let got = receiver.wait_for("budget.exhausted", 1).await;
    let data = &got[0].body["data"];
    assert_eq!(
        (data["cap"].as_str(), data["limit"].as_u64()),
        (Some("creates_per_day"), Some(4)),
        "{data}"
    );
    eventually("the backlog empties", Duration::from_secs(10), || async {
        gw.metric("finovy_gateway_webhook_backlog", &[]).await == 0.0
    })
    .await;
    assert_eq!(receiver.accepted("budget.exhausted").len(), 1);
    assert_eq!(receiver.accepted("budget.threshold").len(), 1);
    // Nothing else was asked for: no purchase events.
    assert!(receiver.accepted("purchase.bought").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replicas_purchase_is_told_unknown_then_reconciled_in_order() {
    let sim = Sim::start(sim_config()).await;
    let receiver = Receiver::start().await;
    let folder = ledger_folder();
    let toml = format!(
        "{LOOSE}{}[ledger]\npath = {:?}\nrecord_amount = false\n",
        hook(
            &receiver,
            &["purchase.bought", "purchase.unknown", "purchase.reconciled"]
        ),
        folder.0.join("ledger.sqlite").display().to_string()
    );
    let env = [
        ("FINOVY_UUID", "demo-uuid"),
        ("FINOVY_SECRET", "demo-secret"),
        ("HOOK_KEY", SECRET),
    ];
    let mut gw = Bin::serve(&toml, &sim.url, &env);
    // The upstream makes the disk and holds its answer back: the process dies mid-purchase.
    sim.fault("slow", "5s").await;
    let key = fresh_key();
    let order = json!({"area": 0, "memory": 50, "isMount": 0});
    let dying = http()
        .post(format!("{}{DISK}/create", gw.url))
        .header("Idempotency-Key", &key)
        .json(&order);
    gw.kill_mid_create(&sim, dying).await;
    sim.fault("none", "0s").await;
    let gw = Bin::serve(&toml, &sim.url, &env);
    let unknown = receiver.wait_for("purchase.unknown", 1).await;
    let entry = unknown[0].body["data"]["id"].as_str().unwrap().to_owned();
    // The retry reconciles the original: told after its unknown, under the same entry id.
    let (status, _, v) = answer(
        http()
            .post(format!("{}{DISK}/create", gw.url))
            .header("Idempotency-Key", &key)
            .json(&order),
    )
    .await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    let reconciled = receiver.wait_for("purchase.reconciled", 1).await;
    assert_eq!(reconciled[0].body["data"]["id"], entry.as_str());
    assert_eq!(reconciled[0].body["data"]["resourceId"], v["data"]);
    let order_seen: Vec<String> = receiver
        .seen
        .lock()
        .unwrap()
        .accepted
        .iter()
        .filter(|d| d.body["data"]["id"] == entry.as_str())
        .map(|d| d.body["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(order_seen, ["purchase.unknown", "purchase.reconciled"]);
    assert!(receiver.accepted("purchase.bought").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_without_a_token_for_too_long_is_told_once() {
    let sim = Sim::start(sim_config()).await;
    let receiver = Receiver::start().await;
    let toml = format!(
        "{}token_failing_after = \"1s\"\n",
        hook(&receiver, &["token.failing"])
    );
    // Credentials the upstream refuses: no token, ever.
    let env = vec![
        ("FINOVY_UUID", "demo-uuid".to_owned()),
        ("FINOVY_SECRET", "bad-secret-x9".to_owned()),
        ("HOOK_KEY", SECRET.to_owned()),
    ];
    let _gw = Gw::start(&toml, &sim.url, env).await;
    let got = receiver.wait_for("token.failing", 1).await;
    assert_eq!(got.len(), 1, "told once while it lasts");
    let data = &got[0].body["data"];
    assert_eq!(data["account"], "default", "{data}");
    assert!(data["since"].as_str().unwrap().ends_with('Z'), "{data}");
    assert!(!got[0].body.to_string().contains("bad-secret-x9"));
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_found_without_its_data_is_told() {
    let sim = Sim::start(sim_config()).await;
    let redis = RedisServer::start();
    let receiver = Receiver::start().await;
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-hooks:\"\n{}",
        redis.url(),
        hook(&receiver, &["redis.reset"])
    );
    let gw = Gw::start(&toml, &sim.url, env()).await;
    eventually(
        "the fleet marker is written",
        Duration::from_secs(10),
        || async { redis.get("fgw-hooks:fleet-marker").await.is_some() },
    )
    .await;
    redis.command(&["FLUSHALL"]).await;
    let got = receiver.wait_for("redis.reset", 1).await;
    let replica = got[0].body["data"]["replica"].as_str().unwrap();
    let port = gw.url.rsplit(':').next().unwrap();
    assert!(replica.ends_with(&format!(":{port}")), "{replica}");
}
