//! Reading the purchase ledger from the outside: disks bought through the real binary show in
//! `GET /admin/purchases` (JSON and CSV alike), `GET /admin/purchases/{id}` and `GET
//! /admin/spend`, and `finovy-gateway purchases` reads the same file; the admin key guards them.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::*;

const KEY: &str = "fgw_purchases_client_0b1c2d3e4f5a";
const ADMIN: &str = "fgw_purchases_admin_9a8b7c6d5e4f";

/// `GET admin_url + path` with the admin key: status and body text.
async fn admin_get(admin_url: &str, path: &str, accept: Option<&str>) -> (u16, String) {
    let mut req = http().get(format!("{admin_url}{path}")).bearer_auth(ADMIN);
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The purchases command on `config`, its exit status and standard output.
fn cli(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = binary()
        .args(["purchases", "--config"])
        .arg(config)
        .args(args)
        .env_remove("FGW_LEDGER_URL")
        .env_remove("FGW_LEDGER_URL_FILE")
        .output()
        .expect("run the purchases command");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A CSV text's cells (quotes undone), enough for the ids of its first column.
fn csv_first_column(text: &str) -> Vec<String> {
    text.split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn purchases_made_through_the_gateway_are_read_by_the_admin_api_and_the_cli() {
    let sim = Sim::start(sim_config()).await;
    let dir = fresh_dir("purchases");
    let ledger = dir.join("ledger.sqlite");
    let toml = format!(
        "[admin]\nkey_sha256 = \"{}\"\n[ledger]\npath = {:?}\n{FAST_CREATES}\n{}",
        hex::encode(Sha256::digest(ADMIN.as_bytes())),
        ledger.display().to_string(),
        client_entry("ops", KEY, "")
    );
    let mut gw = replica_process(&toml, &sim.url).await;

    // Bought with a key, the same key again (a replay), and bought without one.
    let create = |key: Option<&'static str>, memory: u32| {
        let mut req = http()
            .post(format!("{}{DISK}/create", gw.url))
            .bearer_auth(KEY)
            .json(&json!({"area": 0, "memory": memory, "isMount": 0}));
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        answer(req)
    };
    let (status, _, keyed) = create(Some("ledger-read-1"), 20).await;
    assert_eq!(status, 200, "{keyed}");
    let keyed_disk = keyed["data"].as_str().unwrap().to_string();
    let (_, h, replay) = create(Some("ledger-read-1"), 20).await;
    assert_eq!(replay["data"], keyed["data"]);
    assert_eq!(h["idempotent-replayed"], "true");
    let (_, _, plain) = create(None, 30).await;
    let plain_disk = plain["data"].as_str().unwrap().to_string();

    // The entries settle as the answers go out; the listing shows them once they have.
    let data: Value = eventually_some("three settled entries", Duration::from_secs(20), || async {
        let (status, body) = admin_get(&gw.admin_url, "/admin/purchases", None).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let entries = v["data"]["entries"].as_array()?;
        let settled = entries.len() == 3 && entries.iter().all(|e| e["outcome"] != "open");
        settled.then(|| v["data"].clone())
    })
    .await;
    let entries = data["entries"].as_array().unwrap();
    assert!(data["next"].is_null());
    let outcomes: Vec<&str> = entries
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["bought", "replayed", "bought"], "{data}");
    assert_eq!(entries[0]["resourceId"], plain_disk.as_str());
    assert_eq!(entries[2]["resourceId"], keyed_disk.as_str());
    assert_eq!(entries[2]["idempotencyKey"], "ledger-read-1");
    assert_eq!(entries[1]["boughtBy"], entries[2]["id"]);
    assert!(
        entries
            .iter()
            .all(|e| e["client"] == "ops" && e["route"] == "disk.create")
    );
    let ids: Vec<String> = entries
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();

    // Filters and pages.
    let (_, body) = admin_get(&gw.admin_url, "/admin/purchases?outcome=replayed", None).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["entries"].as_array().unwrap().len(), 1);
    let (_, body) = admin_get(&gw.admin_url, "/admin/purchases?limit=2", None).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["next"], ids[1].as_str());
    let (status, body) = admin_get(&gw.admin_url, "/admin/purchases?limit=5000", None).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = admin_get(&gw.admin_url, "/admin/purchases?client=a&client=b", None).await;
    assert_eq!(status, 400, "{body}");

    // CSV: the same rows in the same order.
    let (status, text) = admin_get(&gw.admin_url, "/admin/purchases", Some("text/csv")).await;
    assert_eq!(status, 200);
    let column = csv_first_column(&text);
    assert_eq!(column[0], "id");
    assert_eq!(column[1..], ids[..]);

    // One entry and the replay answered from it.
    let (status, body) =
        admin_get(&gw.admin_url, &format!("/admin/purchases/{}", ids[2]), None).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["entry"]["resourceId"], keyed_disk.as_str());
    assert_eq!(v["data"]["answered"][0]["id"], ids[1].as_str());
    let absent = format!("/admin/purchases/{}", "0".repeat(28));
    let (status, body) = admin_get(&gw.admin_url, &absent, None).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = admin_get(&gw.admin_url, "/admin/purchases/not-an-id", None).await;
    assert_eq!(status, 400);

    // Spend: two purchases of 50 GB and a replay for the client today.
    let (status, body) = admin_get(&gw.admin_url, "/admin/spend?by=client&period=day", None).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let rows = v["data"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(
        (
            &rows[0]["group"],
            &rows[0]["purchases"],
            &rows[0]["gb"],
            &rows[0]["replayed"]
        ),
        (&json!("ops"), &json!(2), &json!(50), &json!(1)),
        "{v}"
    );
    assert_eq!(v["data"]["tz"], "UTC");

    // The admin key guards them all.
    let one = format!("/admin/purchases/{}", ids[0]);
    for path in ["/admin/purchases", "/admin/spend", one.as_str()] {
        let url = format!("{}{path}", gw.admin_url);
        let none = http().get(&url).send().await.unwrap().status();
        let wrong = http()
            .get(&url)
            .bearer_auth("fgw_not_the_admin_key_000000000")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!((none.as_u16(), wrong.as_u16()), (401, 401), "{path}");
    }

    // The command reads the same file, while the gateway runs.
    let (ok, out, err) = cli(&gw.config, &["--format", "json"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let fields = |e: &Value| {
        (
            e["id"].clone(),
            e["outcome"].clone(),
            e["resourceId"].clone(),
        )
    };
    let listed: Vec<_> = listed.as_array().unwrap().iter().map(fields).collect();
    assert_eq!(listed, entries.iter().map(fields).collect::<Vec<_>>());
    let (ok, out, err) = cli(&gw.config, &["--format", "csv", "--outcome", "bought"]);
    assert!(ok, "{err}");
    assert_eq!(
        csv_first_column(&out)[1..],
        [ids[0].clone(), ids[2].clone()]
    );
    let (ok, out, err) = cli(&gw.config, &["--client", "ops", "--limit", "1"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains(&ids[0]) && out.contains(&plain_disk), "{out}");
    let (ok, _, err) = cli(&gw.config, &["--since", "last week"]);
    assert!(!ok && err.contains("--since"), "{err}");

    // And once the gateway has stopped (its write-ahead log folded into the file).
    gw.terminate();
    assert_eq!(gw.wait_exit(), Some(0));
    let (ok, out, err) = cli(&gw.config, &["--format", "json"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3, "{out}");

    // A ledger file that is not there is an error, and is not created.
    let missing = dir.join("elsewhere").join("none.sqlite");
    let config = temp_file(
        "missing.toml",
        &format!("[ledger]\npath = {:?}\n", missing.display().to_string()),
    );
    let (ok, _, err) = cli(&config, &[]);
    assert!(!ok && err.contains("no ledger at"), "{err}");
    assert!(!missing.exists() && !missing.parent().unwrap().exists());
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&config);
}
