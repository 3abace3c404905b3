//! The store against a real SQLite file (PostgreSQL: `crate::ledger` conformance, same cases).

use std::time::Duration;

use super::*;

async fn ledger() -> (tempdir::Dir, Ledger) {
    let dir = tempdir::Dir::new();
    let l = Ledger::sqlite(&dir.path().join("l.sqlite"), Duration::from_secs(5))
        .await
        .unwrap();
    (dir, l)
}

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

#[tokio::test]
async fn an_entry_opens_settles_and_lists_newest_first() {
    let (_d, l) = ledger().await;
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

#[tokio::test]
async fn a_keyed_prior_is_the_entry_that_carried_it_out() {
    let (_d, l) = ledger().await;
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

#[tokio::test]
async fn the_sweep_marks_old_open_entries_and_retention_removes_old_ones() {
    let (_d, l) = ledger().await;
    l.open(&new_entry(&new_id(1000), 1000, "a", None))
        .await
        .unwrap();
    l.open(&new_entry(&new_id(5000), 5000, "a", None))
        .await
        .unwrap();
    assert_eq!(l.mark_unknown(2000, 6000).await.unwrap(), 1);
    assert_eq!(l.open_count().await.unwrap(), 1);
    let orig = l
        .unsettled_original("default", "fp", 0, &new_id(9000))
        .await
        .unwrap();
    assert!(orig.is_some());
    assert_eq!(l.remove_before(2000).await.unwrap(), 1);
    assert_eq!(l.spend_rows(0, 10_000).await.unwrap().len(), 1);
}
