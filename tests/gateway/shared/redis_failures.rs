//! Redis failing under a fleet: after a timeout, commands rest a moment instead of each waiting
//! it out, and failures on the token path are counted under their own operation.

use std::time::Duration;

use crate::harness::redis::RedisServer;
use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_redis_timeout_commands_rest_instead_of_each_waiting_it_out() {
    let sim = Sim::start(sim_config()).await;
    let mut redis = RedisServer::start();
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-rest:\"\ntimeout = \"600ms\"\nrequired_for_readiness = false\n",
        redis.url()
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let info = |n: usize| format!("{}{DISK}/info/unknownDisk{n}", gw.url);
    assert_eq!(get(&info(0), &[]).await.0, 200);
    // Redis hangs: connections stay open, nothing answers.
    redis.pause(true);
    let first = std::time::Instant::now();
    let (status, _, v) = get(&info(1), &[]).await;
    let first = first.elapsed();
    assert_eq!((status, v["code"].as_i64()), (200, Some(220001)), "{v}");
    assert!(
        first >= Duration::from_millis(500),
        "waited out the timeout: {first:?}"
    );
    // Right after, within the 250 ms rest, misses go straight to the upstream.
    let rest = std::time::Instant::now();
    for n in 2..7 {
        let (status, _, v) = get(&info(n), &[]).await;
        assert_eq!((status, v["code"].as_i64()), (200, Some(220001)), "{v}");
    }
    let rest = rest.elapsed();
    redis.pause(false);
    // Each would wait 600 ms without the rest (3 s in all); with it, at most one more timeout
    // falls in, should a slow machine run past the 250 ms.
    assert!(
        rest < Duration::from_millis(1500),
        "five misses while resting took {rest:?}, not five timeouts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_failures_on_the_token_path_are_counted_under_their_own_operation() {
    let sim = Sim::start(sim_config()).await;
    let mut redis = RedisServer::start();
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-ops:\"\nrequired_for_readiness = false\n\
         [token]\nmin_lifetime = \"0s\"\nmin_refresh_interval = \"100ms\"\n",
        redis.url()
    );
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    let url = format!("{}{DISK}/memoryTotal/0", gw.url);
    assert_eq!(get(&url, &[]).await.0, 200);
    // Without Redis, a rejected token is replaced by this replica alone: the fleet's refresh
    // lock and its getToken gate both fail, each counted under its own name.
    redis.kill();
    sim.revoke_tokens().await;
    tokio::time::sleep(Duration::from_millis(150)).await; // past min_refresh_interval
    let (status, _, v) = get(&url, &[]).await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    for op in ["token_lock", "token_gate"] {
        let n = gw
            .metric("finovy_gateway_redis_errors_total", &[("op", op)])
            .await;
        assert!(n >= 1.0, "redis errors under op={op}: {n}");
    }
}
