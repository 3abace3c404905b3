//! The simulator's disks: every create rule with its code, mounting and its statuses, the minimum
//! create interval, `pveCreate`, a host's 30-disk bound, unmount and destroy, lists and totals.

use std::time::{Duration, Instant};

use finovy_gateway::sim::SimConfig;
use finovy_gateway::sim::seed::{
    HOST_AREA0, HOST_AREA1, HOST_AREA2, HOST_NEVER_ON, HOST_PREPAID, HOST_RUNNING,
};
use reqwest::Method;
use serde_json::{Value, json};

use super::client::*;
use crate::harness::eventually;

#[tokio::test]
async fn every_create_rule_has_its_code_and_creates_nothing() {
    let sim = start(quick()).await;
    let cases = [
        (json!([1, 2]), 1007),
        (json!("text"), 1007),
        (json!({"memory": 20, "isMount": 0}), 1007),
        (json!({"area": 3, "memory": 20, "isMount": 0}), 1007),
        (json!({"area": -1, "memory": 20, "isMount": 0}), 1007),
        (json!({"area": "south", "memory": 20, "isMount": 0}), 1007),
        (json!({"area": 1.5, "memory": 20, "isMount": 0}), 1007),
        (json!({"area": 0, "isMount": 0}), 1007),
        (json!({"area": 0, "memory": "32", "isMount": 0}), 1007),
        (json!({"area": 0, "memory": 20.5, "isMount": 0}), 1007),
        (json!({"area": 0, "memory": null, "isMount": 0}), 1007),
        (json!({"area": 0, "memory": 19, "isMount": 0}), 220013),
        (json!({"area": 0, "memory": -5, "isMount": 0}), 220013),
        (json!({"area": 0, "memory": 20481, "isMount": 0}), 220014),
        (json!({"area": 0, "memory": u64::MAX, "isMount": 0}), 220014),
        (json!({"area": 0, "memory": 1e300, "isMount": 0}), 220014),
        (json!({"area": 0, "memory": 20}), 220020),
        (json!({"area": 0, "memory": 20, "isMount": 2}), 220020),
        (json!({"area": 0, "memory": 20, "isMount": "yes"}), 220020),
        (json!({"area": 0, "memory": 20, "isMount": 1}), 220015),
        (
            json!({"area": 0, "memory": 20, "isMount": 1, "pveId": ""}),
            220015,
        ),
        (
            json!({"area": 0, "memory": 20, "isMount": 1, "pveId": 7}),
            220015,
        ),
        (
            json!({"area": 0, "memory": 20, "isMount": 1, "pveId": "nohost"}),
            220016,
        ),
        (
            json!({"area": 0, "memory": 20, "isMount": 1, "pveId": HOST_RUNNING}),
            220009,
        ),
        (
            json!({"area": 0, "memory": 20, "isMount": 1, "pveId": HOST_NEVER_ON}),
            220012,
        ),
        (
            json!({"area": 0, "memory": 20, "isMount": 1, "pveId": HOST_PREPAID}),
            220017,
        ),
        (
            json!({"area": 0, "memory": 20, "isMount": 1, "pveId": HOST_AREA1}),
            220018,
        ),
        (
            json!({"area": "2", "memory": 20, "isMount": 1, "pveId": HOST_AREA0}),
            220018,
        ),
    ];
    for (body, want) in &cases {
        let answer = sim.create(body.clone()).await;
        assert_eq!(code(&answer), *want, "{body}: {answer}");
        assert!(!answer["msg"].as_str().unwrap().is_empty());
    }
    let malformed = sim
        .send(
            sim.request(Method::POST, &format!("{DISK}/create"))
                .header("Finovy-Access-Token", &sim.token)
                .body("{\"area\": 0,"),
        )
        .await;
    assert_eq!(code(&malformed.1), 1007);

    let stats = sim.stats().await;
    assert_eq!(stats["disks"], 0, "{stats}");
    assert_eq!(stats["calls"]["create"], cases.len() + 1);

    // The edges are accepted, numbers as strings included.
    sim.create_ok(json!({"area": "1", "memory": 20, "isMount": "0"}))
        .await;
    sim.create_ok(json!({"area": 2, "memory": 20480, "isMount": 0}))
        .await;
    assert_eq!(sim.stats().await["disks"], 2);
}

