//! Anonymous callers beside keyed clients: with `allow_anonymous = true` and `[[clients]]`, a call
//! without a key gets only `[auth] anonymous_routes` (none by default), so a client held to some
//! routes gains nothing by dropping its key. Route names there are checked at load.

use crate::harness::*;

const READER: &str = "fgw_anonymous_reader_key_00000001";
const BUYER: &str = "fgw_anonymous_buyer_key_000000002";

fn clients() -> String {
    client_entry("reader", READER, "routes = [\"disk.info\"]") + &client_entry("buyer", BUYER, "")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anonymous_caller_gets_only_the_anonymous_routes() {
    let sim = Sim::start(sim_config()).await;
    let toml = format!(
        "[auth]\nallow_anonymous = true\nanonymous_routes = [\"disk.memory_total\"]\n{}",
        clients()
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let total = format!("{}{DISK}/memoryTotal/0", gw.url);
    let create = format!("{}{DISK}/create", gw.url);
    let body = serde_json::json!({"area": 0, "memory": 20, "isMount": 0});

    // The one anonymous route is served without a key.
    let (code, v) = send_json(http().get(&total)).await;
    assert_eq!((code, &v["code"]), (200, &serde_json::json!(0)), "{v}");
    // The reader may not create with its key (403), nor without it (401).
    let (code, v) = send_json(http().post(&create).bearer_auth(READER).json(&body)).await;
    assert_eq!((code, &v["code"]), (403, &serde_json::json!(1001)), "{v}");
    let (code, v) = send_json(http().post(&create).json(&body)).await;
    assert_eq!((code, &v["code"]), (401, &serde_json::json!(401)), "{v}");
    assert_eq!(sim.calls("create").await, 0);
    assert_eq!(sim.stats().await["disks"], 0);

    // A disk the buyer made, cached by the reader: its info is not an anonymous route, so the
    // stored entry is not answered without a key (hit path or not).
    let (code, created) = send_json(http().post(&create).bearer_auth(BUYER).json(&body)).await;
    assert_eq!(code, 200, "{created}");
    let info = format!(
        "{}{DISK}/info/{}",
        gw.url,
        created["data"].as_str().unwrap()
    );
    let (code, _) = send_json(http().get(&info).bearer_auth(READER)).await;
    assert_eq!(code, 200);
    let (code, v) = send_json(http().get(&info)).await;
    assert_eq!((code, &v["code"]), (401, &serde_json::json!(401)), "{v}");
    assert_eq!(sim.calls("info").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn by_default_an_anonymous_caller_gets_nothing_when_clients_exist() {
    let sim = Sim::start(sim_config()).await;
    let toml = format!("[auth]\nallow_anonymous = true\n{}", clients());
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let before = sim.total().await;
    for path in [
        format!("{DISK}/memoryTotal/0"),
        format!("{DISK}/info/AbCdEf1234"),
        "/v1/pve/open/image".to_string(),
    ] {
        let (code, v) = send_json(http().get(format!("{}{path}", gw.url))).await;
        assert_eq!(
            (code, &v["code"]),
            (401, &serde_json::json!(401)),
            "{path}: {v}"
        );
    }
    assert_eq!(sim.total().await, before);
    // Keys still work as before.
    let (code, _) = send_json(
        http()
            .get(format!("{}{DISK}/memoryTotal/0", gw.url))
            .bearer_auth(BUYER),
    )
    .await;
    assert_eq!(code, 200);
}

#[test]
fn an_unknown_anonymous_route_is_a_config_error_naming_the_key() {
    let config = temp_file(
        "anon.toml",
        "[auth]\nallow_anonymous = true\nanonymous_routes = [\"disk.infos\"]\n",
    );
    let out = binary()
        .args(["check-config", "--config"])
        .arg(&config)
        .env("FINOVY_UUID", "u")
        .env("FINOVY_SECRET", "s")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("auth.anonymous_routes") && text.contains("disk.infos"),
        "{text}"
    );
}
