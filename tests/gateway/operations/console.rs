//! The operator console as a person uses it: purchases made through the real binary, then the
//! console opened in a real headless Chromium, the admin key entered, and each view read back
//! (purchases and their outcomes, a budget bar's share, the clients' counters), a cache entry
//! purged from the page (the next read is a miss) and the configuration reloaded from it. The
//! page must log no error, break no rule of its Content-Security-Policy and load nothing from
//! another origin. A screenshot of each view lands in `target/console-screenshots/`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::browser::Browser;
use crate::harness::*;

const ADMIN: &str = "fgw_console_admin_5e6f7a8b9c0d1e2f";
const OPS: &str = "fgw_console_ops_1a2b3c4d5e6f7a8b";
const CI: &str = "fgw_console_ci_6f5e4d3c2b1a0f9e";

/// The policy every console file is served with (CONTRACT.md, "Admin").
const CSP: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots")
}

async fn create(gw: &Bin, key: &str, idempotency: Option<&str>, memory: u32) -> (u16, Value) {
    let mut req = http()
        .post(format!("{}{DISK}/create", gw.url))
        .bearer_auth(key)
        .json(&json!({"area": 0, "memory": memory, "isMount": 0}));
    if let Some(k) = idempotency {
        req = req.header("Idempotency-Key", k);
    }
    let (status, _, v) = answer(req).await;
    (status, v)
}

/// A disk's info read through the gateway: its `Cache-Status`.
async fn read_info(gw: &Bin, disk: &str) -> String {
    let url = format!("{}{DISK}/info/{disk}", gw.url);
    let (status, h, v) = get(&url, &[("authorization", &format!("Bearer {OPS}"))]).await;
    assert_eq!(status, 200, "{v}");
    cache_status(&h)
}

