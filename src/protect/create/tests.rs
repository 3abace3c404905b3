//! The create flow in process: a fake upstream (a `service_fn` that counts its calls and answers
//! as told), the in-memory records, and tokio's paused clock where time matters.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Value, json};
use tokio_util::task::TaskTracker;

use super::intent::Parts;
use super::*;
use crate::admitted::{OutcomeUnknown, RequestId};
use crate::envelope::EnvelopeHead;
use crate::error::{SearchFailed, StillRunning};
use crate::protect::budget::settings::BudgetSettings;
use crate::protect::policy::{CreatePolicy, CreateSettings, DedupScope, Rate};
use crate::protect::records::{Lock, MemoryRecords, State};
use crate::protect::validate::{DiskOrder, Order};
use crate::routes::RouteMatch;

const LIMIT: Duration = Duration::from_secs(10);
const LEASE: Duration = Duration::from_secs(3);

/// What the fake upstream answers a create.
#[derive(Clone, Copy)]
enum Reply {
    /// Made this disk.
    Made(&'static str),
    /// Sent, no answer (a timeout or a reset below).
    Unknown,
}

/// The fake upstream below the flow.
#[derive(Clone)]
struct Upstream {
    creates: Arc<AtomicUsize>,
    lists: Arc<AtomicUsize>,
    /// The creates' answers in turn; the last one repeats.
    replies: Arc<Mutex<Vec<Reply>>>,
    /// The disks the list shows.
    listed: Arc<Mutex<Vec<Value>>>,
    /// How long a create takes.
    delay: Duration,
    /// How long a page of the disk list takes.
    list_delay: Duration,
}

impl Upstream {
    fn new(replies: &[Reply]) -> Upstream {
        Upstream {
            creates: Arc::default(),
            lists: Arc::default(),
            replies: Arc::new(Mutex::new(replies.to_vec())),
            listed: Arc::default(),
            delay: Duration::from_millis(100),
            list_delay: Duration::ZERO,
        }
    }

    fn creates(&self) -> usize {
        self.creates.load(Ordering::SeqCst)
    }

    fn lists(&self) -> usize {
        self.lists.load(Ordering::SeqCst)
    }

    fn service(
        &self,
    ) -> impl tower::Service<Req, Response = Resp, Error = Infallible, Future: Send> + Clone + Send + use<>
    {
        let up = self.clone();
        tower::service_fn(move |req: Req| {
            let up = up.clone();
            async move { Ok::<_, Infallible>(up.answer(&req).await) }
        })
    }

    async fn answer(&self, req: &Req) -> Resp {
        let route = req.extensions().get::<RouteMatch>().map(|m| m.route);
        if route == Some(Route::DiskList) {
            self.lists.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.list_delay).await;
            let disks = self.listed.lock().unwrap().clone();
            let page = json!({"code": 0, "data": {"totalCounts": disks.len(), "data": disks}});
            return envelope(StatusCode::OK, &page);
        }
        self.creates.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        let reply = {
            let mut replies = self.replies.lock().unwrap();
            if replies.len() > 1 {
                replies.remove(0)
            } else {
                replies[0]
            }
        };
        match reply {
            Reply::Made(disk) => envelope(
                StatusCode::OK,
                &json!({"code": 0, "success": true, "msg": "success", "data": disk}),
            ),
            Reply::Unknown => {
                let mut resp = envelope(StatusCode::GATEWAY_TIMEOUT, &json!({"code": 503}));
                resp.extensions_mut().insert(OutcomeUnknown);
                resp
            }
        }
    }
}

fn envelope(status: StatusCode, body: &Value) -> Resp {
    let body = Bytes::from(body.to_string());
    let mut resp = Resp::new(body.clone());
    *resp.status_mut() = status;
    if let Some(head) = EnvelopeHead::parse(&body) {
        resp.extensions_mut().insert(head);
    }
    resp
}

fn settings(max_records: u64) -> CreateSettings {
    let policy = CreatePolicy {
        rate: Rate {
            count: 1,
            period: Duration::from_secs(1),
            burst: 1,
        },
        client_rate: None,
        max_wait: Duration::from_secs(1),
        dedup_window: Duration::from_secs(60),
        idempotency_ttl: Duration::from_secs(600),
        dedup_scope: DedupScope::Client,
    };
    CreateSettings {
        routes: BTreeMap::from([(Route::DiskCreate, policy)]),
        budget: BudgetSettings::default(),
        lease: LEASE,
        max_records_per_client: max_records,
        records_max_bytes: 1 << 20,
    }
}

