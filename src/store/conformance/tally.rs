//! [`Tally`]: charges count up to each cap, every charge of a call or none of them; a refund
//! gives one create and its GB back, never below zero; a window's counter ends with its TTL;
//! handles share the counters, atomically; a soft threshold is reported once per window, by one
//! handle of many; a read sees what every handle charged.

use std::time::Duration;

use super::Stores;
use crate::protect::budget::tally::{Charge, Crossed, Measure, Over, Tally, Used};

fn charge(key: &str, gb: u64, max_creates: u64, max_gb: u64) -> Charge {
    Charge {
        account: "acct".into(),
        key: key.into(),
        gb,
        max_creates,
        max_gb,
        warn_creates: 0,
        warn_gb: 0,
        ttl: Duration::from_secs(3600),
    }
}

async fn charged(l: &dyn Tally, charges: &[Charge]) -> Result<(), Over> {
    crossed(l, charges).await.map(|_| ())
}

async fn crossed(l: &dyn Tally, charges: &[Charge]) -> Result<Vec<Crossed>, Over> {
    l.charge(charges.to_vec()).await.expect("the store answers")
}

async fn refund(l: &dyn Tally, charges: &[Charge]) {
    l.refund(charges.to_vec()).await.expect("the store answers");
}

async fn creates_count_up_to_their_cap(stores: &Stores) {
    let l = stores.tally();
    let c = [charge("day", 10, 2, 0)];
    assert_eq!(charged(&*l, &c).await, Ok(()));
    assert_eq!(charged(&*stores.tally(), &c).await, Ok(()));
    assert_eq!(charged(&*l, &c).await, Err(Over::Creates(0)));
    let other = [charge("other-day", 10, 2, 0)];
    assert_eq!(charged(&*l, &other).await, Ok(()), "another counter");
}

async fn gb_count_up_to_their_cap_inclusive(stores: &Stores) {
    let l = stores.tally();
    assert_eq!(charged(&*l, &[charge("gb", 60, 0, 100)]).await, Ok(()));
    assert_eq!(
        charged(&*l, &[charge("gb", 50, 0, 100)]).await,
        Err(Over::Gb(0)),
        "110 GB is over 100"
    );
    assert_eq!(
        charged(&*l, &[charge("gb", 40, 0, 100)]).await,
        Ok(()),
        "100 GB is the cap itself"
    );
    assert_eq!(
        charged(&*l, &[charge("gb", 1, 0, 100)]).await,
        Err(Over::Gb(0))
    );
}

async fn a_charge_over_one_cap_adds_to_no_counter(stores: &Stores) {
    let l = stores.tally();
    let loose = charge("loose", 10, 2, 0);
    let tight = charge("tight", 10, 1, 0);
    let both = [loose.clone(), tight];
    assert_eq!(charged(&*l, &both).await, Ok(()));
    assert_eq!(
        charged(&*l, &both).await,
        Err(Over::Creates(1)),
        "the second charge's cap, by its index"
    );
    // The refused call left the loose counter at one of its two.
    let loose = [loose];
    assert_eq!(charged(&*l, &loose).await, Ok(()));
    assert_eq!(charged(&*l, &loose).await, Err(Over::Creates(0)));
}

async fn a_refund_gives_a_create_and_its_gb_back(stores: &Stores) {
    let l = stores.tally();
    let c = [charge("day", 50, 1, 50)];
    assert_eq!(charged(&*l, &c).await, Ok(()));
    assert_eq!(charged(&*l, &c).await, Err(Over::Creates(0)));
    refund(&*stores.tally(), &c).await;
    assert_eq!(charged(&*l, &c).await, Ok(()), "both the create and the GB");
    // A host create weighs 0 GB; its refund is no failure.
    let host = [charge("hosts", 0, 1, 0)];
    assert_eq!(charged(&*l, &host).await, Ok(()));
    refund(&*l, &host).await;
    assert_eq!(charged(&*l, &host).await, Ok(()));
}

