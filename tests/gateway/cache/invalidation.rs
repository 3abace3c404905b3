//! What each mutation drops from the cache and nothing more, the short life of a disk being
//! destroyed (`status_ttl`), and admin purges by account and of a route across accounts.

use std::time::Duration;

use finovy_gateway::sim::seed::HOST_AREA0;
use serde_json::{Value, json};

use crate::harness::*;

/// GETs `url` and says whether the answer came from the cache.
async fn is_hit(url: &str) -> bool {
    let (status, h, v) = get(url, &[]).await;
    assert_eq!(status, 200, "{url}: {v}");
    cache_status(&h).contains("hit")
}

#[tokio::test(flavor = "multi_thread")]
async fn each_mutation_drops_exactly_what_it_changes() {
    let sim = Sim::start(sim_config()).await;
    let toml = "[cache.routes.\"disk.memory_total\"]\nttl = \"60s\"\n\
                [cache.routes.\"host.one\"]\nttl = \"60s\"\n\
                [cache.routes.\"host.page\"]\nttl = \"60s\"\n";
    let gw = Gw::start(toml, &sim.url, demo_env()).await;
    let total = format!("{}{DISK}/memoryTotal/0", gw.url);
    let one = format!("{}/v1/pve/open/one/{HOST_AREA0}", gw.url);
    let page = format!("{}/v1/pve/open/mypage?page=1&pageSize=10", gw.url);
    for url in [&total, &one, &page] {
        assert!(!is_hit(url).await, "{url}: first is a miss");
        assert!(is_hit(url).await, "{url}: then a hit");
    }
    // A disk create drops the area totals, and leaves the host entries alone.
    new_disk_info_url(&gw.url).await;
    assert!(!is_hit(&total).await, "a create drops disk.memory_total");
    assert!(is_hit(&one).await && is_hit(&page).await, "hosts untouched");
    // Powering a host on drops that host's entry and the host pages, not the disk totals.
    let (_, v) = send_json(http().get(format!(
        "{}/v1/pve/open/operate/{HOST_AREA0}?type=1",
        gw.url
    )))
    .await;
    assert_eq!(v["code"], 0, "{v}");
    assert!(!is_hit(&one).await, "operate drops host.one");
    assert!(!is_hit(&page).await, "operate drops host.page");
    assert!(is_hit(&total).await, "disks untouched");
    assert_eq!(sim.calls("memoryTotal").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_being_destroyed_lives_only_status_ttl_in_the_cache() {
    let sim = Sim::start(sim_config()).await;
    let gw = Gw::start(
        &info_policy(
            "ttl = \"60s\"\nstale_while_revalidate = \"0s\"\nstatus_ttl = { \"4\" = \"1s\" }",
        ),
        &sim.url,
        demo_env(),
    )
    .await;
    let url = new_disk_info_url(&gw.url).await;
    let id = url.rsplit('/').next().unwrap().to_string();
    let (_, h, v) = get(&url, &[]).await;
    assert_eq!(v["data"]["status"], "0", "{v}");
    assert!(cache_status(&h).contains("stored"), "{h:?}");
    let (_, v) = send_json(
        http()
            .put(format!("{}{DISK}/updateStatus", gw.url))
            .json(&json!({"id": id, "status": "5"})),
    )
    .await;
    assert_eq!(v["code"], 0, "{v}");
    // The destroy dropped the entry; the disk now reads as status 4, kept for status_ttl.
    let (_, h, v) = get(&url, &[]).await;
    assert_eq!(v["data"]["status"], "4", "{v}");
    assert!(cache_status(&h).contains("fwd=miss"), "{h:?}");
    let (_, h, _) = get(&url, &[]).await;
    let status = cache_status(&h);
    assert!(
        status.contains("hit; ttl=0") || status.contains("hit; ttl=1"),
        "a status-4 entry lives 1 s, not 60: {status}"
    );
    let calls = sim.calls("info").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_, h, _) = get(&url, &[]).await;
    assert!(!cache_status(&h).contains("; hit"), "{h:?}");
    assert!(
        sim.calls("info").await > calls,
        "refetched after status_ttl"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn purges_by_account_and_of_a_route_across_accounts() {
    const ADMIN: &str = "admin-key-for-tests-0002";
    let sim = Sim::start(sim_config()).await;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(ADMIN.as_bytes()));
    let toml = format!(
        "[admin]\nkey_sha256 = \"{digest}\"\n{}{}{}[[accounts]]\nname = \"other\"\nbase_url = \"{}\"\nuuid_env = \"FINOVY_UUID\"\nsecret_env = \"FINOVY_SECRET\"\n",
        info_policy("ttl = \"60s\""),
        client_entry("a", "key-a-0000000000000000", ""),
        client_entry("b", "key-b-0000000000000000", "account = \"other\""),
        sim.url
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let (_, created) = send_json(
        http()
            .post(format!("{}{DISK}/create", gw.url))
            .header("Authorization", "Bearer key-a-0000000000000000")
            .json(&json!({"area": 0, "memory": 20, "isMount": 0})),
    )
    .await;
    let url = format!(
        "{}{DISK}/info/{}",
        gw.url,
        created["data"].as_str().unwrap()
    );
    let as_client = |key: &'static str| {
        let url = url.clone();
        async move {
            let resp = http()
                .get(&url)
                .header("Authorization", format!("Bearer {key}"))
                .send()
                .await
                .unwrap();
            cache_status(resp.headers()).contains("hit")
        }
    };
    let (a, b) = ("key-a-0000000000000000", "key-b-0000000000000000");
    let prime = || async {
        as_client(a).await;
        as_client(b).await;
        assert!(as_client(a).await && as_client(b).await, "both cached");
    };
    let purge = |body: Value| {
        let url = format!("{}/admin/cache/purge", gw.admin_url);
        async move {
            let (status, v) = send_json(
                http()
                    .post(url)
                    .header("Authorization", format!("Bearer {ADMIN}"))
                    .json(&body),
            )
            .await;
            assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
        }
    };
    prime().await;
    purge(json!({"route": "disk.info", "account": "other"})).await;
    assert!(as_client(a).await, "account default kept its entry");
    assert!(!as_client(b).await, "account other lost its entry");
    prime().await;
    purge(json!({"route": "disk.info"})).await;
    assert!(!as_client(a).await && !as_client(b).await, "every account");
    prime().await;
    purge(json!({"all": true})).await;
    assert!(!as_client(a).await && !as_client(b).await, "everything");
    assert_eq!(
        sim.calls("info").await,
        7,
        "a miss after each purge, per account purged"
    );
}