/// A disk create of `memory_gb` by client `c` of account `a`, under `key` if any.
fn intent_with(key: Option<&str>, memory_gb: i64, max_records: u64) -> Intent {
    let disk = DiskOrder {
        area: 0,
        memory_gb,
        pve_id: None,
    };
    let order = Order::Disk(disk.clone());
    let body = order.body();
    let mut headers = HeaderMap::new();
    if let Some(key) = key {
        headers.insert("idempotency-key", HeaderValue::from_str(key).unwrap());
    }
    let route = RouteMatch {
        route: Route::DiskCreate,
        param: None,
    };
    let parts = Parts {
        route: &route,
        account: "a",
        client: "c",
        request_id: RequestId("rid".into()),
        purchase: None,
        order: Some(&order),
        disk: Some(&disk),
        headers: &headers,
        body: body.as_bytes(),
    };
    Intent::new(&parts, &settings(max_records))
        .expect("a disk create is a spend")
        .expect("a usable key")
}

fn intent(key: Option<&str>, memory_gb: i64) -> Intent {
    intent_with(key, memory_gb, 100)
}

fn flow() -> (Arc<Flow>, Arc<MemoryRecords>) {
    let records = Arc::new(MemoryRecords::default());
    let flow = Flow::new(
        records.clone(),
        LIMIT,
        LEASE,
        Arc::new(Metrics::new()),
        TaskTracker::new(),
    );
    (Arc::new(flow), records)
}

