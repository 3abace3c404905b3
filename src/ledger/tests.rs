//! The store's cases, each written once as a function of a [`Ledger`] and run by [`both!`] against
//! a real SQLite file (`sqlite::name`) and a real PostgreSQL server started for it on a free port
//! (`postgres::name`; a missing installation fails, never skips). What only PostgreSQL has (several
//! replicas on one database, a server that goes away, passwords, TLS) is in `postgres_only`.

mod postgres_only;

use std::time::Duration;

use super::db::Backend;
use super::*;
use crate::store::conformance::postgres_server::PgServer;

/// A ledger's longest wait for a connection in these tests: generous (the suite runs beside
/// others on small machines), yet short enough for a test of a server that is down.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A ledger under test, and what keeps its database alive (a folder or a server, dropped after
/// the ledger).
struct Under {
    ledger: Ledger,
    _db: Box<dyn std::any::Any + Send>,
}

impl Under {
    async fn sqlite() -> Under {
        let dir = tempdir::Dir::new();
        let ledger = Ledger::sqlite(&dir.path().join("l.sqlite"), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(ledger.backend, Backend::Sqlite);
        Under {
            ledger,
            _db: Box::new(dir),
        }
    }

    async fn postgres() -> Under {
        let pg = PgServer::start();
        let ledger = Ledger::connect(&pg.url(), 4, TIMEOUT).await.unwrap();
        assert_eq!(ledger.backend, Backend::Postgres);
        Under {
            ledger,
            _db: Box::new(pg),
        }
    }
}

/// Runs each named case (`async fn name(l: &Ledger)`, in this module) on both databases: as
/// `sqlite::name` and `postgres::name`.
macro_rules! both {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&super::Under::sqlite().await.ledger).await;
                }
            )+
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let under = super::Under::postgres().await;
                    super::$case(&under.ledger).await;
                    under.ledger.close().await;
                }
            )+
        }
    };
}

both!(
    an_entry_opens_settles_and_lists_newest_first,
    a_keyed_prior_is_the_entry_that_carried_it_out,
    the_sweep_marks_old_open_entries_and_retention_removes_old_ones,
    every_field_reads_back_as_written_nulls_included,
    a_second_settlement_overwrites_the_outcome_and_keeps_unset_fields,
    every_filter_narrows_a_listing_and_pages_follow_the_cursor,
    counts_read_back_as_integers,
    an_id_is_opened_once,
    the_unsettled_original_is_the_earliest_open_or_unknown_of_its_account,
    counts_since_a_moment_are_by_outcome,
);