/// The ledger's entries once `n` have settled, newest first.
async fn settled(gw: &Bin, n: usize) -> Vec<Value> {
    eventually_some("the purchases settled", Duration::from_secs(20), || async {
        let resp = http()
            .get(format!("{}/admin/purchases", gw.admin_url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        let v: Value = resp.json().await.unwrap();
        let entries = v["data"]["entries"].as_array()?.clone();
        (entries.len() == n && entries.iter().all(|e| e["outcome"] != "open")).then_some(entries)
    })
    .await
}

/// The console's files answer with their types and every security header; a path that is not
/// one of them is a 404.
async fn headers_are_strict(admin_url: &str) {
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/views.js", "text/javascript"),
        ("/console/lib.js", "text/javascript"),
        ("/console/app.css", "text/css"),
        ("/console/favicon.svg", "image/svg+xml"),
    ] {
        let resp = http()
            .get(format!("{admin_url}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers();
        let header = |name: &str| h.get(name).map(|v| v.to_str().unwrap().to_string());
        assert!(
            header("content-type").is_some_and(|t| t.starts_with(kind)),
            "{path}: {h:?}"
        );
        assert_eq!(
            header("content-security-policy").as_deref(),
            Some(CSP),
            "{path}"
        );
        assert_eq!(header("x-frame-options").as_deref(), Some("DENY"), "{path}");
        assert_eq!(
            header("referrer-policy").as_deref(),
            Some("no-referrer"),
            "{path}"
        );
        assert_eq!(
            header("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(
            header("cache-control").as_deref(),
            Some("no-store"),
            "{path}"
        );
        assert!(header("set-cookie").is_none(), "{path}");
    }
    let missing = http()
        .get(format!("{admin_url}/console/other.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// The rows of the purchases table: (entry id, outcome, client, note).
async fn purchase_rows(browser: &Browser) -> Vec<(String, String, String, String)> {
    let v = browser
        .run(
            "return Array.from(document.querySelectorAll('#purchase-rows tr[data-key]'))
               .filter((tr) => tr.dataset.key)
               .map((tr) => [tr.dataset.key, tr.cells[1].textContent, tr.cells[2].textContent, tr.cells[8].textContent]);",
            json!([]),
        )
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |i: usize| r[i].as_str().unwrap().to_string();
            (s(0), s(1), s(2), s(3))
        })
        .collect()
}

/// Waits for the page's text at `css` to satisfy `test` (a JavaScript expression over `t`).
async fn until_text(browser: &Browser, what: &str, css: &str, test: &str) -> String {
    let script = format!(
        "const n = document.querySelector({css:?}); const t = n ? n.textContent : null; \
         return n && ({test}) ? t : null;"
    );
    browser
        .until(what, &script)
        .await
        .as_str()
        .unwrap()
        .to_string()
}

/// Clicks a button that asks first, then the dialog's confirming button.
async fn confirm_after(browser: &Browser, css: &str) {
    browser.click(css).await;
    browser
        .until(
            "the confirmation dialog",
            "return document.getElementById('confirm').open;",
        )
        .await;
    browser.click("#confirm-ok").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_the_gateway_and_acts_on_it_in_a_real_browser() {
    let sim = Sim::start(sim_config()).await;
    let toml = format!(
        "[admin]\nkey_sha256 = \"{}\"\n[upstream]\ntimeout = \"300ms\"\n{FAST_CREATES}{}\
         [create.budget]\ntimezone = \"Asia/Shanghai\"\nwarn_at = 0.8\n\
         [create.budget.account]\ncreates_per_day = 15\n{}{}",
        hex::encode(Sha256::digest(ADMIN.as_bytes())),
        info_policy("ttl = \"60s\""),
        client_entry("ops", OPS, ""),
        client_entry("ci-runner", CI, "budget = { creates_per_day = 1 }"),
    );
    let gw = replica_process(&toml, &sim.url).await;

    // Bought, the same key again (a replay), bought by another client, refused by its cap, and
    // one whose answer never came (the simulator makes the disk, then holds its answer past the
    // gateway's upstream timeout): its outcome is unknown.
    let (status, bought) = create(&gw, OPS, Some("console-1"), 20).await;
    assert_eq!(status, 200, "{bought}");
    let disk = bought["data"].as_str().unwrap().to_string();
    assert_eq!(create(&gw, OPS, Some("console-1"), 20).await.0, 200);
    assert_eq!(create(&gw, CI, None, 30).await.0, 200);
    let (status, refused) = create(&gw, CI, None, 40).await;
    assert_eq!(status, 429, "{refused}");
    sim.fault("slow", "1s").await;
    let (status, unknown) = create(&gw, OPS, Some("console-2"), 50).await;
    assert_eq!(status, 504, "{unknown}");
    sim.fault("none", "0s").await;
    let entries = settled(&gw, 5).await;
    let outcomes: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    // A disk read twice: filled, then a hit.
    assert!(read_info(&gw, &disk).await.contains("fwd=miss"));
    assert!(read_info(&gw, &disk).await.contains("; hit"));

    headers_are_strict(&gw.admin_url).await;

    let dir = screenshots();
    let mut browser = Browser::start(1280, 800).await;
    browser.goto(&format!("{}/console", gw.admin_url)).await;
    browser
        .until(
            "the key form",
            "return !document.getElementById('signin').hidden;",
        )
        .await;

    // A wrong key is refused and asked for again; the right one opens the console.
    browser
        .type_into("#key-input", "fgw_not_the_admin_key_0000000000")
        .await;
    browser.click("#signin-form button[type=submit]").await;
    until_text(
        &browser,
        "the refusal of a wrong key",
        "#signin-error",
        "t.includes('refused')",
    )
    .await;
    browser.type_into("#key-input", ADMIN).await;
    browser.click("#signin-form button[type=submit]").await;
    browser
        .until(
            "the console",
            "return !document.getElementById('app').hidden;",
        )
        .await;
    let stored = browser
        .run(
            "return [sessionStorage.getItem('finovy-gateway.console.admin-key'), document.cookie];",
            json!([]),
        )
        .await;
    assert_eq!(
        stored,
        json!([ADMIN, ""]),
        "the key in this tab only, no cookie"
    );

    // Overview: today's purchases by outcome, the account's token, the time zone.
    until_text(&browser, "2 bought today", "[data-f=bought]", "t === '2'").await;
    until_text(&browser, "1 refused today", "[data-f=refused]", "t === '1'").await;
    until_text(
        &browser,
        "1 unknown, marked",
        "[data-f=unknown]",
        "t === '1' && n.closest('li').classList.contains('nonzero')",
    )
    .await;
    until_text(
        &browser,
        "the time zone",
        "[data-f=timezone]",
        "t === 'Asia/Shanghai'",
    )
    .await;
    until_text(
        &browser,
        "the account's token",
        "#accounts-rows tr[data-key=default] .badge",
        "t === 'held'",
    )
    .await;
    // Times in the configured zone, UTC on hover.
    let started = browser
        .run(
            "const t = document.querySelector('[data-f=startedAt] time'); return [t.textContent, t.title];",
            json!([]),
        )
        .await;
    assert!(
        started[0].as_str().unwrap().contains("GMT+8")
            && started[1].as_str().unwrap().ends_with("Z (UTC)"),
        "{started}"
    );
    browser.screenshot(&dir.join("overview.png")).await;

    // Purchases: every entry with its outcome, a refusal with its reason.
    browser.click("#tab-purchases").await;
    let rows = eventually_some("the purchases table", Duration::from_secs(20), || async {
        let rows = purchase_rows(&browser).await;
        (rows.len() == outcomes.len()).then_some(rows)
    })
    .await;
    let shown: Vec<(&str, &str)> = rows.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect();
    assert_eq!(shown, outcomes, "newest first, as the ledger lists them");
    let clients: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(clients, ["ops", "ci-runner", "ci-runner", "ops", "ops"]);
    // The unknown one is marked, with what to do about it.
    assert!(rows[0].3.contains("same Idempotency-Key"), "{:?}", rows[0]);
    let marked = browser
        .run(
            "return Array.from(document.querySelectorAll('#purchase-rows tr.needs-attention'), (tr) => tr.dataset.key);",
            json!([]),
        )
        .await;
    assert_eq!(marked, json!([rows[0].0]));
    assert!(rows[1].3.contains("creates_per_day"), "{:?}", rows[1]);
    assert!(
        rows[2].3.is_empty() && rows[3].3.contains(&rows[4].0[rows[4].0.len() - 10..]),
        "{rows:?}"
    );
    // The next refresh changes nothing under the reader: the same rows (updated in place), the
    // focus and a half-typed filter stay.
    let before = browser
        .run(
            "window.__firstRow = document.querySelector('#purchase-rows tr'); \
             const input = document.getElementById('f-client'); input.focus(); \
             return document.getElementById('updated').textContent;",
            json!([]),
        )
        .await;
    browser.type_into("#f-client", "ops-half").await;
    browser
        .until(
            "the next refresh",
            &format!("return document.getElementById('updated').textContent !== {before};"),
        )
        .await;
    let kept = browser
        .run(
            "return [window.__firstRow.isConnected, document.activeElement.id, \
             document.getElementById('f-client').value, document.querySelectorAll('#purchase-rows tr').length];",
            json!([]),
        )
        .await;
    assert_eq!(kept, json!([true, "f-client", "ops-half", 5]));
    browser.type_into("#f-client", "").await;
    // A filter.
    browser
        .run(
            "document.getElementById('f-outcome').value = 'replayed';",
            json!([]),
        )
        .await;
    browser.click("#filters button[type=submit]").await;
    browser
        .until(
            "the filtered table",
            "const r = document.querySelectorAll('#purchase-rows tr'); \
             return r.length === 1 && r[0].cells[1].textContent === 'replayed';",
        )
        .await;
    // What is shown, as CSV, saved by the browser.
    let downloads = fresh_dir("console-downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    browser
        .cdp(
            "Browser.setDownloadBehavior",
            json!({"behavior": "allow", "downloadPath": downloads.display().to_string()}),
        )
        .await;
    browser.click("#csv").await;
    let csv = eventually_some("the CSV download", Duration::from_secs(20), || async {
        let file = std::fs::read_dir(&downloads)
            .ok()?
            .filter_map(Result::ok)
            .find(|f| f.file_name().to_string_lossy().ends_with(".csv"))?;
        std::fs::read_to_string(file.path()).ok()
    })
    .await;
    let ids: Vec<&str> = csv
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(ids, ["id", rows[3].0.as_str()], "{csv}");
    let _ = std::fs::remove_dir_all(&downloads);
    browser.click("#filters button[type=reset]").await;
    browser
        .until(
            "the whole table again",
            "return document.querySelectorAll('#purchase-rows tr').length === 5;",
        )
        .await;
    browser.screenshot(&dir.join("purchases.png")).await;

    // Budgets: the account's cap 3 of 15 (the unknown one reached the upstream), the client's 1
    // of 1.
    browser.click("#tab-budgets").await;
    let account_cap = "[data-key='account/default/creates_per_day']";
    until_text(
        &browser,
        "the account's bar",
        &format!("{account_cap} .cap-share"),
        "t === '3 of 15 (20%)'",
    )
    .await;
    let bar = browser
        .run(
            &format!(
                "const li = document.querySelector(\"{account_cap}\"); const bar = li.querySelector('.bar'); \
                 return [li.querySelector('.bar-fill').style.width, bar.getAttribute('aria-valuenow'), \
                 bar.getAttribute('aria-valuemax'), li.className];"
            ),
            json!([]),
        )
        .await;
    assert_eq!(bar, json!(["20%", "3", "15", "cap"]), "{bar}");
    until_text(
        &browser,
        "the client's full bar",
        "[data-key='client/ci-runner/creates_per_day'] .cap-share",
        "t === '1 of 1 (100%)' && n.closest('.cap').classList.contains('full')",
    )
    .await;
    browser.screenshot(&dir.join("budgets.png")).await;

    // Clients: each configured client, its creates and refusals by reason.
    browser.click("#tab-clients").await;
    let client_row = |name: &str| {
        format!(
            "const tr = document.querySelector('#client-rows tr[data-key=\"{name}\"]'); \
             return tr && Array.from(tr.cells, (c) => c.textContent);"
        )
    };
    let ci = browser
        .until("the ci-runner row", &client_row("ci-runner"))
        .await;
    let ops = browser.until("the ops row", &client_row("ops")).await;
    let head = browser
        .run(
            "return Array.from(document.querySelectorAll('#clients-head th'), (c) => c.textContent);",
            json!([]),
        )
        .await;
    let column = |name: &str| {
        head.as_array()
            .unwrap()
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name}: {head}"))
    };
    assert_eq!(ci[column("Creates")], "1", "{ci}");
    assert_eq!(ci[column("Refusals")], "1", "{ci}");
    assert_eq!(ci[column("budget")], "1", "{ci}");
    assert_eq!(ops[column("Creates")], "3", "{ops}");
    // The unknown one's 504 is the gateway's own answer: a refusal of no named reason.
    assert_eq!(ops[column("Refusals")], "1", "{ops}");
    assert_eq!(ops[column("other")], "1", "{ops}");
    browser.screenshot(&dir.join("clients.png")).await;

    // Purge the disk's entry from the page: the next read goes to the upstream.
    browser.click("#tab-overview").await;
    browser.type_into("#purge-route", "disk.info").await;
    browser.type_into("#purge-id", &disk).await;
    confirm_after(&browser, "#purge-form button[type=submit]").await;
    until_text(
        &browser,
        "the purge's result",
        "#purge-result",
        "t.startsWith('Purged')",
    )
    .await;
    let purge_id = until_text(
        &browser,
        "the purge's request id",
        "#purge-result .request-id",
        "t.startsWith('console-')",
    )
    .await;
    assert!(read_info(&gw, &disk).await.contains("fwd=miss"));
    // The gateway logged the action with the operator's request id.
    gw.wait_for_log(&purge_id, 1).await;

    // The confirmation is a keyboard's too: it opens on Cancel, and Escape says no.
    browser.click("#reload-button").await;
    browser
        .until(
            "the reload's confirmation on Cancel",
            "return document.getElementById('confirm').open && document.activeElement.id === 'confirm-cancel';",
        )
        .await;
    browser.press('\u{E00C}').await;
    browser
        .until(
            "the dialog closed, the focus back on its button",
            "return !document.getElementById('confirm').open && document.activeElement.id === 'reload-button' \
             && document.getElementById('reload-result').textContent === '';",
        )
        .await;
    // Reload from the page: what needed a restart and what was kept are shown (nothing here).
    confirm_after(&browser, "#reload-button").await;
    let reloaded = until_text(
        &browser,
        "the reload's result",
        "#reload-result",
        "t.startsWith('Reloaded.')",
    )
    .await;
    assert!(
        reloaded.contains("needing a restart: none") && reloaded.contains("did not load): none"),
        "{reloaded}"
    );
    assert!(reloaded.contains("console-"), "{reloaded}");
    browser
        .run(
            "document.getElementById('reload-result').scrollIntoView({block: 'center'});",
            json!([]),
        )
        .await;
    browser.screenshot(&dir.join("actions.png")).await;

    // A phone: one column, nothing wider than the screen but the tables' own frames.
    browser.viewport(390, 844, true).await;
    browser.run("window.scrollTo(0, 0);", json!([])).await;
    let width = browser
        .run("return document.documentElement.scrollWidth;", json!([]))
        .await;
    assert!(
        width.as_u64().unwrap() <= 390,
        "the page is {width} px wide"
    );
    browser.screenshot(&dir.join("overview-phone.png")).await;
    browser.viewport(1280, 800, false).await;

    // Every input has a label.
    let unlabelled = browser
        .run(
            "return Array.from(document.querySelectorAll('input, select')).filter((i) => !i.labels || i.labels.length === 0).map((i) => i.id || i.name);",
            json!([]),
        )
        .await;
    assert_eq!(unlabelled, json!([]));

    // Nothing from another origin, no error, no policy broken.
    let foreign = browser
        .run(
            "return performance.getEntriesByType('resource').map((e) => e.name).filter((n) => !n.startsWith(location.origin + '/'));",
            json!([]),
        )
        .await;
    assert_eq!(foreign, json!([]), "loaded from elsewhere");
    let loaded = browser
        .run(
            "return performance.getEntriesByType('resource').length;",
            json!([]),
        )
        .await;
    assert!(loaded.as_u64().unwrap() >= 4, "{loaded}");
    assert_eq!(browser.page_problems().await, Vec::<String>::new());
    let log = browser.console_log().await;
    let severe: Vec<&Value> = log
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        // The wrong key's 401, which the test itself caused.
        .filter(|e| {
            !e["message"]
                .as_str()
                .unwrap_or("")
                .contains("status of 401")
        })
        .collect();
    assert!(severe.is_empty(), "the browser logged: {severe:?}");

    // Signing out forgets the key.
    browser.click("#sign-out").await;
    browser
        .until(
            "the key form again",
            "return !document.getElementById('signin').hidden && sessionStorage.length === 0;",
        )
        .await;

    // The address `dev` prints carries the key in its fragment: signed in at once, and the key
    // leaves the address bar (and the history) at once.
    browser
        .goto(&format!("{}/console#key={ADMIN}", gw.admin_url))
        .await;
    browser
        .until(
            "signed in from the fragment",
            "return document.getElementById('signin').hidden && !document.getElementById('app').hidden;",
        )
        .await;
    let (hash, stored) = {
        let v = browser
            .run(
                "return [location.hash, sessionStorage.getItem(arguments[0])];",
                json!(["finovy-gateway.console.admin-key"]),
            )
            .await;
        (v[0].clone(), v[1].clone())
    };
    assert_eq!(hash, "#overview");
    assert_eq!(stored, ADMIN);
    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_admin_key_there_is_no_console() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start("", &sim.url, demo_env()).await;
    for path in ["/console", "/console/", "/console/app.js"] {
        let resp = http()
            .get(format!("{}{path}", gw.admin_url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert!(resp.headers().get("content-security-policy").is_none());
    }
    gw.stop().await;
}
