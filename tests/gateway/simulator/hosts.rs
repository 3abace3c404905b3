//! The simulator's hosts: their endpoints, power state changes one at a time, and a host that
//! never booted.

use finovy_gateway::sim::SimConfig;
use finovy_gateway::sim::seed::{HOST_AREA0, HOST_NEVER_ON, HOST_RUNNING};
use reqwest::Method;
use serde_json::{Value, json};

use super::client::*;

#[tokio::test]
async fn host_endpoints_work() {
    let sim = start(quick()).await;
    let images = sim.get(&format!("{HOST}/image")).await;
    assert!(
        images["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == "img-ubuntu2204"),
        "{images}"
    );
    for kind in [0, 1] {
        let packages = sim.get(&format!("{HOST}/packAge/{kind}")).await;
        let packages = packages["data"].as_array().unwrap();
        assert!(!packages.is_empty());
        assert!(packages.iter().all(|p| p["type"] == kind));
    }
    assert_eq!(code(&sim.get(&format!("{HOST}/packAge/2")).await), 1007);

    let page = sim.get(&format!("{HOST}/mypage")).await;
    assert_eq!(page["data"]["totalCounts"], 6);
    let hosts = page["data"]["data"].as_array().unwrap();
    assert_eq!(hosts.len(), 6);
    assert!(hosts.iter().all(|h| h.get("hostPw").is_none()), "{page}");
    let second = sim.get(&format!("{HOST}/mypage?page=2&pageSize=4")).await;
    assert_eq!(second["data"]["data"].as_array().unwrap().len(), 2);
    for bad in ["pageSize=26", "pageSize=0", "page=0", "page=x"] {
        let answer = sim.get(&format!("{HOST}/mypage?{bad}")).await;
        assert_eq!(code(&answer), 1007, "{bad}");
    }

    let one = sim.get(&format!("{HOST}/one/{HOST_AREA0}")).await;
    let host = &one["data"];
    assert_eq!(host["id"], HOST_AREA0);
    assert_eq!(host["hostPw"], "demo-host-pw");
    assert_eq!(
        (host["area"].clone(), host["status"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(host["useType"], 0);
    for path in [
        format!("{HOST}/one/nohost"),
        format!("{HOST}/operate/nohost?type=1"),
        format!("{HOST}/reboot/nohost"),
    ] {
        assert_eq!(code(&sim.get(&path).await), 1021, "{path}");
    }
    let delete_unknown = sim
        .call(Method::DELETE, &format!("{HOST}/delete/nohost"), None)
        .await;
    assert_eq!(code(&delete_unknown), 1021);

    // Creating hosts.
    let create = format!("{HOST}/createquantity");
    assert_eq!(
        code(
            &sim.post(&create, json!({"packageId": "pkg-west-3090"}))
                .await
        ),
        1007
    );
    let prepaid_package = json!({"packageId": "pkg-south-3090-rent", "imageId": "img-win10"});
    assert_eq!(
        code(&sim.post(&create, prepaid_package.clone()).await),
        7005
    );
    let created = sim
        .post(
            &create,
            json!({"packageId": "pkg-west-3090", "imageId": "img-ubuntu2204"}),
        )
        .await;
    let host_id = created["data"].as_str().expect("host id").to_owned();
    let detail = sim.get(&format!("{HOST}/one/{host_id}")).await;
    assert_eq!(detail["data"]["area"], 1);
    assert_eq!(detail["data"]["status"], 0);
    assert_eq!(detail["data"]["useType"], 0);
    assert_eq!(detail["data"]["hostPw"].as_str().unwrap().len(), 12);
    let rent = format!("{HOST}/createRent");
    let mut rent_body = prepaid_package;
    rent_body["periodNumber"] = json!(1);
    rent_body["periodType"] = json!(6);
    assert_eq!(code(&sim.post(&rent, rent_body.clone()).await), 1007);
    rent_body["periodType"] = json!("3");
    let rented = sim.post(&rent, rent_body).await;
    let rented_id = rented["data"].as_str().expect("host id");
    let rented = sim.get(&format!("{HOST}/one/{rented_id}")).await;
    assert_eq!(rented["data"]["useType"], 1);
    assert_eq!(sim.stats().await["hosts"], 8);

    // A new host is delivered off after its first boot: disks mount on it.
    let disk = sim
        .create_ok(json!({"area": 1, "memory": 20, "isMount": 1, "pveId": host_id}))
        .await;
    sim.wait_disk_status(&disk, "2").await;

    // Power: on, reboot, off.
    let operate = |kind: &str| format!("{HOST}/operate/{host_id}?type={kind}");
    assert_eq!(code(&sim.get(&operate("7")).await), 1007);
    assert_eq!(
        code(&sim.get(&format!("{HOST}/operate/{host_id}")).await),
        1007
    );
    assert_eq!(
        code(&sim.get(&format!("{HOST}/reboot/{host_id}")).await),
        1003
    );
    assert_eq!(sim.get(&operate("1")).await["data"], true);
    sim.wait_host_status(&host_id, 2).await;
    assert_eq!(sim.get(&operate("1")).await["data"], true, "already on");
    let reboot = sim.get(&format!("{HOST}/reboot/{host_id}")).await;
    assert_eq!(reboot["data"], true);
    sim.wait_host_status(&host_id, 2).await;
    assert_eq!(sim.get(&operate("0")).await["data"], true);
    sim.wait_host_status(&host_id, 0).await;

    // Deleting a host detaches its disks.
    let deleted = sim
        .call(Method::DELETE, &format!("{HOST}/delete/{host_id}"), None)
        .await;
    assert_eq!(deleted["data"], true);
    assert_eq!(code(&sim.get(&format!("{HOST}/one/{host_id}")).await), 1021);
    let info = sim.info(&disk).await;
    assert_eq!(info["data"]["status"], "0");
    assert_eq!(info["data"]["pveId"], Value::Null);
    assert_eq!(sim.stats().await["hosts"], 7);
}

#[tokio::test]
async fn a_host_changing_power_state_refuses_another_change() {
    let sim = start(SimConfig {
        mount_delay: FOREVER,
        ..quick()
    })
    .await;
    let on = sim
        .get(&format!("{HOST}/operate/{HOST_AREA0}?type=1"))
        .await;
    assert_eq!(on["data"], true);
    let booting = sim.get(&format!("{HOST}/one/{HOST_AREA0}")).await;
    assert_eq!(booting["data"]["status"], 1);
    for path in [
        format!("{HOST}/operate/{HOST_AREA0}?type=0"),
        format!("{HOST}/reboot/{HOST_AREA0}"),
    ] {
        assert_eq!(code(&sim.get(&path).await), 6000, "{path}");
    }
    let off = sim
        .get(&format!("{HOST}/operate/{HOST_RUNNING}?type=0"))
        .await;
    assert_eq!(off["data"], true);
    let stopping = sim.get(&format!("{HOST}/one/{HOST_RUNNING}")).await;
    assert_eq!(stopping["data"]["status"], 4);
    let again = sim
        .get(&format!("{HOST}/operate/{HOST_RUNNING}?type=1"))
        .await;
    assert_eq!(code(&again), 6001);
}

#[tokio::test]
async fn a_host_that_never_booted_accepts_disks_after_its_first_boot() {
    let sim = start(quick()).await;
    let body = json!({"area": 0, "memory": 20, "isMount": 1, "pveId": HOST_NEVER_ON});
    assert_eq!(code(&sim.create(body.clone()).await), 220012);
    sim.get(&format!("{HOST}/operate/{HOST_NEVER_ON}?type=1"))
        .await;
    sim.wait_host_status(HOST_NEVER_ON, 2).await;
    sim.get(&format!("{HOST}/operate/{HOST_NEVER_ON}?type=0"))
        .await;
    sim.wait_host_status(HOST_NEVER_ON, 0).await;
    sim.create_ok(body).await;
}
