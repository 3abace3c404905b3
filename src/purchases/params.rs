//! The parameters of the ledger's readers, from a query string or the command line: strict,
//! because a query string is the admin API's one input an attacker shapes freely. Every
//! parameter is declared, appears at most once, has a value, and that value checks; anything
//! else is an error that names the parameter (the admin API answers it 400, code 1007).

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

use crate::ledger::{Filter, Outcome};

/// Most characters of a value; more is not a name, a key or a time.
const MAX_VALUE: usize = 256;
/// Most characters of a refused name or value shown back in an error.
const MAX_SHOWN: usize = 40;

/// A listing's page size unless `limit` says otherwise, and the most it may say.
pub(crate) const DEFAULT_LIMIT: u32 = 100;
pub(crate) const MAX_LIMIT: u32 = 1_000;

/// The parameters of `GET /admin/purchases`.
pub(crate) const LIST_PARAMS: &[&str] = &[
    "account", "client", "route", "outcome", "since", "until", "tz", "key", "limit", "cursor",
];
/// The parameters of `GET /admin/spend`.
pub(crate) const SPEND_PARAMS: &[&str] = &["by", "period", "tz", "since", "until"];

fn shown(s: &str) -> String {
    s.chars().take(MAX_SHOWN).collect()
}

/// A query string's parameters, each declared in `allowed`, once, with a value; values
/// percent-decoded (`+` is a space, as HTML forms write it). In the order written.
pub(crate) fn parse_query(
    query: Option<&str>,
    allowed: &[&'static str],
) -> Result<Vec<(&'static str, String)>, String> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(out);
    };
    for pair in query.split('&') {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        if name.is_empty() {
            return Err(format!("empty query parameter in {:?}", shown(query)));
        }
        let Some(declared) = allowed.iter().find(|a| **a == name) else {
            return Err(format!(
                "unknown query parameter {:?}; expected one of: {}",
                shown(name),
                allowed.join(", ")
            ));
        };
        if out.iter().any(|(n, _)| n == declared) {
            return Err(format!("query parameter {name:?} given more than once"));
        }
        let value = percent_decode(raw)
            .ok_or_else(|| format!("query parameter {name:?}: badly percent-encoded value"))?;
        if value.is_empty() {
            return Err(format!("query parameter {name:?} has no value"));
        }
        out.push((declared, value));
    }
    Ok(out)
}

/// `%XX` escapes and `+` decoded; `None` for a broken escape or text that is not UTF-8.
fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A value with no control characters and not too long: what a name, a key or a time is.
fn plain(name: &str, value: &str) -> Result<(), String> {
    if value.chars().count() > MAX_VALUE {
        return Err(format!("{name}: longer than {MAX_VALUE} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{name}: control characters are not allowed"));
    }
    Ok(())
}

/// An IANA time zone (`Asia/Shanghai`); `UTC` without the database.
pub(crate) fn time_zone(name: &str) -> Result<TimeZone, String> {
    plain("tz", name)?;
    if name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name).map_err(|_| {
        format!(
            "tz: unknown time zone {:?}; expected an IANA name such as UTC or Asia/Shanghai",
            shown(name)
        )
    })
}

/// The latest instant a time may name (9999-12-31T23:59:59.999Z), in epoch ms.
const MAX_MS: u64 = 253_402_300_799_999;

/// A time as epoch ms: RFC 3339 (`2026-12-07T10:00:00Z`, `...+08:00`), a date (`2026-12-07`,
/// its midnight in `tz`), or epoch milliseconds. `name` is the parameter, for the error.
pub(crate) fn instant(name: &str, value: &str, tz: &TimeZone) -> Result<u64, String> {
    plain(name, value)?;
    let expected =
        "expected RFC 3339 (2026-12-07T10:00:00Z), a date (2026-12-07) or epoch milliseconds";
    let ms = if value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse::<u64>().ok().filter(|ms| *ms <= MAX_MS)
    } else if value.len() == 10 {
        value
            .parse::<Date>()
            .ok()
            .and_then(|d| d.to_zoned(tz.clone()).ok())
            .and_then(|z| u64::try_from(z.timestamp().as_millisecond()).ok())
    } else {
        value
            .parse::<Timestamp>()
            .ok()
            .and_then(|t| u64::try_from(t.as_millisecond()).ok())
    };
    ms.ok_or_else(|| format!("{name}: {:?} is not a time; {expected}", shown(value)))
}

