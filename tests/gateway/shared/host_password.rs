//! A host's password (`hostPw` in `host.one` answers) stays in the replica's own memory: no key
//! or value in Redis holds it.

use finovy_gateway::sim::seed::HOST_AREA0;

use crate::harness::redis::{RedisServer, Resp};
use crate::harness::*;

/// GETs `url` and says whether the answer came from the cache.
async fn is_hit(url: &str) -> bool {
    let (status, h, v) = get(url, &[]).await;
    assert_eq!(status, 200, "{url}: {v}");
    cache_status(&h).contains("hit")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hosts_password_never_reaches_redis() {
    let sim = Sim::start(sim_config()).await;
    // Uncompressed dumps, so that a value holding the password would show it.
    let redis = RedisServer::start_with_args(&["--rdbcompression", "no"]);
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-pw:\"\ntimeout = \"1s\"\n[cache.routes.\"host.one\"]\nttl = \"60s\"\n",
        redis.url()
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let one = format!("{}/v1/pve/open/one/{HOST_AREA0}", gw.url);
    let (_, _, v) = get(&one, &[]).await;
    let password = v["data"]["hostPw"]
        .as_str()
        .expect("the detail carries hostPw")
        .to_string();
    assert!(password.len() >= 6, "{v}");
    assert!(is_hit(&one).await, "cached, in this replica's memory");
    // Something of this gateway is in Redis, so the scan below looks at real state.
    let info = new_disk_info_url(&gw.url).await;
    get(&info, &[]).await;
    let keys = redis.keys("*").await;
    assert!(
        keys.iter().any(|k| k.contains("disk.info")),
        "the shared cache is in use: {keys:?}"
    );
    for key in &keys {
        assert!(!key.contains("host.one"), "{key}");
        let Resp::Bulk(Some(dump)) = redis.command(&["DUMP", key]).await else {
            continue; // gone since KEYS
        };
        let text = String::from_utf8_lossy(&dump);
        assert!(
            !text.contains(&password) && !text.contains("hostPw"),
            "{key} holds the host password"
        );
    }
}
