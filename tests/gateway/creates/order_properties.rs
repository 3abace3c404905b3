//! The create validator over arbitrary input: it never panics, whatever the bytes; a create's
//! canonical body is a fixed point (validating it gives back the same order, and so the same
//! body); every way of writing one order is that order; and a refusal is short and names what it
//! refused. Case counts stay modest: the suite runs on small machines.

use finovy_gateway::protect::validate::{self, DiskOrder, HostOrder, Order};
use finovy_gateway::routes::Route;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;

use crate::harness::property_cases;

const SPEND_ROUTES: [Route; 3] = [
    Route::DiskCreate,
    Route::HostCreateQuantity,
    Route::HostCreateRent,
];

/// A JSON value of any kind a client might send for a field.
fn values() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (-30i64..30_000).prop_map(|n| n.to_string()),
        (0i64..3).prop_map(|n| format!("\"{n}\"")),
        any::<f64>().prop_map(|f| Value::from(f).to_string()),
        (0u32..25_000).prop_map(|n| format!("{n}.0")),
        "\\PC{0,12}".prop_map(|s| Value::from(s).to_string()),
        "[0-9a-z]{300,600}".prop_map(|s| Value::from(s).to_string()),
        "[0-9eE+.-]{1,8}".prop_map(|s| format!("\"{s}\"")),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("[a-z]{1,4}", inner), 0..3).prop_map(|m| {
                let members: Vec<String> = m
                    .into_iter()
                    .map(|(k, v)| format!("{}:{v}", Value::from(k)))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

/// Field names: the documented ones, their case variants, and others.
fn names() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(vec![
            "area", "memory", "isMount", "pveId", "buyNumber", "packageId", "imageId",
            "periodNumber", "periodType",
        ])
        .prop_map(str::to_string),
        1 => select(vec!["Memory", "AREA", "ismount", "PveId", "BuyNumber", "packageID"])
            .prop_map(str::to_string),
        1 => "\\PC{0,8}",
    ]
}

/// A JSON object as text, repeated keys and odd spacing allowed (so not built through `Value`).
fn objects() -> impl Strategy<Value = String> {
    let member = (names(), values(), select(vec!["", " ", "\n\t"]));
    prop::collection::vec(member, 0..7).prop_map(|members| {
        let members: Vec<String> = members
            .into_iter()
            .map(|(k, v, ws)| format!("{ws}{}{ws}:{ws}{v}", Value::from(k)))
            .collect();
        format!("{{{}}}", members.join(","))
    })
}

/// The documented fields of a canonical body, in their fixed order.
fn documented(route: Route) -> &'static [&'static str] {
    if route == Route::DiskCreate {
        &["area", "memory", "isMount", "pveId"]
    } else if route == Route::HostCreateQuantity {
        &["packageId", "imageId"]
    } else {
        &["packageId", "imageId", "periodNumber", "periodType"]
    }
}

/// What must hold for every order the validator gives: its body is a fixed point.
fn assert_canonical(route: Route, order: &Order) -> Result<(), TestCaseError> {
    let body = order.body();
    let again = validate::check(route, body.as_bytes());
    prop_assert_eq!(&again, &Ok(Some(order.clone())), "{}", body);
    prop_assert_eq!(again.unwrap().unwrap().body(), body.clone());
    let parsed: serde_json::Map<String, Value> =
        serde_json::from_str(&body).expect("a canonical body is a JSON object");
    let allowed = documented(route);
    prop_assert!(
        parsed.keys().all(|k| allowed.contains(&k.as_str())),
        "{}",
        body
    );
    Ok(())
}

/// Writes `fields` as an object in the given order, with `ws` around every token.
fn render(fields: &[(&str, String)], ws: &str) -> String {
    let members: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{ws}\"{k}\"{ws}:{ws}{v}{ws}"))
        .collect();
    format!("{ws}{{{}}}{ws}", members.join(","))
}

/// An integer as a client may write it: a number, a float with no fraction, or a numeric string.
fn spelled(n: i64, how: u8, string_ok: bool) -> String {
    match how % 3 {
        1 => format!("{n}.0"),
        2 if string_ok => format!("\"{n}\""),
        _ => n.to_string(),
    }
}

fn ids() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,12}|\\PC{1,6}".prop_filter("not blank", |s| !s.trim().is_empty())
}

