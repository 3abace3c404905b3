//! Reconciliation, the pure part: after a create with an unknown outcome, which listed disks the
//! create may have made, how the disk list is paged, and the answer a found disk becomes. The
//! protocol around it (claiming the disk, waiting for identical purchases) is in the layer.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::Value;
use tracing::Span;

use crate::cache::answer::Answer;
use crate::envelope::EnvelopeHead;
use crate::protect::validate::DiskOrder;
use crate::routes::{Route, RouteMatch};
use crate::svc::Req;
use crate::telemetry::span::RequestSpan;

/// The disk list is read this many at a time, and at most this many pages.
pub(super) const PAGE_SIZE: u64 = 100;
pub(super) const MAX_PAGES: u64 = 100;

/// How far before the attempt a disk's `createTime` may lie and still match it (clock skew).
pub(super) const SLACK_MS: u64 = 60_000;

/// The disks in `listed` that a create of `order` sent at `sent_at_ms` may have made, earliest
/// first: the same area and size, mounted on its host (on none when it did not mount), created no
/// earlier than the attempt less the clock slack.
pub(super) fn candidates(listed: &[Value], order: &DiskOrder, sent_at_ms: u64) -> Vec<String> {
    let as_i64 = |v: &Value| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    let host = |d: &Value| {
        d["pveId"]
            .as_str()
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
    };
    let mut matches: Vec<(i64, String)> = listed
        .iter()
        .filter(|d| as_i64(&d["memory"]) == Some(order.memory_gb))
        .filter(|d| as_i64(&d["area"]) == Some(order.area))
        .filter(|d| host(d) == order.pve_id)
        .filter_map(|d| Some((as_i64(&d["createTime"])?, d["id"].as_str()?.to_owned())))
        .filter(|(t, _)| (*t).max(0) as u64 + SLACK_MS >= sent_at_ms)
        .collect();
    matches.sort();
    matches.into_iter().map(|(_, id)| id).collect()
}

/// The `getList` request for one page of the account's disks in `order`'s area, carrying the
/// original request's extensions (caller, account, request id); with traces on, `span` (the
/// reconciliation's) stands for the request's span, so the list call is its child.
pub(super) fn list_request(
    original: &Req,
    order: &DiskOrder,
    page: u64,
    span: Option<&Span>,
) -> Req {
    let body = serde_json::json!({"page": page, "pageSize": PAGE_SIZE, "area": order.area});
    let mut list = Req::new(Bytes::from(body.to_string()));
    *list.method_mut() = Method::POST;
    *list.uri_mut() =
        http::Uri::try_from(Route::DiskList.path_template()).expect("a route's path is a URI");
    list.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    *list.extensions_mut() = original.extensions().clone();
    list.extensions_mut().insert(RouteMatch {
        route: Route::DiskList,
        param: None,
    });
    if let Some(span) = span {
        list.extensions_mut().insert(RequestSpan(span.clone()));
    }
    list
}

