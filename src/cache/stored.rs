//! An answer as a cache entry keeps it: one block holding the body and, after it, the stored
//! headers written out (a name's number, or the name itself, then the value), beside the status
//! and the envelope head. A header map costs about 100 bytes a slot plus an index, and even a list
//! of (name, value) pairs 72 bytes a header; written out, a header costs its value's bytes and a
//! few more. A response's map is made from the block per answer, with room for the headers the
//! gateway adds, and nothing but the map is allocated: names come from a process-wide table
//! (past its 127 names, a name is written out and parsed per answer) and values are slices of
//! the block.

use std::sync::{Mutex, OnceLock, PoisonError};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::cache::answer::Answer;
use crate::cache::size::{ARC_HEADER, BYTES_SHARED, malloc_size};
use crate::envelope::EnvelopeHead;
use crate::svc::Resp;

/// The headers the gateway adds to a cached answer: `Cache-Status`, `Age` and `X-Request-Id`.
pub(crate) const HIT_HEADERS: usize = 3;

#[derive(Debug)]
pub(crate) struct StoredAnswer {
    /// The body, then the headers as [`write_header`] writes them.
    block: Bytes,
    /// `None` for an answer the gateway made itself (an error envelope of its own).
    pub(crate) head: Option<EnvelopeHead>,
    body_len: usize,
    /// How many headers the block holds (saturating), to size a map.
    headers: u16,
    pub(crate) status: StatusCode,
}

impl StoredAnswer {
    /// The answer in memory of its own: nothing of the buffer it was read into stays alive.
    pub(crate) fn new(answer: &Answer) -> StoredAnswer {
        let written: usize = answer
            .headers
            .iter()
            .map(|(n, v)| HEADER_OVERHEAD + n.as_str().len() + v.len())
            .sum();
        let mut block = BytesMut::with_capacity(answer.body.len() + written);
        block.extend_from_slice(&answer.body);
        for (name, value) in &answer.headers {
            write_header(&mut block, name, value);
        }
        StoredAnswer {
            block: block.freeze(),
            head: answer.head.clone(),
            body_len: answer.body.len(),
            headers: u16::try_from(answer.headers.len()).unwrap_or(u16::MAX),
            status: answer.status,
        }
    }

    pub(crate) fn body(&self) -> Bytes {
        self.block.slice(..self.body_len)
    }

    /// The stored headers, in the order the upstream sent them, in a map with room for `room`
    /// more, so that the headers the gateway adds to an answer never grow it.
    pub(crate) fn header_map(&self, room: usize) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(usize::from(self.headers) + room);
        let mut at = self.body_len;
        while let Some((name, value, next)) = self.read_header(at) {
            map.append(name, value);
            at = next;
        }
        map
    }

    /// The header written at `at`, and where the next one starts; `None` at the end.
    fn read_header(&self, at: usize) -> Option<(HeaderName, HeaderValue, usize)> {
        let b = &self.block;
        let tag = *b.get(at)?;
        let mut at = at + 1;
        let name = match tag & !SENSITIVE {
            INLINE => {
                let len = u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
                at += 4;
                let name = HeaderName::from_bytes(b.get(at..at + len)?).ok()?;
                at += len;
                name
            }
            number => NAMES[usize::from(number)].get()?.clone(),
        };
        let len = u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        b.get(at..at + len)?;
        let mut value = HeaderValue::from_maybe_shared(b.slice(at..at + len)).ok()?;
        value.set_sensitive(tag & SENSITIVE != 0);
        Some((name, value, at + len))
    }

    /// The answer as a response, with room for the headers a cached answer gets.
    pub(crate) fn to_response(&self) -> Resp {
        let mut resp = Resp::new(self.body());
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.header_map(HIT_HEADERS);
        if let Some(head) = &self.head {
            resp.extensions_mut().insert(head.clone());
        }
        resp
    }

    /// Bytes this answer holds besides its own fields: the block with its share counter, and the
    /// trace id.
    pub(crate) fn held_bytes(&self) -> usize {
        let trace = self.head.as_ref().and_then(|h| h.trace_id.as_ref());
        malloc_size(self.block.len())
            + BYTES_SHARED
            + trace.map_or(0, |t| malloc_size(t.len() + ARC_HEADER))
    }
}

/// A written header: its tag, a name's length when it is written inline, and the value's length.
const HEADER_OVERHEAD: usize = 9;
/// A tag's bit for a sensitive value; the other bits are the name's number, or [`INLINE`].
const SENSITIVE: u8 = 0x80;
/// The tag of a name written out after it (the table is full).
const INLINE: u8 = 0x7f;

/// Header names by number, made once per process from `&'static str`s, so that cloning one for
/// an answer is a copy. Bounded: a name past the table is written out in the block.
static NAMES: [OnceLock<HeaderName>; INLINE as usize] =
    [const { OnceLock::new() }; INLINE as usize];
