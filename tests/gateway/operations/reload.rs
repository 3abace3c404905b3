//! Reload without restart, against the real binary: `SIGHUP` and `POST /admin/reload` re-read the
//! config file and the credential files; clients, cache policies and credentials change for the
//! next requests, a file that does not check changes nothing, and requests in flight finish
//! under the settings they began with.

use std::time::Duration;

use finovy_gateway::sim::SimConfig;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::*;

const KEY_A: &str = "fgw_reload_client_a_5d41402abc4b";
const KEY_B: &str = "fgw_reload_client_b_7d793037a076";
const ADMIN_KEY: &str = "fgw_reload_admin_key_2fd4e1c67a2d";

/// A config file's text: `body`, the admin key, and the loose token bounds every rewrite keeps
/// (a change to `[token]` would need a restart).
fn config(body: &str) -> String {
    format!(
        "{body}\n[admin]\nkey_sha256 = \"{}\"\n{FAST_CREATES}\n{LOOSE_TOKENS}",
        hex::encode(Sha256::digest(ADMIN_KEY.as_bytes()))
    )
}

const RELOADS: &str = "finovy_gateway_config_reloads_total";
const RELOADS_OK: &[(&str, &str)] = &[("result", "ok")];
const RELOADS_ERROR: &[(&str, &str)] = &[("result", "error")];
const LAST_OK: &str = "finovy_gateway_config_last_reload_success_timestamp_seconds";

/// Polls until `ok` reloads are counted: the reload counted last has been applied.
async fn reloads_reach(gw: &Bin, ok: f64) {
    eventually(
        &format!("{ok} reloads counted"),
        Duration::from_secs(20),
        || async { gw.metric(RELOADS, RELOADS_OK).await >= ok },
    )
    .await;
}

/// `GET url` as the client of `key`: status, body and `Cache-Status`.
async fn status_with(url: &str, key: &str) -> (u16, Value, String) {
    let (status, h, v) = answer(http().get(url).bearer_auth(key)).await;
    (status, v, cache_status(&h))
}

