//! [`CacheStore`]: an entry is read back as stored, by this handle and by another; invalidations
//! drop what they name and nothing else; a claimed fill is stored and a released claim can be
//! claimed again; an entry goes once it can no longer be served.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use super::{ACCOUNTS, Stores};
use crate::cache::answer::Answer;
use crate::cache::entry::Entry;
use crate::cache::key::CacheKey;
use crate::routes::Route;
use crate::store::{CacheStore, Claim, Invalidation};

const A: &str = ACCOUNTS[0];
const B: &str = ACCOUNTS[1];

/// An entry whose body is `body`, fresh for `fresh` and of no use after it.
fn entry(body: &'static str, fresh: Duration) -> Arc<Entry> {
    let answer = Answer {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: Bytes::from_static(body.as_bytes()),
        head: None,
    };
    Arc::new(Entry::restored(
        &answer,
        Instant::now(),
        [fresh, Duration::ZERO, Duration::ZERO],
    ))
}

fn long(body: &'static str) -> Arc<Entry> {
    entry(body, Duration::from_secs(60))
}

fn key(account: &str, route: Route, id: &str) -> CacheKey {
    CacheKey::new(account, route, id)
}

/// The body of the entry `store` holds for `k`.
async fn body(store: &dyn CacheStore, k: &CacheKey) -> Option<Bytes> {
    store.get(k).await.map(|e| e.answer.body())
}

async fn an_entry_is_read_back_by_this_handle_and_another(stores: &Stores) {
    let (store, other) = (stores.cache(), stores.cache());
    let k = key(A, Route::DiskInfo, "disk-1");
    assert!(store.get(&k).await.is_none());
    store.put(k.clone(), long("one")).await;
    assert_eq!(body(&*store, &k).await.as_deref(), Some(&b"one"[..]));
    assert!(store.peek(&k).is_some(), "held in this replica's memory");
    assert_eq!(body(&*other, &k).await.as_deref(), Some(&b"one"[..]));
    assert!(
        store
            .get(&key(B, Route::DiskInfo, "disk-1"))
            .await
            .is_none(),
        "another account's key"
    );
}

async fn a_put_replaces_the_entry(stores: &Stores) {
    let store = stores.cache();
    let k = key(A, Route::DiskInfo, "disk-1");
    store.put(k.clone(), long("old")).await;
    store.put(k.clone(), long("new")).await;
    assert_eq!(body(&*store, &k).await.as_deref(), Some(&b"new"[..]));
    assert_eq!(
        body(&*stores.cache(), &k).await.as_deref(),
        Some(&b"new"[..])
    );
}

async fn invalidating_a_key_drops_that_entry_only(stores: &Stores) {
    let store = stores.cache();
    let (gone, kept) = (
        key(A, Route::DiskInfo, "disk-1"),
        key(A, Route::DiskInfo, "disk-2"),
    );
    store.put(gone.clone(), long("gone")).await;
    store.put(kept.clone(), long("kept")).await;
    store.invalidate(Invalidation::Key(gone.clone())).await;
    assert!(store.get(&gone).await.is_none());
    assert!(store.peek(&gone).is_none());
    assert!(
        stores.cache().get(&gone).await.is_none(),
        "for every handle"
    );
    assert!(store.get(&kept).await.is_some());
}

async fn invalidating_a_route_of_an_account_spares_other_routes_and_accounts(stores: &Stores) {
    let store = stores.cache();
    let pages = [
        key(A, Route::DiskList, "page-1"),
        key(A, Route::DiskList, "page-2"),
    ];
    let other_account = key(B, Route::DiskList, "page-1");
    let other_route = key(A, Route::DiskInfo, "disk-1");
    for k in pages.iter().chain([&other_account, &other_route]) {
        store.put(k.clone(), long("x")).await;
    }
    store
        .invalidate(Invalidation::Route {
            account: A.into(),
            route: Route::DiskList,
        })
        .await;
    for k in &pages {
        assert!(store.get(k).await.is_none(), "{k:?}");
        assert!(stores.cache().get(k).await.is_none(), "{k:?}");
    }
    assert!(store.get(&other_account).await.is_some());
    assert!(store.get(&other_route).await.is_some());
    // A page stored after the invalidation is served.
    store.put(pages[0].clone(), long("new")).await;
    assert_eq!(body(&*store, &pages[0]).await.as_deref(), Some(&b"new"[..]));
}

