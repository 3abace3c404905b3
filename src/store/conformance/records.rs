//! [`RecordStore`]: a record is written once (the first writer wins, the others read its record),
//! read back as written, replaced, removed and expired; a renewal never brings back a record that
//! moved on; each owner holds at most its maximum of live keys.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::Stores;
use crate::cache::answer::Answer;
use crate::clock::now_ms;
use crate::protect::records::{Begin, Hold, Record, RecordStore, State, in_flight};

const TTL: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(30);

fn done(fingerprint: &str, body: &'static str) -> Record {
    Record {
        fingerprint: fingerprint.into(),
        state: State::Done(Arc::new(Answer {
            status: StatusCode::CREATED,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
            head: None,
        })),
        ttl: TTL,
    }
}

/// The fingerprint of what `begin` found, or `None` when it started.
async fn begin(store: &dyn RecordStore, key: &str, fingerprint: &str) -> Option<Record> {
    match store.begin(key, in_flight(fingerprint, TTL, LEASE)).await {
        Ok(Begin::Started) => None,
        Ok(Begin::Exists(found)) => Some(found),
        other => panic!("begin {key}: {other:?}"),
    }
}

fn lease_of(r: &Record) -> Option<u64> {
    match r.state {
        State::InFlight { lease_until_ms, .. } => lease_until_ms,
        _ => None,
    }
}

async fn the_first_begin_starts_and_later_ones_read_its_record(stores: &Stores) {
    let store = stores.records();
    assert!(begin(&*store, "k", "first").await.is_none(), "started");
    let found = begin(&*store, "k", "second").await.expect("exists");
    assert_eq!(&*found.fingerprint, "first");
    assert!(matches!(found.state, State::InFlight { .. }), "{found:?}");
    assert!(
        begin(&*store, "other", "second").await.is_none(),
        "another key starts on its own"
    );
}

async fn concurrent_begins_on_several_handles_start_exactly_once(stores: &Stores) {
    let begins = (0..8).map(|i| {
        let store = stores.records();
        tokio::spawn(async move { begin(&*store, "k", &format!("writer-{i}")).await })
    });
    let outcomes: Vec<_> = futures_util::future::join_all(begins)
        .await
        .into_iter()
        .map(|r| r.expect("no panic"))
        .collect();
    let started = outcomes.iter().filter(|o| o.is_none()).count();
    assert_eq!(started, 1, "one writer wins: {outcomes:?}");
    let winner = stores.records().get("k").await.unwrap().expect("a record");
    for found in outcomes.iter().flatten() {
        assert_eq!(
            found.fingerprint, winner.fingerprint,
            "each loser reads the winner's"
        );
    }
}

async fn get_reads_what_set_wrote_and_nothing_for_an_absent_key(stores: &Stores) {
    let store = stores.records();
    assert!(store.get("k").await.unwrap().is_none());
    store.set("k", done("fp", "{\"code\":0}")).await.unwrap();
    let got = stores.records().get("k").await.unwrap().expect("stored");
    assert_eq!(&*got.fingerprint, "fp");
    assert_eq!(got.ttl, TTL);
    let State::Done(answer) = &got.state else {
        panic!("{got:?}");
    };
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(&answer.body[..], b"{\"code\":0}");
}

async fn set_replaces_an_in_flight_record_and_begin_then_finds_it(stores: &Stores) {
    let store = stores.records();
    assert!(begin(&*store, "k", "fp").await.is_none());
    store.set("k", done("fp", "answer")).await.unwrap();
    let found = begin(&*stores.records(), "k", "fp").await.expect("exists");
    assert!(matches!(found.state, State::Done(_)), "{found:?}");
    store
        .set(
            "k",
            Record {
                state: State::Unknown { sent_at_ms: 7 },
                ..done("fp", "")
            },
        )
        .await
        .unwrap();
    let got = store.get("k").await.unwrap().expect("stored");
    assert!(
        matches!(got.state, State::Unknown { sent_at_ms: 7 }),
        "{got:?}"
    );
}

async fn remove_lets_a_new_begin_start(stores: &Stores) {
    let store = stores.records();
    assert!(begin(&*store, "k", "fp").await.is_none());
    stores.records().remove("k").await.unwrap();
    assert!(store.get("k").await.unwrap().is_none());
    assert!(begin(&*store, "k", "fp").await.is_none(), "started again");
    store.remove("absent").await.unwrap();
}