/// The names numbered so far, in number order: looked up when an entry is stored, never per hit.
static NUMBERED: Mutex<Vec<HeaderName>> = Mutex::new(Vec::new());

/// The name's number, numbering it if the table has room.
fn name_number(name: &HeaderName) -> Option<u8> {
    let mut numbered = NUMBERED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(i) = numbered.iter().position(|n| n == name) {
        return u8::try_from(i).ok();
    }
    let number = numbered.len();
    let slot = NAMES.get(number)?;
    // Kept for the life of the process, at most one per slot.
    let text: &'static str = Box::leak(name.as_str().to_owned().into_boxed_str());
    let name = HeaderName::from_static(text);
    let _ = slot.set(name.clone());
    numbered.push(name);
    u8::try_from(number).ok()
}

fn write_header(block: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
    let sensitive = if value.is_sensitive() { SENSITIVE } else { 0 };
    match name_number(name) {
        Some(number) => block.put_u8(number | sensitive),
        None => {
            block.put_u8(INLINE | sensitive);
            block.put_u32(name.as_str().len() as u32);
            block.extend_from_slice(name.as_str().as_bytes());
        }
    }
    block.put_u32(value.len() as u32);
    block.extend_from_slice(value.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Answer {
        let body = Bytes::from_static(br#"{"code":0,"traceId":"t1"}"#);
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let mut secret = HeaderValue::from_static("s");
        secret.set_sensitive(true);
        headers.insert("x-secret", secret);
        Answer {
            status: StatusCode::OK,
            head: EnvelopeHead::parse(&body),
            headers,
            body,
        }
    }

    #[test]
    fn a_stored_answer_answers_as_it_came_with_room_for_the_gateways_headers() {
        let answer = answer();
        let stored = StoredAnswer::new(&answer);
        let mut resp = stored.to_response();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers(), &answer.headers);
        assert!(resp.headers()["x-secret"].is_sensitive());
        assert!(!resp.headers()["content-type"].is_sensitive());
        assert_eq!(resp.body(), &answer.body);
        assert!(resp.extensions().get::<EnvelopeHead>().is_some());
        let room = resp.headers().capacity();
        let headers = resp.headers_mut();
        headers.insert("cache-status", HeaderValue::from_static("x"));
        headers.insert(http::header::AGE, HeaderValue::from_static("0"));
        headers.insert("x-request-id", HeaderValue::from_static("r"));
        assert_eq!(headers.capacity(), room, "the gateway's headers fit");
    }

    #[test]
    fn it_keeps_nothing_of_the_buffer_it_was_read_into() {
        let (buffer, answer) = crate::cache::answer::read_into_one_buffer();
        let stored = StoredAnswer::new(&answer);
        let within = |p: *const u8| buffer.as_ptr_range().contains(&p);
        assert!(!within(stored.body().as_ptr()), "the body is its own");
        let map = stored.header_map(0);
        assert!(!within(map["x-trace"].as_bytes().as_ptr()), "so are values");
        assert_eq!(stored.body().len(), 315);
        assert_eq!(map["x-trace"].as_bytes(), &[b'x'; 20]);
    }

    #[test]
    fn names_are_numbered_once_and_a_full_table_writes_them_out() {
        let a = name_number(&HeaderName::from_static("x-numbered-once")).unwrap();
        let b = name_number(&HeaderName::from_static("x-numbered-once")).unwrap();
        assert_eq!(a, b);
        // Fill the table: later names are written out and still read back.
        let mut i = 0;
        while name_number(&HeaderName::from_bytes(format!("x-fill-{i}").as_bytes()).unwrap())
            .is_some()
        {
            i += 1;
        }
        let mut headers = HeaderMap::new();
        headers.insert("x-past-the-table", HeaderValue::from_static("v"));
        let stored = StoredAnswer::new(&Answer {
            status: StatusCode::OK,
            headers: headers.clone(),
            body: Bytes::new(),
            head: None,
        });
        assert_eq!(stored.header_map(0), headers);
        assert_eq!(
            name_number(&HeaderName::from_static("x-numbered-once")),
            Some(a)
        );
    }

    #[test]
    fn an_answer_weighs_its_block_its_share_counter_and_its_trace_id() {
        // A 25-byte body and no headers: a block of 25 bytes (32 in its size class), the share
        // counter's 24, and the 2-byte trace id behind an `Arc`'s 16 (18, so 24).
        let body = Bytes::from_static(br#"{"code":0,"traceId":"t1"}"#);
        let stored = StoredAnswer::new(&Answer {
            status: StatusCode::OK,
            head: EnvelopeHead::parse(&body),
            headers: HeaderMap::new(),
            body,
        });
        assert_eq!(stored.held_bytes(), 32 + 24 + 24);
    }
}
