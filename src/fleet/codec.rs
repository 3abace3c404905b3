//! How shared state is written into Redis values: a version byte, then fixed-width integers and
//! length-prefixed byte strings. Compact (a disk-info entry costs its body plus a few dozen bytes)
//! and binary-safe. Times are wall-clock milliseconds since the Unix epoch, the clock replicas
//! share; a value that does not decode is treated as absent.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::time::Instant;

use crate::cache::answer::Answer;
use crate::cache::entry::Entry;
use crate::clock::now_ms;
use crate::envelope::EnvelopeHead;
use crate::protect::records::{Record, State};

const VERSION: u8 = 1;

struct Writer(Vec<u8>);

impl Writer {
    fn new(capacity: usize) -> Writer {
        let mut v = Vec::with_capacity(capacity + 64);
        v.push(VERSION);
        Writer(v)
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(&(b.len() as u32).to_be_bytes());
        self.0.extend_from_slice(b);
    }
    fn answer(&mut self, a: &Answer) {
        self.answer_of(a.status, a.headers.len(), a.headers.iter(), &a.body);
    }
    fn answer_of<'h>(
        &mut self,
        status: StatusCode,
        count: usize,
        headers: impl Iterator<Item = (&'h HeaderName, &'h HeaderValue)>,
        body: &[u8],
    ) {
        self.u64(u64::from(status.as_u16()));
        self.u64(count as u64);
        for (k, v) in headers {
            self.bytes(k.as_str().as_bytes());
            self.bytes(v.as_bytes());
        }
        self.bytes(body);
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn start(b: &'a [u8]) -> Option<Reader<'a>> {
        let (&v, rest) = b.split_first()?;
        (v == VERSION).then_some(Reader(rest))
    }
    fn u8(&mut self) -> Option<u8> {
        let (&v, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(v)
    }
    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_at_checked(8)?;
        self.0 = rest;
        Some(u64::from_be_bytes(head.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.0.split_at_checked(4)?;
        let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
        let (b, rest) = rest.split_at_checked(len)?;
        self.0 = rest;
        Some(b)
    }
    fn answer(&mut self) -> Option<Answer> {
        let status = StatusCode::from_u16(u16::try_from(self.u64()?).ok()?).ok()?;
        let n = self.u64()?;
        let mut headers = HeaderMap::new();
        for _ in 0..n {
            let k = HeaderName::from_bytes(self.bytes()?).ok()?;
            let v = HeaderValue::from_bytes(self.bytes()?).ok()?;
            headers.append(k, v);
        }
        let body = Bytes::copy_from_slice(self.bytes()?);
        Some(Answer {
            status,
            headers,
            head: EnvelopeHead::parse(&body),
            body,
        })
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// A cache entry, with its stored time on the shared clock so that `Age` stays true on every replica.
pub(crate) fn encode_entry(e: &Entry) -> Vec<u8> {
    let body = e.answer.body();
    let mut w = Writer::new(body.len());
    w.u64(now_ms().saturating_sub(ms(e.age(Instant::now()))));
    w.u64(ms(e.fresh_for()));
    w.u64(ms(e.stale_while_revalidate()));
    w.u64(ms(e.stale_if_error()));
    let headers = e.answer.header_map(0);
    w.answer_of(e.answer.status, headers.len(), headers.iter(), &body);
    w.0
}

pub(crate) fn decode_entry(b: &[u8]) -> Option<Entry> {
    let mut r = Reader::start(b)?;
    let stored_ms = r.u64()?;
    let fresh_for = Duration::from_millis(r.u64()?);
    let stale_while_revalidate = Duration::from_millis(r.u64()?);
    let stale_if_error = Duration::from_millis(r.u64()?);
    let answer = r.answer()?;
    // A stored time ahead of this replica's clock (skew) counts as stored now.
    let age = Duration::from_millis(now_ms().saturating_sub(stored_ms));
    let now = Instant::now();
    Some(Entry::restored(
        &answer,
        now.checked_sub(age).unwrap_or(now),
        [fresh_for, stale_while_revalidate, stale_if_error],
    ))
}

pub(crate) fn encode_record(rec: &Record) -> Vec<u8> {
    let body_len = match &rec.state {
        State::Done(a) => a.body.len(),
        _ => 0,
    };
    let mut w = Writer::new(body_len + rec.fingerprint.len());
    w.bytes(rec.fingerprint.as_bytes());
    w.u64(ms(rec.ttl));
    match &rec.state {
        State::InFlight {
            started_ms,
            lease_until_ms: None,
        } => {
            w.u8(0);
            w.u64(*started_ms);
        }
        // The lease comes last: a renewal rewrites only those 8 bytes (see `fleet::records`).
        State::InFlight {
            started_ms,
            lease_until_ms: Some(until),
        } => {
            w.u8(3);
            w.u64(*started_ms);
            w.u64(*until);
        }
        State::Unknown { sent_at_ms } => {
            w.u8(1);
            w.u64(*sent_at_ms);
        }
        State::Done(a) => {
            w.u8(2);
            w.answer(a);
        }
    }
    w.0
}

pub(crate) fn decode_record(b: &[u8]) -> Option<Record> {
    let mut r = Reader::start(b)?;
    let fingerprint: Arc<str> = std::str::from_utf8(r.bytes()?).ok()?.into();
    let ttl = Duration::from_millis(r.u64()?);
    let state = match r.u8()? {
        0 => State::InFlight {
            started_ms: r.u64()?,
            lease_until_ms: None,
        },
        3 => State::InFlight {
            started_ms: r.u64()?,
            lease_until_ms: Some(r.u64()?),
        },
        1 => State::Unknown {
            sent_at_ms: r.u64()?,
        },
        2 => State::Done(Arc::new(r.answer()?)),
        _ => return None,
    };
    Some(Record {
        fingerprint,
        state,
        ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::CachePolicy;
    use crate::routes::Route;

    fn answer() -> Answer {
        let body = Bytes::from_static(br#"{"code":0,"data":{"status":"2"}}"#);
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        Answer {
            status: StatusCode::OK,
            head: EnvelopeHead::parse(&body),
            headers,
            body,
        }
    }

    #[tokio::test]
    async fn entries_round_trip_with_their_age() {
        let policy = CachePolicy {
            ttl: Duration::from_secs(5),
            stale_while_revalidate: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(300),
            status_ttl: std::collections::BTreeMap::default(),
        };
        let stored = Instant::now() - Duration::from_secs(2);
        let e = Entry::new(Route::DiskInfo, &answer(), &policy, stored);
        let back = decode_entry(&encode_entry(&e)).expect("decodes");
        assert_eq!(back.fresh_for(), e.fresh_for());
        assert_eq!(back.stale_while_revalidate(), e.stale_while_revalidate());
        assert_eq!(back.stale_if_error(), e.stale_if_error());
        assert_eq!(back.answer.body(), e.answer.body());
        assert_eq!(back.answer.header_map(0), answer().headers);
        assert!(
            back.answer
                .head
                .as_ref()
                .is_some_and(EnvelopeHead::is_success)
        );
        let age = back.age(Instant::now());
        assert!(
            age >= Duration::from_millis(1990) && age < Duration::from_secs(3),
            "{age:?}"
        );
    }

    #[test]
    fn records_round_trip_and_garbage_is_absent() {
        for state in [
            State::InFlight {
                started_ms: 7,
                lease_until_ms: None,
            },
            State::InFlight {
                started_ms: 7,
                lease_until_ms: Some(5_007),
            },
            State::Unknown { sent_at_ms: 9 },
            State::Done(Arc::new(answer())),
        ] {
            let rec = Record {
                fingerprint: "disk.create||{}".into(),
                state,
                ttl: Duration::from_secs(60),
            };
            let back = decode_record(&encode_record(&rec)).expect("decodes");
            assert_eq!(back.fingerprint, rec.fingerprint);
            assert_eq!(back.ttl, rec.ttl);
            assert_eq!(format!("{:?}", back.state), format!("{:?}", rec.state));
        }
        // A renewal changes only the last 8 bytes of a leased in-flight record.
        let rec = |until| Record {
            fingerprint: "f".into(),
            state: State::InFlight {
                started_ms: 7,
                lease_until_ms: Some(until),
            },
            ttl: Duration::from_secs(60),
        };
        let (a, b) = (encode_record(&rec(10)), encode_record(&rec(20)));
        assert_eq!(a.len(), b.len());
        assert_eq!(a[..a.len() - 8], b[..b.len() - 8]);
        assert_eq!(a[a.len() - 8..], 10u64.to_be_bytes());
        assert!(decode_record(b"").is_none());
        assert!(decode_record(&[VERSION, 0, 0]).is_none());
        assert!(decode_entry(&[9, 1, 2]).is_none());
    }
}