mod tempdir {
    /// A folder removed when dropped.
    pub(super) struct Dir(std::path::PathBuf);
    impl Dir {
        pub(super) fn new() -> Dir {
            let p = std::env::temp_dir().join(format!("fgw-ledger-{:016x}", rand::random::<u64>()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub(super) fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A time past 2^31 seconds' worth of milliseconds: columns and binds must hold 64 bits.
const NOW: u64 = 1_780_000_000_000;

fn new_entry(id: &str, at_ms: u64, client: &str, key: Option<&str>) -> NewEntry {
    NewEntry {
        id: id.into(),
        at_ms,
        account: "default".into(),
        client: client.into(),
        route: "disk.create".into(),
        order: r#"{"area":"A","memory":20}"#.into(),
        gb: Some(20),
        idempotency_key: key.map(Into::into),
        fingerprint: "fp".into(),
        request_id: "r".into(),
        traceparent: None,
        replica: "here".into(),
    }
}

async fn an_entry_opens_settles_and_lists_newest_first(l: &Ledger) {
    for i in 0..5u64 {
        l.open(&new_entry(&new_id(1000 + i), 1000 + i, "a", None))
            .await
            .unwrap();
    }
    let page = l.list(&Filter::default(), 2, None).await.unwrap();
    assert_eq!(page.entries.len(), 2);
    assert_eq!(page.entries[0].at, 1004);
    let next = l
        .list(&Filter::default(), 10, page.next.as_deref())
        .await
        .unwrap();
    assert_eq!(next.entries.len(), 3);
    assert_eq!(next.entries[0].at, 1002);
    assert!(next.next.is_none());
    assert_eq!(l.open_count().await.unwrap(), 5);
    let id = &page.entries[0].id;
    let mut s = Settlement::new(Outcome::Bought, 2000);
    s.resource_id = Some("disk-1".into());
    l.settle(id, &s).await.unwrap();
    l.set_amount(id, "0.4").await.unwrap();
    let e = l.get(id).await.unwrap().unwrap();
    assert_eq!(
        (
            e.outcome.as_str(),
            e.resource_id.as_deref(),
            e.amount.as_deref()
        ),
        ("bought", Some("disk-1"), Some("0.4"))
    );
    assert_eq!(e.order["memory"], 20);
    let bought = Filter {
        outcome: Some(Outcome::Bought),
        ..Filter::default()
    };
    assert_eq!(l.list(&bought, 10, None).await.unwrap().entries.len(), 1);
}

async fn a_keyed_prior_is_the_entry_that_carried_it_out(l: &Ledger) {
    let first = new_id(1000);
    l.open(&new_entry(&first, 1000, "a", Some("k")))
        .await
        .unwrap();
    let mut s = Settlement::new(Outcome::Bought, 1001);
    s.answer = Some(StoredAnswer {
        status: 200,
        body: "{}".into(),
    });
    l.settle(&first, &s).await.unwrap();
    let replay = new_id(1002);
    l.open(&new_entry(&replay, 1002, "a", Some("k")))
        .await
        .unwrap();
    let mut r = Settlement::new(Outcome::Replayed, 1003);
    r.bought_by = Some(first.clone());
    l.settle(&replay, &r).await.unwrap();
    let prior = l.prior("a", "disk.create", "k", 0).await.unwrap().unwrap();
    assert_eq!(prior.id, first);
    assert_eq!(prior.answer.unwrap().status, 200);
    assert!(l.prior("b", "disk.create", "k", 0).await.unwrap().is_none());
    assert!(
        l.prior("a", "disk.create", "k", 1001)
            .await
            .unwrap()
            .is_none()
    );
    let from = l.answered_from(&first).await.unwrap();
    assert_eq!(from.len(), 1);
    assert_eq!(from[0].id, replay);
}

async fn the_sweep_marks_old_open_entries_and_retention_removes_old_ones(l: &Ledger) {
    l.open(&new_entry(&new_id(1000), 1000, "a", None))
        .await
        .unwrap();
    l.open(&new_entry(&new_id(5000), 5000, "a", None))
        .await
        .unwrap();
    assert_eq!(l.mark_unknown(2000, 6000).await.unwrap().len(), 1);
    assert_eq!(l.open_count().await.unwrap(), 1);
    let orig = l
        .unsettled_original("default", "fp", 0, &new_id(9000))
        .await
        .unwrap();
    assert!(orig.is_some());
    assert_eq!(l.remove_before(2000).await.unwrap(), 1);
    assert_eq!(l.spend_rows(0, 10_000).await.unwrap().len(), 1);
}

async fn every_field_reads_back_as_written_nulls_included(l: &Ledger) {
    // Every optional field set, 64-bit values included.
    let full = NewEntry {
        id: new_id(NOW),
        at_ms: NOW,
        account: "acct".into(),
        client: "svc".into(),
        route: "host.create_rent".into(),
        order: r#"{"hostPw":"***","n":[1,2]}"#.into(),
        gb: Some(4_000_000_000_000),
        idempotency_key: Some("key-1".into()),
        fingerprint: "f1".into(),
        request_id: "req-1".into(),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        replica: "replica-1".into(),
    };
    l.open(&full).await.unwrap();
    let mut s = Settlement::new(Outcome::Refused, NOW + 7);
    s.upstream_code = Some(-2_147_483_649);
    s.reason = Some("upstream: no stock".into());
    s.answer = Some(StoredAnswer {
        status: 422,
        body: r#"{"code":1}"#.into(),
    });
    l.settle(&full.id, &s).await.unwrap();
    let e = l.get(&full.id).await.unwrap().unwrap();
    assert_eq!(
        e,
        Entry {
            id: full.id.clone(),
            at: NOW as i64,
            settled_at: Some(NOW as i64 + 7),
            account: "acct".into(),
            client: "svc".into(),
            route: "host.create_rent".into(),
            order: serde_json::json!({"hostPw": "***", "n": [1, 2]}),
            gb: Some(4_000_000_000_000),
            idempotency_key: Some("key-1".into()),
            request_id: "req-1".into(),
            traceparent: full.traceparent.clone(),
            replica: "replica-1".into(),
            outcome: "refused".into(),
            resource_id: None,
            amount: None,
            upstream_code: Some(-2_147_483_649),
            reason: Some("upstream: no stock".into()),
            bought_by: None,
        }
    );

    // Every optional field unset: NULLs read back as `None`, in every read.
    let bare = NewEntry {
        gb: None,
        idempotency_key: None,
        traceparent: None,
        ..new_entry(&new_id(NOW + 1), NOW + 1, "bare", None)
    };
    l.open(&bare).await.unwrap();
    let e = l.get(&bare.id).await.unwrap().unwrap();
    assert_eq!(
        (e.settled_at, e.gb, e.idempotency_key, e.traceparent),
        (None, None, None, None)
    );
    assert_eq!(
        (
            e.resource_id,
            e.amount,
            e.upstream_code,
            e.reason,
            e.bought_by
        ),
        (None, None, None, None, None)
    );
    let listed = l.list(&Filter::default(), 10, None).await.unwrap().entries;
    assert_eq!(listed.len(), 2);
    assert_eq!(
        (listed[0].id.as_str(), listed[0].gb),
        (bare.id.as_str(), None)
    );
    let rows = l.spend_rows(NOW, NOW + 2).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].at_ms, rows[0].gb, rows[0].outcome),
        (NOW as i64, Some(4_000_000_000_000), Outcome::Refused)
    );
    assert_eq!(
        (rows[1].gb, rows[1].amount.as_deref(), rows[1].outcome),
        (None, None, Outcome::Open)
    );
    assert!(l.get("no-such-id").await.unwrap().is_none());
}

async fn a_second_settlement_overwrites_the_outcome_and_keeps_unset_fields(l: &Ledger) {
    let id = new_id(NOW);
    l.open(&new_entry(&id, NOW, "a", Some("k"))).await.unwrap();
    let mut unknown = Settlement::new(Outcome::Unknown, NOW + 1);
    unknown.reason = Some("no answer".into());
    l.settle(&id, &unknown).await.unwrap();
    let prior = l.prior("a", "disk.create", "k", 0).await.unwrap().unwrap();
    assert_eq!((prior.outcome, prior.answer), (Outcome::Unknown, None));

    let mut reconciled = Settlement::new(Outcome::Reconciled, NOW + 2);
    reconciled.resource_id = Some("disk-9".into());
    reconciled.answer = Some(StoredAnswer {
        status: 200,
        body: "{}".into(),
    });
    l.settle(&id, &reconciled).await.unwrap();
    let e = l.get(&id).await.unwrap().unwrap();
    assert_eq!(
        (
            e.outcome.as_str(),
            e.settled_at,
            e.resource_id.as_deref(),
            e.reason.as_deref()
        ),
        (
            "reconciled",
            Some(NOW as i64 + 2),
            Some("disk-9"),
            Some("no answer")
        )
    );
    let prior = l.prior("a", "disk.create", "k", 0).await.unwrap().unwrap();
    assert_eq!(prior.outcome, Outcome::Reconciled);
    assert_eq!(prior.at_ms, NOW as i64);
    assert_eq!(prior.fingerprint, "fp");
    assert_eq!(
        prior.answer,
        Some(StoredAnswer {
            status: 200,
            body: "{}".into()
        })
    );
}

async fn every_filter_narrows_a_listing_and_pages_follow_the_cursor(l: &Ledger) {
    // 30 entries: clients c0..c2, accounts a0..a1, routes by parity, one key each.
    for i in 0..30u64 {
        let at = NOW + i;
        let e = NewEntry {
            account: format!("a{}", i % 2),
            route: if i % 2 == 0 {
                "disk.create"
            } else {
                "host.create_quantity"
            }
            .into(),
            ..new_entry(
                &new_id(at),
                at,
                &format!("c{}", i % 3),
                Some(&format!("k{i}")),
            )
        };
        l.open(&e).await.unwrap();
        if i % 5 == 0 {
            l.settle(&e.id, &Settlement::new(Outcome::Bought, at + 1))
                .await
                .unwrap();
        }
    }
    let count = |f: Filter| async move { l.list(&f, 1000, None).await.unwrap().entries };
    let by_client = count(Filter {
        client: Some("c1".into()),
        ..Filter::default()
    })
    .await;
    assert_eq!(by_client.len(), 10);
    assert!(by_client.iter().all(|e| e.client == "c1"));
    assert!(
        by_client.windows(2).all(|w| w[0].id > w[1].id),
        "newest first"
    );
    let f = |account: &str, route: &str| Filter {
        account: Some(account.into()),
        route: Some(route.into()),
        ..Filter::default()
    };
    assert_eq!(count(f("a0", "disk.create")).await.len(), 15);
    assert_eq!(count(f("a0", "host.create_quantity")).await.len(), 0);
    let bought = count(Filter {
        outcome: Some(Outcome::Bought),
        ..Filter::default()
    })
    .await;
    assert_eq!(bought.len(), 6);
    let window = count(Filter {
        since_ms: Some(NOW + 10),
        until_ms: Some(NOW + 20),
        ..Filter::default()
    })
    .await;
    assert_eq!(
        window.iter().map(|e| e.at).collect::<Vec<_>>(),
        (10..20).rev().map(|i| (NOW + i) as i64).collect::<Vec<_>>()
    );
    let keyed = count(Filter {
        key: Some("k7".into()),
        client: Some("c1".into()),
        ..Filter::default()
    })
    .await;
    assert_eq!(keyed.len(), 1);
    assert_eq!(keyed[0].at, (NOW + 7) as i64);

    // Pages of 4 over one client's 10 entries: 4, 4, 2, each after the last one's cursor.
    let only_c1 = Filter {
        client: Some("c1".into()),
        ..Filter::default()
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = l.list(&only_c1, 4, cursor.as_deref()).await.unwrap();
        seen.extend(page.entries.into_iter().map(|e| e.id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(
        seen,
        by_client.iter().map(|e| e.id.clone()).collect::<Vec<_>>()
    );
}

async fn counts_read_back_as_integers(l: &Ledger) {
    assert_eq!(l.open_count().await.unwrap(), 0);
    assert_eq!(l.mark_unknown(NOW, NOW).await.unwrap().len(), 0);
    assert_eq!(l.remove_before(NOW).await.unwrap(), 0);
    for i in 0..3 {
        l.open(&new_entry(&new_id(NOW + i), NOW + i, "a", None))
            .await
            .unwrap();
    }
    assert_eq!(l.open_count().await.unwrap(), 3);
    assert_eq!(l.mark_unknown(NOW + 2, NOW + 10).await.unwrap().len(), 2);
    assert_eq!(l.open_count().await.unwrap(), 1);
    assert_eq!(l.remove_before(NOW + 3).await.unwrap(), 3);
    assert_eq!(l.open_count().await.unwrap(), 0);
}

async fn counts_since_a_moment_are_by_outcome(l: &Ledger) {
    assert!(l.counts_since(0).await.unwrap().is_empty());
    // Before the moment: not counted, whatever its outcome.
    let old = new_id(NOW - 1);
    l.open(&new_entry(&old, NOW - 1, "a", None)).await.unwrap();
    l.settle(&old, &Settlement::new(Outcome::Bought, NOW))
        .await
        .unwrap();
    let outcomes = [
        Outcome::Bought,
        Outcome::Bought,
        Outcome::Refused,
        Outcome::Unknown,
        Outcome::Open,
    ];
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let at = NOW + i as u64;
        let id = new_id(at);
        l.open(&new_entry(&id, at, "a", None)).await.unwrap();
        if outcome != Outcome::Open {
            l.settle(&id, &Settlement::new(outcome, at + 1))
                .await
                .unwrap();
        }
    }
    let mut counts = l.counts_since(NOW).await.unwrap();
    counts.sort_by_key(|(o, _)| o.as_str());
    assert_eq!(
        counts,
        [
            (Outcome::Bought, 2),
            (Outcome::Open, 1),
            (Outcome::Refused, 1),
            (Outcome::Unknown, 1)
        ]
    );
    assert_eq!(l.counts_since(NOW + 5).await.unwrap(), []);
}

async fn an_id_is_opened_once(l: &Ledger) {
    let id = new_id(NOW);
    l.open(&new_entry(&id, NOW, "a", None)).await.unwrap();
    let again = l.open(&new_entry(&id, NOW, "b", None)).await;
    assert!(matches!(again, Err(LedgerError::Db(_))), "{again:?}");
    assert_eq!(l.get(&id).await.unwrap().unwrap().client, "a");
}

async fn the_unsettled_original_is_the_earliest_open_or_unknown_of_its_account(l: &Ledger) {
    let ids: Vec<String> = (0..4).map(|i| new_id(NOW + i)).collect();
    for (i, id) in ids.iter().enumerate() {
        l.open(&new_entry(id, NOW + i as u64, "a", None))
            .await
            .unwrap();
    }
    l.settle(&ids[0], &Settlement::new(Outcome::Failed, NOW + 9))
        .await
        .unwrap();
    l.settle(&ids[1], &Settlement::new(Outcome::Unknown, NOW + 9))
        .await
        .unwrap();
    let found = |before: &str, since: u64| {
        let before = before.to_string();
        async move {
            l.unsettled_original("default", "fp", since, &before)
                .await
                .unwrap()
        }
    };
    assert_eq!(found(&ids[3], 0).await.as_deref(), Some(ids[1].as_str()));
    assert_eq!(found(&ids[1], 0).await, None, "only earlier entries");
    assert_eq!(
        found(&ids[3], NOW + 2).await.as_deref(),
        Some(ids[2].as_str())
    );
    assert_eq!(
        l.unsettled_original("other", "fp", 0, &ids[3])
            .await
            .unwrap(),
        None
    );
}