#[tokio::test]
async fn a_created_disk_waits_to_be_mounted() {
    let sim = start(quick()).await;
    let id = sim
        .create_ok(json!({"area": "1", "memory": 20, "isMount": 0}))
        .await;
    assert_eq!(id.len(), 10);
    assert!(id.chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
    let info = sim.info(&id).await;
    assert_eq!(code(&info), 0, "{info}");
    let disk = &info["data"];
    assert_eq!(disk["id"], id.as_str());
    assert_eq!(disk["uuid"], "demo-uuid");
    assert_eq!(disk["name"], format!("HD-{id}"));
    assert_eq!(disk["status"], "0");
    assert_eq!(disk["isMount"], 0);
    assert_eq!(disk["pveId"], Value::Null);
    assert_eq!(disk["bus"], "scsi");
    assert_eq!(disk["area"], "1");
    assert_eq!(disk["memory"], 20);
    assert_eq!(disk["useType"], "0");
    assert_eq!(disk["amount"], 0.02);
    assert!(disk["createTime"].as_u64().unwrap() > 1_700_000_000_000);

    let unknown = sim.info("NoSuchDisk").await;
    assert_eq!(code(&unknown), 220001);
    assert_eq!(unknown["data"], Value::Null);
}

#[tokio::test]
async fn a_mounting_create_goes_from_status_1_to_2() {
    let delay = Duration::from_millis(1500);
    let sim = start(SimConfig {
        mount_delay: delay,
        ..quick()
    })
    .await;
    let sent = Instant::now();
    let id = sim
        .create_ok(json!({"area": 0, "memory": 40, "isMount": 1, "pveId": HOST_AREA0}))
        .await;
    let info = sim.info(&id).await;
    let disk = &info["data"];
    assert_eq!(disk["status"], "1", "{info}");
    assert_eq!(disk["isMount"], 1);
    assert_eq!(disk["pveId"], HOST_AREA0);
    assert_eq!(disk["pveName"], "render-south-0");
    assert_eq!(disk["pveKey"], "scsi1");
    sim.wait_disk_status(&id, "2").await;
    assert!(sent.elapsed() >= delay);
}

#[tokio::test]
async fn creates_closer_than_the_minimum_interval_get_220025() {
    let interval = Duration::from_secs(2);
    let sim = start(SimConfig {
        create_min_interval: interval,
        ..quick()
    })
    .await;
    let body = json!({"area": 0, "memory": 20, "isMount": 0});
    sim.create_ok(body.clone()).await;
    let accepted = Instant::now();
    let refused = sim.create(body.clone()).await;
    assert_eq!(code(&refused), 220025, "{refused}");
    assert!(refused["msg"].as_str().unwrap().contains("too frequent"));
    let stats = sim.stats().await;
    assert_eq!(stats["tooFrequent"], 1);
    assert_eq!(stats["disks"], 1);

    // A refusal half-way through the interval: if refusals restarted it, the create at the end
    // of the first interval below would be refused too.
    tokio::time::sleep((interval / 2).saturating_sub(accepted.elapsed())).await;
    assert_eq!(code(&sim.create(body.clone()).await), 220025);
    // Passing the time the simulator measures.
    tokio::time::sleep(interval.saturating_sub(accepted.elapsed()) + Duration::from_millis(100))
        .await;
    // Neither that refusal nor an invalid create restarts the interval.
    let invalid = sim
        .create(json!({"area": 0, "memory": 1, "isMount": 0}))
        .await;
    assert_eq!(code(&invalid), 220013);
    sim.create_ok(body).await;
    assert_eq!(sim.stats().await["disks"], 2);
}

#[tokio::test]
async fn a_zero_interval_disables_the_create_rule() {
    let sim = start(quick()).await;
    for _ in 0..5 {
        sim.create_ok(json!({"area": 0, "memory": 20, "isMount": 0}))
            .await;
    }
    assert_eq!(sim.stats().await["tooFrequent"], 0);
}

#[tokio::test]
async fn pve_create_mounts_an_idle_disk_on_a_suitable_host() {
    let sim = start(quick()).await;
    let id = sim
        .create_ok(json!({"area": 0, "memory": 20, "isMount": 0}))
        .await;
    let path = format!("{DISK}/pveCreate");
    let cases = [
        (json!({"id": "NoSuchDisk", "pveId": HOST_AREA0}), 220001),
        (json!({"pveId": HOST_AREA0}), 1007),
        (json!({"id": id}), 220015),
        (json!({"id": id, "pveId": "nohost"}), 220016),
        (json!({"id": id, "pveId": HOST_RUNNING}), 220009),
        (json!({"id": id, "pveId": HOST_NEVER_ON}), 220012),
        (json!({"id": id, "pveId": HOST_PREPAID}), 220017),
        (json!({"id": id, "pveId": HOST_AREA2}), 220018),
    ];
    for (body, want) in cases {
        let answer = sim.post(&path, body.clone()).await;
        assert_eq!(code(&answer), want, "{body}: {answer}");
    }
    assert_eq!(sim.info(&id).await["data"]["status"], "0");

    let answer = sim
        .post(&path, json!({"id": id, "pveId": HOST_AREA0}))
        .await;
    assert_eq!(answer["data"], true, "{answer}");
    let info = sim.wait_disk_status(&id, "2").await;
    assert_eq!(info["data"]["pveId"], HOST_AREA0);
    assert_eq!(info["data"]["isMount"], 1);

    let again = sim
        .post(&path, json!({"id": id, "pveId": HOST_AREA0}))
        .await;
    assert_eq!(code(&again), 220002, "{again}");
}

#[tokio::test]
async fn a_host_carries_at_most_30_disks() {
    let sim = start(SimConfig {
        mount_delay: FOREVER,
        ..quick()
    })
    .await;
    let mounted = json!({"area": 1, "memory": 20, "isMount": 1, "pveId": HOST_AREA1});
    for _ in 0..30 {
        sim.create_ok(mounted.clone()).await;
    }
    let refused = sim.create(mounted).await;
    assert_eq!(code(&refused), 220010, "{refused}");
    let idle = sim
        .create_ok(json!({"area": 1, "memory": 20, "isMount": 0}))
        .await;
    let mount = sim
        .post(
            &format!("{DISK}/pveCreate"),
            json!({"id": idle, "pveId": HOST_AREA1}),
        )
        .await;
    assert_eq!(code(&mount), 220010);

    let list = sim
        .list(json!({"pveId": HOST_AREA1, "pageSize": 100}))
        .await;
    assert_eq!(list["data"]["totalCounts"], 30);
    let mut keys: Vec<String> = list["data"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["pveKey"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 30, "every disk has its own device key");
}

#[tokio::test]
async fn update_status_unmounts_and_destroys() {
    let sim = start(quick()).await;
    let id = sim
        .create_ok(json!({"area": 0, "memory": 30, "isMount": 0}))
        .await;
    for (status, want) in [(json!("7"), 1007), (json!(null), 1007), (json!("x"), 1007)] {
        let answer = sim.update_status(&id, status.clone()).await;
        assert_eq!(code(&answer), want, "{status}: {answer}");
    }
    assert_eq!(
        code(&sim.update_status("NoSuchDisk", json!("0")).await),
        220001
    );
    assert_eq!(code(&sim.update_status(&id, json!("0")).await), 220006);

    let mounted = sim
        .create_ok(json!({"area": 0, "memory": 20, "isMount": 1, "pveId": HOST_AREA0}))
        .await;
    sim.wait_disk_status(&mounted, "2").await;
    assert_eq!(code(&sim.update_status(&mounted, json!("5")).await), 220022);

    // Unmounting needs the host off.
    let on = sim
        .get(&format!("{HOST}/operate/{HOST_AREA0}?type=1"))
        .await;
    assert_eq!(on["data"], true, "{on}");
    assert_eq!(code(&sim.update_status(&mounted, json!("0")).await), 220009);
    sim.wait_host_status(HOST_AREA0, 2).await;
    assert_eq!(code(&sim.update_status(&mounted, json!("0")).await), 220009);
    sim.get(&format!("{HOST}/operate/{HOST_AREA0}?type=0"))
        .await;
    sim.wait_host_status(HOST_AREA0, 0).await;

    let answer = sim.update_status(&mounted, json!("0")).await;
    assert_eq!(answer["data"], true, "{answer}");
    let info = sim.info(&mounted).await;
    assert_eq!(
        info["data"]["status"], "0",
        "unmounting is immediate: {info}"
    );
    assert_eq!(info["data"]["pveId"], Value::Null);
    assert_eq!(
        info["data"]["isMount"], 1,
        "isMount says it was mounted once"
    );

    // Destroy: status 4, excluded from the area's total, then gone.
    assert_eq!(sim.memory_total("0").await["data"]["memory"], 50);
    let answer = sim.update_status(&id, json!(5)).await;
    assert_eq!(answer["data"], true, "{answer}");
    assert_eq!(sim.memory_total("0").await["data"]["memory"], 20);
    eventually("the destroyed disk goes", DEADLINE, || async {
        code(&sim.info(&id).await) == 220001
    })
    .await;
    assert_eq!(sim.stats().await["disks"], 1);
}

#[tokio::test]
async fn a_busy_disk_can_be_neither_unmounted_nor_destroyed_nor_mounted() {
    let sim = start(SimConfig {
        mount_delay: FOREVER,
        ..quick()
    })
    .await;
    let id = sim
        .create_ok(json!({"area": 2, "memory": 20, "isMount": 1, "pveId": HOST_AREA2}))
        .await;
    assert_eq!(sim.info(&id).await["data"]["status"], "1");
    assert_eq!(code(&sim.update_status(&id, json!("0")).await), 220007);
    assert_eq!(code(&sim.update_status(&id, json!("5")).await), 220022);

    let doomed = sim
        .create_ok(json!({"area": 2, "memory": 20, "isMount": 0}))
        .await;
    assert_eq!(sim.update_status(&doomed, json!("5")).await["data"], true);
    assert_eq!(sim.info(&doomed).await["data"]["status"], "4");
    assert_eq!(code(&sim.update_status(&doomed, json!("5")).await), 220022);
    assert_eq!(code(&sim.update_status(&doomed, json!("0")).await), 220007);
    let mount = sim
        .post(
            &format!("{DISK}/pveCreate"),
            json!({"id": doomed, "pveId": HOST_AREA2}),
        )
        .await;
    assert_eq!(code(&mount), 220002);
}

#[tokio::test]
async fn get_list_pages_and_filters() {
    let sim = start(SimConfig {
        mount_delay: FOREVER,
        ..quick()
    })
    .await;
    let mut ids = Vec::new();
    for area in [0, 1, 2, 1] {
        ids.push(
            sim.create_ok(json!({"area": area, "memory": 20, "isMount": 0}))
                .await,
        );
    }
    ids.push(
        sim.create_ok(json!({"area": 1, "memory": 20, "isMount": 1, "pveId": HOST_AREA1}))
            .await,
    );
    let ids_of = |answer: &Value| -> Vec<String> {
        answer["data"]["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{answer}"))
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };

    let all = sim.list(json!({})).await;
    assert_eq!(all["data"]["totalCounts"], 5);
    assert_eq!(ids_of(&all), ids, "creation order");
    let empty_body = sim
        .send(
            sim.request(Method::POST, &format!("{DISK}/getList"))
                .header("Finovy-Access-Token", &sim.token),
        )
        .await;
    assert_eq!(
        ids_of(&empty_body.1),
        ids,
        "an empty body means the defaults"
    );

    for (page, want) in [
        (1, &ids[0..2]),
        (2, &ids[2..4]),
        (3, &ids[4..5]),
        (4, &ids[5..5]),
    ] {
        let answer = sim.list(json!({"page": page, "pageSize": 2})).await;
        assert_eq!(ids_of(&answer), want, "page {page}");
        assert_eq!(answer["data"]["totalCounts"], 5);
    }
    let answer = sim.list(json!({"page": "2", "pageSize": "3"})).await;
    assert_eq!(ids_of(&answer), &ids[3..5]);

    let filters = [
        (json!({"area": 1}), vec![1, 3, 4]),
        (json!({"area": "2"}), vec![2]),
        (json!({"status": 0}), vec![0, 1, 2, 3]),
        (json!({"status": "1"}), vec![4]),
        (json!({"pveId": HOST_AREA1}), vec![4]),
        (json!({"useType": 0}), vec![0, 1, 2, 3, 4]),
        (json!({"useType": "1"}), vec![]),
        (json!({"area": 1, "status": 0}), vec![1, 3]),
    ];
    for (filter, want) in filters {
        let answer = sim.list(filter.clone()).await;
        let want: Vec<String> = want.into_iter().map(|i| ids[i].clone()).collect();
        assert_eq!(ids_of(&answer), want, "{filter}");
        assert_eq!(answer["data"]["totalCounts"], want.len());
    }

    for bad in [
        json!({"pageSize": 101}),
        json!({"pageSize": 0}),
        json!({"page": 0}),
        json!({"page": "first"}),
        json!({"area": "south"}),
        json!({"pveId": 5}),
        json!([]),
    ] {
        let answer = sim.list(bad.clone()).await;
        assert_eq!(code(&answer), 1007, "{bad}: {answer}");
    }
    assert_eq!(code(&sim.list(json!({"pageSize": 100})).await), 0);
}

#[tokio::test]
async fn memory_total_sums_an_area() {
    let sim = start(SimConfig {
        mount_delay: FOREVER,
        ..quick()
    })
    .await;
    for area in ["0", "1", "2"] {
        assert_eq!(sim.memory_total(area).await["data"]["memory"], 0);
    }
    let doomed = sim
        .create_ok(json!({"area": 0, "memory": 30, "isMount": 0}))
        .await;
    sim.create_ok(json!({"area": 0, "memory": 20, "isMount": 1, "pveId": HOST_AREA0}))
        .await;
    sim.create_ok(json!({"area": 1, "memory": 45, "isMount": 0}))
        .await;
    assert_eq!(sim.memory_total("0").await["data"]["memory"], 50);
    assert_eq!(sim.memory_total("1").await["data"]["memory"], 45);
    assert_eq!(sim.memory_total("2").await["data"]["memory"], 0);
    sim.update_status(&doomed, json!("5")).await;
    assert_eq!(sim.info(&doomed).await["data"]["status"], "4");
    assert_eq!(sim.memory_total("0").await["data"]["memory"], 20);
    for bad in ["3", "-1", "x", "99999999999999999999999"] {
        assert_eq!(code(&sim.memory_total(bad).await), 1007, "{bad}");
    }
}
