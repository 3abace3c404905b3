//! Spend per group and calendar period (`GET /admin/spend`): the ledger's rows of a window,
//! bucketed here by the day or month they arrived on in the asked time zone. Amounts are the
//! upstream's decimal text, summed exactly as fixed-point millionths.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;

use super::params::{By, Period};
use crate::ledger::{Outcome, SpendRow};

/// Millionths: the precision amounts are summed at.
const SCALE: u128 = 1_000_000;

/// One group's sums over one period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Line {
    pub(crate) group: String,
    /// `2026-12-07` (day) or `2026-12` (month), in the asked zone.
    pub(crate) period: String,
    /// Entries that bought (`bought`, `reconciled`).
    pub(crate) purchases: u64,
    /// Their GB.
    pub(crate) gb: i64,
    /// The sum of their recorded amounts, a decimal string.
    pub(crate) amount: String,
    /// Purchases with no amount recorded (yet): not in `amount`.
    pub(crate) unpriced: u64,
    pub(crate) refused: u64,
    pub(crate) failed: u64,
    pub(crate) unknown: u64,
    /// Entries not settled yet.
    pub(crate) open: u64,
    pub(crate) replayed: u64,
    pub(crate) joined: u64,
    #[serde(skip)]
    micros: u128,
}

/// The day or month `at_ms` falls in, in `tz`.
pub(crate) fn period_of(at_ms: i64, period: Period, tz: &TimeZone) -> String {
    let Ok(at) = Timestamp::from_millisecond(at_ms) else {
        return "invalid".to_string();
    };
    let date = at.to_zoned(tz.clone()).date();
    match period {
        Period::Day => date.to_string(),
        Period::Month => format!("{:04}-{:02}", date.year(), date.month()),
    }
}

/// An amount as the upstream writes it (`0.4`, `12`, `3.25`) in millionths, rounded half up
/// past the sixth decimal; `None` for anything else.
pub(crate) fn micros(text: &str) -> Option<u128> {
    let text = text.trim();
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || whole.len() > 18 || !digits(whole) || !digits(frac) {
        return None;
    }
    let mut out = whole.parse::<u128>().ok()? * SCALE;
    let mut unit = SCALE;
    for (i, b) in frac.bytes().enumerate() {
        let d = u128::from(b - b'0');
        if i < 6 {
            unit /= 10;
            out += d * unit;
        } else {
            out += u128::from(d >= 5);
            break;
        }
    }
    Some(out)
}

/// Millionths as a decimal string without trailing zeros (`0.4`, `12`).
pub(crate) fn decimal(micros: u128) -> String {
    let (whole, frac) = (micros / SCALE, micros % SCALE);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:06}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// The rows' sums per group and period, sorted by period, then group.
