//! The real binary: protected mode, secrets kept out of logs and metrics, graceful drain on
//! SIGTERM, `check-config`, and the `dev` demo.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use finovy_gateway::sim::SimConfig;
use serde_json::Value;

use crate::harness::*;

#[test]
fn protected_mode_refuses_to_start() {
    let config = temp_file("empty.toml", "");
    let out = binary()
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", "0.0.0.0:0", "--admin-listen", "127.0.0.1:0"])
        .env("FINOVY_UUID", "u")
        .env("FINOVY_SECRET", "s")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("protected mode"), "{err}");
}

#[test]
fn missing_credentials_refuse_to_start() {
    let config = temp_file("empty.toml", "");
    let out = binary()
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env_remove("FINOVY_UUID")
        .env_remove("FINOVY_SECRET")
        .env_remove("FINOVY_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FINOVY_UUID") && err.contains("FINOVY_TOKEN"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_logs_metrics_or_answers() {
    const UUID: &str = "acct-uuid-7f3a9c";
    const SECRET: &str = "app-secret-d41d8cd98f";
    const KEY: &str = "fgw_client_key_e3b0c44298fc1c14";
    let sim = Sim::start(SimConfig {
        uuid: UUID.into(),
        secret: SECRET.into(),
        ..sim_config()
    })
    .await;
    let toml = client_entry("svc", KEY, "") + "[log]\nformat = \"json\"\nlevel = \"trace\"\n";
    let gw = Bin::serve(
        &toml,
        &sim.url,
        &[("FINOVY_UUID", UUID), ("FINOVY_SECRET", SECRET)],
    );
    let auth = format!("Bearer {KEY}");
    let mut answers = String::new();
    for (path, key) in [
        (format!("{DISK}/memoryTotal/0"), auth.as_str()),
        (format!("{DISK}/info/nope"), auth.as_str()),
        (format!("{DISK}/info/nope"), "Bearer wrong"),
        ("/v1/auth/getToken".to_string(), auth.as_str()),
    ] {
        let r = http()
            .get(format!("{}{path}", gw.url))
            .header("Authorization", key)
            .send()
            .await
            .unwrap();
        answers.push_str(&r.text().await.unwrap());
    }
    sim.revoke_tokens().await;
    let r = http()
        .get(format!("{}{DISK}/memoryTotal/0", gw.url))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    answers.push_str(&r.text().await.unwrap());
    let tokens: Vec<String> = sim
        .requests()
        .await
        .iter()
        .filter_map(|r| {
            r["headers"]["finovy-access-token"]
                .as_str()
                .map(String::from)
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        tokens.len() >= 2,
        "two distinct tokens were used: {tokens:?}"
    );
    let metrics = get_text(&format!("{}/metrics", gw.admin_url)).await;
    let ready = get_text(&format!("{}/readyz", gw.admin_url)).await;
    let config = temp_file("check.toml", &toml);
    let check = binary()
        .args(["check-config", "--config"])
        .arg(&config)
        .env("FINOVY_UUID", UUID)
        .env("FINOVY_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(check.status.success());
    let check = String::from_utf8_lossy(&check.stdout).to_string();
    // Every request's access line is in (5 data-plane requests), so the log is complete.
    let logs = gw.wait_for_log("finovy_gateway::access", 5).await;
    assert!(
        logs.contains("\"route\":\"disk.memory_total\""),
        "JSON access lines:\n{logs}"
    );
    for line in logs.lines() {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    }
    for secret in [UUID, SECRET, KEY]
        .iter()
        .map(ToString::to_string)
        .chain(tokens)
    {
        for (what, text) in [
            ("logs", &logs),
            ("metrics", &metrics),
            ("answers", &answers),
            ("readyz", &ready),
            ("check-config", &check),
        ] {
            assert!(!text.contains(&secret), "{secret} found in {what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_an_in_flight_request_then_exits_0() {
    let sim = Sim::start(sim_config()).await;
    let mut gw = Bin::serve(
        "",
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    assert_eq!(http().get(&url).send().await.unwrap().status(), 200);
    sim.fault("slow", "1500ms").await;
    let before = sim.calls("memoryTotal").await;
    let in_flight = tokio::spawn(async move { send_json(http().get(url)).await });
    // The request is in flight once the simulator has received it.
    eventually(
        "request never reached the simulator",
        Duration::from_secs(10),
        || async { sim.calls("memoryTotal").await != before },
    )
    .await;
    gw.terminate();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!((status, body["code"].as_i64()), (200, Some(0)), "{body}");
    let code = tokio::task::spawn_blocking(move || gw.wait_exit())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_waits_for_a_create_whose_client_hung_up() {
    let sim = Sim::start(sim_config()).await;
    let mut gw = Bin::serve(
        "[server]\ndrain_timeout = \"20s\"\n",
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    readyz_until(&gw.admin_url, 200).await;
    sim.fault("slow", "2s").await;
    // A create sent, then its client gone before the answer.
    let client = tokio::spawn(
        http()
            .post(format!("{}{DISK}/create", gw.url))
            .json(&serde_json::json!({"area": 0, "memory": 20, "isMount": 0}))
            .send(),
    );
    eventually("the create never left", Duration::from_secs(10), || async {
        sim.calls("create").await != 0
    })
    .await;
    let sent = std::time::Instant::now();
    client.abort();
    gw.terminate();
    // Draining: not ready, so a load balancer stops sending; yet the process is still there.
    let body = readyz_until(&gw.admin_url, 503).await;
    assert!(body.contains("draining"), "{body}");
    let code = tokio::task::spawn_blocking(move || {
        let code = gw.wait_exit();
        (code, gw)
    })
    .await
    .unwrap();
    let held = sent.elapsed();
    let (code, gw) = code;
    assert_eq!(code, Some(0));
    // The process waited for the upstream's answer, held back 2 s after the create arrived.
    assert!(held >= Duration::from_millis(1900), "exited after {held:?}");
    assert_eq!(sim.stats().await["disks"], 1);
    let log = gw.log_text();
    assert!(log.contains("stopped"), "{log}");
    assert!(!log.contains("drain timed out"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_timeout_bounds_the_wait_for_a_stuck_request() {
    let sim = Sim::start(sim_config()).await;
    let mut gw = Bin::serve(
        "[server]\ndrain_timeout = \"500ms\"\n",
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    readyz_until(&gw.admin_url, 200).await;
    sim.fault("slow", "20s").await;
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    let _client = tokio::spawn(async move { http().get(url).send().await });
    eventually(
        "the request never left",
        Duration::from_secs(10),
        || async { sim.calls("memoryTotal").await != 0 },
    )
    .await;
    let asked = std::time::Instant::now();
    gw.terminate();
    let (code, gw) = tokio::task::spawn_blocking(move || (gw.wait_exit(), gw))
        .await
        .unwrap();
    let took = asked.elapsed();
    assert_eq!(code, Some(0));
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(10),
        "exited after {took:?}, drain_timeout 500ms, the request held 20 s"
    );
    assert!(gw.log_text().contains("drain timed out"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_log_turns_access_lines_off_for_every_answer() {
    let sim = Sim::start(sim_config()).await;
    let mut gw = Bin::serve(
        "[cache.routes.\"disk.info\"]\nttl = \"60s\"\n",
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
            ("RUST_LOG", "info,finovy_gateway::access=off"),
        ],
    );
    let url = new_disk_info_url(&gw.url).await;
    // A miss, a hit (answered in front of the stack) and a 404.
    get_text(&url).await;
    let hit = http().get(&url).send().await.unwrap();
    assert!(cache_status(hit.headers()).contains("hit"));
    let missing = http().get(format!("{}/nope", gw.url)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    gw.terminate();
    let (code, gw) = tokio::task::spawn_blocking(move || (gw.wait_exit(), gw))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    let log = gw.wait_for_log("stopped", 1).await;
    assert!(log.contains("gateway listening"), "{log}");
    assert!(!log.contains("finovy_gateway::access"), "{log}");
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_bad_key() {
    let good = temp_file(
        "good.toml",
        "[server]\nlisten = \"127.0.0.1:8081\"\nrequest_timeout = \"5s\"\n[[clients]]\nname = \"a\"\nkey_sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n",
    );
    let out = binary()
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("127.0.0.1:8081") && text.contains("request_timeout = \"5s\""),
        "{text}"
    );

    // The shipped, documented config is valid too.
    let shipped = binary()
        .args(["check-config", "--config", "config/gateway.toml"])
        .output()
        .unwrap();
    assert!(
        shipped.status.success(),
        "{}",
        String::from_utf8_lossy(&shipped.stderr)
    );

    for (text, key) in [
        ("[server]\nlisten_on = \"x\"\n", "listen_on"),
        ("[server]\nrequest_timeout = \"fast\"\n", "request_timeout"),
        ("[upstream]\nbase_url = \"ftp://x\"\n", "upstream.base_url"),
        (
            "[[clients]]\nname = \"a\"\nkey_sha256 = \"abc\"\n",
            "clients[0].key_sha256",
        ),
        ("[log]\nformat = \"xml\"\n", "format"),
        ("[server\n", "TOML"),
    ] {
        let bad = temp_file("bad.toml", text);
        let out = binary()
            .args(["check-config", "--config"])
            .arg(&bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{text}: {err}");
    }
    let missing = binary()
        .args(["check-config", "--config", "/nonexistent/gw.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
}

/// Record keys join names with `|`: a client named `svc|disk.create` could reach another client's
/// idempotency records. Client and account names are letters, digits, `.`, `_` and `-`.
#[test]
fn check_config_refuses_names_outside_letters_digits_dot_underscore_dash() {
    let check = |text: &str| {
        binary()
            .args(["check-config", "--config"])
            .arg(temp_file("names.toml", text))
            .env("SANDBOX_TOKEN", "sandbox-token")
            .output()
            .unwrap()
    };
    let file = |client: &str, account: &str| {
        format!(
            "[[accounts]]\nname = {account:?}\ntoken_env = \"SANDBOX_TOKEN\"\n{}",
            client_entry(client, "fgw_names_key_1", &format!("account = {account:?}"))
        )
    };
    let good = check(&file("svc.disk-create_1", "Sandbox.eu-1"));
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    for (client, account, key) in [
        ("svc|disk.create", "sandbox", "clients[0].name"),
        ("svc disk", "sandbox", "clients[0].name"),
        ("svc:1", "sandbox", "clients[0].name"),
        ("svc\u{e9}", "sandbox", "clients[0].name"),
        ("", "sandbox", "clients[0].name"),
        // Callers without a key go by "anonymous".
        ("anonymous", "sandbox", "clients[0].name"),
        ("svc", "sand|box", "accounts[0].name"),
        ("svc", "sand/box", "accounts[0].name"),
    ] {
        let out = check(&file(client, account));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{client:?} {account:?} accepted");
        assert!(err.contains(key), "{client:?} {account:?}: {err}");
    }
    // keygen prints only an entry that checks.
    let out = binary()
        .args(["keygen", "--name", "svc|disk.create"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A reader that goes away (`keygen | head -1`, `check-config | head`) ends the output quietly:
/// no panic on the broken pipe, exit 0.
#[test]
fn output_into_a_closed_pipe_is_not_a_crash() {
    for args in [
        vec!["keygen", "--name", "svc"],
        vec!["check-config", "--config", "config/gateway.toml"],
    ] {
        // The reader is gone before the child starts, so its first write meets a broken pipe.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = binary()
            .args(&args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?}\n{err}", out.status);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn keygen_prints_a_key_whose_digest_it_configures() {
    let out = binary()
        .args(["keygen", "--name", "render"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let key = text
        .split_whitespace()
        .find(|w| w.starts_with("fgw_"))
        .expect("a key");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()));
    assert!(
        text.contains(&format!("key_sha256 = \"{digest}\"")),
        "{text}"
    );
    assert!(text.contains("name = \"render\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_serves_the_simulator_behind_the_gateway() {
    let mut child = binary()
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--sim-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut gw, mut console) = (None, None);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["gateway", url, ..] => gw = Some(url.to_string()),
                ["console", url, ..] => console = Some(url.to_string()),
                ["client", "key", key, ..] => {
                    let _ = tx.send((
                        gw.clone().expect("gateway line first"),
                        console.clone().expect("console line first"),
                        key.to_string(),
                    ));
                }
                _ => {}
            }
        }
    });
    let (url, console, key) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("dev prints its banner");
    // The console's address, signed in by the admin key in its fragment (never sent).
    let (page, admin_key) = console
        .split_once("#key=")
        .expect("the key in the fragment");
    let resp = http().get(page).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{page}");
    assert!(resp.text().await.unwrap().contains("app.js"));
    let overview = page.replace("/console", "/admin/overview");
    let resp = http()
        .get(&overview)
        .bearer_auth(admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{overview}");
    let auth = format!("Bearer {key}");
    let (_, created) = send_json(
        http()
            .post(format!("{url}{DISK}/create"))
            .header("Authorization", &auth)
            .json(&serde_json::json!({"area": 0, "memory": 20, "isMount": 0})),
    )
    .await;
    assert_eq!(created["code"], 0, "{created}");
    let id = created["data"].as_str().unwrap();
    let (_, info) = send_json(
        http()
            .get(format!("{url}{DISK}/info/{id}"))
            .header("Authorization", &auth),
    )
    .await;
    assert_eq!(info["data"]["id"], id);
    let keyless = http()
        .get(format!("{url}{DISK}/info/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(keyless.status(), 401);
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap().code())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_host_password_never_reaches_a_log_line() {
    let sim = Sim::start(sim_config()).await;
    let toml = "[cache.routes.\"host.one\"]\nenabled = true\n[log]\nlevel = \"trace\"\n";
    let gw = Bin::serve(
        toml,
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    let url = format!(
        "{}/v1/pve/open/one/{}",
        gw.url,
        finovy_gateway::sim::seed::HOST_AREA0
    );
    let mut statuses = Vec::new();
    let mut password = String::new();
    for _ in 0..2 {
        let (_, h, v) = get(&url, &[]).await;
        statuses.push(cache_status(&h));
        password = v["data"]["hostPw"]
            .as_str()
            .expect("the answer carries the password")
            .to_string();
    }
    // Both requests' access lines are in, so the log holds everything these requests logged.
    let logs = gw.wait_for_log("route=host.one", 2).await;
    assert!(!logs.contains(&password), "the password is in the log");
    assert!(statuses[1].contains("hit"), "{statuses:?}");
    assert_eq!(sim.calls("one").await, 1);
}

/// Runs `check-config` on `path` with the demo credentials and `env`; its output.
fn check_config(path: &std::path::Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = binary();
    cmd.args(["check-config", "--config"])
        .arg(path)
        .env("FINOVY_UUID", "u")
        .env("FINOVY_SECRET", "s");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn the_configs_in_deploy_are_valid() {
    // The Kubernetes configs (base and fleet overlay), once an operator put a client's digest in.
    const PASSWORD: &str = "k8s-redis-pw-5e1f";
    let password = temp_file("redis-password", &format!("{PASSWORD}\n"));
    let password = password.to_str().unwrap();
    for path in [
        "deploy/k8s/base/gateway.toml",
        "deploy/k8s/overlays/fleet/gateway.toml",
    ] {
        let text = std::fs::read_to_string(path).unwrap();
        // The placeholder is meant to fail until an operator puts a real digest in.
        let placeholder = check_config(
            &temp_file("k8s.toml", &text),
            &[("FGW_REDIS_PASSWORD_FILE", password)],
        );
        assert!(!placeholder.status.success(), "{path}");
        let err = String::from_utf8_lossy(&placeholder.stderr);
        assert!(err.contains("clients[0].key_sha256"), "{path}: {err}");
        let filled = text.replace(
            "REPLACE-with-the-64-hex-digest-from-keygen",
            &"ab".repeat(32),
        );
        // The Secret's file stands in for the mounted one (the variable wins over the key).
        let out = check_config(
            &temp_file("k8s.toml", &filled),
            &[("FGW_REDIS_PASSWORD_FILE", password)],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !stdout.contains("serve would refuse"),
            "{path}: a config that serves"
        );
        assert!(
            !stdout.contains(PASSWORD),
            "{path}: the password is masked: {stdout}"
        );
    }
    // The compose fleet's, as it is (its demo client key is published on purpose).
    let out = check_config(std::path::Path::new("deploy/fleet.toml"), &[]);
    assert!(
        out.status.success(),
        "deploy/fleet.toml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image's `HEALTHCHECK` command, from `deploy/Dockerfile`, run by bash as docker runs it.
fn image_healthcheck(admin_port: u16) -> bool {
    let dockerfile = std::fs::read_to_string("deploy/Dockerfile").unwrap();
    let cmd = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK"))
        .find_map(|l| l.trim().strip_prefix("CMD "))
        .expect("a HEALTHCHECK CMD");
    let argv: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
    assert_eq!(&argv[..2], ["bash", "-c"]);
    let script = argv[2].replace("/9090", &format!("/{admin_port}"));
    assert_ne!(script, argv[2], "it asks the admin port 9090");
    std::process::Command::new("bash")
        .args(["-c", &script])
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_healthcheck_asks_healthz_on_the_admin_port() {
    let sim = Sim::start(sim_config()).await;
    let mut gw = Bin::serve(
        "",
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    let port: u16 = gw.admin_url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(tokio::task::block_in_place(|| image_healthcheck(port)));
    // The data plane answers 404 to /healthz: the check must not pass there.
    let data: u16 = gw.url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(!tokio::task::block_in_place(|| image_healthcheck(data)));
    gw.terminate();
    tokio::task::block_in_place(|| gw.wait_exit());
    assert!(!tokio::task::block_in_place(|| image_healthcheck(port)));
}