async fn invalidating_a_route_in_every_account_spares_other_routes(stores: &Stores) {
    let store = stores.cache();
    let lists = [key(A, Route::DiskList, "p"), key(B, Route::DiskList, "p")];
    let info = key(B, Route::DiskInfo, "disk-1");
    for k in lists.iter().chain([&info]) {
        store.put(k.clone(), long("x")).await;
    }
    store
        .invalidate(Invalidation::AnyAccount(Route::DiskList))
        .await;
    for k in &lists {
        assert!(store.get(k).await.is_none(), "{k:?}");
        assert!(stores.cache().get(k).await.is_none(), "{k:?}");
    }
    assert!(store.get(&info).await.is_some());
}

async fn invalidating_all_drops_every_entry(stores: &Stores) {
    let store = stores.cache();
    let keys = [
        key(A, Route::DiskInfo, "disk-1"),
        key(B, Route::DiskList, "p"),
    ];
    for k in &keys {
        store.put(k.clone(), long("x")).await;
    }
    store.invalidate(Invalidation::All).await;
    for k in &keys {
        assert!(store.get(k).await.is_none(), "{k:?}");
        assert!(stores.cache().get(k).await.is_none(), "{k:?}");
    }
}

async fn drop_if_held_drops_a_held_entry_and_minds_no_absent_one(stores: &Stores) {
    let store = stores.cache();
    let (held, kept) = (
        key(A, Route::DiskInfo, "disk-1"),
        key(A, Route::DiskInfo, "disk-2"),
    );
    store.put(held.clone(), long("x")).await;
    store.put(kept.clone(), long("y")).await;
    store.drop_if_held(held.clone()).await;
    store.drop_if_held(key(A, Route::DiskInfo, "never")).await;
    assert!(store.get(&held).await.is_none());
    assert!(stores.cache().get(&held).await.is_none());
    assert!(store.get(&kept).await.is_some());
}

async fn a_claimed_fill_is_stored_for_every_handle(stores: &Stores) {
    let store = stores.cache();
    let k = key(A, Route::DiskInfo, "disk-1");
    let Claim::Claimed(ticket) = store.claim_fill(&k).await else {
        panic!("nobody else fills this key");
    };
    assert!(store.put_filled(k.clone(), long("filled"), ticket).await);
    assert_eq!(body(&*store, &k).await.as_deref(), Some(&b"filled"[..]));
    assert_eq!(
        body(&*stores.cache(), &k).await.as_deref(),
        Some(&b"filled"[..])
    );
    // The claim ended with the fill: the next one is granted.
    assert!(matches!(store.claim_fill(&k).await, Claim::Claimed(_)));
}

async fn a_released_claim_stores_nothing_and_can_be_claimed_again(stores: &Stores) {
    let store = stores.cache();
    let k = key(A, Route::DiskInfo, "disk-1");
    let Claim::Claimed(ticket) = store.claim_fill(&k).await else {
        panic!("claimed");
    };
    store.release_fill(&k, ticket).await;
    assert!(store.get(&k).await.is_none());
    assert!(matches!(
        stores.cache().claim_fill(&k).await,
        Claim::Claimed(_)
    ));
}

async fn an_entry_goes_once_it_can_no_longer_be_served(stores: &Stores) {
    let store = stores.cache();
    let (short, kept) = (
        key(A, Route::DiskInfo, "short"),
        key(A, Route::DiskInfo, "kept"),
    );
    store
        .put(short.clone(), entry("x", Duration::from_millis(200)))
        .await;
    store.put(kept.clone(), long("y")).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(store.get(&short).await.is_none());
    assert!(stores.cache().get(&short).await.is_none());
    assert!(store.get(&kept).await.is_some());
}

async fn usage_counts_the_entries_held(stores: &Stores) {
    let store = stores.cache();
    for id in ["d1", "d2", "d3"] {
        store.put(key(A, Route::DiskInfo, id), long("x")).await;
    }
    let usage = store.usage();
    assert_eq!(usage.entries, 3, "{usage:?}");
    assert!(usage.bytes > 0, "{usage:?}");
}

conformance!(
    an_entry_is_read_back_by_this_handle_and_another,
    a_put_replaces_the_entry,
    invalidating_a_key_drops_that_entry_only,
    invalidating_a_route_of_an_account_spares_other_routes_and_accounts,
    invalidating_a_route_in_every_account_spares_other_routes,
    invalidating_all_drops_every_entry,
    drop_if_held_drops_a_held_entry_and_minds_no_absent_one,
    a_claimed_fill_is_stored_for_every_handle,
    a_released_claim_stores_nothing_and_can_be_claimed_again,
    an_entry_goes_once_it_can_no_longer_be_served,
    usage_counts_the_entries_held,
);