proptest! {
    #![proptest_config(property_cases(512))]

    #[test]
    fn the_validator_never_panics_on_bytes(
        route in select(Route::all().collect::<Vec<_>>()),
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        match validate::check(route, &body) {
            Ok(Some(order)) => assert_canonical(route, &order)?,
            Ok(None) => prop_assert!(!SPEND_ROUTES.contains(&route)),
            Err(e) => prop_assert!(!e.msg.is_empty()),
        }
    }

    #[test]
    fn any_object_is_refused_clearly_or_becomes_a_fixed_point(
        route in select(SPEND_ROUTES.to_vec()),
        body in objects(),
    ) {
        match validate::check(route, body.as_bytes()) {
            Ok(Some(order)) => assert_canonical(route, &order)?,
            Ok(None) => prop_assert!(false, "a create route always gives an order"),
            Err(e) => {
                prop_assert!(!e.msg.is_empty());
                prop_assert!(e.msg.len() < 300, "a short message: {}", e.msg);
                let codes = [1007, 220013, 220014, 220015, 220020];
                prop_assert!(codes.contains(&e.code), "{}", e.code);
            }
        }
    }

    #[test]
    fn every_spelling_of_a_disk_order_is_that_order(
        area in 0i64..=2,
        memory_gb in 20i64..=20480,
        pve_id in prop::option::of(ids()),
        hows in prop::array::uniform3(any::<u8>()),
        buy_one in any::<bool>(),
        ws in select(vec!["", " ", "\n  "]),
        order_seed in any::<u64>(),
    ) {
        let order = DiskOrder { area, memory_gb, pve_id: pve_id.clone() };
        let mut fields = vec![
            ("area", spelled(area, hows[0], true)),
            ("memory", spelled(memory_gb, hows[1], false)),
            ("isMount", spelled(i64::from(pve_id.is_some()), hows[2], true)),
        ];
        match &pve_id {
            Some(id) => fields.push(("pveId", Value::from(id.as_str()).to_string())),
            // Not mounting: an empty host or null is the same order.
            None if hows[0] % 2 == 0 => fields.push(("pveId", "\"\"".into())),
            None => fields.push(("pveId", "null".into())),
        }
        if buy_one {
            fields.push(("buyNumber", spelled(1, hows[1], true)));
        }
        let n = fields.len();
        fields.rotate_left((order_seed % n as u64) as usize);
        if order_seed % 2 == 1 {
            fields.reverse();
        }
        let body = render(&fields, ws);
        let order = Order::Disk(order);
        let got = validate::check(Route::DiskCreate, body.as_bytes());
        prop_assert_eq!(got, Ok(Some(order.clone())), "{}", body);
        assert_canonical(Route::DiskCreate, &order)?;
    }

    #[test]
    fn a_long_value_or_key_is_not_echoed_whole(
        which in 0usize..5,
        long in "[0-9a-z]{300,2000}",
    ) {
        let mut fields = vec![
            ("area", "0".to_string()),
            ("memory", "20".to_string()),
            ("isMount", "1".to_string()),
            ("pveId", "\"h\"".to_string()),
        ];
        let value = Value::from(long.as_str()).to_string();
        if which < fields.len() {
            fields[which].1 = if which == 3 { format!("[{value}]") } else { value };
        } else {
            fields.push((long.as_str(), "1".into()));
        }
        let body = render(&fields, "");
        let err = validate::check(Route::DiskCreate, body.as_bytes());
        prop_assert!(err.is_err(), "{}", body);
        let msg = err.unwrap_err().msg;
        prop_assert!(msg.len() < 300, "{}", msg);
    }

    #[test]
    fn a_repeated_key_or_a_case_variant_is_always_refused(
        which in 0usize..3,
        extra in values(),
        variant in any::<bool>(),
        at_front in any::<bool>(),
    ) {
        let mut fields = vec![
            ("area", "0".to_string()),
            ("memory", "20".to_string()),
            ("isMount", "0".to_string()),
        ];
        let name = fields[which].0;
        let upper = name.to_uppercase();
        let key: &str = if variant { &upper } else { name };
        if at_front {
            fields.insert(0, (key, extra));
        } else {
            fields.push((key, extra));
        }
        let body = render(&fields, "");
        let err = validate::check(Route::DiskCreate, body.as_bytes());
        prop_assert!(err.is_err(), "{}", body);
        let err = err.unwrap_err();
        prop_assert_eq!(err.code, 1007, "{}", body);
        prop_assert!(err.msg.contains(&format!("{key:?}")), "{}: {}", body, err.msg);
    }

    #[test]
    fn every_spelling_of_a_host_order_is_that_order(
        package_id in ids(),
        image_id in ids(),
        period in prop::option::of((1i64..=1000, 1i64..=5)),
        how in any::<u8>(),
        reversed in any::<bool>(),
    ) {
        let mut fields = vec![
            ("packageId", Value::from(package_id.as_str()).to_string()),
            ("imageId", Value::from(image_id.as_str()).to_string()),
        ];
        if let Some((number, kind)) = period {
            fields.push(("periodNumber", spelled(number, how, true)));
            fields.push(("periodType", spelled(kind, how / 3, true)));
        }
        if reversed {
            fields.reverse();
        }
        let route = if period.is_some() { Route::HostCreateRent } else { Route::HostCreateQuantity };
        let body = render(&fields, " ");
        let order = Order::Host(HostOrder { package_id, image_id, period });
        prop_assert_eq!(validate::check(route, body.as_bytes()), Ok(Some(order.clone())), "{}", body);
        assert_canonical(route, &order)?;
    }
}
