//! What the layers' own tests share, so that each builds its layer around a fake inner service in
//! a few lines (as tower-http tests its middleware): the typed values a layer receives, built in
//! one call; a [`Log`] of what the fake inner service saw; the upstream's answers as the
//! forwarder hands them up; a body that arrives in chunks or stalls.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{Method, Request, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};

use crate::admitted::{Admitted, AdmittedRequest, Call, Caller, RequestId, Spend, Target};
use crate::cache::Cache;
use crate::cache::policy::{CachePolicy, CacheSettings};
use crate::config::{Credentials, Egress, TokenConfig, UpstreamConfig};
use crate::envelope::EnvelopeHead;
use crate::metrics::Metrics;
use crate::routes::{Route, classify};
use crate::secret::Secret;
use crate::store::memory::MemoryStore;
use crate::svc::Resp;
use crate::upstream::{AccountHandle, TokenBroker, UpstreamClient};

/// The request id every helper gives its request (the `traceId` of rendered errors).
pub(crate) const REQUEST_ID: &str = "req-test-1";

/// The fixed upstream token of [`account`]'s broker.
pub(crate) const FIXED_TOKEN: &str = "upstream-token";

/// A disk create that passes validation.
pub(crate) const DISK_CREATE_BODY: &str = r#"{"area":0,"memory":20,"isMount":0}"#;

/// An upstream client that is never used to send (each helper's broker holds a fixed token).
pub(crate) fn upstream_client(metrics: &Arc<Metrics>) -> UpstreamClient {
    UpstreamClient::new(
        &UpstreamConfig::default(),
        &Egress::default(),
        &[],
        metrics.clone(),
    )
    .expect("an upstream client with default settings")
}

/// An account whose broker holds a fixed token: no `getToken` is ever sent.
pub(crate) fn account(name: &str) -> Arc<AccountHandle> {
    let metrics = Arc::new(Metrics::new());
    let base_url = "http://127.0.0.1:9";
    let credentials = Credentials::Fixed {
        token: Secret::new(FIXED_TOKEN),
    };
    let broker = TokenBroker::new(
        name,
        base_url,
        &credentials,
        upstream_client(&metrics),
        TokenConfig::default(),
        metrics,
    )
    .expect("a broker with a fixed token");
    Arc::new(AccountHandle {
        name: name.into(),
        base_url: base_url.into(),
        broker: Arc::new(broker),
    })
}

/// The client `client` of `account`.
pub(crate) fn caller(client: &str, account: &Arc<AccountHandle>) -> Caller {
    Caller {
        client: client.into(),
        account: account.clone(),
        counts: std::sync::Arc::default(),
    }
}

/// A request with the test's request id, as the request-id layer leaves it.
pub(crate) fn request<B>(method: Method, uri: &str, body: B) -> Request<B> {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .expect("a valid request");
    req.extensions_mut().insert(RequestId(REQUEST_ID.into()));
    req
}

/// A call of `caller` to the route `method` and `uri` name, as the pipeline switch makes it.
pub(crate) fn call(caller: &Caller, method: Method, uri: &str, body: &str) -> Call {
    let req = request(method, uri, Bytes::from(body.to_owned()));
    let route = classify(req.method(), req.uri().path()).expect("the uri names a route");
    Call {
        id: RequestId(REQUEST_ID.into()),
        route,
        caller: caller.clone(),
        cache_key: None,
        req,
    }
}

/// A read of disk `id` (`disk.info`, cached by default).
pub(crate) fn disk_info(caller: &Caller, id: &str) -> Call {
    let uri = format!("/v1/PveMachineHardDisk/open/info/{id}");
    call(caller, Method::GET, &uri, "")
}

/// A checked disk create of `caller`.
pub(crate) fn spend(caller: &Caller) -> Spend {
    let call = call(
        caller,
        Method::POST,
        "/v1/PveMachineHardDisk/open/create",
        DISK_CREATE_BODY,
    );
    let order = crate::protect::validate::check(Route::DiskCreate, DISK_CREATE_BODY.as_bytes())
        .expect("a valid create")
        .expect("a create route");
    Spend { call, order }
}

