//! A stored upstream answer and its freshness (RFC 5861). Freshness is kept on tokio's clock in the
//! entry itself: the store's own expiry is only a memory bound.

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::cache::answer::Answer;
use crate::cache::policy::CachePolicy;
use crate::cache::size::{ARC_HEADER, malloc_size};
use crate::cache::stored::StoredAnswer;
use crate::routes::Route;

/// What a lookup finds, by age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Serve it; this long is left.
    Fresh(Duration),
    /// Past its TTL but within stale-while-revalidate: serve it and refresh in the background.
    Revalidate,
    /// Only usable if the upstream fails (within stale-if-error).
    IfError,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) answer: StoredAnswer,
    pub(crate) stored_at: Instant,
    /// Milliseconds, saturating at about 49 days (a `Duration` takes four times the room): the
    /// TTL, and the stale-while-revalidate and stale-if-error windows.
    fresh_ms: u32,
    stale_while_revalidate_ms: u32,
    stale_if_error_ms: u32,
}

#[derive(Deserialize)]
struct DiskStatus {
    data: Option<DiskData>,
}

#[derive(Deserialize)]
struct DiskData {
    status: Option<serde_json::Value>,
}

/// A disk's `status` as the upstream writes it (`"1"` or `1`), as text.
fn disk_status(body: &[u8]) -> Option<String> {
    let status = serde_json::from_slice::<DiskStatus>(body)
        .ok()?
        .data?
        .status?;
    match status {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Entry {
    pub(crate) fn new(route: Route, answer: &Answer, policy: &CachePolicy, now: Instant) -> Entry {
        let mut fresh_for = policy.ttl;
        // A disk mounting or being destroyed is what pollers wait on: its entry lives shorter.
        if route.has_disk_status()
            && !policy.status_ttl.is_empty()
            && let Some(ttl) = disk_status(&answer.body).and_then(|s| policy.status_ttl.get(&s))
        {
            fresh_for = fresh_for.min(*ttl);
        }
        Entry::restored(
            answer,
            now,
            [
                fresh_for,
                policy.stale_while_revalidate,
                policy.stale_if_error,
            ],
        )
    }

    /// An entry stored at `stored_at` with its TTL, stale-while-revalidate and stale-if-error.
    pub(crate) fn restored(answer: &Answer, stored_at: Instant, windows: [Duration; 3]) -> Entry {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        Entry {
            answer: StoredAnswer::new(answer),
            stored_at,
            fresh_ms: ms(windows[0]),
            stale_while_revalidate_ms: ms(windows[1]),
            stale_if_error_ms: ms(windows[2]),
        }
    }

    pub(crate) fn fresh_for(&self) -> Duration {
        Duration::from_millis(self.fresh_ms.into())
    }

    pub(crate) fn stale_while_revalidate(&self) -> Duration {
        Duration::from_millis(self.stale_while_revalidate_ms.into())
    }

    pub(crate) fn stale_if_error(&self) -> Duration {
        Duration::from_millis(self.stale_if_error_ms.into())
    }

    /// `None` when the entry is of no use any more.
    pub(crate) fn freshness(&self, now: Instant) -> Option<Freshness> {
        let age = now.saturating_duration_since(self.stored_at);
        let fresh_for = self.fresh_for();
        if age < fresh_for {
            Some(Freshness::Fresh(fresh_for - age))
        } else if age < fresh_for + self.stale_while_revalidate() {
            Some(Freshness::Revalidate)
        } else if age < fresh_for + self.stale_if_error() {
            Some(Freshness::IfError)
        } else {
            None
        }
    }

    /// Servable as a hit at `now`.
    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        matches!(self.freshness(now), Some(Freshness::Fresh(_)))
    }

    pub(crate) fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored_at)
    }

    /// Seconds of freshness left, negative once stale (the `ttl` of `Cache-Status`).
    pub(crate) fn ttl_secs(&self, now: Instant) -> i64 {
        let (age, fresh_for) = (self.age(now), self.fresh_for());
        if age < fresh_for {
            (fresh_for - age).as_secs() as i64
        } else {
            -((age - fresh_for).as_secs() as i64) - 1
        }
    }

    /// How long the entry is worth keeping at all.
    pub(crate) fn retain_for(&self) -> Duration {
        self.fresh_for() + self.stale_while_revalidate().max(self.stale_if_error())
    }

    /// Bytes this entry costs in memory: the entry (kept in an `Arc`) and what its answer holds.
    /// A hit makes its headers afresh and keeps nothing.
    pub(crate) fn weight(&self) -> usize {
        malloc_size(std::mem::size_of::<Entry>() + ARC_HEADER) + self.answer.held_bytes()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue, StatusCode};

    use super::*;
    use crate::cache::answer::read_into_one_buffer;
    use crate::cache::size::BYTES_SHARED;
    use crate::envelope::EnvelopeHead;

    #[test]
    fn a_compacted_answer_keeps_nothing_of_the_connection_buffer() {
        let (buffer, answer) = read_into_one_buffer();
        let within = |p: *const u8| buffer.as_ptr_range().contains(&p);
        assert!(
            within(answer.body.as_ptr()) && within(answer.headers["x-trace"].as_bytes().as_ptr())
        );
        let kept = answer.compacted();
        assert!(!within(kept.body.as_ptr()), "the body is its own");
        assert!(
            !within(kept.headers["x-trace"].as_bytes().as_ptr()),
            "header values are their own"
        );
        assert_eq!(kept.body.len(), 315);
        assert_eq!(kept.headers["x-trace"].as_bytes(), &[b'x'; 20]);
    }

    fn answer(body: &str) -> Answer {
        Answer {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
            head: EnvelopeHead::parse(body.as_bytes()),
        }
    }

    fn policy() -> CachePolicy {
        CachePolicy {
            ttl: Duration::from_secs(5),
            stale_while_revalidate: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(60),
            status_ttl: [("1".to_string(), Duration::from_secs(1))].into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn freshness_moves_through_its_states() {
        let e = Entry::new(
            Route::DiskInfo,
            &answer(r#"{"code":0,"data":{"status":"0"}}"#),
            &policy(),
            Instant::now(),
        );
        assert_eq!(
            e.freshness(Instant::now()),
            Some(Freshness::Fresh(Duration::from_secs(5)))
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(e.freshness(Instant::now()), Some(Freshness::Revalidate));
        assert_eq!(e.ttl_secs(Instant::now()), -2);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(e.freshness(Instant::now()), Some(Freshness::IfError));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(e.freshness(Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_mounting_disk_lives_shorter() {
        let mounting = Entry::new(
            Route::DiskInfo,
            &answer(r#"{"code":0,"data":{"status":"1"}}"#),
            &policy(),
            Instant::now(),
        );
        assert_eq!(mounting.fresh_for(), Duration::from_secs(1));
        let numeric = Entry::new(
            Route::DiskInfo,
            &answer(r#"{"code":0,"data":{"status":1}}"#),
            &policy(),
            Instant::now(),
        );
        assert_eq!(numeric.fresh_for(), Duration::from_secs(1));
        let other_route = Entry::new(
            Route::HostOne,
            &answer(r#"{"code":0,"data":{"status":1}}"#),
            &policy(),
            Instant::now(),
        );
        assert_eq!(other_route.fresh_for(), Duration::from_secs(5));
    }

    #[test]
    fn only_successes_are_storable() {
        assert!(answer(r#"{"code":0}"#).is_storable());
        assert!(!answer(r#"{"code":220001}"#).is_storable());
        assert!(answer(r#"{"code":220001}"#).is_gone());
        assert!(answer(r#"{"code":503}"#).is_failure());
    }

    #[tokio::test(start_paused = true)]
    async fn each_state_ends_exactly_at_its_window() {
        // fresh 5 s, stale-while-revalidate 5 s, stale-if-error 60 s.
        let e = Entry::new(
            Route::DiskInfo,
            &answer(r#"{"code":0}"#),
            &policy(),
            Instant::now(),
        );
        let at = |secs: u64| Instant::now() + Duration::from_secs(secs);
        assert!(e.is_fresh(at(0)));
        assert_eq!(
            e.freshness(at(2)),
            Some(Freshness::Fresh(Duration::from_secs(3)))
        );
        assert_eq!(e.ttl_secs(at(2)), 3);
        assert_eq!(
            e.freshness(at(5)),
            Some(Freshness::Revalidate),
            "stale at 5 s"
        );
        assert!(!e.is_fresh(at(5)));
        assert_eq!(e.ttl_secs(at(5)), -1);
        assert_eq!(
            e.freshness(at(10)),
            Some(Freshness::IfError),
            "revalidate ends at 10 s"
        );
        assert_eq!(e.freshness(at(64)), Some(Freshness::IfError));
        assert_eq!(e.freshness(at(65)), None, "of no use at 65 s");
        assert_eq!(e.retain_for(), Duration::from_secs(65));
    }

    #[test]
    fn a_success_is_neither_a_failure_nor_gone_and_answers_as_stored() {
        let ok = answer(r#"{"code":0,"data":{"id":"d1"}}"#);
        assert!(!ok.is_failure() && !ok.is_gone());
        let mut stored = ok.clone();
        stored
            .headers
            .insert("x-trace", HeaderValue::from_static("t1"));
        let resp = stored.to_response();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-trace"], "t1");
        assert_eq!(resp.body(), &stored.body);
        assert!(resp.extensions().get::<EnvelopeHead>().is_some());
    }

    #[test]
    fn an_entry_weighs_at_least_what_it_holds_and_grows_with_its_body_and_headers() {
        let small = Entry::new(
            Route::DiskInfo,
            &answer(r#"{"code":0}"#),
            &policy(),
            Instant::now(),
        );
        let body = format!(r#"{{"code":0,"data":"{}"}}"#, "x".repeat(1000));
        let big = Entry::new(Route::DiskInfo, &answer(&body), &policy(), Instant::now());
        // Its own block (the answer's fields inside), and the body's block with its share counter.
        let least =
            std::mem::size_of::<Entry>() + ARC_HEADER + r#"{"code":0}"#.len() + BYTES_SHARED;
        assert!(small.weight() >= least, "{} < {least}", small.weight());
        assert!(
            small.weight() < 320,
            "a bare entry weighs {}",
            small.weight()
        );
        let grown = big.weight() - small.weight();
        assert!(
            (1000..1100).contains(&grown),
            "1,000 more body bytes weigh {grown}"
        );
        let mut with_headers = answer(r#"{"code":0}"#);
        with_headers.headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        with_headers.headers.insert(
            http::header::DATE,
            HeaderValue::from_static("Mon, 30 Nov 2026 10:00:00 GMT"),
        );
        let headed = Entry::new(Route::DiskInfo, &with_headers, &policy(), Instant::now());
        // Written into the body's block: their 45 value bytes and a few per header, no more
        // than one size class above that.
        let grown = headed.weight() - small.weight();
        assert!(
            (45..45 + 2 * 9 + 64).contains(&grown),
            "two headers weigh {grown}"
        );
        let classes = [
            (0, 8),
            (24, 24),
            (25, 32),
            (64, 64),
            (65, 80),
            (128, 128),
            (129, 160),
        ];
        for (n, class) in classes {
            assert_eq!(malloc_size(n), class, "{n} bytes");
        }
        assert_eq!(malloc_size(339), 384);
    }
}