async fn a_refund_never_goes_below_zero(stores: &Stores) {
    let l = stores.tally();
    let c = [charge("day", 10, 1, 10)];
    refund(&*l, &c).await;
    assert_eq!(charged(&*l, &c).await, Ok(()));
    refund(&*l, &c).await;
    refund(&*l, &c).await;
    assert_eq!(charged(&*l, &c).await, Ok(()));
    assert_eq!(
        charged(&*l, &c).await,
        Err(Over::Creates(0)),
        "refunds past zero gave no credit"
    );
}

async fn a_window_ends_with_its_ttl(stores: &Stores) {
    let l = stores.tally();
    let c = [Charge {
        ttl: Duration::from_secs(2),
        ..charge("minute", 10, 1, 0)
    }];
    assert_eq!(charged(&*l, &c).await, Ok(()));
    assert_eq!(charged(&*l, &c).await, Err(Over::Creates(0)));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(charged(&*l, &c).await, Ok(()), "a new window");
}

async fn concurrent_charges_on_several_handles_never_pass_a_cap(stores: &Stores) {
    let c = vec![charge("day", 1, 3, 0)];
    let charges = (0..10).map(|_| {
        let (l, c) = (stores.tally(), c.clone());
        tokio::spawn(async move { l.charge(c).await })
    });
    let admitted = futures_util::future::join_all(charges)
        .await
        .into_iter()
        .filter(|r| matches!(r, Ok(Ok(Ok(_)))))
        .count();
    assert_eq!(admitted, 3);
}

async fn a_threshold_is_reported_once_per_window_by_one_handle(stores: &Stores) {
    let warn = Charge {
        warn_creates: 3,
        warn_gb: 15,
        ..charge("warn", 10, 5, 100)
    };
    let c = [charge("quiet", 10, 0, 0), warn];
    assert_eq!(crossed(&*stores.tally(), &c).await, Ok(vec![]));
    assert_eq!(
        crossed(&*stores.tally(), &c).await,
        Ok(vec![Crossed {
            charge: 1,
            measure: Measure::Gb,
            used: 20
        }]),
        "20 GB reach 15"
    );
    // Two handles at once: one of them charges the third create, and it alone reports it.
    let charges = (0..2).map(|_| {
        let (l, c) = (stores.tally(), c.to_vec());
        tokio::spawn(async move { l.charge(c).await })
    });
    let reports: Vec<Crossed> = futures_util::future::join_all(charges)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap().unwrap().unwrap())
        .collect();
    assert_eq!(
        reports,
        [Crossed {
            charge: 1,
            measure: Measure::Creates,
            used: 3
        }]
    );
    // Given back and charged again: reported already in this window.
    refund(&*stores.tally(), &c).await;
    assert_eq!(crossed(&*stores.tally(), &c).await, Ok(vec![]));
}

async fn a_read_sees_every_handles_charges(stores: &Stores) {
    let c = [charge("r1", 10, 0, 0), charge("r2", 0, 0, 0)];
    charged(&*stores.tally(), &c).await.unwrap();
    charged(&*stores.tally(), &c[..1]).await.unwrap();
    let keys = ["r1", "r2", "never"].map(String::from).to_vec();
    let used = stores.tally().read("acct".into(), keys).await.unwrap();
    assert_eq!(
        used,
        [
            Used { creates: 2, gb: 20 },
            Used { creates: 1, gb: 0 },
            Used::default()
        ]
    );
}

conformance!(
    a_threshold_is_reported_once_per_window_by_one_handle,
    a_read_sees_every_handles_charges,
    creates_count_up_to_their_cap,
    gb_count_up_to_their_cap_inclusive,
    a_charge_over_one_cap_adds_to_no_counter,
    a_refund_gives_a_create_and_its_gb_back,
    a_refund_never_goes_below_zero,
    a_window_ends_with_its_ttl,
    concurrent_charges_on_several_handles_never_pass_a_cap,
);
