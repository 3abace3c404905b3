//! The dashboard and the alerts of `deploy/`, proven with real parts: `promtool` checks the alert
//! rules and runs their unit tests; a real Prometheus loads the rules (every alert has its summary,
//! description and runbook entry) and scrapes gateways in memory and shared mode while traffic
//! runs, then answers every panel query of the Grafana dashboard with series, on metrics the
//! gateway exports. Prometheus and promtool come from Debian's `prometheus` package
//! (`.ci/run` installs it); a missing binary fails these tests, never skips them.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use finovy_gateway::sim::seed::HOST_AREA0;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::harness::redis::RedisServer;
use crate::harness::*;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/finovy-gateway.json"
);
const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yaml");
const ALERT_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/alerts.test.yaml"
);
const RUNBOOK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/RUNBOOK.md");

/// The dashboard row whose panels only a gateway in shared mode fills.
const SHARED_ROW: &str = "Shared mode (Redis)";

/// What Grafana would put for its built-in variables: windows long enough to hold all the test's
/// traffic, so that every rate sees an increase.
const RATE_INTERVAL: &str = "1m";
const RANGE: &str = "5m";

/// How long Prometheus gets to start, to scrape, and to show each panel.
const WITHIN: Duration = Duration::from_secs(30);

const CLIENT_KEY: &str = "obs-client-key";
const DISK20: &str = r#"{"area":0,"memory":20,"isMount":0}"#;