/// A listing: what it holds, how many a page holds, and where it goes on.
#[derive(Debug, Clone, Default)]
pub(crate) struct Listing {
    pub(crate) filter: Filter,
    pub(crate) limit: Option<u32>,
    pub(crate) cursor: Option<String>,
}

/// An entry's id: 28 lowercase hex digits (`crate::ledger::new_id`).
pub(crate) fn is_id(s: &str) -> bool {
    s.len() == 28 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A name (account, client, route): letters, digits, `.`, `_`, `-`.
fn name_value(name: &str, value: &str) -> Result<String, String> {
    plain(name, value)?;
    if crate::config::is_name(value) {
        Ok(value.to_string())
    } else {
        Err(format!(
            "{name}: {:?} is not a name (letters, digits, '.', '_' and '-')",
            shown(value)
        ))
    }
}

/// A listing from parameters already split (a query string's or the command line's).
pub(crate) fn listing(params: &[(&'static str, String)]) -> Result<Listing, String> {
    let tz = match params.iter().find(|(n, _)| *n == "tz") {
        Some((_, v)) => time_zone(v)?,
        None => TimeZone::UTC,
    };
    let mut l = Listing::default();
    for (name, value) in params {
        let f = &mut l.filter;
        match *name {
            "account" => f.account = Some(name_value(name, value)?),
            "client" => f.client = Some(name_value(name, value)?),
            "route" => f.route = Some(name_value(name, value)?),
            "outcome" => {
                f.outcome = Some(Outcome::parse(value).ok_or_else(|| {
                    let all: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
                    format!(
                        "outcome: {:?} is not an outcome; expected one of: {}",
                        shown(value),
                        all.join(", ")
                    )
                })?);
            }
            "since" => f.since_ms = Some(instant(name, value, &tz)?),
            "until" => f.until_ms = Some(instant(name, value, &tz)?),
            "key" => {
                plain(name, value)?;
                f.key = Some(value.clone());
            }
            "limit" => l.limit = Some(limit(value)?),
            "cursor" => {
                if !is_id(value) {
                    return Err(format!(
                        "cursor: {:?} is not a cursor; use the `next` of the previous page",
                        shown(value)
                    ));
                }
                l.cursor = Some(value.clone());
            }
            _ => {}
        }
    }
    window_ordered(l.filter.since_ms, l.filter.until_ms)?;
    Ok(l)
}

/// A page size: 1 to [`MAX_LIMIT`].
pub(crate) fn limit(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!(
            "limit: {:?} is not a number from 1 to {MAX_LIMIT}",
            shown(value)
        )),
    }
}

/// `since` before `until`, when both are given.
pub(crate) fn window_ordered(since: Option<u64>, until: Option<u64>) -> Result<(), String> {
    match (since, until) {
        (Some(s), Some(u)) if s >= u => Err("since: must be before until".to_string()),
        _ => Ok(()),
    }
}

/// What spend is summed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum By {
    Client,
    Account,
    Route,
}

impl By {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            By::Client => "client",
            By::Account => "account",
            By::Route => "route",
        }
    }
}

/// The calendar period spend is summed over, in the asked time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Period {
    Day,
    Month,
}

