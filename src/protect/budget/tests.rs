//! The guard over this replica's counters, at fixed instants.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::tally::MemoryTally;
use super::*;
use crate::config::ClientBudget;

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

fn settings(account: Caps, client: Caps) -> BudgetSettings {
    BudgetSettings {
        account,
        client,
        ..BudgetSettings::default()
    }
}

fn budget(account: Caps, client: Caps) -> Budget {
    with(settings(account, client))
}

fn with(settings: BudgetSettings) -> Budget {
    Budget::new(settings, Arc::new(MemoryTally::default()))
}

fn at(text: &str) -> u64 {
    text.parse::<Timestamp>().unwrap().as_second() as u64
}

fn shanghai(account: Caps) -> BudgetSettings {
    BudgetSettings {
        timezone: "Asia/Shanghai".into(),
        tz: TimeZone::get("Asia/Shanghai").unwrap(),
        ..settings(account, Caps::default())
    }
}

/// Settings that know one account, `a`, and the clients `named` (with their own caps, if any).
fn knowing(mut s: BudgetSettings, named: &[(&str, Option<ClientBudget>)]) -> BudgetSettings {
    let clients = named
        .iter()
        .map(|(name, own)| ((*name).to_string(), "a".to_string(), *own));
    s.know_names(vec!["a".into()], clients);
    s
}

#[tokio::test]
async fn daily_cap_refuses_the_next_and_names_it() {
    let b = budget(
        Caps::default(),
        Caps {
            creates_per_day: 2,
            ..Caps::default()
        },
    );
    let now = 10 * DAY + 5 * HOUR;
    b.admit("a", "svc", 20, now).await.unwrap().unwrap();
    b.admit("a", "svc", 20, now).await.unwrap().unwrap();
    let over = b.admit("a", "svc", 20, now).await.unwrap().unwrap_err();
    assert_eq!(
        (over.scope, over.cap, over.limit),
        ("client", "creates_per_day", 2)
    );
    assert_eq!(over.resets_in, Duration::from_secs(19 * HOUR));
    assert!(
        b.admit("a", "other", 20, now).await.unwrap().is_ok(),
        "another client has its own budget"
    );
    assert!(
        b.admit("a", "svc", 20, 11 * DAY).await.unwrap().is_ok(),
        "a new day"
    );
}

#[tokio::test]
async fn gb_cap_and_refunds() {
    let b = budget(
        Caps {
            gb_per_day: 100,
            ..Caps::default()
        },
        Caps::default(),
    );
    let a = b.admit("acct", "c1", 60, 0).await.unwrap().unwrap();
    assert_eq!(
        b.admit("acct", "c2", 60, 0).await.unwrap().unwrap_err().cap,
        "gb_per_day"
    );
    b.refund(a).await.unwrap();
    assert!(b.admit("acct", "c2", 60, 0).await.unwrap().is_ok());
}

#[tokio::test]
async fn the_hourly_cap_resets_on_the_hour_and_says_when() {
    let b = budget(
        Caps {
            creates_per_hour: 2,
            ..Caps::default()
        },
        Caps::default(),
    );
    let last_second = 7 * DAY + 13 * HOUR + 3599;
    b.admit("a", "svc", 20, last_second).await.unwrap().unwrap();
    b.admit("a", "other", 20, last_second)
        .await
        .unwrap()
        .unwrap();
    let over = b
        .admit("a", "third", 20, last_second)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        (over.scope, over.who.as_str(), over.cap, over.limit),
        ("account", "a", "creates_per_hour", 2),
        "an account cap counts every client of the account"
    );
    assert_eq!(over.resets_in, Duration::from_secs(1));
    let next_hour = last_second + 1;
    b.admit("a", "svc", 20, next_hour).await.unwrap().unwrap();
    b.admit("a", "svc", 20, next_hour).await.unwrap().unwrap();
    let over = b
        .admit("a", "svc", 20, next_hour)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(over.resets_in, Duration::from_secs(HOUR));
    assert!(
        b.admit("b", "svc", 20, next_hour).await.unwrap().is_ok(),
        "another account has its own budget"
    );
}