fn create_req() -> Req {
    Req::new(Bytes::from_static(br#"{"area":0,"memory":20,"isMount":0}"#))
}

async fn run(flow: &Flow, up: &Upstream, intent: &Intent) -> Result<Resp, GatewayError> {
    flow.run(up.service(), create_req(), intent).await
}

fn disk_of(resp: &Resp) -> String {
    let v: Value = serde_json::from_slice(resp.body()).unwrap();
    v["data"].as_str().unwrap_or_default().to_string()
}

fn replayed(resp: &Resp) -> bool {
    resp.headers().get(REPLAYED).is_some()
}

async fn state(records: &MemoryRecords, intent: &Intent) -> Option<State> {
    let rkey = match &intent.keying {
        Keying::Keyed(k) | Keying::Unkeyed(k) => k,
    };
    records.get(rkey.as_str()).await.unwrap().map(|r| r.state)
}

// === the prologue ===

#[test]
fn the_prologue_names_the_record_and_its_owner() {
    let keyed = intent(Some(" k-1 "), 20);
    assert_eq!(
        keyed.keying,
        Keying::Keyed(RecordKey::idempotent("a", "c", Route::DiskCreate, "k-1"))
    );
    assert_eq!(keyed.owner.as_str(), "a|c");
    assert_eq!(keyed.max_records, 100);
    assert_eq!(keyed.disk.as_ref().map(|d| d.memory_gb), Some(20));
    let unkeyed = intent(None, 20);
    assert_eq!(
        unkeyed.keying,
        Keying::Unkeyed(RecordKey::dedup(
            "a",
            "c",
            DedupScope::Client,
            &unkeyed.fingerprint
        ))
    );
    // The order is the identity: equal orders are one intent, another size another.
    assert_eq!(unkeyed.fingerprint, keyed.fingerprint);
    assert_ne!(intent(None, 21).fingerprint, unkeyed.fingerprint);
}

#[test]
fn the_prologue_refuses_two_keys_and_passes_what_does_not_spend() {
    let mut headers = HeaderMap::new();
    headers.append("idempotency-key", HeaderValue::from_static("k"));
    headers.append("idempotency-key", HeaderValue::from_static("k"));
    let mut parts = Parts {
        route: &RouteMatch {
            route: Route::DiskCreate,
            param: None,
        },
        account: "a",
        client: "c",
        request_id: RequestId::default(),
        purchase: None,
        order: None,
        disk: None,
        headers: &headers,
        body: b"{}",
    };
    match Intent::new(&parts, &settings(1)) {
        Some(Err(GatewayError::BadRequest { code: 1007, .. })) => {}
        other => panic!("expected a 400, got {other:?}"),
    }
    let mount = RouteMatch {
        route: Route::DiskMount,
        param: None,
    };
    parts.route = &mount;
    assert!(Intent::new(&parts, &settings(1)).is_none());
}

// === the key-less flow ===

#[tokio::test(start_paused = true)]
async fn two_identical_creates_make_one_upstream_call() {
    let (flow, _) = flow();
    let up = Upstream::new(&[Reply::Made("disk-1"), Reply::Made("disk-2")]);
    let i = intent(None, 20);
    let (a, b) = tokio::join!(run(&flow, &up, &i), run(&flow, &up, &i));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(up.creates(), 1);
    assert_eq!(
        (disk_of(&a), disk_of(&b)),
        ("disk-1".into(), "disk-1".into())
    );
    // One of them carried it out, the other joined it.
    assert_eq!(u8::from(replayed(&a)) + u8::from(replayed(&b)), 1);
    // Within the de-dup window a repeat gets it too, from the record.
    let again = run(&flow, &up, &i).await.unwrap();
    assert_eq!((disk_of(&again), replayed(&again)), ("disk-1".into(), true));
    assert_eq!(up.creates(), 1);
    // Another order is another purchase.
    let other = run(&flow, &up, &intent(None, 21)).await.unwrap();
    assert_eq!(disk_of(&other), "disk-2");
    assert_eq!(up.creates(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_create_over_its_limit_has_an_unknown_outcome_and_keeps_its_record() {
    let (flow, records) = flow();
    let mut up = Upstream::new(&[Reply::Made("disk-1")]);
    up.delay = LIMIT * 2;
    let i = intent(None, 20);
    match run(&flow, &up, &i).await {
        Err(GatewayError::OutcomeUnknown { keyed: false, .. }) => {}
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    assert!(matches!(
        state(&records, &i).await,
        Some(State::Unknown { .. })
    ));
}

// === the keyed flow ===

#[tokio::test(start_paused = true)]
async fn a_repeated_key_replays_the_first_answer() {
    let (flow, _) = flow();
    let up = Upstream::new(&[Reply::Made("disk-1"), Reply::Made("disk-2")]);
    let i = intent(Some("k"), 20);
    let first = run(&flow, &up, &i).await.unwrap();
    assert_eq!(
        (disk_of(&first), replayed(&first)),
        ("disk-1".into(), false)
    );
    let again = run(&flow, &up, &i).await.unwrap();
    assert_eq!((disk_of(&again), replayed(&again)), ("disk-1".into(), true));
    assert_eq!(up.creates(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_key_used_with_another_request_is_refused_with_422() {
    let (flow, _) = flow();
    let up = Upstream::new(&[Reply::Made("disk-1")]);
    run(&flow, &up, &intent(Some("k"), 20)).await.unwrap();
    let other = run(&flow, &up, &intent(Some("k"), 21)).await;
    assert!(
        matches!(other, Err(GatewayError::IdempotencyMismatch)),
        "{other:?}"
    );
    assert_eq!(up.creates(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_key_still_in_flight_is_refused_with_409() {
    let (flow, _) = flow();
    let mut up = Upstream::new(&[Reply::Made("disk-1")]);
    up.delay = Duration::from_secs(2);
    let i = intent(Some("k"), 20);
    let first = {
        let (flow, up, i) = (flow.clone(), up.clone(), i.clone());
        tokio::spawn(async move { run(&flow, &up, &i).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let second = run(&flow, &up, &i).await;
    assert!(
        matches!(
            second,
            Err(GatewayError::StillRunning(StillRunning::KeyInFlight))
        ),
        "{second:?}"
    );
    assert_eq!(disk_of(&first.await.unwrap().unwrap()), "disk-1");
    assert_eq!(up.creates(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_client_at_its_record_limit_is_refused_before_anything_is_sent() {
    let (flow, records) = flow();
    let up = Upstream::new(&[Reply::Made("disk-1")]);
    run(&flow, &up, &intent_with(Some("k1"), 20, 1))
        .await
        .unwrap();
    let second = intent_with(Some("k2"), 20, 1);
    let refused = run(&flow, &up, &second).await;
    assert!(
        matches!(refused, Err(GatewayError::RecordsFull { max: 1, .. })),
        "{refused:?}"
    );
    assert_eq!(up.creates(), 1);
    // Refused: its record goes, as if never begun.
    assert!(state(&records, &second).await.is_none());
}

// === settling unknown outcomes ===

/// A keyed create whose outcome is unknown: the refusal, and the record kept.
async fn unknown_create(flow: &Flow, up: &Upstream, records: &MemoryRecords, i: &Intent) {
    match run(flow, up, i).await {
        Err(GatewayError::OutcomeUnknown { keyed: true, .. }) => {}
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    assert!(matches!(
        state(records, i).await,
        Some(State::Unknown { .. })
    ));
}

fn listed_disk(id: &str, memory_gb: i64) -> Value {
    json!({"id": id, "area": 0, "memory": memory_gb, "pveId": null,
           "createTime": crate::clock::now_ms()})
}

#[tokio::test(start_paused = true)]
async fn a_retry_of_an_unknown_outcome_finds_the_disk_it_made() {
    let (flow, records) = flow();
    let up = Upstream::new(&[Reply::Unknown, Reply::Made("never")]);
    let i = intent(Some("k"), 20);
    unknown_create(&flow, &up, &records, &i).await;
    // The upstream did make it: the disk list shows it (beside one of another size).
    *up.listed.lock().unwrap() = vec![listed_disk("other", 30), listed_disk("disk-9", 20)];
    let retry = run(&flow, &up, &i).await.unwrap();
    assert_eq!((disk_of(&retry), replayed(&retry)), ("disk-9".into(), true));
    assert_eq!((up.creates(), up.lists()), (1, 1));
    assert!(matches!(state(&records, &i).await, Some(State::Done(_))));
    // Settled: the next retry replays it without looking again.
    let again = run(&flow, &up, &i).await.unwrap();
    assert_eq!(disk_of(&again), "disk-9");
    assert_eq!((up.creates(), up.lists()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_search_for_the_disk_that_takes_too_long_is_refused_and_settles_nothing() {
    let (flow, records) = flow();
    let mut up = Upstream::new(&[Reply::Unknown, Reply::Made("never")]);
    let i = intent(Some("k"), 20);
    unknown_create(&flow, &up, &records, &i).await;
    *up.listed.lock().unwrap() = vec![listed_disk("disk-9", 20)];
    // The search must end within half the settle lock's life, so no second retry can take the
    // lock and settle the record too: a list that takes the lock's whole life is cut off.
    up.list_delay = flow.max_age;
    let started = tokio::time::Instant::now();
    let err = run(&flow, &up, &i).await.unwrap_err();
    assert!(
        matches!(err, GatewayError::SearchFailed(SearchFailed::TookTooLong)),
        "{err:?}"
    );
    assert_eq!(started.elapsed(), flow.max_age / 2);
    assert_eq!(up.creates(), 1, "nothing was bought again");
    assert!(matches!(
        state(&records, &i).await,
        Some(State::Unknown { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_retry_of_an_unknown_outcome_that_made_nothing_runs_again() {
    let (flow, records) = flow();
    let up = Upstream::new(&[Reply::Unknown, Reply::Made("disk-2")]);
    let i = intent(Some("k"), 20);
    unknown_create(&flow, &up, &records, &i).await;
    let retry = run(&flow, &up, &i).await.unwrap();
    assert_eq!(disk_of(&retry), "disk-2");
    assert_eq!((up.creates(), up.lists()), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn an_unknown_outcome_without_a_disk_order_cannot_be_reconciled() {
    let (flow, records) = flow();
    let up = Upstream::new(&[Reply::Unknown]);
    let mut i = intent(Some("k"), 20);
    i.disk = None;
    unknown_create(&flow, &up, &records, &i).await;
    let retry = run(&flow, &up, &i).await;
    assert!(
        matches!(retry, Err(GatewayError::CannotReconcile(_))),
        "{retry:?}"
    );
    assert_eq!((up.creates(), up.lists()), (1, 0));
    // The record stays unknown until it expires.
    assert!(matches!(
        state(&records, &i).await,
        Some(State::Unknown { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn one_settler_holds_the_lock_and_a_dead_holders_lock_expires() {
    let (flow, records) = flow();
    let up = Upstream::new(&[Reply::Unknown, Reply::Made("disk-2")]);
    let i = intent(Some("k"), 20);
    unknown_create(&flow, &up, &records, &i).await;
    // Another settler holds the record's lock, then dies without releasing it.
    let Keying::Keyed(rkey) = &i.keying else {
        unreachable!()
    };
    let lock = RecordKey::settle(rkey);
    let held = records.try_lock(lock.as_str(), flow.max_age).await.unwrap();
    assert!(matches!(held, Lock::Held(_)));
    let refused = run(&flow, &up, &i).await;
    assert!(
        matches!(
            refused,
            Err(GatewayError::StillRunning(StillRunning::BeingChecked))
        ),
        "{refused:?}"
    );
    assert_eq!((up.creates(), up.lists()), (1, 0));
    // Its lock lapses with its lifetime: the next retry settles the record.
    tokio::time::advance(flow.max_age).await;
    let retry = run(&flow, &up, &i).await.unwrap();
    assert_eq!(disk_of(&retry), "disk-2");
    assert_eq!((up.creates(), up.lists()), (2, 1));
    // And released its own lock when done.
    let next = records.try_lock(lock.as_str(), flow.max_age).await.unwrap();
    assert!(matches!(next, Lock::Held(_)), "{next:?}");
}

#[tokio::test(start_paused = true)]
async fn a_key_less_retry_of_an_unknown_outcome_settles_too() {
    let (flow, records) = flow();
    let up = Upstream::new(&[Reply::Unknown]);
    let i = intent(None, 20);
    match run(&flow, &up, &i).await {
        Err(GatewayError::OutcomeUnknown { keyed: false, .. }) => {}
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    assert!(matches!(
        state(&records, &i).await,
        Some(State::Unknown { .. })
    ));
    *up.listed.lock().unwrap() = vec![listed_disk("disk-7", 20)];
    let retry = run(&flow, &up, &i).await.unwrap();
    assert_eq!(disk_of(&retry), "disk-7");
    assert_eq!((up.creates(), up.lists()), (1, 1));
}