/// The `ttl=N` of a `Cache-Status`.
fn ttl_of(cache_status: &str) -> i64 {
    cache_status
        .split("ttl=")
        .nth(1)
        .and_then(|t| t.split(';').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ttl in {cache_status:?}"))
}

async fn reload_over_http(gw: &Bin, key: &str) -> (u16, Value) {
    send_json(
        http()
            .post(format!("{}/admin/reload", gw.admin_url))
            .header("Authorization", format!("Bearer {key}")),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_adds_and_removes_clients_and_changes_a_cache_ttl() {
    let sim = Sim::start(sim_config()).await;
    let memory = "[cache.routes.\"disk.memory_total\"]\nttl = \"1h\"\n";
    let gw = Bin::serve(
        &config(&(client_entry("a", KEY_A, "") + memory)),
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    let area = |n: u32| format!("{}{DISK}/memoryTotal/{n}", gw.url);
    let (status, _, _) = status_with(&area(0), KEY_A).await;
    assert_eq!(status, 200);
    let (_, _, cache) = status_with(&area(0), KEY_A).await;
    assert!(
        cache.contains("hit") && ttl_of(&cache) > 3000,
        "the 1h policy: {cache}"
    );
    assert_eq!(
        status_with(&area(0), KEY_B).await.0,
        401,
        "b is not a client yet"
    );

    let memory = "[cache.routes.\"disk.memory_total\"]\nttl = \"20s\"\n";
    std::fs::write(&gw.config, config(&(client_entry("b", KEY_B, "") + memory))).unwrap();
    let before = gw.metric(LAST_OK, &[]).await;
    gw.hangup();
    reloads_reach(&gw, 1.0).await;
    assert!(gw.metric(LAST_OK, &[]).await >= before);

    let (status, body, _) = status_with(&area(1), KEY_B).await;
    assert_eq!((status, &body["code"]), (200, &Value::from(0)), "{body}");
    let (_, _, cache) = status_with(&area(1), KEY_B).await;
    assert!(
        cache.contains("hit") && (1..=20).contains(&ttl_of(&cache)),
        "a new entry takes the new TTL: {cache}"
    );
    let (status, body, _) = status_with(&area(1), KEY_A).await;
    assert_eq!((status, &body["code"]), (401, &Value::from(401)), "{body}");
    let (status, _, _) = status_with(&area(2), KEY_B).await;
    assert_eq!(status, 200);
    let log = gw.wait_for_log("configuration reloaded", 1).await;
    assert!(log.contains("SIGHUP"), "{log}");
    assert!(!log.contains(KEY_A) && !log.contains(KEY_B));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_file_changes_nothing_and_an_in_flight_create_finishes() {
    let sim = Sim::start(sim_config()).await;
    let gw = Bin::serve(
        &config(&client_entry("a", KEY_A, "")),
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    let info = format!("{}{DISK}/memoryTotal/0", gw.url);
    assert_eq!(status_with(&info, KEY_A).await.0, 200);
    let create = |key: &'static str| {
        let url = format!("{}{DISK}/create", gw.url);
        tokio::spawn(send_json(
            http()
                .post(url)
                .header("Authorization", format!("Bearer {key}"))
                .header("Idempotency-Key", fresh_key())
                .json(&serde_json::json!({"area": 0, "memory": 20, "isMount": 0})),
        ))
    };
    let creates_reach = |n: u64| {
        let sim = &sim;
        async move {
            eventually(
                &format!("create {n} left"),
                Duration::from_secs(20),
                || async { sim.calls("create").await >= n },
            )
            .await;
        }
    };
    sim.fault("slow", "1500ms").await;
    let first = create(KEY_A);
    creates_reach(1).await;

    // A file that does not check: a client key that is not a digest, and B added beside it.
    std::fs::write(
        &gw.config,
        config(
            &(client_entry("b", KEY_B, "")
                + "[[clients]]\nname = \"c\"\nkey_sha256 = \"not-a-digest\"\n"),
        ),
    )
    .unwrap();
    let last_ok = gw.metric(LAST_OK, &[]).await;
    let (status, body) = reload_over_http(&gw, ADMIN_KEY).await;
    assert_eq!((status, &body["code"]), (400, &Value::from(1007)), "{body}");
    assert_eq!(body["success"], false);
    let msg = body["msg"].as_str().unwrap();
    assert!(msg.contains("clients[1].key_sha256"), "{msg}");
    assert_eq!(gw.metric(RELOADS, RELOADS_ERROR).await, 1.0);
    assert_eq!(gw.metric(RELOADS, RELOADS_OK).await, 0.0);
    assert_eq!(gw.metric(LAST_OK, &[]).await, last_ok);
    gw.wait_for_log("configuration reload failed", 1).await;

    let (status, body) = first.await.unwrap();
    assert_eq!((status, &body["code"]), (200, &Value::from(0)), "{body}");
    assert_eq!(
        status_with(&info, KEY_A).await.0,
        200,
        "a is still a client"
    );
    assert_eq!(status_with(&info, KEY_B).await.0, 401, "b was never added");
    // The wrong admin key reloads nothing either.
    let (status, _) = reload_over_http(&gw, KEY_A).await;
    assert_eq!(status, 401);

    // A valid reload that removes A while one of A's creates is in flight: it finishes as it
    // began, and A's next request is refused.
    let second = create(KEY_A);
    creates_reach(2).await;
    std::fs::write(&gw.config, config(&client_entry("b", KEY_B, ""))).unwrap();
    let (status, body) = reload_over_http(&gw, ADMIN_KEY).await;
    assert_eq!((status, &body["code"]), (200, &Value::from(0)), "{body}");
    let (status, body) = second.await.unwrap();
    assert_eq!((status, &body["code"]), (200, &Value::from(0)), "{body}");
    sim.fault("none", "0ms").await;
    assert_eq!(status_with(&info, KEY_A).await.0, 401);
    assert_eq!(status_with(&info, KEY_B).await.0, 200);
    assert_eq!(
        sim.stats().await["disks"],
        2,
        "one disk per create, none more"
    );
    assert_eq!(gw.metric(RELOADS, RELOADS_OK).await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_secret_file_makes_readyz_ready_after_a_reload() {
    const OLD: &str = "rotated-away-secret-0a1b2c";
    const NEW: &str = "rotated-in-secret-3d4e5f";
    let sim = Sim::start(SimConfig {
        secret: NEW.into(),
        ..sim_config()
    })
    .await;
    let secret_file = temp_file("secret", &format!("{OLD}\n"));
    let mut gw = Bin::serve(
        &config(""),
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET_FILE", secret_file.to_str().unwrap()),
        ],
    );
    let body = readyz_until(&gw.admin_url, 503).await;
    assert!(body.contains("no token"), "{body}");

    // The Secret volume is updated (with its trailing newline), then the replica told.
    std::fs::write(&secret_file, format!("{NEW}\n")).unwrap();
    gw.hangup();
    reloads_reach(&gw, 1.0).await;
    readyz_until(&gw.admin_url, 200).await;
    assert!(gw.child.try_wait().unwrap().is_none(), "no restart");
    let (status, body) = send_json(http().get(format!("{}{DISK}/memoryTotal/0", gw.url))).await;
    assert_eq!((status, &body["code"]), (200, &Value::from(0)), "{body}");
    let log = gw.wait_for_log("credentials changed", 1).await;
    assert!(!log.contains(OLD) && !log.contains(NEW), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn new_credentials_are_tried_at_once_whatever_min_refresh_interval_says() {
    const OLD: &str = "rotated-away-secret-6f7a8b";
    const NEW: &str = "rotated-in-secret-9c0d1e";
    const NEWER: &str = "rotated-again-secret-2f3a4b";
    let sim = Sim::start(SimConfig {
        secret: NEW.into(),
        ..sim_config()
    })
    .await;
    let secret_file = temp_file("secret", &format!("{OLD}\n"));
    // The production bound and more: one getToken per minute. The failure with the old secret
    // must not hold the new one back that long, nor a held token keep it waiting for its refresh.
    let toml = format!(
        "[admin]\nkey_sha256 = \"{}\"\n[token]\nmin_refresh_interval = \"60s\"\n",
        hex::encode(Sha256::digest(ADMIN_KEY.as_bytes()))
    );
    let gw = Bin::serve(
        &toml,
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET_FILE", secret_file.to_str().unwrap()),
        ],
    );
    let body = readyz_until(&gw.admin_url, 503).await;
    assert!(body.contains("no token"), "{body}");

    std::fs::write(&secret_file, format!("{NEW}\n")).unwrap();
    let (status, body) = reload_over_http(&gw, ADMIN_KEY).await;
    assert_eq!(status, 200, "{body}");
    // Within 20 s, a third of the 60 s min_refresh_interval the old secret's failure started.
    readyz_until(&gw.admin_url, 200).await;

    // With a good token held, a change is tried at once too: a getToken with the newer secret
    // reaches the upstream with no request asking for one (it refuses it; the token held stays).
    std::fs::write(&secret_file, format!("{NEWER}\n")).unwrap();
    let (status, body) = reload_over_http(&gw, ADMIN_KEY).await;
    assert_eq!(status, 200, "{body}");
    eventually(
        "a getToken with the newer secret",
        Duration::from_secs(10),
        || async {
            sim.requests()
                .await
                .iter()
                .any(|r| r["path"] == "/v1/auth/getToken" && r["body"].to_string().contains(NEWER))
        },
    )
    .await;
    let (status, body) = send_json(http().get(format!("{}{DISK}/memoryTotal/0", gw.url))).await;
    assert_eq!((status, &body["code"]), (200, &Value::from(0)), "{body}");
    assert_eq!(sim.calls("getToken").await, 3, "one per secret");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_token_file_is_used_at_once() {
    let sim = Sim::start(sim_config()).await;
    let first = sim.token().await;
    let token_file = temp_file("token", &first);
    let gw = Bin::serve(
        &config(""),
        &sim.url,
        &[("FINOVY_TOKEN_FILE", token_file.to_str().unwrap())],
    );
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    let sent_token = || async {
        let requests = sim.requests().await;
        let last = requests.last().expect("a request reached the simulator");
        last["headers"]["finovy-access-token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(send_json(http().get(&url)).await.0, 200);
    assert_eq!(sent_token().await, first);

    let second = sim.token().await;
    assert_ne!(first, second);
    std::fs::write(&token_file, format!("{second}\n")).unwrap();
    // A change that needs a restart rides along: named, logged, and otherwise ignored.
    std::fs::write(&gw.config, config("[server]\nmax_body_bytes = 1000\n")).unwrap();
    let (status, body) = reload_over_http(&gw, ADMIN_KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["restart_needed"],
        serde_json::json!(["server"]),
        "{body}"
    );
    gw.wait_for_log("needs a restart", 1).await;
    assert_eq!(send_json(http().get(&url)).await.0, 200);
    assert_eq!(sent_token().await, second);
    assert_eq!(
        sim.calls("getToken").await,
        2,
        "only the test's own getToken calls"
    );
    // An unreadable file is refused, naming the variable, and the token stays.
    std::fs::remove_file(&token_file).unwrap();
    let (status, body) = reload_over_http(&gw, ADMIN_KEY).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["msg"].as_str().unwrap().contains("FINOVY_TOKEN_FILE"),
        "{body}"
    );
    assert_eq!(send_json(http().get(&url)).await.0, 200);
    assert_eq!(sent_token().await, second);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_changes_the_log_level() {
    let sim = Sim::start(sim_config()).await;
    let gw = Bin::serve(
        &config("[log]\nlevel = \"info,finovy_gateway::access=off\"\n"),
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    assert_eq!(send_json(http().get(&url)).await.0, 200);
    std::fs::write(&gw.config, config("[log]\nlevel = \"info\"\n")).unwrap();
    gw.hangup();
    reloads_reach(&gw, 1.0).await;
    assert_eq!(send_json(http().get(&url)).await.0, 200);
    // Lines leave in order: once the second request's line is out, the first's would be too.
    let log = gw.wait_for_log("finovy_gateway::access", 1).await;
    let access = log
        .lines()
        .filter(|l| l.contains("finovy_gateway::access"))
        .count();
    assert_eq!(
        access, 1,
        "only the request after the reload is logged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn in_shared_mode_each_replica_reloads_its_own_file() {
    let redis = crate::harness::redis::RedisServer::start();
    let sim = Sim::start(sim_config()).await;
    let shared = format!("[redis]\nurl = \"{}\"\n", redis.url());
    let env = [
        ("FINOVY_UUID", "demo-uuid"),
        ("FINOVY_SECRET", "demo-secret"),
    ];
    let before = config(&(client_entry("a", KEY_A, "") + &shared));
    let after = config(&(client_entry("a", KEY_A, "") + &client_entry("b", KEY_B, "") + &shared));
    let one = Bin::serve(&before, &sim.url, &env);
    let two = Bin::serve(&before, &sim.url, &env);
    let url = |gw: &Bin| format!("{}{DISK}/memoryTotal/0", gw.url);

    // The change rolls replica by replica: until a replica reloads, it keeps what it had.
    std::fs::write(&one.config, &after).unwrap();
    one.hangup();
    reloads_reach(&one, 1.0).await;
    assert_eq!(status_with(&url(&one), KEY_B).await.0, 200);
    assert_eq!(status_with(&url(&two), KEY_B).await.0, 401);
    assert_eq!(two.metric(RELOADS, RELOADS_OK).await, 0.0);
    for gw in [&one, &two] {
        assert_eq!(status_with(&url(gw), KEY_A).await.0, 200);
    }
    std::fs::write(&two.config, &after).unwrap();
    let (status, body) = reload_over_http(&two, ADMIN_KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["restart_needed"],
        serde_json::json!([]),
        "{body}"
    );
    assert_eq!(status_with(&url(&two), KEY_B).await.0, 200);
}

/// A credential file that would block its reader (a FIFO: opening one waits for a writer) or never
/// end (`/dev/zero`), or one over 64 KiB, fails the reload at once, naming the file's variable and
/// why; the process serves throughout and keeps the token in use. At start (`check-config`, as
/// `serve`), the same file is a clear error, not a hang.
#[tokio::test(flavor = "multi_thread")]
async fn a_credential_file_that_blocks_or_never_ends_fails_the_reload_not_the_process() {
    let sim = Sim::start(sim_config()).await;
    let token_file = temp_file("token", &sim.token().await);
    let gw = Bin::serve(
        &config(""),
        &sim.url,
        &[("FINOVY_TOKEN_FILE", token_file.to_str().unwrap())],
    );
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    assert_eq!(send_json(http().get(&url)).await.0, 200);

    std::fs::remove_file(&token_file).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&token_file)
        .status()
        .unwrap();
    assert!(made.success());
    gw.hangup();
    eventually("the reload is refused", Duration::from_secs(20), || async {
        gw.metric(RELOADS, RELOADS_ERROR).await >= 1.0
    })
    .await;
    gw.wait_for_log("not a regular file", 1).await;
    assert_eq!(send_json(http().get(&url)).await.0, 200);
    let healthz = http()
        .get(format!("{}/healthz", gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);

    let refused = |why: &'static str| {
        let gw = &gw;
        async move {
            let (status, body) = reload_over_http(gw, ADMIN_KEY).await;
            assert_eq!((status, body["code"].as_i64()), (400, Some(1007)), "{body}");
            let msg = body["msg"].as_str().unwrap();
            assert!(
                msg.contains("FINOVY_TOKEN_FILE") && msg.contains(why),
                "{msg}"
            );
        }
    };
    refused("not a regular file").await;
    std::fs::remove_file(&token_file).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &token_file).unwrap();
    refused("not a regular file").await;
    std::fs::remove_file(&token_file).unwrap();
    std::fs::write(&token_file, "a".repeat(64 * 1024 + 1)).unwrap();
    refused("larger than 65536 bytes").await;
    assert_eq!(send_json(http().get(&url)).await.0, 200, "the token stays");

    // At start: a FIFO is refused with the same words, within moments.
    std::fs::remove_file(&token_file).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&token_file)
        .status()
        .unwrap();
    assert!(made.success());
    let mut check = binary()
        .args(["check-config", "--config"])
        .arg(&gw.config)
        .env_remove("FINOVY_TOKEN")
        .env("FINOVY_TOKEN_FILE", &token_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = poll(Duration::from_secs(20), || {
        let exited = check.try_wait().unwrap();
        async move { exited.ok_or(()) }
    })
    .await;
    let Ok(status) = status else {
        let _ = check.kill();
        panic!("check-config hangs on a FIFO credential file");
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut check.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("FINOVY_TOKEN_FILE") && err.contains("not a regular file"),
        "{err}"
    );
}
