//! The values of a hit's `Cache-Status` (`finovy-gateway; hit; ttl=N`) and `Age`, one per number
//! of seconds, made once per process and kept in static memory: a hit clones them, which neither
//! allocates nor touches a shared counter (a static value's clone copies a pointer), so hits on
//! many cores do not contend on one cache line. Bounded: numbers past the table (an hour) are
//! made per hit.

use std::sync::OnceLock;

use http::HeaderValue;

/// The cache's name in `Cache-Status`.
pub(crate) const CACHE_NAME: &str = "finovy-gateway";

/// Seconds covered by the tables: TTLs up to an hour.
const SLOTS: usize = 3600;

static CACHE_STATUS: [OnceLock<HeaderValue>; SLOTS] = [const { OnceLock::new() }; SLOTS];
static AGE: [OnceLock<HeaderValue>; SLOTS] = [const { OnceLock::new() }; SLOTS];

/// `Cache-Status` of a hit with `ttl` seconds of freshness left.
pub(crate) fn cache_status_hit(ttl: i64) -> HeaderValue {
    value(&CACHE_STATUS, ttl, || {
        format!("{CACHE_NAME}; hit; ttl={ttl}")
    })
}

/// `Age` of `secs` seconds.
pub(crate) fn age(secs: u64) -> HeaderValue {
    value(&AGE, secs, || secs.to_string())
}

fn value<N: TryInto<usize>>(
    table: &'static [OnceLock<HeaderValue>; SLOTS],
    n: N,
    text: impl FnOnce() -> String,
) -> HeaderValue {
    let Some(slot) = n.try_into().ok().and_then(|i| table.get(i)) else {
        return HeaderValue::try_from(text()).expect("visible ASCII");
    };
    slot.get_or_init(|| {
        // Once per slot, at most `SLOTS` per table: the process keeps these for good.
        let text: &'static str = Box::leak(text().into_boxed_str());
        HeaderValue::from_static(text)
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_made_and_a_slot_is_made_once() {
        assert_eq!(cache_status_hit(0), "finovy-gateway; hit; ttl=0");
        assert_eq!(cache_status_hit(59), "finovy-gateway; hit; ttl=59");
        assert_eq!(age(0), "0");
        assert_eq!(age(3599), "3599");
        // Past the table, and a negative TTL (an entry that went stale since its lookup).
        assert_eq!(age(86_400), "86400");
        assert_eq!(cache_status_hit(7200), "finovy-gateway; hit; ttl=7200");
        assert_eq!(cache_status_hit(-1), "finovy-gateway; hit; ttl=-1");
        // The same static bytes each time: nothing is made per hit.
        assert_eq!(
            cache_status_hit(5).as_bytes().as_ptr(),
            cache_status_hit(5).as_bytes().as_ptr()
        );
        assert_eq!(age(7).as_bytes().as_ptr(), age(7).as_bytes().as_ptr());
    }
}
