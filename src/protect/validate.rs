//! Checks a create's body before anything is spent, with the upstream's own error codes where it
//! has them (upstream-api.md, "Create"). A refused create never reaches the upstream.

use serde_json::{Map, Value};

use crate::routes::Route;

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

/// What a valid disk create asks for: the spending guard and reconciliation need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskOrder {
    pub area: i64,
    pub memory_gb: i64,
    pub pve_id: Option<String>,
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

fn object(body: &[u8]) -> Result<Map<String, Value>, Invalid> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(invalid(1007, "the body must be a JSON object")),
        Err(e) => Err(invalid(1007, format!("the body is not valid JSON: {e}"))),
    }
}

fn non_empty(m: &Map<String, Value>, field: &str) -> Option<String> {
    match m.get(field)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub fn disk_create(body: &[u8]) -> Result<DiskOrder, Invalid> {
    let m = object(body)?;
    let area = m.get("area").ok_or_else(|| {
        invalid(
            1007,
            "area is required: 0 (South China), 1 (West China) or 2 (international)",
        )
    })?;
    let area = int_of(area)
        .filter(|a| (0..=2).contains(a))
        .ok_or_else(|| invalid(1007, format!("area must be 0, 1 or 2, got {area}")))?;
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
            format!("memory must be an integer number of GB, got {memory}"),
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
        .ok_or_else(|| invalid(220020, format!("isMount must be 0 or 1, got {is_mount}")))?;
    let pve_id = non_empty(&m, "pveId");
    if is_mount == 1 && pve_id.is_none() {
        return Err(invalid(
            220015,
            "pveId (the host to mount on) is required when isMount is 1",
        ));
    }
    Ok(DiskOrder {
        area,
        memory_gb,
        pve_id: if is_mount == 1 { pve_id } else { None },
    })
}

fn host_create(body: &[u8], rent: bool) -> Result<(), Invalid> {
    let m = object(body)?;
    for field in ["packageId", "imageId"] {
        if non_empty(&m, field).is_none() {
            return Err(invalid(1007, format!("{field} is required")));
        }
    }
    if rent {
        let n = m.get("periodNumber").and_then(int_of).filter(|n| *n >= 1);
        if n.is_none() {
            return Err(invalid(1007, "periodNumber must be a positive integer"));
        }
        let t = m
            .get("periodType")
            .and_then(int_of)
            .filter(|t| (1..=5).contains(t));
        if t.is_none() {
            return Err(invalid(1007, "periodType must be 1 (day) to 5 (year)"));
        }
    }
    Ok(())
}

/// Validates the body of a create route; other routes pass. A valid disk create gives its order.
pub fn check(route: Route, body: &[u8]) -> Result<Option<DiskOrder>, Invalid> {
    match route {
        Route::DiskCreate => disk_create(body).map(Some),
        Route::HostCreateQuantity => host_create(body, false).map(|_| None),
        Route::HostCreateRent => host_create(body, true).map(|_| None),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &str) -> i64 {
        disk_create(body.as_bytes())
            .map(|_| 0)
            .unwrap_or_else(|e| e.code)
    }

    #[test]
    fn disk_rules() {
        assert_eq!(code(r#"{"area":0,"memory":20,"isMount":0}"#), 0);
        assert_eq!(
            code(r#"{"area":"1","memory":32,"isMount":0,"buyNumber":1}"#),
            0,
            "the seed's example"
        );
        assert_eq!(
            code(r#"{"area":2,"memory":20480,"isMount":1,"pveId":"h"}"#),
            0
        );
        assert_eq!(code("nope"), 1007);
        assert_eq!(code("[1]"), 1007);
        assert_eq!(code(r#"{"memory":20,"isMount":0}"#), 1007);
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
        assert_eq!(
            check(Route::HostCreateQuantity, br#"{"packageId":"p"}"#)
                .unwrap_err()
                .code,
            1007
        );
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
}
