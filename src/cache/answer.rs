//! A complete answer as the upstream call gave it: what the cache stores, what a create record
//! keeps to replay, and what a fill hands to the requests waiting on it. Apart from `entry` (its
//! freshness) and `stored` (its compact form), which both build on it.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::cache::size::{ARC_HEADER, BYTES_SHARED, header_map_bytes, malloc_size};
use crate::envelope::EnvelopeHead;
use crate::svc::Resp;

/// A complete answer as the upstream call gave it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// `None` for an answer the gateway made itself (an error envelope of its own).
    pub(crate) head: Option<EnvelopeHead>,
}

impl Answer {
    pub(crate) fn from_response(resp: Resp) -> Answer {
        let head = resp.extensions().get::<EnvelopeHead>().cloned();
        let (parts, body) = resp.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
            head,
        }
    }

    /// The same answer in memory of its own. An answer read from a connection holds slices of
    /// that connection's read buffer (its body, its header values), so keeping it as it is would
    /// keep the whole buffer alive; what is kept for a while (cache entries, records) is copied.
    /// The body and every header value share one allocation, and the header map has no spare
    /// room: each separate small allocation costs malloc's rounding and bookkeeping besides.
    pub(crate) fn compacted(&self) -> Answer {
        let values: usize = self.headers.values().map(HeaderValue::len).sum();
        let mut block = BytesMut::with_capacity(self.body.len() + values);
        block.extend_from_slice(&self.body);
        for value in self.headers.values() {
            block.extend_from_slice(value.as_bytes());
        }
        let block = block.freeze();
        let mut headers = HeaderMap::with_capacity(self.headers.len());
        let mut at = self.body.len();
        for (name, value) in &self.headers {
            let end = at + value.len();
            let mut owned = HeaderValue::from_maybe_shared(block.slice(at..end))
                .unwrap_or_else(|_| value.clone());
            owned.set_sensitive(value.is_sensitive());
            headers.append(name.clone(), owned);
            at = end;
        }
        Answer {
            status: self.status,
            headers,
            body: block.slice(..self.body.len()),
            head: self.head.clone(),
        }
    }

    /// Bytes this answer holds in memory (a compacted one: see [`Answer::compacted`]), for the
    /// bounds that weigh entries and records: its own fields, the header map's table, and the
    /// block of body and header values with its share counter.
    pub(crate) fn held_bytes(&self) -> usize {
        let values: usize = self.headers.values().map(HeaderValue::len).sum();
        let trace = self.head.as_ref().and_then(|h| h.trace_id.as_ref());
        std::mem::size_of::<Answer>()
            + header_map_bytes(&self.headers)
            + malloc_size(self.body.len() + values)
            + BYTES_SHARED
            + trace.map_or(0, |t| malloc_size(t.len() + ARC_HEADER))
    }

    pub(crate) fn to_response(&self) -> Resp {
        let mut resp = Resp::new(self.body.clone());
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        if let Some(head) = &self.head {
            resp.extensions_mut().insert(head.clone());
        }
        resp
    }

    /// Only upstream successes are stored: HTTP 200 with envelope code 0.
    pub(crate) fn is_storable(&self) -> bool {
        self.status == StatusCode::OK && self.head.as_ref().is_some_and(EnvelopeHead::is_success)
    }

    /// The upstream failed (rather than answering a business error): a stored entry may stand in.
    pub(crate) fn is_failure(&self) -> bool {
        self.status.is_server_error()
            || self
                .head
                .as_ref()
                .is_some_and(|h| matches!(h.code, Some(500 | 503)))
    }

    /// The upstream says the thing does not exist (220001 disk, 1021 host): drop what we hold.
    pub(crate) fn is_gone(&self) -> bool {
        self.head
            .as_ref()
            .is_some_and(|h| matches!(h.code, Some(220001 | 1021)))
    }
}

/// What a connection read: one large buffer, of which the answer's body and header value are
/// slices (`x-trace`, 20 bytes; a 315-byte body).
#[cfg(test)]
pub(crate) fn read_into_one_buffer() -> (Bytes, Answer) {
    let buffer = Bytes::from(vec![b'x'; 64 * 1024]);
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-trace",
        HeaderValue::from_maybe_shared(buffer.slice(100..120)).unwrap(),
    );
    let answer = Answer {
        status: StatusCode::OK,
        headers,
        body: buffer.slice(1000..1315),
        head: None,
    };
    (buffer, answer)
}
