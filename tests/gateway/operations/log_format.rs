//! `--log-format json`: every line the real binary writes is one JSON object, and an access line
//! carries the request's route and status as fields.

use serde_json::Value;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_json_log_format_writes_one_object_per_line() {
    let sim = Sim::start(sim_config()).await;
    let gw = Bin::serve_args(
        "",
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
        &["--log-format", "json"],
    );
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    let resp = http()
        .get(&url)
        .header("X-Request-Id", "json-log-line-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = gw.wait_for_log("json-log-line-1", 1).await;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        assert!(v.is_object(), "{line}");
    }
    let access: Value = text
        .lines()
        .find(|l| l.contains("json-log-line-1"))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap();
    let fields = access.get("fields").unwrap_or(&access);
    assert_eq!(fields["route"], "disk.memory_total", "{access}");
    assert_eq!(fields["status"], 200, "{access}");
}
