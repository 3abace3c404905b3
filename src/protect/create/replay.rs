//! A replayed answer: a record's stored answer with `Idempotent-Replayed: true`, and the marks
//! that tell the flow it came from a record.

use http::{HeaderName, HeaderValue};

use crate::cache::answer::Answer;
use crate::svc::Resp;

/// The header every replayed answer carries (CONTRACT.md).
pub(crate) const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Marks an answer made from a record (a replay): the record stays as it is.
#[derive(Debug, Clone, Copy)]
pub(super) struct FromRecord;

/// Marks a replay of a record another execution wrote: the explicit flag an [`Outcome`] carries.
#[derive(Debug, Clone, Copy)]
pub(super) struct Replayed;

/// A stored answer, replayed.
pub(super) fn replay(answer: &Answer) -> Resp {
    let mut resp = answer.to_response();
    resp.headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    resp.extensions_mut().insert(FromRecord);
    resp.extensions_mut().insert(Replayed);
    resp
}
