//! The admin listener without an admin key: `/healthz` answers, and `/admin/*` is off whatever a
//! caller sends.

use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_without_an_admin_key_are_off_and_healthz_answers() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::anonymous(&sim).await;
    let resp = http()
        .get(format!("{}/healthz", gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for auth in [None, Some("Bearer anything-at-all-000000")] {
        let mut req = http()
            .post(format!("{}/admin/cache/purge", gw.admin_url))
            .json(&json!({"all": true}));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let status = req.send().await.unwrap().status().as_u16();
        assert!(
            status == 404 || status == 403,
            "no admin key configured: /admin/* is off, got {status}"
        );
    }
}
