//! Every label value the docs (docs/) name for the gateway's counters (cache results, invalidation
//! causes, create outcomes, refusals) is reached by real traffic and counted.

use std::time::Duration;

use finovy_gateway::sim::seed::HOST_AREA0;
use serde_json::{Value, json};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_label_the_docs_name_is_counted() {
    const ADMIN: &str = "admin-key-for-tests-0003";
    let sim = Sim::start(sim_config()).await;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(ADMIN.as_bytes()));
    let toml = format!(
        "[admin]\nkey_sha256 = \"{digest}\"\n[upstream]\ntimeout = \"400ms\"\n{}\
         [create.routes.\"disk.create\"]\nrate = \"1000/1s\"\nburst = 1000\nmax_wait = \"2s\"\n\
         [create.routes.\"host.create_quantity\"]\nrate = \"1/1m\"\nburst = 1\nmax_wait = \"0s\"\n\
         [create.routes.\"host.create_rent\"]\nrate = \"1000/1s\"\nburst = 1000\nclient_rate = \"1/1m\"\nclient_burst = 1\nmax_wait = \"0s\"\n\
         [create.budget.account]\ngb_per_day = 900\n",
        info_policy("ttl = \"300ms\"\nstale_while_revalidate = \"30s\"")
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let create = |key: Option<&'static str>, body: Value| {
        let mut req = http().post(format!("{}{DISK}/create", gw.url)).json(&body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        send_json(req)
    };
    let disk = |memory: u32| json!({"area": 0, "memory": memory, "isMount": 0});

    // Cache lookups: miss, hit, coalesced, stale, bypass; invalidations: gone, no_cache,
    // mutation, purge.
    let (_, made) = create(Some("m-1"), disk(20)).await;
    let id = made["data"].as_str().unwrap().to_string();
    let info = format!("{}{DISK}/info/{id}", gw.url);
    get(&info, &[]).await;
    get(&info, &[]).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    get(&info, &[]).await; // past its TTL, within stale_while_revalidate
    sim.fault("slow", "300ms").await;
    let (_, other) = create(Some("m-2"), disk(21)).await;
    let other = format!("{}{DISK}/info/{}", gw.url, other["data"].as_str().unwrap());
    concurrent_gets(&other, 5).await;
    sim.fault("none", "0s").await;
    http()
        .get(&info)
        .header("Cache-Control", "no-cache")
        .send()
        .await
        .unwrap();
    get(&format!("{}{DISK}/info/noSuchDisk", gw.url), &[]).await;
    let (_, v) = send_json(
        http()
            .post(format!("{}{DISK}/pveCreate", gw.url))
            .json(&json!({"id": id, "pveId": HOST_AREA0})),
    )
    .await;
    assert_eq!(v["code"], 0, "{v}");
    let (status, _) = send_json(
        http()
            .post(format!("{}/admin/cache/purge", gw.admin_url))
            .header("Authorization", format!("Bearer {ADMIN}"))
            .json(&json!({"all": true})),
    )
    .await;
    assert_eq!(status, 200);

    // De-dup: replayed, mismatch, conflict, joined, reconciled.
    create(Some("m-1"), disk(20)).await;
    create(Some("m-1"), disk(22)).await;
    sim.fault("slow", "300ms").await;
    let slow = tokio::spawn(create(Some("m-3"), disk(23)));
    eventually("m-3 upstream", Duration::from_secs(10), || async {
        sim.stats().await["disks"] == 3
    })
    .await;
    create(Some("m-3"), disk(23)).await;
    slow.await.unwrap();
    let joined = (0..3).map(|_| tokio::spawn(create(None, disk(24))));
    for j in joined.collect::<Vec<_>>() {
        j.await.unwrap();
    }
    sim.fault("slow", "1s").await; // past the 400 ms upstream timeout: outcome unknown
    let (status, _) = create(Some("m-4"), disk(25)).await;
    assert_eq!(status, 504);
    sim.fault("none", "0s").await;
    eventually("m-4 made", Duration::from_secs(10), || async {
        sim.stats().await["disks"] == 5
    })
    .await;
    let (_, v) = create(Some("m-4"), disk(25)).await;
    assert_eq!(v["code"], 0, "{v}");

    // Rate limits: tenant, client, upstream; the spending guard's GB cap.
    let host = |path: &str, body: Value| {
        send_json(
            http()
                .post(format!("{}/v1/pve/open/{path}", gw.url))
                .json(&body),
        )
    };
    // Two different hosts: identical ones would be one purchase, not two.
    for image in ["img-win10", "img-ubuntu2204"] {
        host(
            "createquantity",
            json!({"packageId": "pkg-south-3090", "imageId": image}),
        )
        .await;
    }
    let rent = |n: u32| json!({"packageId": "pkg-south-3090-rent", "imageId": "img-win10", "periodNumber": n, "periodType": 1});
    host("createRent", rent(1)).await;
    host("createRent", rent(2)).await;
    // The upstream asks for a pause longer than max_wait: refused as the upstream's limit.
    let r = http()
        .post(format!("{}/_sim/fault", sim.url))
        .json(&json!({"mode": "too_frequent", "retry_after": "1m"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (status, v) = create(None, disk(26)).await;
    assert_eq!((status, v["code"].as_i64()), (429, Some(220025)), "{v}");
    sim.fault("none", "0s").await;
    let (status, v) = create(None, disk(1000)).await;
    assert_eq!(status, 429, "{v}");

    let text = gw.metrics().await;
    let must = |name: &str, labels: &[(&str, &str)]| {
        assert!(
            metric(&text, name, labels) >= 1.0,
            "{name} {labels:?} never counted:\n{text}"
        );
    };
    for result in ["hit", "stale", "miss", "coalesced", "bypass"] {
        must(
            "finovy_gateway_cache_lookups_total",
            &[("route", "disk.info"), ("result", result)],
        );
    }
    for reason in ["mutation", "purge", "no_cache", "gone"] {
        must(
            "finovy_gateway_cache_invalidations_total",
            &[("reason", reason)],
        );
    }
    for (route, scope) in [
        ("host.create_quantity", "tenant"),
        ("host.create_rent", "client"),
        ("disk.create", "upstream"),
    ] {
        must(
            "finovy_gateway_rate_limited_total",
            &[("route", route), ("scope", scope)],
        );
    }
    for result in ["joined", "replayed", "conflict", "mismatch", "reconciled"] {
        must(
            "finovy_gateway_dedup_total",
            &[("route", "disk.create"), ("result", result)],
        );
    }
    must(
        "finovy_gateway_budget_refused_total",
        &[("scope", "account"), ("cap", "gb_per_day")],
    );
    must(
        "finovy_gateway_requests_total",
        &[("route", "disk.info"), ("method", "GET"), ("status", "200")],
    );
}
