//! Route matching over arbitrary requests: classifying never panics, a classified path is exactly
//! a route's own path (its parameter plain letters, digits, `_` and `-`), and every route classifies
//! its own paths. Case counts stay modest: the suite runs on small machines.

use finovy_gateway::routes::{self, Route};
use http::Method;
use proptest::prelude::*;
use proptest::sample::select;

use crate::harness::property_cases;

fn methods() -> impl Strategy<Value = Method> {
    select(vec![
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
    ])
}

/// Requests near the table (a route's own method and path with an odd parameter, or one of its
/// prefixes and heads with an odd tail) as well as anything at all.
fn requests() -> impl Strategy<Value = (Method, String)> {
    let route = select(Route::all().collect::<Vec<_>>());
    // Parameters that are valid, nearly valid (a dot, a space), or ways out of the table.
    let odd = || {
        prop_oneof![
            "[A-Za-z0-9_-]{1,16}",
            "[A-Za-z0-9_. -]{1,16}",
            "[A-Za-z0-9_./%\\\\-]{0,24}",
            select(vec!["..", ".", "%2F", "%2e%2e", "a/b", "a\\b", ""]).prop_map(str::to_string),
        ]
    };
    let own = (route, odd(), any::<bool>()).prop_map(|(r, tail, slash)| {
        let path = r.example_path(&tail);
        let path = if slash { format!("{path}/") } else { path };
        (r.method().clone(), path)
    });
    let prefixes = select(vec![
        "/v1/PveMachineHardDisk/open/",
        "/v1/pve/open/",
        "/v1/auth/",
        "/v1/pve/open",
        "//v1/pve/open/",
        "",
    ]);
    let heads = select(vec![
        "info", "create", "getList", "operate", "mypage", "", "INFO",
    ]);
    let near = (methods(), prefixes, heads, odd())
        .prop_map(|(m, p, h, tail)| (m, format!("{p}{h}/{tail}")));
    let anything = (methods(), any::<String>());
    prop_oneof![2 => own, 1 => near, 1 => anything]
}

proptest! {
    #![proptest_config(property_cases(512))]

    #[test]
    fn classify_never_panics_and_matches_only_a_routes_own_path(
        (method, path) in requests(),
    ) {
        if let Some(m) = routes::classify(&method, &path) {
            prop_assert_eq!(m.route.method(), &method);
            let param = m.param.as_deref().unwrap_or("");
            prop_assert_eq!(m.route.example_path(param), path.clone());
            prop_assert!(param.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        }
    }

    #[test]
    fn every_route_classifies_its_own_paths(
        route in select(Route::all().collect::<Vec<_>>()),
        param in "[A-Za-z0-9_-]{1,128}",
    ) {
        let path = route.example_path(&param);
        let m = routes::classify(route.method(), &path);
        prop_assert!(m.is_some(), "{}", path);
        let m = m.unwrap();
        prop_assert_eq!(m.route, route);
        if let Some(p) = m.param {
            prop_assert_eq!(&*p, param.as_str());
        }
    }
}