async fn a_record_expires_after_its_ttl(stores: &Stores) {
    let store = stores.records();
    let short = Duration::from_millis(300);
    let started = store.begin("k", in_flight("fp", short, LEASE)).await;
    assert!(matches!(started, Ok(Begin::Started)), "{started:?}");
    store
        .set(
            "set",
            Record {
                ttl: short,
                ..done("fp", "")
            },
        )
        .await
        .unwrap();
    store.set("kept", done("fp", "")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(store.get("k").await.unwrap().is_none(), "begun, expired");
    assert!(store.get("set").await.unwrap().is_none(), "set, expired");
    assert!(store.get("kept").await.unwrap().is_some(), "a longer TTL");
    assert!(begin(&*store, "k", "fp").await.is_none(), "started anew");
}

async fn renew_moves_the_lease_of_the_same_in_flight_record_only(stores: &Stores) {
    let store = stores.records();
    let first = in_flight("fp", TTL, LEASE);
    assert!(matches!(
        store.begin("k", first.clone()).await,
        Ok(Begin::Started)
    ));
    let until = lease_of(&first).unwrap() + 60_000;
    let renewed = first.renewed(until).unwrap();
    assert!(stores.records().renew("k", renewed.clone()).await.unwrap());
    let got = store.get("k").await.unwrap().expect("stored");
    assert_eq!(lease_of(&got), Some(until), "{got:?}");

    // A record of another start (removed and begun again) is not the one renewed.
    store.remove("k").await.unwrap();
    let reopened = Record {
        state: State::InFlight {
            started_ms: now_ms() + 5_000,
            lease_until_ms: Some(now_ms() + 10_000),
        },
        ..first.clone()
    };
    assert!(matches!(
        store.begin("k", reopened).await,
        Ok(Begin::Started)
    ));
    assert!(!store.renew("k", renewed.clone()).await.unwrap());
    let got = store.get("k").await.unwrap().expect("stored");
    assert_ne!(lease_of(&got), Some(until), "the reopened record is kept");

    // A finished record, or none, is never brought back.
    store.set("k", done("fp", "answer")).await.unwrap();
    assert!(!store.renew("k", renewed.clone()).await.unwrap());
    let got = store.get("k").await.unwrap().expect("stored");
    assert!(matches!(got.state, State::Done(_)), "{got:?}");
    assert!(!store.renew("absent", renewed).await.unwrap());
    assert!(store.get("absent").await.unwrap().is_none());
}

async fn an_owner_holds_at_most_max_live_keys(stores: &Stores) {
    let store = stores.records();
    let now = now_ms();
    let (soon, later) = (now + 60_000, now + 120_000);
    assert_eq!(store.hold("o", "k1", soon, 2).await.unwrap(), Hold::Held);
    assert_eq!(store.hold("o", "k2", later, 2).await.unwrap(), Hold::Held);
    assert_eq!(
        store.hold("o", "k3", later, 2).await.unwrap(),
        Hold::Full { frees_at_ms: soon },
        "full; the soonest of the held frees first"
    );
    // A key already held only has its time moved; another owner is not affected.
    assert_eq!(store.hold("o", "k1", later, 2).await.unwrap(), Hold::Held);
    assert_eq!(store.hold("p", "k3", later, 2).await.unwrap(), Hold::Held);
    // A released key frees its place.
    stores.records().release("o", "k1").await.unwrap();
    assert_eq!(store.hold("o", "k3", later, 2).await.unwrap(), Hold::Held);
    assert!(matches!(
        store.hold("o", "k4", later, 2).await.unwrap(),
        Hold::Full { .. }
    ));
}

async fn a_hold_past_its_time_no_longer_counts(stores: &Stores) {
    let store = stores.records();
    let now = now_ms();
    assert_eq!(
        store.hold("o", "k1", now + 200, 1).await.unwrap(),
        Hold::Held
    );
    assert!(store.holds_other("o", "k2").await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!store.holds_other("o", "k2").await.unwrap(), "lapsed");
    let later = now_ms() + 60_000;
    assert_eq!(store.hold("o", "k2", later, 1).await.unwrap(), Hold::Held);
}

async fn holds_other_sees_only_other_live_keys(stores: &Stores) {
    let store = stores.records();
    let until = now_ms() + 60_000;
    assert!(
        !store.holds_other("o", "k1").await.unwrap(),
        "holds nothing"
    );
    store.hold("o", "k1", until, 5).await.unwrap();
    assert!(!store.holds_other("o", "k1").await.unwrap(), "only k1");
    assert!(stores.records().holds_other("o", "k2").await.unwrap());
    assert!(!store.holds_other("p", "k2").await.unwrap(), "per owner");
    store.release("o", "k1").await.unwrap();
    assert!(!store.holds_other("o", "k2").await.unwrap(), "released");
}

async fn concurrent_holds_on_several_handles_never_pass_max(stores: &Stores) {
    let until = now_ms() + 60_000;
    let holds = (0..10).map(|i| {
        let store = stores.records();
        tokio::spawn(async move { store.hold("o", &format!("k{i}"), until, 3).await })
    });
    let held = futures_util::future::join_all(holds)
        .await
        .into_iter()
        .filter(|h| matches!(h, Ok(Ok(Hold::Held))))
        .count();
    assert_eq!(held, 3);
}

conformance!(
    the_first_begin_starts_and_later_ones_read_its_record,
    concurrent_begins_on_several_handles_start_exactly_once,
    get_reads_what_set_wrote_and_nothing_for_an_absent_key,
    set_replaces_an_in_flight_record_and_begin_then_finds_it,
    remove_lets_a_new_begin_start,
    a_record_expires_after_its_ttl,
    renew_moves_the_lease_of_the_same_in_flight_record_only,
    an_owner_holds_at_most_max_live_keys,
    a_hold_past_its_time_no_longer_counts,
    holds_other_sees_only_other_live_keys,
    concurrent_holds_on_several_handles_never_pass_max,
);
