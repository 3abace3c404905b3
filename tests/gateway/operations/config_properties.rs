//! The config loader over arbitrary text: it never panics, what `check-config` prints can always
//! be rendered, and `dedup_scope` is checked and named. Case counts stay modest: the suite runs on
//! small machines.

use std::collections::HashMap;
use std::path::Path;

use finovy_gateway::config::{FileConfig, Overrides, Settings};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;

use crate::harness::property_cases;

/// Config text from known sections and keys (and others), with values of every TOML kind.
fn config_texts() -> impl Strategy<Value = String> {
    let sections = select(vec![
        "server",
        "upstream",
        "auth",
        "token",
        "log",
        "admin",
        "cache",
        "cache.routes.\"disk.info\"",
        "cache.routes.\"disk.lst\"",
        "create.routes.\"disk.create\"",
        "create.routes.\"host.create_rent\"",
        "create.routes.\"disk.info\"",
        "create.budget.account",
        "redis",
        "[clients]",
        "[accounts]",
    ]);
    let keys = select(vec![
        "listen",
        "admin_listen",
        "max_body_bytes",
        "max_concurrency",
        "request_timeout",
        "base_url",
        "timeout",
        "allow_anonymous",
        "level",
        "format",
        "key_sha256",
        "ttl",
        "enabled",
        "rate",
        "burst",
        "client_rate",
        "max_wait",
        "dedup_window",
        "idempotency_ttl",
        "dedup_scope",
        "gb_per_day",
        "url",
        "prefix",
        "name",
        "account",
        "routes",
        "uuid_env",
        "nonsense",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        select(vec![
            "\"client\"",
            "\"account\"",
            "\"Client\"",
            "\"1/1s\"",
            "\"0/1s\"",
            "\"5/0s\"",
            "\"250ms\"",
            "\"0s\"",
            "\"10m\"",
            "\"soon\"",
            "\"127.0.0.1:0\"",
            "\"[::1]:80\"",
            "\"http://127.0.0.1:1\"",
            "\"ftp://x\"",
            "\"redis://127.0.0.1:1\"",
            "\"info\"",
            "\"json\"",
            "[\"disk.info\"]",
            "[\"no.such\"]",
            "\"default\"",
        ])
        .prop_map(str::to_string),
        "\\PC{0,16}".prop_map(|s| Value::from(s).to_string()),
    ];
    let table = (sections, prop::collection::vec((keys, value), 0..4));
    prop::collection::vec(table, 0..5).prop_map(|tables| {
        let mut text = String::new();
        for (section, entries) in tables {
            text.push_str(&format!("[{section}]\n"));
            for (k, v) in entries {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        text
    })
}

fn load(text: &str) -> Result<Settings, String> {
    let file = FileConfig::parse(text, Path::new("prop.toml")).map_err(|e| e.to_string())?;
    let env: HashMap<&str, &str> = [("FINOVY_UUID", "u"), ("FINOVY_SECRET", "s")].into();
    let lookup = move |name: &str| env.get(name).map(ToString::to_string);
    Settings::resolve(file, &Overrides::default(), &lookup).map_err(|e| e.to_string())
}

proptest! {
    #![proptest_config(property_cases(256))]

    #[test]
    fn the_config_loader_never_panics(text in prop_oneof![config_texts(), "\\PC{0,64}"]) {
        match load(&text) {
            // What check-config prints can always be rendered.
            Ok(settings) => {
                let shown = settings.to_masked_toml();
                prop_assert!(!shown.contains("cannot render"), "{}", shown);
            }
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }

    #[test]
    fn dedup_scope_is_checked_and_named(scope in prop_oneof![
        select(vec!["client", "account"]).prop_map(str::to_string),
        "\\PC{0,10}",
    ]) {
        let text = format!(
            "[create.routes.\"disk.create\"]\ndedup_scope = {}\n",
            Value::from(scope.as_str())
        );
        match load(&text) {
            Ok(s) => {
                prop_assert!(scope == "client" || scope == "account", "{}", scope);
                let shown = s.to_masked_toml();
                let expected = format!("dedup_scope = \"{scope}\"");
                prop_assert!(shown.contains(&expected), "{}", shown);
            }
            Err(e) => {
                prop_assert!(scope != "client" && scope != "account", "{}", e);
                prop_assert!(e.contains("create.routes.\"disk.create\".dedup_scope"), "{}", e);
            }
        }
    }
}