/// `name` from PATH, or a failing test that says how to get it.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found: install it (apt-get install prometheus); \
                 the observability tests never skip"
            )
        })
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new(tool("promtool"))
        .args(args)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// Percent-encodes a query parameter's value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `finovy_gateway_*` metric name in `expr`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.match_indices("finovy_gateway_")
        .map(|(i, _)| {
            expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// The metric names a `/metrics` text exports (a histogram's series names included).
fn exported(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// GitHub's anchors for the headings of a Markdown text.
fn anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

// === Prometheus ===

/// One `prometheus` child process on a loopback port, with its own storage; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus with `rules` loaded, scraping the admin listeners `admin_urls` every
    /// second as job `finovy-gateway`, and waits until it is ready.
    async fn start(admin_urls: &[&str], rules: bool) -> Prometheus {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fgw-prometheus-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create the prometheus directory");
        let targets: Vec<String> = admin_urls
            .iter()
            .map(|u| format!("'{}'", u.trim_start_matches("http://")))
            .collect();
        let rule_files = if rules {
            format!("rule_files:\n  - '{ALERTS}'\n")
        } else {
            String::new()
        };
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             {rule_files}\
             scrape_configs:\n  - job_name: finovy-gateway\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let binary = tool("prometheus");
        let deadline = Instant::now() + WITHIN;
        // The port is free when chosen, but another process may take it first: try again.
        loop {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
            let child = Command::new(&binary)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start prometheus");
            let mut prom = Prometheus {
                child,
                url: format!("http://127.0.0.1:{port}"),
                dir: dir.clone(),
            };
            if prom.wait_ready(deadline).await {
                return prom;
            }
            let _ = prom.child.kill();
            let _ = prom.child.wait();
            assert!(
                Instant::now() < deadline,
                "prometheus did not start; its log:\n{}",
                prom.log()
            );
        }
    }

    /// Polls `/-/ready`; false when the process exited (its port was taken).
    async fn wait_ready(&mut self, deadline: Instant) -> bool {
        let ready = format!("{}/-/ready", self.url);
        let child = &mut self.child;
        poll(deadline.saturating_duration_since(Instant::now()), || {
            let exited = child.try_wait().ok().flatten().is_some();
            let ready = ready.clone();
            async move {
                if exited {
                    return Ok(false);
                }
                match http().get(ready).send().await {
                    Ok(r) if r.status().is_success() => Ok(true),
                    _ => Err(()),
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str) -> Value {
        let v: Value = http()
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("prometheus answers")
            .json()
            .await
            .expect("a JSON answer");
        assert_eq!(v["status"], "success", "{path}: {v}");
        v["data"].clone()
    }

    /// An instant query's series (an expression Prometheus refuses fails the test).
    async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(expr)))
            .await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Polls until `expr` returns a series with a finite value; the last answer otherwise.
    async fn wait_finite(&self, expr: &str, deadline: Instant) -> Result<(), Vec<Value>> {
        poll(
            deadline.saturating_duration_since(Instant::now()),
            || async {
                let series = self.query(expr).await;
                let finite = series.iter().any(|s| {
                    s["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(f64::is_finite)
                });
                if finite { Ok(()) } else { Err(series) }
            },
        )
        .await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// === Traffic ===

fn instance(gw: &Gw) -> String {
    gw.admin_url.trim_start_matches("http://").to_string()
}

/// A gateway config for the traffic below: one client (so a call without its key is a 401), a
/// concurrency of 2 (so a burst is shed), a host create rate of one an hour (so the second is
/// refused) and a daily cap of 1,000 GB per client (so a 2,000 GB disk is refused).
fn config(redis: Option<&RedisServer>) -> String {
    let shared = redis
        .map(|r| {
            // A generous command timeout: on a loaded machine a slow reply is not an outage.
            format!(
                "[redis]\nurl = \"{}\"\nprefix = \"fgw-obs:\"\ntimeout = \"2s\"\n",
                r.url()
            )
        })
        .unwrap_or_default();
    format!(
        "{shared}[server]\nmax_concurrency = 2\n\
         {}\
         [create.routes.\"disk.create\"]\nrate = \"1000/1s\"\nburst = 1000\n\
         [create.routes.\"host.create_quantity\"]\nrate = \"1/1h\"\nburst = 1\nmax_wait = \"0s\"\n\
         [create.budget.client]\ngb_per_day = 1000\n",
        client_entry("observed", CLIENT_KEY, "")
    )
}

/// `req` as the observed client.
async fn call(req: reqwest::RequestBuilder) -> (u16, HeaderMap, Value) {
    answer(req.bearer_auth(CLIENT_KEY)).await
}

async fn create(gw: &Gw, path: &str, key: &str, body: &str) -> (u16, HeaderMap, Value) {
    call(
        http()
            .post(format!("{}{path}", gw.url))
            .header("content-type", "application/json")
            .header("Idempotency-Key", key)
            .body(body.to_string()),
    )
    .await
}

/// One round of everything the dashboard shows, through `gw` in front of `sim`; the new disk's id.
async fn traffic(gw: &Gw, sim: &Sim) -> String {
    let disk_create = format!("{DISK}/create");
    // A purchase, and its key replayed.
    let key = fresh_key();
    let (status, _, made) = create(gw, &disk_create, &key, DISK20).await;
    assert_eq!((status, made["code"].as_i64()), (200, Some(0)), "{made}");
    let (_, h, again) = create(gw, &disk_create, &key, DISK20).await;
    assert_eq!(again["data"], made["data"]);
    assert_eq!(h["idempotent-replayed"], "true");
    let id = made["data"].as_str().expect("a disk id").to_string();
    // Its info: a miss, then a hit.
    let info = format!("{}{DISK}/info/{id}", gw.url);
    let (_, h, _) = call(http().get(&info)).await;
    assert!(cache_status(&h).contains("fwd=miss"), "{h:?}");
    let (_, h, _) = call(http().get(&info)).await;
    assert!(cache_status(&h).contains("hit"), "{h:?}");
    // A caller without a key.
    let status = http().get(&info).send().await.unwrap().status().as_u16();
    assert_eq!(status, 401);
    // The spending guard: 2,000 GB is over the client's daily 1,000.
    let big = r#"{"area":0,"memory":2000,"isMount":0}"#;
    let (status, _, v) = create(gw, &disk_create, &fresh_key(), big).await;
    assert_eq!((status, v["code"].as_i64()), (429, Some(220025)), "{v}");
    // The rate limit: one host create an hour, so the second (of this round) is refused.
    let host = r#"{"packageId":"pkg-south-3090","imageId":"img-win10"}"#;
    let quantity = "/v1/pve/open/createquantity";
    create(gw, quantity, &fresh_key(), host).await;
    let (status, _, v) = create(gw, quantity, &fresh_key(), host).await;
    assert_eq!((status, v["code"].as_i64()), (429, Some(220025)), "{v}");
    // An upstream 5xx, passed through.
    let total = format!("{}{DISK}/memoryTotal/0", gw.url);
    sim.fault("error", "0s").await;
    let (status, _, _) = call(http().get(&total)).await;
    assert_eq!(status, 500);
    // A create that gets no answer: its outcome is unknown.
    sim.fault("reset", "0s").await;
    let (status, _, v) = create(gw, &disk_create, &fresh_key(), DISK20).await;
    assert_eq!((status, v["code"].as_i64()), (504, Some(1005)), "{v}");
    // A burst over max_concurrency while the upstream is slow: some are shed.
    sim.fault("slow", "1500ms").await;
    let burst: Vec<_> = (0..6)
        .map(|_| tokio::spawn(call(http().get(total.clone()))))
        .collect();
    let mut shed = 0;
    for b in burst {
        if b.await.unwrap().0 == 503 {
            shed += 1;
        }
    }
    assert!(
        shed > 0,
        "6 requests at once over a concurrency of 2 shed none"
    );
    sim.fault("none", "0s").await;
    id
}

/// Waits until Prometheus has scraped every request `gw` has answered so far.
async fn wait_scraped(prom: &Prometheus, gw: &Gw) {
    let answered = gw.metric("finovy_gateway_requests_total", &[]).await;
    let expr = format!(
        "sum(finovy_gateway_requests_total{{instance=\"{}\"}}) >= {answered}",
        instance(gw)
    );
    if let Err(last) = prom.wait_finite(&expr, Instant::now() + WITHIN).await {
        panic!(
            "prometheus never scraped {answered} requests of {}: {last:?}",
            instance(gw)
        );
    }
}

// === Tests ===

#[test]
fn the_alert_rules_check_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", ALERTS]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", ALERT_TESTS]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_is_unit_tested_firing_and_quiet() {
    let tests = std::fs::read_to_string(ALERT_TESTS).unwrap();
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let alerts: BTreeSet<String> = std::fs::read_to_string(ALERTS)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_string)
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for alert in &alerts {
        let expectations: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| **l == format!("alertname: {alert}"))
            .filter_map(|(i, _)| lines.get(i + 1).copied())
            .collect();
        assert!(
            expectations.contains(&"exp_alerts: []"),
            "{alert} is never shown quiet"
        );
        assert!(
            expectations.contains(&"exp_alerts:"),
            "{alert} is never shown firing"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_alert_has_a_summary_a_description_and_a_runbook_entry() {
    // Prometheus itself parses the rules and tells what it loaded.
    let prom = Prometheus::start(&[], true).await;
    let data = prom.api("/api/v1/rules").await;
    let runbook_anchors = anchors(&std::fs::read_to_string(RUNBOOK).unwrap());
    let mut alerts = 0;
    for rule in data["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
    {
        assert_eq!(rule["type"], "alerting", "{rule}");
        alerts += 1;
        let name = rule["name"].as_str().unwrap();
        let notes = &rule["annotations"];
        for key in ["summary", "description", "runbook"] {
            assert!(
                notes[key].as_str().is_some_and(|s| !s.trim().is_empty()),
                "{name} has no {key}: {notes}"
            );
        }
        let link = notes["runbook"].as_str().unwrap();
        let anchor = link
            .strip_prefix("deploy/RUNBOOK.md#")
            .unwrap_or_else(|| panic!("{name}'s runbook is not a RUNBOOK.md entry: {link}"));
        assert!(
            runbook_anchors.contains(anchor),
            "{name}: RUNBOOK.md has no heading for #{anchor}"
        );
        assert!(
            rule["labels"]["severity"].is_string(),
            "{name} has no severity"
        );
    }
    assert!(alerts >= 8, "{data}");
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_with_its_variables() {
    let d: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap())
        .expect("the dashboard is JSON");
    assert!(d["schemaVersion"].as_i64().unwrap() >= 36, "Grafana 10/11");
    let vars = d["templating"]["list"].as_array().unwrap();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).cloned();
    let ds = var("datasource").expect("a datasource variable");
    assert_eq!(
        (&ds["type"], &ds["query"]),
        (&json!("datasource"), &json!("prometheus"))
    );
    let inst = var("instance").expect("an instance variable");
    assert_eq!(
        inst["query"]["query"],
        "label_values(finovy_gateway_build_info, instance)"
    );
    let source = json!({"type": "prometheus", "uid": "${datasource}"});
    let mut queries = 0;
    for p in d["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        assert!(
            ["timeseries", "stat"].contains(&p["type"].as_str().unwrap()),
            "{}",
            p["title"]
        );
        assert_eq!(p["datasource"], source, "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"], source, "{}", p["title"]);
            let expr = t["expr"].as_str().unwrap();
            assert!(expr.contains("instance=~\"$instance\""), "{expr}");
            queries += 1;
        }
    }
    assert!(queries >= 15, "{queries} queries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_prometheus_scraping_gateways_answers_every_panel_of_the_dashboard() {
    let started = Instant::now();
    let mut redis = RedisServer::start();
    let (sim_memory, sim_shared) = tokio::join!(Sim::start(sim_config()), Sim::start(sim_config()));
    let memory = Gw::start(&config(None), &sim_memory.url, demo_env()).await;
    let shared = Gw::start(&config(Some(&redis)), &sim_shared.url, demo_env()).await;
    // Another replica of the shared fleet, not scraped: its mount reaches `shared` as an
    // invalidation, which `shared` times.
    let peer = Gw::start(&config(Some(&redis)), &sim_shared.url, demo_env()).await;
    let prom = Prometheus::start(&[&memory.admin_url, &shared.admin_url], true).await;
    let (mem_inst, shared_inst) = (instance(&memory), instance(&shared));
    for inst in [&mem_inst, &shared_inst] {
        let up = format!("up{{job=\"finovy-gateway\", instance=\"{inst}\"}} == 1");
        if let Err(last) = prom.wait_finite(&up, Instant::now() + WITHIN).await {
            panic!("{inst} never up: {last:?}\n{}", prom.log());
        }
    }

    // Two rounds, each scraped before the next, so that every counter the first made is seen
    // rising by the second.
    for round in 0..2 {
        let (_, id) = tokio::join!(traffic(&memory, &sim_memory), traffic(&shared, &sim_shared));
        if round == 0 {
            let (status, _, v) = call(
                http()
                    .post(format!("{}{DISK}/pveCreate", peer.url))
                    .json(&json!({"id": id, "pveId": HOST_AREA0})),
            )
            .await;
            assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
        }
        wait_scraped(&prom, &memory).await;
        wait_scraped(&prom, &shared).await;
    }

    // Redis fails (a create is refused meanwhile), then comes back without its data.
    redis.kill();
    let (status, _, v) = create(&shared, &format!("{DISK}/create"), &fresh_key(), DISK20).await;
    assert_eq!((status, v["code"].as_i64()), (503, Some(503)), "{v}");
    let failing = format!(
        "sum(rate(finovy_gateway_redis_errors_total{{instance=\"{shared_inst}\"}}[{RATE_INTERVAL}])) > 0"
    );
    if let Err(last) = prom.wait_finite(&failing, Instant::now() + WITHIN).await {
        panic!("no Redis errors seen: {last:?}");
    }
    redis.restart();
    let reset = format!("finovy_gateway_redis_resets_total{{instance=\"{shared_inst}\"}} > 0");
    if let Err(last) = prom.wait_finite(&reset, Instant::now() + WITHIN).await {
        panic!("the loss of Redis's data was never counted: {last:?}");
    }

    // Every panel's every query, for each gateway it applies to: series, on exported metrics.
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap())
        .expect("the dashboard is JSON");
    let memory_names = exported(&memory.metrics().await);
    let shared_names = exported(&shared.metrics().await);
    let mut row = String::new();
    let mut failures = Vec::new();
    let mut evaluated = 0;
    let deadline = Instant::now() + WITHIN;
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap_or_default();
        if panel["type"] == "row" {
            row = title.to_string();
            continue;
        }
        let mut gateways = vec![(&shared_inst, &shared_names)];
        if row != SHARED_ROW {
            gateways.push((&mem_inst, &memory_names));
        }
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (inst, names) in &gateways {
                for name in metric_names(expr) {
                    if !names.contains(&name) {
                        failures.push(format!("{title}: {name} is not exported by {inst}"));
                    }
                }
                let q = expr
                    .replace("$instance", inst)
                    .replace("$__rate_interval", RATE_INTERVAL)
                    .replace("$__range", RANGE);
                assert!(!q.contains('$'), "{title}: a variable left in {q}");
                evaluated += 1;
                if let Err(last) = prom.wait_finite(&q, deadline).await {
                    failures.push(format!("{title} ({inst}): no series for {q}: {last:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The alert rules too: Prometheus evaluates each without error, on metrics that exist.
    let rules = prom.api("/api/v1/rules").await;
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        let name = rule["name"].as_str().unwrap();
        for metric in metric_names(rule["query"].as_str().unwrap()) {
            assert!(
                shared_names.contains(&metric),
                "{name}: {metric} is not exported"
            );
        }
        assert_ne!(rule["health"], "err", "{name}: {}", rule["lastError"]);
    }
    eprintln!(
        "{evaluated} panel queries answered, {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn metric_names_and_anchors_are_read_as_prometheus_and_github_do() {
    assert_eq!(
        metric_names("sum(rate(finovy_gateway_a_total{x=\"y\"}[1m])) / finovy_gateway_b"),
        BTreeSet::from([
            "finovy_gateway_a_total".to_string(),
            "finovy_gateway_b".into()
        ])
    );
    assert!(anchors("## FinovyGatewayDown\n").contains("finovygatewaydown"));
    assert!(anchors("# What it means, and why\n").contains("what-it-means-and-why"));
    let names = exported("# TYPE finovy_gateway_d histogram\nfinovy_gateway_d_bucket 1\n");
    assert!(names.contains("finovy_gateway_d_bucket"));
    assert_eq!(encode("a b{c=\"d\"}"), "a%20b%7Bc%3D%22d%22%7D");
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_whose_labels_the_configuration_defines_are_exported_at_0_from_the_start() {
    let redis = RedisServer::start();
    let sim = Sim::start(sim_config()).await;
    let base = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"fgw-zero:\"\ntimeout = \"2s\"\n\
         [create.budget.client]\ngb_per_day = 1000\n{}",
        redis.url(),
        client_entry("leaser", CLIENT_KEY, "token_lease = true"),
    );
    let env = demo_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gw = Bin::serve(&base, &sim.url, &env);
    let text = metrics_at(&gw.admin_url).await;
    let zero = |counter: &str, labels: &[(&str, &str)]| {
        assert_eq!(
            metric_opt(&text, counter, labels),
            Some(0.0),
            "{counter}{labels:?} at 0 in:\n{text}"
        );
    };
    for result in ["hit", "stale", "miss", "coalesced", "bypass"] {
        zero(
            "finovy_gateway_cache_lookups_total",
            &[("route", "disk.info"), ("result", result)],
        );
    }
    zero(
        "finovy_gateway_cache_invalidations_total",
        &[("route", "disk.info"), ("reason", "mutation")],
    );
    for route in ["disk.create", "host.create_quantity", "host.create_rent"] {
        for result in ["joined", "replayed", "conflict", "mismatch", "reconciled"] {
            zero(
                "finovy_gateway_dedup_total",
                &[("route", route), ("result", result)],
            );
        }
        for scope in ["tenant", "client", "upstream"] {
            zero(
                "finovy_gateway_rate_limited_total",
                &[("route", route), ("scope", scope)],
            );
        }
    }
    zero(
        "finovy_gateway_budget_refused_total",
        &[("scope", "client"), ("cap", "gb_per_day")],
    );
    for op in [
        "record_begin",
        "cache_get",
        "rate_limit",
        "token",
        "subscribe",
    ] {
        zero("finovy_gateway_redis_errors_total", &[("op", op)]);
    }
    zero(
        "finovy_gateway_token_refreshes_total",
        &[("outcome", "error")],
    );
    zero("finovy_gateway_token_leases_total", &[("client", "leaser")]);
    // Only what the configuration defines: a route it does not cache, a cap it does not set.
    for (counter, labels) in [
        ("finovy_gateway_cache_lookups_total", ("route", "disk.list")),
        ("finovy_gateway_budget_refused_total", ("scope", "account")),
        (
            "finovy_gateway_budget_refused_total",
            ("cap", "creates_per_day"),
        ),
    ] {
        assert_eq!(
            metric_opt(&text, counter, &[labels]),
            None,
            "{counter} {labels:?}"
        );
    }

    // A reload that caches another route and sets another cap exports those too.
    std::fs::write(
        &gw.config,
        format!(
            "{base}[create.budget.account]\ncreates_per_day = 10\n\
             [cache.routes.\"disk.list\"]\nttl = \"5s\"\n{LOOSE_TOKENS}"
        ),
    )
    .unwrap();
    gw.hangup();
    eventually("the reload counted", Duration::from_secs(20), || async {
        gw.metric("finovy_gateway_config_reloads_total", &[("result", "ok")])
            .await
            >= 1.0
    })
    .await;
    let text = metrics_at(&gw.admin_url).await;
    for (counter, labels) in [
        (
            "finovy_gateway_cache_lookups_total",
            [("route", "disk.list"), ("result", "miss")],
        ),
        (
            "finovy_gateway_budget_refused_total",
            [("scope", "account"), ("cap", "creates_per_day")],
        ),
    ] {
        assert_eq!(
            metric_opt(&text, counter, &labels),
            Some(0.0),
            "{counter}{labels:?} after the reload in:\n{text}"
        );
    }
}
