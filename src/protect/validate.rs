//! Checks a create's body before anything is spent, with the upstream's own error codes where it
//! has them (upstream-api.md, "Create"), and turns it into an [`Order`]: what the create buys. A
//! refused create never reaches the upstream; an accepted one is sent as its order's canonical
//! body ([`Order::body`]), never as the client wrote it, so what was checked, counted and
//! de-duplicated is exactly what is bought.
//!
//! Strict on purpose: a field the upstream does not document (or documents only on its older
//! page, such as `buyNumber`) could buy more than the gateway counted, so unknown fields, fields
//! that differ from a known one only by case, and repeated keys are refused (1007, naming the
//! field) rather than dropped or passed on.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::routes::{Route, SpendBody};

/// Why a body was refused: the envelope code and a message naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub code: i64,
    pub msg: String,
}

fn invalid(code: i64, msg: impl Into<String>) -> Invalid {
    Invalid {
        code,
        msg: msg.into(),
    }
}

/// What a valid disk create buys: one disk. The spending guard and reconciliation need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskOrder {
    pub area: i64,
    pub memory_gb: i64,
    /// The host to mount on; `Some` exactly when `isMount` is 1.
    pub pve_id: Option<String>,
}

/// What a valid host create buys: one host, prepaid (`period`) or pay-as-you-go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostOrder {
    pub package_id: String,
    pub image_id: String,
    /// `(periodNumber, periodType)` of a `createRent`.
    pub period: Option<(i64, i64)>,
}

/// A validated create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    Disk(DiskOrder),
    Host(HostOrder),
}

impl Order {
    /// The body sent upstream: only the documented fields, with the documented types, in a fixed
    /// order. Equal orders have equal bodies, so it is also the create's identity for de-dup.
    pub fn body(&self) -> String {
        let s = |v: &str| Value::from(v).to_string();
        match self {
            Order::Disk(d) => match &d.pve_id {
                Some(host) => format!(
                    r#"{{"area":{},"memory":{},"isMount":1,"pveId":{}}}"#,
                    d.area,
                    d.memory_gb,
                    s(host)
                ),
                None => format!(
                    r#"{{"area":{},"memory":{},"isMount":0}}"#,
                    d.area, d.memory_gb
                ),
            },
            Order::Host(h) => {
                let mut body = format!(
                    r#"{{"packageId":{},"imageId":{}"#,
                    s(&h.package_id),
                    s(&h.image_id)
                );
                if let Some((number, kind)) = h.period {
                    body.push_str(&format!(r#","periodNumber":{number},"periodType":{kind}"#));
                }
                body.push('}');
                body
            }
        }
    }

    pub(crate) fn disk(&self) -> Option<&DiskOrder> {
        match self {
            Order::Disk(d) => Some(d),
            Order::Host(_) => None,
        }
    }
}

/// An object's members as written, repeated keys included (serde_json's `Value` keeps only the
/// last of them, which would let `{"memory":20,"memory":20000}` be read one way and sent another).
struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Members, D::Error> {
        struct Each;
        impl<'de> Visitor<'de> for Each {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    members.push((key, map.next_value::<Value>()?));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Each)
    }
}

/// Longest piece of the client's input quoted back in a message.
const QUOTED: usize = 64;

fn cut(text: &str) -> &str {
    match text.char_indices().nth(QUOTED) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// A field name as quoted in a message: cut, so that an error never echoes a huge key back.
fn quoted(name: &str) -> String {
    let short = cut(name);
    if short.len() < name.len() {
        format!("{short:?}...")
    } else {
        format!("{name:?}")
    }
}

/// A value as shown in a message, cut like [`quoted`].
fn shown(v: &Value) -> String {
    let text = v.to_string();
    let short = cut(&text);
    if short.len() < text.len() {
        format!("{short}...")
    } else {
        text
    }
}

/// The body's fields, each one of `known` at most once, spelt exactly. `null` counts as absent,
/// as the upstream reads it (Java clients send absent fields as `null`).
struct Fields<'a> {
    known: &'a [&'a str],
    values: Vec<Option<Value>>,
}