#[tokio::test]
async fn the_daily_cap_spans_the_hours_and_resets_at_midnight_utc() {
    let b = budget(
        Caps {
            creates_per_hour: 10,
            creates_per_day: 3,
            ..Caps::default()
        },
        Caps::default(),
    );
    let day = 20 * DAY;
    for hour in [0, 9, 23] {
        b.admit("a", "svc", 20, day + hour * HOUR)
            .await
            .unwrap()
            .unwrap();
    }
    let over = b
        .admit("a", "svc", 20, day + DAY - 1)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!((over.cap, over.limit), ("creates_per_day", 3));
    assert_eq!(over.resets_in, Duration::from_secs(1));
    assert!(b.admit("a", "svc", 20, day + DAY).await.unwrap().is_ok());
}

#[tokio::test]
async fn a_refused_create_charges_no_cap() {
    let b = budget(
        Caps {
            creates_per_day: 5,
            gb_per_day: 50,
            ..Caps::default()
        },
        Caps::default(),
    );
    b.admit("a", "svc", 40, 0).await.unwrap().unwrap();
    // Over the GB cap: refused, and neither the GB nor the create counter moved.
    for _ in 0..3 {
        let over = b.admit("a", "svc", 20, 0).await.unwrap().unwrap_err();
        assert_eq!(over.cap, "gb_per_day");
    }
    for _ in 0..4 {
        b.admit("a", "svc", 0, 0).await.unwrap().unwrap();
    }
    let over = b.admit("a", "svc", 0, 0).await.unwrap().unwrap_err();
    assert_eq!(over.cap, "creates_per_day", "five admitted in all");
}