impl Period {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

/// `GET /admin/spend`'s question: by what, per what period, in which zone, over which window.
#[derive(Debug, Clone)]
pub(crate) struct SpendQuery {
    pub(crate) by: By,
    pub(crate) period: Period,
    pub(crate) tz_name: String,
    pub(crate) tz: TimeZone,
    pub(crate) since_ms: u64,
    pub(crate) until_ms: u64,
}

/// Days and months the default window holds (today or this month included).
const DEFAULT_DAYS: i64 = 31;
const DEFAULT_MONTHS: i64 = 12;

/// A spend question from its parameters; the window defaults to the last 31 days (`day`) or
/// 12 months (`month`), whole periods in `tz`, ending with the current one (or `until`'s).
pub(crate) fn spend_query(
    params: &[(&'static str, String)],
    now_ms: u64,
) -> Result<SpendQuery, String> {
    let get = |n: &str| {
        params
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.as_str())
    };
    let by = match get("by") {
        None | Some("client") => By::Client,
        Some("account") => By::Account,
        Some("route") => By::Route,
        Some(v) => {
            return Err(format!(
                "by: {:?}; expected client, account or route",
                shown(v)
            ));
        }
    };
    let period = match get("period") {
        None | Some("day") => Period::Day,
        Some("month") => Period::Month,
        Some(v) => return Err(format!("period: {:?}; expected day or month", shown(v))),
    };
    let tz_name = get("tz").unwrap_or("UTC").to_string();
    let tz = time_zone(&tz_name)?;
    let since = get("since").map(|v| instant("since", v, &tz)).transpose()?;
    let until = get("until").map(|v| instant("until", v, &tz)).transpose()?;
    window_ordered(since, until)?;
    let (since_ms, until_ms) = match (since, until) {
        (Some(s), Some(u)) => (s, u),
        (since, until) => {
            let reference = until.map_or(now_ms, |u| u.saturating_sub(1));
            let (first, next) = default_window(period, &tz, reference)?;
            (
                since.unwrap_or(first),
                until.unwrap_or(next).max(since.unwrap_or(0) + 1),
            )
        }
    };
    Ok(SpendQuery {
        by,
        period,
        tz_name,
        tz,
        since_ms,
        until_ms,
    })
}

/// The default window around `reference_ms`: the start of the period 30 days (11 months)
/// before its own, and the start of the period after it.
fn default_window(period: Period, tz: &TimeZone, reference_ms: u64) -> Result<(u64, u64), String> {
    let fail = |e: jiff::Error| format!("the default window: {e}");
    let at = Timestamp::from_millisecond(i64::try_from(reference_ms).unwrap_or(i64::MAX))
        .map_err(fail)?
        .to_zoned(tz.clone());
    let today = at.date();
    let (first, next) = match period {
        Period::Day => (
            today.checked_sub(jiff::Span::new().days(DEFAULT_DAYS - 1)),
            today.checked_add(jiff::Span::new().days(1)),
        ),
        Period::Month => {
            let month = today.first_of_month();
            (
                month.checked_sub(jiff::Span::new().months(DEFAULT_MONTHS - 1)),
                month.checked_add(jiff::Span::new().months(1)),
            )
        }
    };
    let start = |d: Date| -> Result<u64, String> {
        let z: Zoned = d.to_zoned(tz.clone()).map_err(fail)?;
        Ok(u64::try_from(z.timestamp().as_millisecond()).unwrap_or(0))
    };
    Ok((start(first.map_err(fail)?)?, start(next.map_err(fail)?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Result<Vec<(&'static str, String)>, String> {
        parse_query(Some(s), LIST_PARAMS)
    }

    #[test]
    fn odd_query_strings_are_refused_with_a_reason() {
        for (query, says) in [
            ("client=a&client=b", "more than once"),
            ("clients=a", "unknown query parameter"),
            ("Client=a", "unknown query parameter"),
            ("client", "has no value"),
            ("client=", "has no value"),
            ("client=a&&limit=2", "empty query parameter"),
            ("=a", "empty query parameter"),
            ("client=%zz", "percent-encoded"),
            ("client=%ff", "percent-encoded"),
            ("client=%4", "percent-encoded"),
        ] {
            let err = q(query).unwrap_err();
            assert!(err.contains(says), "{query}: {err}");
        }
        let ok = q("client=a%2Db&key=x+y%20z").unwrap();
        assert_eq!(ok, [("client", "a-b".into()), ("key", "x y z".into())]);
        assert!(parse_query(None, LIST_PARAMS).unwrap().is_empty());
    }

    #[test]
    fn bad_values_are_refused_naming_the_parameter() {
        for (query, says) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=-1", "limit"),
            ("limit=ten", "limit"),
            ("outcome=Bought", "outcome"),
            ("since=yesterday", "since"),
            ("since=2026-13-01", "since"),
            ("until=2026-12-07T10:00:00", "until"),
            ("since=99999999999999999999", "since"),
            ("tz=Mars/Olympus", "tz"),
            ("cursor=abc", "cursor"),
            ("client=a%0Ab", "client"),
            ("client=a%20b", "client"),
            ("key=a%00", "key"),
            ("since=2026-12-08&until=2026-12-07", "since"),
        ] {
            let err = listing(&q(query).unwrap()).unwrap_err();
            assert!(err.starts_with(says), "{query}: {err}");
        }
        let long = format!("key={}", "k".repeat(300));
        assert!(listing(&q(&long).unwrap()).unwrap_err().contains("longer"));
        let l = listing(&q("limit=1000&outcome=open").unwrap()).unwrap();
        assert_eq!(
            (l.limit, l.filter.outcome),
            (Some(1000), Some(Outcome::Open))
        );
    }

    #[test]
    fn times_are_rfc3339_dates_in_the_zone_or_epoch_ms() {
        let utc = TimeZone::UTC;
        let ny = time_zone("America/New_York").unwrap();
        let sh = time_zone("Asia/Shanghai").unwrap();
        let at = |v: &str, tz: &TimeZone| instant("since", v, tz).unwrap();
        assert_eq!(at("1765000000000", &utc), 1_765_000_000_000);
        assert_eq!(at("2026-12-07T00:00:00Z", &utc), 1_796_601_600_000);
        assert_eq!(at("2026-12-07T08:00:00+08:00", &ny), 1_796_601_600_000);
        assert_eq!(at("2026-12-07", &utc), 1_796_601_600_000);
        // A date is its midnight in the zone: 05:00Z in New York's winter, 16:00Z the day
        // before in Shanghai.
        assert_eq!(at("2026-12-07", &ny), 1_796_601_600_000 + 5 * 3_600_000);
        assert_eq!(at("2026-12-07", &sh), 1_796_601_600_000 - 8 * 3_600_000);
    }

    #[test]
    fn the_default_spend_window_is_whole_periods_in_the_zone() {
        let ny = "America/New_York";
        let now = instant("x", "2026-12-07T12:00:00Z", &TimeZone::UTC).unwrap();
        let p = |s: &str| parse_query(Some(s), SPEND_PARAMS).unwrap();
        let s = spend_query(&p(&format!("tz={ny}")), now).unwrap();
        let tz = time_zone(ny).unwrap();
        assert_eq!(s.since_ms, instant("x", "2026-11-07", &tz).unwrap());
        assert_eq!(s.until_ms, instant("x", "2026-12-08", &tz).unwrap());
        let m = spend_query(&p(&format!("period=month&tz={ny}")), now).unwrap();
        assert_eq!(m.since_ms, instant("x", "2026-01-01", &tz).unwrap());
        assert_eq!(m.until_ms, instant("x", "2027-01-01", &tz).unwrap());
        assert_eq!(
            (m.by, m.period, m.tz_name.as_str()),
            (By::Client, Period::Month, ny)
        );
        for (query, says) in [("by=host", "by"), ("period=week", "period"), ("tz=x", "tz")] {
            assert!(spend_query(&p(query), now).unwrap_err().starts_with(says));
        }
    }
}