impl<'a> Fields<'a> {
    fn parse(route: Route, body: &[u8], known: &'a [&'a str]) -> Result<Fields<'a>, Invalid> {
        let members = match serde_json::from_slice::<Members>(body) {
            Ok(m) => m.0,
            Err(e) if e.is_data() => {
                return Err(invalid(1007, "the body must be a JSON object"));
            }
            Err(e) => return Err(invalid(1007, format!("the body is not valid JSON: {e}"))),
        };
        let mut values = vec![None; known.len()];
        let mut seen = vec![false; known.len()];
        for (key, value) in members {
            let Some(i) = known.iter().position(|k| *k == key) else {
                let msg = match known.iter().find(|k| k.eq_ignore_ascii_case(&key)) {
                    Some(k) => format!(
                        "field {} differs from {k:?} only by case: send {k:?} once",
                        quoted(&key)
                    ),
                    None => format!(
                        "unknown field {} in a {route} body; its fields are {}",
                        quoted(&key),
                        known.join(", ")
                    ),
                };
                return Err(invalid(1007, msg));
            };
            if std::mem::replace(&mut seen[i], true) {
                return Err(invalid(
                    1007,
                    format!("field {key:?} appears more than once: send it once"),
                ));
            }
            values[i] = Some(value).filter(|v| !v.is_null());
        }
        Ok(Fields { known, values })
    }

    fn get(&self, field: &str) -> Option<&Value> {
        let i = self.known.iter().position(|k| *k == field)?;
        self.values[i].as_ref()
    }
}

