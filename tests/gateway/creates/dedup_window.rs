//! The de-dup window's end: an identical key-less create within `dedup_window` gets the same
//! disk, and one after it buys a new one.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn an_identical_create_after_the_dedup_window_buys_again() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        "[create.routes.\"disk.create\"]\nrate = \"1000/1s\"\nburst = 1000\ndedup_window = \"3s\"\n",
        &sim.url,
        demo_env(),
    )
    .await;
    let create = || {
        send_json(
            http()
                .post(format!("{}{DISK}/create", gw.url))
                .json(&json!({"area": 0, "memory": 20, "isMount": 0})),
        )
    };
    let (_, first) = create().await;
    let (_, again) = create().await;
    assert_eq!(
        first["data"], again["data"],
        "within the window: the same disk"
    );
    // The window's end: waiting for time itself to pass.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (_, later) = create().await;
    assert_eq!(later["code"], 0, "{later}");
    assert_ne!(first["data"], later["data"], "after the window: a new disk");
    assert_eq!(sim.calls("create").await, 2);
}