#[tokio::test]
async fn a_day_in_shanghai_resets_at_16_00_utc() {
    let b = with(shanghai(Caps {
        creates_per_day: 1,
        ..Caps::default()
    }));
    b.admit("a", "svc", 20, at("2026-12-07T02:00:00Z"))
        .await
        .unwrap()
        .unwrap();
    let over = b
        .admit("a", "svc", 20, at("2026-12-07T15:59:00Z"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(over.resets_in, Duration::from_secs(60), "at 16:00 UTC");
    assert!(
        b.admit("a", "svc", 20, at("2026-12-07T16:00:00Z"))
            .await
            .unwrap()
            .is_ok(),
        "midnight in Shanghai: a new day, though not in UTC"
    );
}

#[tokio::test]
async fn a_month_cap_refuses_the_next_until_the_1st_in_the_zone() {
    let b = with(shanghai(Caps {
        creates_per_month: 3,
        gb_per_month: 1000,
        ..Caps::default()
    }));
    // Three creates on three days of December (Shanghai time).
    for day in [
        "2026-12-01T00:30:00+08:00",
        "2026-12-15T12:00:00Z",
        "2026-12-31T15:00:00Z",
    ] {
        b.admit("a", "svc", 20, at(day)).await.unwrap().unwrap();
    }
    let now = at("2026-12-31T15:00:00Z");
    let over = b.admit("a", "svc", 20, now).await.unwrap().unwrap_err();
    assert_eq!(
        (over.scope, over.cap, over.limit),
        ("account", "creates_per_month", 3)
    );
    assert_eq!(
        over.resets_in,
        Duration::from_secs(at("2027-01-01T00:00:00+08:00") - now),
        "the 1st of January, 00:00 in Shanghai"
    );
    assert!(
        b.admit("a", "svc", 20, at("2026-12-31T16:00:00Z"))
            .await
            .unwrap()
            .is_ok(),
        "January in Shanghai"
    );
    // The GB of a month count too.
    let over = b
        .admit("a", "svc", 990, at("2027-01-02T00:00:00Z"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!((over.cap, over.limit), ("gb_per_month", 1000));
}

#[tokio::test]
async fn a_client_budget_replaces_the_client_caps_for_that_client_only() {
    let tight = ClientBudget {
        creates_per_day: Some(1),
        ..ClientBudget::default()
    };
    let client = Caps {
        creates_per_day: 3,
        ..Caps::default()
    };
    let b = with(knowing(
        settings(Caps::default(), client),
        &[("tight", Some(tight)), ("plain", None)],
    ));
    let now = 30 * DAY;
    b.admit("a", "tight", 20, now).await.unwrap().unwrap();
    let over = b.admit("a", "tight", 20, now).await.unwrap().unwrap_err();
    assert_eq!(
        (over.scope, over.who.as_str(), over.cap, over.limit),
        ("client", "tight", "creates_per_day", 1)
    );
    for _ in 0..3 {
        b.admit("a", "plain", 20, now).await.unwrap().unwrap();
    }
    let over = b.admit("a", "plain", 20, now).await.unwrap().unwrap_err();
    assert_eq!((over.who.as_str(), over.limit), ("plain", 3));
}

#[tokio::test]
async fn a_client_budget_alone_turns_the_guard_on() {
    let own = ClientBudget {
        creates_per_hour: Some(1),
        ..ClientBudget::default()
    };
    let b = with(knowing(BudgetSettings::default(), &[("svc", Some(own))]));
    assert!(b.enabled());
    b.admit("a", "svc", 0, 0).await.unwrap().unwrap();
    assert!(b.admit("a", "svc", 0, 0).await.unwrap().is_err());
    assert!(b.admit("a", "other", 0, 0).await.unwrap().is_ok());
}

#[tokio::test]
async fn reaching_warn_at_is_reported_once_per_window_and_cap() {
    let b = with(BudgetSettings {
        warn_at: Some(0.5),
        ..settings(
            Caps {
                creates_per_day: 4,
                gb_per_day: 100,
                ..Caps::default()
            },
            Caps::default(),
        )
    });
    let now = 40 * DAY;
    let events = |a: Admission| a.events;
    assert!(events(b.admit("a", "svc", 10, now).await.unwrap().unwrap()).is_empty());
    let second = b.admit("a", "svc", 50, now).await.unwrap().unwrap();
    let caps: Vec<_> = second
        .events
        .iter()
        .map(|e| match e {
            BudgetEvent::Threshold { cap, used } => (cap.scope, cap.cap, *used, cap.limit),
            BudgetEvent::Exhausted(_) => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(
        caps,
        [
            ("account", "creates_per_day", 2, 4),
            ("account", "gb_per_day", 60, 100)
        ]
    );
    // Given back and charged again: the window has reported already.
    b.refund(second).await.unwrap();
    assert!(events(b.admit("a", "svc", 50, now).await.unwrap().unwrap()).is_empty());
    assert!(events(b.admit("a", "svc", 0, now).await.unwrap().unwrap()).is_empty());
    // The next day reports again.
    let next = events(b.admit("a", "svc", 60, now + DAY).await.unwrap().unwrap());
    assert_eq!(next.len(), 1, "{next:?}");
}

#[tokio::test]
async fn gauges_show_the_set_caps_only_and_a_new_window_at_zero() {
    let own = ClientBudget {
        creates_per_month: Some(10),
        ..ClientBudget::default()
    };
    let b = with(knowing(
        settings(
            Caps {
                gb_per_day: 100,
                ..Caps::default()
            },
            Caps::default(),
        ),
        &[("svc", Some(own)), ("plain", None)],
    ));
    let now = at("2026-12-07T10:00:00Z");
    b.admit("a", "svc", 30, now).await.unwrap().unwrap();
    b.admit("a", "plain", 20, now).await.unwrap().unwrap();
    let mut g = b.gauges(now).await.unwrap();
    g.sort_by(|x, y| (x.scope, &x.who, x.cap).cmp(&(y.scope, &y.who, y.cap)));
    let seen: Vec<_> = g
        .iter()
        .map(|u| (u.scope, u.who.as_str(), u.cap, u.used, u.limit))
        .collect();
    assert_eq!(
        seen,
        [
            ("account", "a", "gb_per_day", 50, 100),
            ("client", "svc", "creates_per_month", 1, 10),
        ],
        "no series for a cap that is not set, nor for a client without one"
    );
    let tomorrow = b.gauges(now + DAY).await.unwrap();
    assert!(
        tomorrow
            .iter()
            .any(|u| u.cap == "gb_per_day" && u.used == 0),
        "{tomorrow:?}"
    );
    assert!(
        tomorrow
            .iter()
            .any(|u| u.cap == "creates_per_month" && u.used == 1),
        "the month goes on: {tomorrow:?}"
    );
}

#[tokio::test]
async fn gauges_show_the_anonymous_caller_once_it_created() {
    let b = with(knowing(
        settings(
            Caps::default(),
            Caps {
                creates_per_hour: 5,
                ..Caps::default()
            },
        ),
        &[],
    ));
    assert!(b.gauges(0).await.unwrap().is_empty());
    b.admit("a", "anonymous", 0, 0).await.unwrap().unwrap();
    let g = b.gauges(0).await.unwrap();
    assert_eq!(g.len(), 1);
    assert_eq!(
        (g[0].who.as_str(), g[0].used, g[0].limit),
        ("anonymous", 1, 5)
    );
}