/// An integer given as a JSON number or, as the upstream's own example sends `area`, a numeric string.
fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `buyNumber` (the older page's count of disks per create): the gateway counts one purchase per
/// create, so only 1 is accepted, and it is not sent on.
fn one_purchase(f: &Fields) -> Result<(), Invalid> {
    match f.get("buyNumber") {
        None => Ok(()),
        Some(v) if int_of(v) == Some(1) => Ok(()),
        Some(v) => Err(invalid(
            1007,
            format!(
                "buyNumber must be 1 (one purchase per create: send one create per disk or host), got {}",
                shown(v)
            ),
        )),
    }
}

/// A string field; `None` when absent or blank.
fn text(f: &Fields, field: &str) -> Result<Option<String>, Invalid> {
    match f.get(field) {
        None => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(invalid(
            1007,
            format!("{field} must be a string, got {}", shown(v)),
        )),
    }
}

const DISK_FIELDS: [&str; 5] = ["area", "memory", "isMount", "pveId", "buyNumber"];
const HOST_FIELDS: [&str; 3] = ["packageId", "imageId", "buyNumber"];
const RENT_FIELDS: [&str; 5] = [
    "packageId",
    "imageId",
    "periodNumber",
    "periodType",
    "buyNumber",
];

pub(crate) fn disk_create(body: &[u8]) -> Result<DiskOrder, Invalid> {
    let m = Fields::parse(Route::DiskCreate, body, &DISK_FIELDS)?;
    let area = m.get("area").ok_or_else(|| {
        invalid(
            1007,
            "area is required: 0 (South China), 1 (West China) or 2 (international)",
        )
    })?;
    let area = int_of(area)
        .filter(|a| (0..=2).contains(a))
        .ok_or_else(|| invalid(1007, format!("area must be 0, 1 or 2, got {}", shown(area))))?;
    let memory = m
        .get("memory")
        .ok_or_else(|| invalid(1007, "memory (GB) is required"))?;
    let memory_gb = match memory {
        Value::Number(_) => int_of(memory),
        _ => None,
    }
    .ok_or_else(|| {
        invalid(
            1007,
            format!(
                "memory must be an integer number of GB, got {}",
                shown(memory)
            ),
        )
    })?;
    if memory_gb < 20 {
        return Err(invalid(
            220013,
            format!("memory must be at least 20 GB, got {memory_gb}"),
        ));
    }
    if memory_gb > 20480 {
        return Err(invalid(
            220014,
            format!("memory must be at most 20480 GB, got {memory_gb}"),
        ));
    }
    let is_mount = m
        .get("isMount")
        .ok_or_else(|| invalid(220020, "isMount is required: 0 or 1"))?;
    let is_mount = int_of(is_mount)
        .filter(|v| *v == 0 || *v == 1)
        .ok_or_else(|| {
            invalid(
                220020,
                format!("isMount must be 0 or 1, got {}", shown(is_mount)),
            )
        })?;
    let pve_id = text(&m, "pveId")?;
    if is_mount == 1 && pve_id.is_none() {
        return Err(invalid(
            220015,
            "pveId (the host to mount on) is required when isMount is 1",
        ));
    }
    one_purchase(&m)?;
    Ok(DiskOrder {
        area,
        memory_gb,
        // Not mounting: a host named anyway is not sent (the upstream documents pveId only with
        // isMount = 1).
        pve_id: if is_mount == 1 { pve_id } else { None },
    })
}

fn host_create(route: Route, body: &[u8], rent: bool) -> Result<HostOrder, Invalid> {
    let known: &[&str] = if rent { &RENT_FIELDS } else { &HOST_FIELDS };
    let m = Fields::parse(route, body, known)?;
    let required = |field: &str| {
        text(&m, field)?.ok_or_else(|| invalid(1007, format!("{field} is required (a string)")))
    };
    let package_id = required("packageId")?;
    let image_id = required("imageId")?;
    let period = if rent {
        // The upstream is written in Java: its ints are 32-bit.
        let n = m
            .get("periodNumber")
            .and_then(int_of)
            .filter(|n| (1..=i64::from(i32::MAX)).contains(n))
            .ok_or_else(|| invalid(1007, "periodNumber must be a positive integer"))?;
        let t = m
            .get("periodType")
            .and_then(int_of)
            .filter(|t| (1..=5).contains(t))
            .ok_or_else(|| invalid(1007, "periodType must be 1 (day) to 5 (year)"))?;
        Some((n, t))
    } else {
        None
    };
    one_purchase(&m)?;
    Ok(HostOrder {
        package_id,
        image_id,
        period,
    })
}

/// Validates the body of a create route into its order; other routes pass (`None`).
pub fn check(route: Route, body: &[u8]) -> Result<Option<Order>, Invalid> {
    match route.spend_body() {
        Some(SpendBody::Disk) => disk_create(body).map(|d| Some(Order::Disk(d))),
        Some(SpendBody::HostQuantity) => {
            host_create(route, body, false).map(|h| Some(Order::Host(h)))
        }
        Some(SpendBody::HostRent) => host_create(route, body, true).map(|h| Some(Order::Host(h))),
        None => Ok(None),
    }
}

/// Whether a `Content-Type` says JSON: `application/json`, any case, with parameters, but a
/// `charset` only if it is UTF-8 (the only encoding JSON has).
pub(crate) fn is_json_content_type(value: &str) -> bool {
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        && parts.all(|p| match p.split_once('=') {
            Some((name, v)) if name.trim().eq_ignore_ascii_case("charset") => {
                let v = v.trim().trim_matches('"');
                v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8")
            }
            _ => true,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &str) -> i64 {
        disk_create(body.as_bytes()).map_or_else(|e| e.code, |_| 0)
    }

    fn msg(route: Route, body: &str) -> String {
        check(route, body.as_bytes()).unwrap_err().msg
    }

    #[test]
    fn disk_rules() {
        assert_eq!(code(r#"{"area":0,"memory":20,"isMount":0}"#), 0);
        assert_eq!(
            code(r#"{"pveId":"","area":"1","buyNumber":1,"memory":32,"isMount":0}"#),
            0,
            "the seed's example"
        );
        assert_eq!(
            code(r#"{"area":2,"memory":20480,"isMount":1,"pveId":"h"}"#),
            0
        );
        assert_eq!(
            code(r#"{"area":0,"memory":20,"isMount":0,"pveId":null}"#),
            0
        );
        assert_eq!(code("nope"), 1007);
        assert_eq!(code("[1]"), 1007);
        assert_eq!(code(""), 1007);
        assert_eq!(code(r#"{"area":0,"memory":20,"isMount":0} x"#), 1007);
        assert_eq!(code(r#"{"memory":20,"isMount":0}"#), 1007);
        assert_eq!(code(r#"{"area":null,"memory":20,"isMount":0}"#), 1007);
        assert_eq!(code(r#"{"area":3,"memory":20,"isMount":0}"#), 1007);
        assert_eq!(code(r#"{"area":"x","memory":20,"isMount":0}"#), 1007);
        assert_eq!(code(r#"{"area":0,"isMount":0}"#), 1007);
        assert_eq!(code(r#"{"area":0,"memory":"20","isMount":0}"#), 1007);
        assert_eq!(code(r#"{"area":0,"memory":20.5,"isMount":0}"#), 1007);
        assert_eq!(code(r#"{"area":0,"memory":19,"isMount":0}"#), 220013);
        assert_eq!(code(r#"{"area":0,"memory":20481,"isMount":0}"#), 220014);
        assert_eq!(code(r#"{"area":0,"memory":20,"isMount":2}"#), 220020);
        assert_eq!(code(r#"{"area":0,"memory":20}"#), 220020);
        assert_eq!(code(r#"{"area":0,"memory":20,"isMount":1}"#), 220015);
        assert_eq!(
            code(r#"{"area":0,"memory":20,"isMount":1,"pveId":""}"#),
            220015
        );
        assert_eq!(
            code(r#"{"area":0,"memory":20,"isMount":1,"pveId":7}"#),
            1007
        );
    }

    #[test]
    fn what_the_upstream_does_not_document_is_refused_by_name() {
        let disk = Route::DiskCreate;
        let m = msg(
            disk,
            r#"{"area":0,"memory":20,"isMount":0,"buyNumber":50,"Memory":20000}"#,
        );
        assert!(m.contains("\"Memory\"") && m.contains("case"), "{m}");
        let m = msg(disk, r#"{"area":0,"memory":20,"isMount":0,"buyNumber":50}"#);
        assert!(m.contains("buyNumber") && m.contains("50"), "{m}");
        let m = msg(disk, r#"{"area":0,"memory":20,"memory":20000,"isMount":0}"#);
        assert!(
            m.contains("\"memory\"") && m.contains("more than once"),
            "{m}"
        );
        // An escaped key is the same key.
        let m = msg(
            disk,
            r#"{"area":0,"memory":20,"\u006demory":20000,"isMount":0}"#,
        );
        assert!(m.contains("more than once"), "{m}");
        let m = msg(disk, r#"{"area":0,"memory":20,"isMount":0,"size":1}"#);
        assert!(m.contains("unknown field \"size\""), "{m}");
        let m = msg(disk, &format!(r#"{{"{}":1}}"#, "k".repeat(10_000)));
        assert!(m.len() < 300, "a long key is cut: {}", m.len());
        let m = msg(
            disk,
            &format!(
                r#"{{"area":"{}","memory":20,"isMount":0}}"#,
                "9".repeat(10_000)
            ),
        );
        assert!(m.len() < 300, "a long value is cut: {}", m.len());
        for body in [
            r#"{"area":0,"memory":20,"isMount":0,"buyNumber":0}"#,
            r#"{"area":0,"memory":20,"isMount":0,"buyNumber":"2"}"#,
            r#"{"area":0,"memory":20,"isMount":0,"buyNumber":true}"#,
        ] {
            assert_eq!(code(body), 1007, "{body}");
        }
        assert_eq!(
            code(r#"{"area":0,"memory":20,"isMount":0,"buyNumber":"1"}"#),
            0
        );
        let m = msg(
            Route::HostCreateQuantity,
            r#"{"packageId":"p","imageId":"i","periodNumber":1}"#,
        );
        assert!(m.contains("periodNumber"), "{m}");
    }

    #[test]
    fn the_body_sent_is_the_order_in_a_fixed_form() {
        let order = |b: &str| check(Route::DiskCreate, b.as_bytes()).unwrap().unwrap();
        let a = order(r#"{"area":0,"memory":20,"isMount":0}"#);
        for same in [
            r#"{ "isMount": 0, "memory": 20, "area": "0" }"#,
            r#"{"area":0,"memory":20.0,"isMount":"0","buyNumber":1,"pveId":"ignored"}"#,
        ] {
            assert_eq!(order(same), a, "{same}");
        }
        assert_eq!(a.body(), r#"{"area":0,"memory":20,"isMount":0}"#);
        let mounted = order(r#"{"pveId":"h\"1","isMount":1,"memory":40,"area":2}"#);
        assert_eq!(
            mounted.body(),
            r#"{"area":2,"memory":40,"isMount":1,"pveId":"h\"1"}"#
        );
        let rent = check(
            Route::HostCreateRent,
            br#"{"periodType":"5","imageId":"i","periodNumber":2,"packageId":"p"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            rent.body(),
            r#"{"packageId":"p","imageId":"i","periodNumber":2,"periodType":5}"#
        );
        for o in [a, mounted, rent] {
            let route = if o.disk().is_some() {
                Route::DiskCreate
            } else {
                Route::HostCreateRent
            };
            assert_eq!(check(route, o.body().as_bytes()).unwrap(), Some(o));
        }
    }

    #[test]
    fn host_rules() {
        assert!(
            check(
                Route::HostCreateQuantity,
                br#"{"packageId":"p","imageId":"i"}"#
            )
            .is_ok()
        );
        for bad in [
            r#"{"packageId":"p"}"#,
            r#"{"packageId":"p","imageId":3}"#,
            r#"{"packageId":" ","imageId":"i"}"#,
        ] {
            assert_eq!(
                check(Route::HostCreateQuantity, bad.as_bytes())
                    .unwrap_err()
                    .code,
                1007,
                "{bad}"
            );
        }
        assert!(
            check(
                Route::HostCreateRent,
                br#"{"packageId":"p","imageId":"i","periodNumber":1,"periodType":5}"#
            )
            .is_ok()
        );
        assert!(
            check(
                Route::HostCreateRent,
                br#"{"packageId":"p","imageId":"i","periodNumber":1,"periodType":6}"#
            )
            .is_err()
        );
    }

    #[test]
    fn content_types() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert!(is_json_content_type(ok), "{ok}");
        }
        for bad in [
            "",
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonx",
            "application/json; charset=latin1",
            "application/problem+json",
        ] {
            assert!(!is_json_content_type(bad), "{bad}");
        }
    }

    #[test]
    fn messages_quote_short_input_whole_and_cut_long_input() {
        let msg = |body: &str| disk_create(body.as_bytes()).unwrap_err().msg;
        let unknown = msg(r#"{"area":0,"memory":20,"isMount":0,"memry":1}"#);
        assert!(unknown.contains(r#"unknown field "memry" in"#), "{unknown}");
        let long = "m".repeat(100);
        let cut = msg(&format!(
            r#"{{"area":0,"memory":20,"isMount":0,"{long}":1}}"#
        ));
        assert!(cut.contains(&format!("\"{}\"...", "m".repeat(64))), "{cut}");
        assert!(quoted("memry") == "\"memry\"" && shown(&Value::from(20)) == "20");
        assert_eq!(
            shown(&Value::from("s".repeat(100))),
            format!("\"{}...", "s".repeat(63))
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_is_told_apart_from_one_that_is_not_json() {
        let msg = |body: &str| disk_create(body.as_bytes()).unwrap_err().msg;
        assert_eq!(msg("[1]"), "the body must be a JSON object");
        assert!(msg(r#"{"area":"#).starts_with("the body is not valid JSON"));
    }

    #[test]
    fn only_a_charset_parameter_must_be_utf8() {
        assert!(is_json_content_type("application/json; foo=bar"));
        assert!(is_json_content_type("Application/JSON; charset=\"UTF-8\""));
        assert!(!is_json_content_type("application/json; charset=latin1"));
    }
}