pub(crate) fn sum(rows: &[SpendRow], by: By, period: Period, tz: &TimeZone) -> Vec<Line> {
    let mut lines: BTreeMap<(String, String), Line> = BTreeMap::new();
    for r in rows {
        let group = match by {
            By::Client => &r.client,
            By::Account => &r.account,
            By::Route => &r.route,
        };
        let when = period_of(r.at_ms, period, tz);
        let line = lines
            .entry((when.clone(), group.clone()))
            .or_insert_with(|| Line {
                group: group.clone(),
                period: when,
                ..Line::default()
            });
        match r.outcome {
            o if o.is_purchase() => {
                line.purchases += 1;
                line.gb += r.gb.unwrap_or(0);
                match r.amount.as_deref().and_then(micros) {
                    Some(m) => line.micros += m,
                    None => line.unpriced += 1,
                }
            }
            Outcome::Refused => line.refused += 1,
            Outcome::Failed => line.failed += 1,
            Outcome::Unknown => line.unknown += 1,
            Outcome::Open => line.open += 1,
            Outcome::Replayed => line.replayed += 1,
            Outcome::Joined => line.joined += 1,
            Outcome::Bought | Outcome::Reconciled => unreachable!("purchases counted above"),
        }
    }
    lines
        .into_values()
        .map(|mut l| {
            l.amount = decimal(l.micros);
            l
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::purchases::params::{instant, time_zone};

    fn at(rfc3339: &str) -> i64 {
        instant("t", rfc3339, &TimeZone::UTC).unwrap() as i64
    }

    fn row(at_rfc3339: &str, client: &str, outcome: Outcome, amount: Option<&str>) -> SpendRow {
        SpendRow {
            at_ms: at(at_rfc3339),
            account: "default".into(),
            client: client.into(),
            route: "disk.create".into(),
            outcome,
            gb: Some(20),
            amount: amount.map(Into::into),
        }
    }

    #[test]
    fn amounts_sum_exactly_in_millionths() {
        assert_eq!(micros("0.4"), Some(400_000));
        assert_eq!(micros("12"), Some(12_000_000));
        assert_eq!(micros("0.0000015"), Some(2));
        assert_eq!(micros(" 3.25 "), Some(3_250_000));
        for bad in ["", ".5", "-1", "1e3", "0x10", "1.2.3", "NaN"] {
            assert_eq!(micros(bad), None, "{bad}");
        }
        // 0.1 + 0.2 is 0.3 here, unlike in f64.
        assert_eq!(
            decimal(micros("0.1").unwrap() + micros("0.2").unwrap()),
            "0.3"
        );
        assert_eq!((decimal(0), decimal(1)), ("0".into(), "0.000001".into()));
    }

    #[test]
    fn days_follow_new_york_across_the_dst_change() {
        let ny = time_zone("America/New_York").unwrap();
        // 2026-11-01 is 25 hours long in New York: 04:00Z to 05:00Z the next day.
        let day = |t: &str| period_of(at(t), Period::Day, &ny);
        assert_eq!(day("2026-11-01T03:59:59Z"), "2026-10-31");
        assert_eq!(day("2026-11-01T04:00:00Z"), "2026-11-01");
        assert_eq!(day("2026-11-02T04:59:59Z"), "2026-11-01");
        assert_eq!(day("2026-11-02T05:00:00Z"), "2026-11-02");
        // 2026-03-08 is 23 hours long: 05:00Z to 04:00Z the next day.
        assert_eq!(day("2026-03-08T04:59:59Z"), "2026-03-07");
        assert_eq!(day("2026-03-09T03:59:59Z"), "2026-03-08");
        assert_eq!(day("2026-03-09T04:00:00Z"), "2026-03-09");
    }

    #[test]
    fn months_turn_at_the_zones_midnight() {
        let ny = time_zone("America/New_York").unwrap();
        let sh = time_zone("Asia/Shanghai").unwrap();
        let rows = [
            // 2026-12-01T04:30Z: still November in New York, December in UTC and Shanghai.
            row("2026-12-01T04:30:00Z", "a", Outcome::Bought, Some("0.4")),
            // 2026-11-30T16:30Z: December in Shanghai only.
            row(
                "2026-11-30T16:30:00Z",
                "a",
                Outcome::Reconciled,
                Some("0.25"),
            ),
            row("2026-11-15T00:00:00Z", "a", Outcome::Refused, None),
        ];
        let months = |tz: &TimeZone| -> Vec<(String, u64, String, u64)> {
            sum(&rows, By::Client, Period::Month, tz)
                .into_iter()
                .map(|l| (l.period, l.purchases, l.amount, l.refused))
                .collect()
        };
        assert_eq!(months(&ny), [("2026-11".into(), 2, "0.65".into(), 1)]);
        assert_eq!(
            months(&sh),
            [
                ("2026-11".into(), 0, "0".into(), 1),
                ("2026-12".into(), 2, "0.65".into(), 0)
            ]
        );
        assert_eq!(
            months(&TimeZone::UTC),
            [
                ("2026-11".into(), 1, "0.25".into(), 1),
                ("2026-12".into(), 1, "0.4".into(), 0)
            ]
        );
    }

    #[test]
    fn every_outcome_has_its_column_and_lines_sort_by_period_then_group() {
        let rows = [
            row("2026-12-07T10:00:00Z", "b", Outcome::Bought, None),
            row("2026-12-07T10:00:01Z", "b", Outcome::Failed, None),
            row("2026-12-07T10:00:02Z", "b", Outcome::Unknown, None),
            row("2026-12-07T10:00:03Z", "b", Outcome::Open, None),
            row("2026-12-07T10:00:04Z", "b", Outcome::Replayed, None),
            row("2026-12-07T10:00:05Z", "b", Outcome::Joined, None),
            row("2026-12-07T10:00:06Z", "a", Outcome::Bought, Some("1")),
            row("2026-12-06T10:00:06Z", "c", Outcome::Bought, Some("1")),
        ];
        let lines = sum(&rows, By::Client, Period::Day, &TimeZone::UTC);
        let order: Vec<(&str, &str)> = lines
            .iter()
            .map(|l| (l.period.as_str(), l.group.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                ("2026-12-06", "c"),
                ("2026-12-07", "a"),
                ("2026-12-07", "b")
            ]
        );
        let b = &lines[2];
        assert_eq!(
            (
                b.purchases,
                b.gb,
                b.unpriced,
                b.failed,
                b.unknown,
                b.open,
                b.replayed,
                b.joined
            ),
            (1, 20, 1, 1, 1, 1, 1, 1)
        );
        assert_eq!(b.amount, "0");
        let by_route = sum(&rows, By::Route, Period::Day, &TimeZone::UTC);
        assert_eq!(by_route[1].group, "disk.create");
        assert_eq!(by_route[1].purchases, 2);
    }
}
