//! The admin listener's ledger endpoints (CONTRACT.md, "Admin"): `GET /admin/purchases` (JSON in
//! the envelope, or CSV for `Accept: text/csv`), `GET /admin/purchases/{id}`, `GET /admin/spend`.
//! The admin module checks the key and calls these; refusals are `GatewayError` values.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};

use super::csv;
use super::params::{self, DEFAULT_LIMIT, LIST_PARAMS, SPEND_PARAMS};
use super::spend::sum;
use crate::envelope::success_response;
use crate::error::GatewayError;
use crate::ledger::{Ledger, LedgerError};

type Answer = Result<http::Response<Bytes>, GatewayError>;

fn bad(msg: String) -> GatewayError {
    GatewayError::BadRequest { code: 1007, msg }
}

fn unreadable(e: &LedgerError) -> GatewayError {
    tracing::warn!(error = %e, "ledger: a read failed");
    GatewayError::LedgerUnreadable(e.to_string())
}

/// Whether the caller asks for CSV: `text/csv` among its `Accept` media ranges (not with `q=0`).
pub(crate) fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("text/csv") && !refused
        })
}

/// The `Link` to the next page: this request's parameters, its cursor replaced.
fn next_link(query: Option<&str>, next: &str) -> Option<HeaderValue> {
    let mut target = format!("/admin/purchases?cursor={next}");
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        if !pair.starts_with("cursor=") {
            target.push('&');
            target.push_str(pair);
        }
    }
    HeaderValue::from_str(&format!("<{target}>; rel=\"next\"")).ok()
}

/// `GET /admin/purchases`: a newest-first page of entries, filtered.
pub(crate) async fn list(
    ledger: &Ledger,
    query: Option<&str>,
    headers: &HeaderMap,
    id: &str,
) -> Answer {
    let parsed = params::parse_query(query, LIST_PARAMS).map_err(bad)?;
    let l = params::listing(&parsed).map_err(bad)?;
    let page = ledger
        .list(
            &l.filter,
            l.limit.unwrap_or(DEFAULT_LIMIT),
            l.cursor.as_deref(),
        )
        .await
        .map_err(|e| unreadable(&e))?;
    let mut resp = if wants_csv(headers) {
        let mut text = csv::header();
        for e in &page.entries {
            text.push_str(&csv::line(e));
        }
        let mut resp = http::Response::new(Bytes::from(text));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        resp
    } else {
        success_response(
            "ok",
            serde_json::json!({"entries": page.entries, "next": page.next}),
            id,
        )
    };
    if let Some(link) = page.next.as_deref().and_then(|n| next_link(query, n)) {
        resp.headers_mut().insert(header::LINK, link);
    }
    Ok(resp)
}

/// `GET /admin/purchases/{id}`: one entry and the entries answered from it.
pub(crate) async fn one(ledger: &Ledger, entry_id: &str, query: Option<&str>, id: &str) -> Answer {
    params::parse_query(query, &[]).map_err(bad)?;
    if !params::is_id(entry_id) {
        return Err(bad(format!(
            "{:?} is not a purchase id: expected 28 lowercase hex digits",
            entry_id.chars().take(40).collect::<String>()
        )));
    }
    let entry = ledger
        .get(entry_id)
        .await
        .map_err(|e| unreadable(&e))?
        .ok_or_else(|| GatewayError::NoSuchPurchase(entry_id.to_string()))?;
    let answered = ledger
        .answered_from(entry_id)
        .await
        .map_err(|e| unreadable(&e))?;
    Ok(success_response(
        "ok",
        serde_json::json!({"entry": entry, "answered": answered}),
        id,
    ))
}

/// `GET /admin/spend`: sums per group and calendar period.
pub(crate) async fn spend(ledger: &Ledger, query: Option<&str>, now_ms: u64, id: &str) -> Answer {
    let parsed = params::parse_query(query, SPEND_PARAMS).map_err(bad)?;
    let q = params::spend_query(&parsed, now_ms).map_err(bad)?;
    // Every entry of the window is read and bucketed here: fine for thousands a day; a
    // GROUP BY in the database would be the next step for far more.
    let rows = ledger
        .spend_rows(q.since_ms, q.until_ms)
        .await
        .map_err(|e| unreadable(&e))?;
    let lines = sum(&rows, q.by, q.period, &q.tz);
    Ok(success_response(
        "ok",
        serde_json::json!({
            "by": q.by.as_str(),
            "period": q.period.as_str(),
            "tz": q.tz_name,
            "since": q.since_ms,
            "until": q.until_ms,
            "rows": lines,
        }),
        id,
    ))
}

#[cfg(test)]
mod tests;