/// `req` admitted for `caller`, as admission hands it down.
pub(crate) fn admitted<B>(caller: &Caller, req: Request<B>) -> AdmittedRequest<B> {
    let route = classify(req.method(), req.uri().path()).expect("the uri names a route");
    AdmittedRequest {
        admitted: Admitted {
            id: RequestId::of(&req),
            target: Target::Route(route),
            caller: caller.clone(),
            cache_key: None,
        },
        req,
    }
}

/// An upstream answer of HTTP `status` and envelope `code`, its head parsed as the forwarder
/// parses it.
pub(crate) fn answer(status: StatusCode, code: i64) -> Resp {
    let body = format!(
        r#"{{"code":{code},"success":{},"msg":"m","data":{{"n":1}}}}"#,
        code == 0
    );
    let head = EnvelopeHead::parse(body.as_bytes()).expect("an envelope");
    let mut resp = Resp::new(Bytes::from(body));
    *resp.status_mut() = status;
    resp.extensions_mut().insert(head);
    resp
}

/// An upstream success.
pub(crate) fn ok() -> Resp {
    answer(StatusCode::OK, 0)
}

/// The envelope code of an answer's body.
pub(crate) fn code_of(resp: &Resp) -> i64 {
    let v: serde_json::Value = serde_json::from_slice(resp.body()).expect("a JSON body");
    v["code"].as_i64().expect("a numeric code")
}

/// A header's value as text (`""` when absent).
pub(crate) fn header<'a>(resp: &'a Resp, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .map_or("", |v| v.to_str().expect("a text header"))
}

/// A body that arrives in `chunks`, then ends, or, with `stalls`, never ends.
pub(crate) fn streamed(chunks: &[&'static str], stalls: bool) -> UnsyncBoxBody<Bytes, Infallible> {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
        .collect();
    let tail = if stalls {
        stream::pending().boxed()
    } else {
        stream::empty().boxed()
    };
    StreamBody::new(stream::iter(frames).chain(tail)).boxed_unsync()
}

/// An in-memory cache that caches `disk.info` (5 s fresh, 5 s stale-while-revalidate, 5 min
/// stale-if-error) and nothing else.
pub(crate) fn memory_cache() -> Arc<Cache> {
    let policy = CachePolicy {
        ttl: Duration::from_secs(5),
        stale_while_revalidate: Duration::from_secs(5),
        stale_if_error: Duration::from_secs(300),
        status_ttl: std::collections::BTreeMap::new(),
    };
    let settings = CacheSettings {
        max_bytes: 1 << 20,
        routes: [(Route::DiskInfo, policy)].into_iter().collect(),
    };
    let store = Arc::new(MemoryStore::new(settings.max_bytes));
    Arc::new(Cache::new(&settings, store, Arc::new(Metrics::new())))
}

/// What a fake inner service received, in order; clones share it.
pub(crate) struct Log<T>(Arc<Mutex<Vec<T>>>);

impl<T> Clone for Log<T> {
    fn clone(&self) -> Self {
        Log(self.0.clone())
    }
}

impl<T> Default for Log<T> {
    fn default() -> Self {
        Log(Arc::default())
    }
}

impl<T: Clone> Log<T> {
    pub(crate) fn push(&self, seen: T) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(seen);
    }

    /// How many calls the inner service got.
    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub(crate) fn all(&self) -> Vec<T> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// How long a test waits for a layer before it calls the layer stuck.
const STUCK: Duration = Duration::from_secs(5);

/// `fut`'s output, or a panic naming `layer` when it is still pending after 5 s (of tokio's
/// clock: paused, that is virtual time): a layer that hangs fails its test instead of stalling
/// the run.
pub(crate) async fn within<F: Future>(layer: &str, fut: F) -> F::Output {
    tokio::time::timeout(STUCK, fut)
        .await
        .unwrap_or_else(|_| panic!("{layer}: still pending after {STUCK:?}"))
}

/// Waits until `done` holds, or panics naming `layer` after 5 s.
pub(crate) async fn until(layer: &str, mut done: impl FnMut() -> bool) {
    within(layer, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}