/// One page of the disk list: its disks and the total the upstream reports. `None` when the
/// answer is not a success (the list could not be read).
pub(super) fn read_page(answer: &Answer) -> Option<(Vec<Value>, u64)> {
    if !answer.is_storable() {
        return None;
    }
    let mut listed: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    let total = listed["data"]["totalCounts"].as_u64().unwrap_or(0);
    let got = match listed["data"]["data"].take() {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    Some((got, total))
}

/// Whether paging stops after a page of `got` disks, with `so_far` read in all: an empty page,
/// or the whole reported total read. Every page is read otherwise: the new disk may be on any of
/// them, whatever order the list is in.
pub(super) fn last_page(got: usize, so_far: usize, total: u64) -> bool {
    got == 0 || so_far as u64 >= total
}

/// The answer a reconciled create gets: the upstream's success envelope naming its disk.
pub(super) fn found(disk: &str, request_id: &str) -> Answer {
    let body = serde_json::json!({"code": 0, "success": true, "msg": "success", "data": disk, "traceId": request_id});
    let body = Bytes::from(body.to_string());
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Answer {
        status: StatusCode::OK,
        headers,
        head: EnvelopeHead::parse(&body),
        body,
    }
}

/// The new disk's id in a successful create answer.
pub(super) fn created_disk(answer: &Answer) -> Option<String> {
    if !answer.is_storable() {
        return None;
    }
    let v: Value = serde_json::from_slice(&answer.body).ok()?;
    v.get("data")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SENT: u64 = 1_800_000_000_000;

    fn disk(id: &str, area: i64, memory: i64, host: Option<&str>, created: u64) -> Value {
        json!({"id": id, "area": area.to_string(), "memory": memory, "pveId": host,
               "createTime": created, "status": "0"})
    }

    fn order(area: i64, memory_gb: i64, host: Option<&str>) -> DiskOrder {
        DiskOrder {
            area,
            memory_gb,
            pve_id: host.map(str::to_owned),
        }
    }

    fn answer(status: StatusCode, body: &str) -> Answer {
        let body = Bytes::from(body.to_string());
        Answer {
            status,
            headers: HeaderMap::new(),
            head: EnvelopeHead::parse(&body),
            body,
        }
    }

    #[test]
    fn reconciliation_takes_only_what_the_order_could_have_made() {
        let listed = vec![
            disk("right", 0, 20, None, SENT + 500),
            disk("wrong-area", 1, 20, None, SENT + 100),
            disk("wrong-size", 0, 21, None, SENT + 100),
            disk("mounted", 0, 20, Some("h1"), SENT + 100),
            disk("before-the-attempt", 0, 20, None, SENT - SLACK_MS - 1),
            disk("within-the-slack", 0, 20, None, SENT - SLACK_MS + 1),
            json!({"id": "no-time", "area": 0, "memory": 20, "pveId": null}),
            json!({"area": 0, "memory": 20, "pveId": null, "createTime": SENT}),
            // An empty host is no host; numbers may come as strings.
            json!({"id": "empty-host", "area": "0", "memory": "20", "pveId": "", "createTime": (SENT + 900).to_string()}),
        ];
        let table: [(DiskOrder, &[&str]); 6] = [
            (
                order(0, 20, None),
                &["within-the-slack", "right", "empty-host"],
            ),
            (order(0, 20, Some("h1")), &["mounted"]),
            (order(0, 20, Some("h2")), &[]),
            (order(1, 20, None), &["wrong-area"]),
            (order(0, 21, None), &["wrong-size"]),
            (order(2, 20, None), &[]),
        ];
        for (order, want) in table {
            assert_eq!(candidates(&listed, &order, SENT), want, "{order:?}");
        }
    }

    #[test]
    fn an_empty_or_odd_list_gives_nothing() {
        assert!(candidates(&[], &order(0, 20, None), SENT).is_empty());
        let odd = vec![
            json!(null),
            json!("x"),
            json!({"id": 7, "area": 0, "memory": 20}),
            json!({"id": "neg", "area": 0, "memory": 20, "createTime": -5}),
        ];
        assert!(candidates(&odd, &order(0, 20, None), SENT).is_empty());
    }

    #[test]
    fn the_earliest_match_comes_first_whatever_the_list_order() {
        let listed = vec![
            disk("c", 0, 20, None, SENT + 3),
            disk("a", 0, 20, None, SENT + 1),
            disk("b", 0, 20, None, SENT + 2),
        ];
        assert_eq!(
            candidates(&listed, &order(0, 20, None), SENT),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn a_page_is_read_only_from_a_success() {
        // (status, body, the disks read and the total, when the page is read)
        type Row<'a> = (StatusCode, &'a str, Option<(usize, u64)>);
        let table: [Row; 5] = [
            (
                StatusCode::OK,
                r#"{"code":0,"data":{"totalCounts":3,"data":[{"id":"a"},{"id":"b"}]}}"#,
                Some((2, 3)),
            ),
            (
                StatusCode::OK,
                r#"{"code":0,"data":{"totalCounts":0,"data":null}}"#,
                Some((0, 0)),
            ),
            (StatusCode::OK, r#"{"code":0,"data":null}"#, Some((0, 0))),
            (StatusCode::OK, r#"{"code":500,"msg":"x"}"#, None),
            (StatusCode::BAD_GATEWAY, r#"{"code":503}"#, None),
        ];
        for (status, body, want) in table {
            let got = read_page(&answer(status, body)).map(|(d, t)| (d.len(), t));
            assert_eq!(got, want, "{status} {body}");
        }
    }

    #[test]
    fn paging_stops_at_an_empty_page_or_the_total() {
        // (disks on this page, disks read so far, reported total, last?)
        let table = [
            (0, 0, 10, true),
            (100, 100, 250, false),
            (50, 250, 250, true),
            (100, 100, 0, true),
            (100, 300, 250, true),
        ];
        for (got, so_far, total, last) in table {
            assert_eq!(
                last_page(got, so_far, total),
                last,
                "{got} {so_far} {total}"
            );
        }
    }

    #[test]
    fn a_found_disk_is_a_success_naming_it() {
        let a = found("disk-1", "rid");
        assert!(a.is_storable());
        assert_eq!(created_disk(&a).as_deref(), Some("disk-1"));
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["traceId"], "rid");
        assert_eq!(
            created_disk(&answer(StatusCode::OK, r#"{"code":220013,"data":null}"#)),
            None
        );
    }

    #[test]
    fn the_list_request_asks_one_page_of_the_orders_area() {
        let original = Req::new(Bytes::new());
        let r = list_request(&original, &order(3, 20, None), 2, None);
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri().path(), "/v1/PveMachineHardDisk/open/getList");
        let v: Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v, json!({"page": 2, "pageSize": PAGE_SIZE, "area": 3}));
        assert_eq!(
            r.extensions().get::<RouteMatch>().map(|m| m.route),
            Some(Route::DiskList)
        );
    }
}
