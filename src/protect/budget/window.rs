//! The spending guard's calendar windows: a clock hour, and a day and a month in the configured
//! time zone (`[create.budget] timezone`), so a "day" begins at the operator's midnight and a
//! "month" on the 1st, across daylight-saving changes (a local day may last 23 or 25 hours).
//! Pure functions of an instant, so every window boundary is tested with fixed instants.
//!
//! Counter keys carry a window's number, not its zone: the hour since the epoch (`h|493812`), the
//! local calendar day as days since 1970-01-01 (`d|20589`, which for UTC is the number keys had
//! before zones existed, so counters carry over an upgrade), and the local month as months since
//! January 1970 (`m|683`).

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

const HOUR: u64 = 3600;
const DAY: i64 = 86_400;

/// The length of a window a cap counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Period {
    Hour,
    Day,
    Month,
}

impl Period {
    pub(crate) const ALL: [Period; 3] = [Period::Hour, Period::Day, Period::Month];
}

/// One window: its number as a counter key's last part, and when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    /// `h|493812`, `d|20589` or `m|683`.
    pub(crate) key: String,
    /// The first second of the next window (seconds since the epoch).
    pub(crate) ends: u64,
}

/// The `period` window holding `now` (seconds since the epoch) in `tz`.
pub(crate) fn window(period: Period, tz: &TimeZone, now: u64) -> Window {
    match period {
        Period::Hour => Window {
            key: format!("h|{}", now / HOUR),
            ends: (now / HOUR + 1) * HOUR,
        },
        Period::Day => {
            let date = local_date(tz, now);
            let next = date.tomorrow().expect("a date within range");
            Window {
                key: format!("d|{}", day_number(date)),
                ends: start_of(next, tz),
            }
        }
        Period::Month => {
            let first = local_date(tz, now).first_of_month();
            let next = first.checked_add(1.month()).expect("a date within range");
            let months = i64::from(first.year() - 1970) * 12 + i64::from(first.month() - 1);
            Window {
                key: format!("m|{months}"),
                ends: start_of(next, tz),
            }
        }
    }
}

/// The first second of the local day holding `now` in `tz` (its midnight, or the first moment
/// after a daylight-saving gap that skips it).
pub(crate) fn start_of_day(tz: &TimeZone, now: u64) -> u64 {
    start_of(local_date(tz, now), tz)
}

fn local_date(tz: &TimeZone, now: u64) -> Date {
    Timestamp::from_second(now as i64)
        .expect("a clock within range")
        .to_zoned(tz.clone())
        .date()
}

/// Days from 1970-01-01 to `date` (the same number in every zone for one calendar date).
fn day_number(date: Date) -> i64 {
    let midnight = date.to_zoned(TimeZone::UTC).expect("a date within range");
    midnight.timestamp().as_second().div_euclid(DAY)
}

/// The first instant of `date` in `tz`: its midnight, or the first moment after a gap when a
/// daylight-saving change skips midnight.
fn start_of(date: Date, tz: &TimeZone) -> u64 {
    let start = date.to_zoned(tz.clone()).expect("a date within range");
    start.timestamp().as_second().max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> u64 {
        text.parse::<Timestamp>().unwrap().as_second() as u64
    }

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    #[test]
    fn a_utc_day_keeps_the_key_it_had_before_zones() {
        let now = at("2026-12-07T09:30:00Z");
        let w = window(Period::Day, &TimeZone::UTC, now);
        assert_eq!(w.key, format!("d|{}", now / 86_400));
        assert_eq!(w.ends, at("2026-12-08T00:00:00Z"));
        let h = window(Period::Hour, &TimeZone::UTC, now);
        assert_eq!(h.key, format!("h|{}", now / 3600));
        assert_eq!(h.ends, at("2026-12-07T10:00:00Z"));
    }

    #[test]
    fn a_day_starts_at_the_local_midnight() {
        let tz = zone("Asia/Shanghai");
        let now = at("2026-12-07T17:00:00Z");
        assert_eq!(start_of_day(&tz, now), at("2026-12-07T16:00:00Z"));
        assert_eq!(
            start_of_day(&TimeZone::UTC, now),
            at("2026-12-07T00:00:00Z")
        );
        assert_eq!(
            start_of_day(&tz, at("2026-12-07T16:00:00Z")),
            at("2026-12-07T16:00:00Z")
        );
    }

    #[test]
    fn a_shanghai_day_resets_at_16_00_utc() {
        let tz = zone("Asia/Shanghai");
        let before = window(Period::Day, &tz, at("2026-12-07T15:59:59Z"));
        let after = window(Period::Day, &tz, at("2026-12-07T16:00:00Z"));
        assert_eq!(before.ends, at("2026-12-07T16:00:00Z"));
        assert_ne!(before.key, after.key, "a new local day");
        assert_eq!(after.ends, at("2026-12-08T16:00:00Z"));
        // 01:00 in Shanghai on the 8th is still the 7th in UTC, but the local day is the 8th.
        let utc_day = window(Period::Day, &TimeZone::UTC, at("2026-12-07T17:00:00Z"));
        assert_ne!(utc_day.key, after.key);
    }

    #[test]
    fn a_month_ends_at_the_first_of_the_next_in_the_zone() {
        let tz = zone("Asia/Shanghai");
        let w = window(Period::Month, &tz, at("2026-12-07T09:00:00Z"));
        assert_eq!(w.ends, at("2026-12-31T16:00:00Z"), "Jan 1st, 00:00 +08");
        assert_eq!(w.key, format!("m|{}", 56 * 12 + 11));
        let next = window(Period::Month, &tz, at("2026-12-31T16:00:00Z"));
        assert_eq!(next.key, format!("m|{}", 57 * 12));
        assert_eq!(next.ends, at("2027-01-31T16:00:00Z"));
        let feb = window(Period::Month, &TimeZone::UTC, at("2028-02-29T23:59:59Z"));
        assert_eq!(feb.ends, at("2028-03-01T00:00:00Z"), "a leap February");
    }

    #[test]
    fn days_follow_daylight_saving_changes() {
        let tz = zone("America/New_York");
        // 2026-03-08: clocks go from 02:00 to 03:00 EST→EDT; the day lasts 23 hours.
        let spring = window(Period::Day, &tz, at("2026-03-08T12:00:00Z"));
        assert_eq!(spring.ends, at("2026-03-09T04:00:00Z"), "midnight EDT");
        let start = window(Period::Day, &tz, at("2026-03-07T12:00:00Z")).ends;
        assert_eq!(spring.ends - start, 23 * 3600);
        // 2026-11-01: 25 hours.
        let fall = window(Period::Day, &tz, at("2026-11-01T12:00:00Z"));
        assert_eq!(fall.ends, at("2026-11-02T05:00:00Z"), "midnight EST");
        let start = window(Period::Day, &tz, at("2026-10-31T12:00:00Z")).ends;
        assert_eq!(fall.ends - start, 25 * 3600);
    }

    #[test]
    fn a_day_whose_midnight_is_skipped_begins_after_the_gap() {
        // Santiago moves clocks forward at 24:00 (to 01:00) in September: no local midnight.
        let tz = zone("America/Santiago");
        let w = window(Period::Day, &tz, at("2026-09-05T12:00:00Z"));
        assert_eq!(w.ends, at("2026-09-06T04:00:00Z"), "01:00 -03 on the 6th");
        let next = window(Period::Day, &tz, w.ends);
        assert_ne!(next.key, window(Period::Day, &tz, w.ends - 1).key);
    }
}
