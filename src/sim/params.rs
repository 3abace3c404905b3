//! Reading request parameters the way the upstream does: leniently where its documentation is
//! inconsistent (numbers sent as strings), strictly where it is not, and never panicking on any input.

use std::ops::Range;

use serde_json::{Map, Value};

use crate::sim::envelope::ApiError;

/// A JSON request body.
pub(crate) type Object = Map<String, Value>;

/// Parses a request body that must be a JSON object. An empty body counts as `{}`, since some
/// clients send nothing when every parameter is optional.
pub(crate) fn object(body: &[u8]) -> Result<Object, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Object::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(ApiError::bad_param(
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_param(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

/// A field that is present and not `null`; Java clients send absent fields as `null`.
pub(crate) fn field<'a>(obj: &'a Object, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// A JSON number with no fractional part. Magnitudes beyond `i64` saturate, so that a huge size is
/// "too large" rather than "not a number".
pub(crate) fn integer(v: &Value) -> Option<i64> {
    let n = v.as_number()?;
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    // `as` saturates for floats, which is the intent here.
    n.as_f64()
        .filter(|f| f.is_finite() && f.fract() == 0.0)
        .map(|f| f as i64)
}

/// [`integer`], or a string holding a decimal integer (the upstream's examples send `"area": "1"`).
pub(crate) fn integer_like(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.trim().parse().ok(),
        _ => integer(v),
    }
}

/// An optional integer-or-numeric-string field: absent is `None`, anything else unreadable is 1007.
pub(crate) fn opt_integer(obj: &Object, key: &str) -> Result<Option<i64>, ApiError> {
    field(obj, key)
        .map(|v| {
            integer_like(v).ok_or_else(|| ApiError::bad_param(format!("{key} must be an integer")))
        })
        .transpose()
}

/// A required non-empty string field, else 1007.
pub(crate) fn required_text<'a>(obj: &'a Object, key: &str) -> Result<&'a str, ApiError> {
    field(obj, key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_param(format!("{key} is required (a non-empty string)")))
}

/// An optional integer query parameter (`?key=12`): absent is `None`, unreadable is 1007.
/// Values are not percent-decoded: an integer needs no encoding.
pub(crate) fn query_integer(query: &str, key: &str) -> Result<Option<i64>, ApiError> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| {
            v.parse()
                .map_err(|_| ApiError::bad_param(format!("{key} must be an integer")))
        })
        .transpose()
}

/// Page `page` (1-based) of `size` items out of `total`, clipped to what exists.
pub(crate) fn window(total: usize, page: i64, size: i64) -> Range<usize> {
    let offset = page.saturating_sub(1).saturating_mul(size);
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(total);
    let len = usize::try_from(size).unwrap_or(0);
    start..start.saturating_add(len).min(total)
}

/// Reads `page` (default 1, at least 1) and `pageSize` (default 10, 1..=`max_size`), 1007 otherwise.
pub(crate) fn paging(
    page: Option<i64>,
    size: Option<i64>,
    max_size: i64,
) -> Result<(i64, i64), ApiError> {
    let page = page.unwrap_or(1);
    let size = size.unwrap_or(10);
    if page < 1 {
        return Err(ApiError::bad_param("page starts at 1"));
    }
    if !(1..=max_size).contains(&size) {
        return Err(ApiError::bad_param(format!(
            "pageSize must be between 1 and {max_size}"
        )));
    }
    Ok((page, size))
}
