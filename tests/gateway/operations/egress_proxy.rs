//! The upstream reached through an egress proxy (a real `tinyproxy`, started here) with HTTP
//! CONNECT, and behind TLS signed by a test CA (a network that inspects TLS): the simulator stands
//! behind a TLS front, and the proxy's log and the simulator's counters are the witnesses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use finovy_gateway::config::{FileConfig, Overrides, Settings};
use finovy_gateway::tls::{ServerTls, TlsFiles};
use serde_json::Value;

use crate::harness::TestCa;
use crate::harness::{
    DISK, FAST_CREATES, Gw, Sim, client_entry, demo_env, eventually, http, send_json, sim_config,
    temp_file,
};

const IMAGE: &str = "/v1/pve/open/image";

/// A `tinyproxy` in the foreground on a free loopback port, logging every connection.
struct Tinyproxy {
    url: String,
    log: PathBuf,
    child: Child,
}

impl Tinyproxy {
    /// Allows CONNECT to `connect_port` only; with `auth`, Basic credentials are required.
    async fn start(connect_port: u16, auth: Option<(&str, &str)>) -> Tinyproxy {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = temp_file("tinyproxy.log", "");
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{}\"\nLogLevel Connect\n\
             MaxClients 50\nAllow 127.0.0.1\nConnectPort {connect_port}\n",
            log.display()
        );
        if let Some((user, pass)) = auth {
            conf.push_str(&format!("BasicAuth {user} {pass}\n"));
        }
        let conf = temp_file("tinyproxy.conf", &conf);
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy is installed (apt-get install tinyproxy; .ci/run does it)");
        let mut child = child;
        eventually("tinyproxy listens", Duration::from_secs(20), || {
            // It exits at once when the port was taken meanwhile.
            assert!(
                child.try_wait().unwrap().is_none(),
                "tinyproxy exited at start"
            );
            async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            }
        })
        .await;
        let url = match auth {
            Some((user, pass)) => format!("http://{user}:{pass}@127.0.0.1:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        Tinyproxy { url, log, child }
    }

    /// The CONNECT requests in its log.
    fn connects(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Request") && l.contains("CONNECT "))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS front for the simulator, with a certificate from `ca`: bytes are relayed as they are.
async fn tls_front(ca: &TestCa, sim: &Sim) -> SocketAddr {
    let leaf = ca.server();
    let tls = ServerTls::load(TlsFiles {
        cert: leaf.cert,
        key: leaf.key,
        client_ca: None,
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = sim.addr;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = tls.acceptor();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                if let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    addr
}

async fn image(gw: &Gw) -> (u16, Value) {
    send_json(http().get(format!("{}{IMAGE}", gw.url))).await
}

#[tokio::test]
async fn the_upstream_is_reached_through_the_proxy_with_connect() {
    let sim = Sim::start(sim_config()).await;
    let ca = TestCa::new("inspecting");
    let front = tls_front(&ca, &sim).await;
    let proxy = Tinyproxy::start(front.port(), Some(("fgw", "s3cret"))).await;
    let upstream = format!("https://127.0.0.1:{}", front.port());
    let toml = format!(
        "[upstream]\nproxy = \"{}\"\nca_file = {:?}\n",
        proxy.url, ca.file
    );

    let gw = Gw::start(&toml, &upstream, demo_env()).await;
    let (status, body) = image(&gw).await;
    assert_eq!((status, &body["code"]), (200, &Value::from(0)), "{body}");
    assert_eq!(sim.calls("image").await, 1);
    assert!(
        sim.calls("getToken").await >= 1,
        "the token came the same way"
    );
    let connects = proxy.connects();
    let target = format!("CONNECT 127.0.0.1:{} HTTP/1.1", front.port());
    assert!(
        !connects.is_empty() && connects.iter().all(|l| l.contains(&target)),
        "{connects:?}"
    );

    // The proxy's password is masked wherever the settings are shown.
    let file = FileConfig::parse(&toml, std::path::Path::new("t.toml")).unwrap();
    let overrides = Overrides {
        upstream: Some(upstream.clone()),
        ..Overrides::default()
    };
    let settings = Settings::resolve(file, &overrides, &|_| None).unwrap();
    let shown = format!("{}{settings:?}", settings.to_masked_toml());
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("fgw:***@127.0.0.1"), "{shown}");
}

#[tokio::test]
async fn a_plain_http_upstream_is_tunnelled_too() {
    let sim = Sim::start(sim_config()).await;
    let proxy = Tinyproxy::start(sim.addr.port(), None).await;
    let toml = format!("[upstream]\nproxy = \"{}\"\n", proxy.url);
    let gw = Gw::start(&toml, &sim.url, demo_env()).await;
    assert_eq!(image(&gw).await.0, 200);
    let target = format!("CONNECT 127.0.0.1:{} HTTP/1.1", sim.addr.port());
    let connects = proxy.connects();
    assert!(
        !connects.is_empty() && connects.iter().all(|l| l.contains(&target)),
        "{connects:?}"
    );
    assert_eq!(sim.calls("image").await, 1);
}

#[tokio::test]
async fn without_the_ca_or_the_proxy_password_nothing_reaches_the_upstream() {
    let sim = Sim::start(sim_config()).await;
    let ca = TestCa::new("inspecting");
    let front = tls_front(&ca, &sim).await;
    let proxy = Tinyproxy::start(front.port(), Some(("fgw", "s3cret"))).await;
    let upstream = format!("https://127.0.0.1:{}", front.port());
    let proxy_url = proxy.url.clone();

    // The proxy lets the CONNECT through, but the upstream's certificate is not trusted.
    let untrusted = Gw::start(
        &format!("[upstream]\nproxy = \"{proxy_url}\"\n"),
        &upstream,
        demo_env(),
    )
    .await;
    let (status, body) = image(&untrusted).await;
    assert!(status >= 500, "{status} {body}");
    assert_eq!(
        (&body["code"], &body["success"]),
        (&Value::from(503), &Value::from(false))
    );
    assert!(!proxy.connects().is_empty(), "it went through the proxy");

    // A wrong proxy password: the proxy refuses the CONNECT.
    let wrong = proxy_url.replace("s3cret", "wrong");
    let refused = Gw::start(
        &format!("[upstream]\nproxy = \"{wrong}\"\nca_file = {:?}\n", ca.file),
        &upstream,
        demo_env(),
    )
    .await;
    let (status, body) = image(&refused).await;
    assert!(status >= 500, "{status} {body}");
    assert_eq!(&body["code"], &Value::from(503));
    assert_eq!(sim.total().await, 0, "nothing reached the simulator");
}

#[tokio::test]
async fn the_environment_proxy_serves_https_upstreams_outside_no_proxy() {
    let sim = Sim::start(sim_config()).await;
    let ca = TestCa::new("inspecting");
    let front = tls_front(&ca, &sim).await;
    let proxy = Tinyproxy::start(front.port(), None).await;
    let upstream = format!("https://127.0.0.1:{}", front.port());
    let toml = format!("[upstream]\nca_file = {:?}\n", ca.file);
    let mut env = demo_env();
    env.push(("HTTPS_PROXY", proxy.url.clone()));

    let gw = Gw::start(&toml, &upstream, env.clone()).await;
    assert_eq!(image(&gw).await.0, 200);
    let through = proxy.connects().len();
    assert!(through >= 1, "through the proxy from the environment");

    // NO_PROXY names the upstream: straight there.
    env.push(("NO_PROXY", "127.0.0.1".into()));
    let direct = Gw::start(&toml, &upstream, env.clone()).await;
    assert_eq!(image(&direct).await.0, 200);
    env.pop();
    // The other spellings docs/operating.md lists: host:port, *.name (the name itself included).
    let port = front.port();
    let by_name = format!("https://localhost:{port}");
    for (no_proxy, upstream) in [
        (format!("127.0.0.1:{port}"), &upstream),
        ("*.localhost".to_string(), &by_name),
        (
            format!("other.example, [::1]:{port}, localhost:{port}"),
            &by_name,
        ),
    ] {
        let mut env = env.clone();
        env.push(("NO_PROXY", no_proxy.clone()));
        let gw = Gw::start(&toml, upstream, env).await;
        assert_eq!(image(&gw).await.0, 200, "{no_proxy}");
        assert_eq!(proxy.connects().len(), through, "{no_proxy}: direct");
    }
    // On another port, the entry does not apply: through the proxy.
    env.push(("NO_PROXY", "127.0.0.1:1".into()));
    let other_port = Gw::start(&toml, &upstream, env.clone()).await;
    assert_eq!(image(&other_port).await.0, 200);
    assert!(
        proxy.connects().len() > through,
        "127.0.0.1:1 leaves this port proxied"
    );
    let through = proxy.connects().len();
    // `proxy = ""` in the file: direct, whatever the environment says.
    env.pop();
    let file_says_none = Gw::start(
        &format!("[upstream]\nproxy = \"\"\nca_file = {:?}\n", ca.file),
        &upstream,
        env,
    )
    .await;
    assert_eq!(image(&file_says_none).await.0, 200);
    assert_eq!(proxy.connects().len(), through, "no further CONNECT");
    assert_eq!(sim.calls("image").await, 7);
}

#[tokio::test]
async fn an_account_has_its_own_proxy() {
    let sim = Sim::start(sim_config()).await;
    let ca = TestCa::new("inspecting");
    let front = tls_front(&ca, &sim).await;
    let proxy = Tinyproxy::start(front.port(), None).await;
    let toml = format!(
        "{}{}[[accounts]]\nname = \"sandbox\"\nbase_url = \"https://127.0.0.1:{}\"\n\
         uuid_env = \"SANDBOX_UUID\"\nsecret_env = \"SANDBOX_SECRET\"\nproxy = \"{}\"\nca_file = {:?}\n",
        client_entry("prod", "prod-key", ""),
        client_entry("sandbox", "sandbox-key", "account = \"sandbox\""),
        front.port(),
        proxy.url,
        ca.file
    );
    let mut env = demo_env();
    env.push(("SANDBOX_UUID", "demo-uuid".into()));
    env.push(("SANDBOX_SECRET", "demo-secret".into()));
    // The default account talks to the simulator directly, over plain HTTP.
    let gw = Gw::start(&toml, &sim.url, env).await;
    let get = |key: &'static str| http().get(format!("{}{IMAGE}", gw.url)).bearer_auth(key);
    // The sandbox's token came through the proxy; the default account's did not (the proxy
    // allows CONNECT only to the TLS front, which only the sandbox uses).
    let target = format!("CONNECT 127.0.0.1:{} HTTP/1.1", front.port());
    let connects = proxy.connects();
    assert!(
        !connects.is_empty() && connects.iter().all(|l| l.contains(&target)),
        "{connects:?}"
    );
    assert_eq!(send_json(get("prod-key")).await.0, 200);
    assert_eq!(send_json(get("sandbox-key")).await.0, 200);
    assert_eq!(sim.calls("image").await, 2);

    // Without its proxy the sandbox cannot reach the upstream; the default account still can.
    drop(proxy);
    let (status, body) = send_json(get("sandbox-key")).await;
    assert!(status >= 500, "{status} {body}");
    assert_eq!(send_json(get("prod-key")).await.0, 200);
    assert_eq!(sim.calls("image").await, 3);
}

/// A peer that accepts connections and never says a word: a TLS front that never answers the
/// ClientHello, a proxy that never answers the CONNECT.
async fn silent_peer() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// A stalled TLS handshake or CONNECT is a connection that was never made: nothing was sent, so
/// the create is 502 (code 503) within `connect_timeout`, not "the purchase may exist"; its
/// record is released (a retry with the same key, or without one, is tried again, not refused)
/// and its spending admission is given back (a cap of one create a day never refuses the retries).
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_never_answers_the_handshake_or_the_connect_means_nothing_was_sent() {
    let silent = silent_peer().await;
    let policy = format!(
        "connect_timeout = \"300ms\"\ntimeout = \"5s\"\n{FAST_CREATES}\
         [create.budget.account]\ncreates_per_day = 1\n"
    );
    let cases = [
        ("TLS handshake", format!("https://{silent}"), String::new()),
        (
            "proxy CONNECT",
            "https://127.0.0.1:9".to_string(),
            format!("proxy = \"http://{silent}\"\n"),
        ),
    ];
    for (what, upstream, proxy) in cases {
        let toml = format!("[upstream]\n{proxy}{policy}");
        let token = vec![("FINOVY_TOKEN", "fixed".to_string())];
        let gw = Gw::start_unready(&toml, &upstream, token).await;
        let create = |key: Option<&'static str>| {
            let mut req = http()
                .post(format!("{}{DISK}/create", gw.url))
                .header("content-type", "application/json")
                .body(r#"{"area":0,"memory":20,"isMount":0}"#);
            if let Some(k) = key {
                req = req.header("Idempotency-Key", k);
            }
            send_json(req)
        };
        for key in [Some("stalled-1"), Some("stalled-1"), None, None] {
            let started = std::time::Instant::now();
            let (status, body) = create(key).await;
            assert_eq!(
                (status, body["code"].as_i64()),
                (502, Some(503)),
                "{what}, key {key:?}: {body}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{what}: bounded by connect_timeout, took {:?}",
                started.elapsed()
            );
            let msg = body["msg"].as_str().unwrap();
            assert!(msg.contains("not sent"), "{what}: {msg}");
            // Words for the client; the error chain and the egress are the log's.
            for hidden in ["127.0.0.1", "tunnel", "os error", "connect error", "proxy"] {
                assert!(!msg.contains(hidden), "{what}: {hidden:?} in {msg}");
            }
        }
    }
}

#[test]
fn proxy_urls_are_checked_and_never_shown() {
    let resolve = |toml: &str| {
        let file = FileConfig::parse(toml, std::path::Path::new("t.toml")).unwrap();
        Settings::resolve(file, &Overrides::default(), &|_| None).map(|_| ())
    };
    let err = resolve("[upstream]\nproxy = \"https://u:hunter2@proxy:3128\"\n").unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("upstream.proxy"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    // A lone user part is often the credential itself: masked whole, shown or refused.
    let toml = "[upstream]\nproxy = \"http://t0ken-user@127.0.0.1:3128\"\n";
    let file = FileConfig::parse(toml, std::path::Path::new("t.toml")).unwrap();
    let settings = Settings::resolve(file, &Overrides::default(), &|_| None).unwrap();
    let shown = format!("{}{settings:?}", settings.to_masked_toml());
    assert!(!shown.contains("t0ken-user"), "{shown}");
    assert!(shown.contains("http://***@127.0.0.1:3128"), "{shown}");
    let err = resolve("[upstream]\nproxy = \"https://t0ken-user@proxy:3128\"\n").unwrap_err();
    assert!(!err.to_string().contains("t0ken-user"), "{err}");
    // A NO_PROXY spelling the gateway does not accept is named, not silently never matched.
    let env = |name: &str| match name {
        "HTTPS_PROXY" => Some("http://127.0.0.1:3128".to_string()),
        "NO_PROXY" => Some("ok.example, 10.0.0.1-10.0.0.9".to_string()),
        _ => None,
    };
    let file = FileConfig::parse("", std::path::Path::new("t.toml")).unwrap();
    let err = Settings::resolve(file, &Overrides::default(), &env).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("NO_PROXY") && text.contains("10.0.0.1-10.0.0.9"),
        "{text}"
    );
    let err = resolve("[upstream]\nca_file = \"/nonexistent/ca.pem\"\n").unwrap_err();
    assert!(err.to_string().starts_with("upstream.ca_file"), "{err}");
    let err = resolve(
        "[upstream]\nbase_url = \"https://a.example\"\n\
         [[accounts]]\nname = \"b\"\ntoken_env = \"B_TOKEN\"\nproxy = \"http://p:3128\"\n",
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("accounts[0].proxy"), "{err}");
}
