//! TLS on the listeners: certificates made by the test (rcgen), a real TLS client (hyper-rustls),
//! HTTP/1.1 and h2 chosen by ALPN, client certificates when `tls_client_ca_file` is set, and a
//! certificate reloaded while the gateway runs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use finovy_gateway::config::{FileConfig, Overrides, Settings};
use finovy_gateway::server::{ListenerTls, Server};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::harness::{Leaf, Sim, TestCa, demo_env, sim_config, temp_file};

/// A TLS client trusting `ca`, presenting `identity` when given, offering `alpn`.
pub(crate) fn tls_client(
    ca: &TestCa,
    identity: Option<&Leaf>,
    alpn: &[&[u8]],
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca.file).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => {
            let chain = CertificateDer::pem_file_iter(&leaf.cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnector::from((http, config));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(https)
}

/// `GET url` with `client`: the status and HTTP version, or the error chain as text.
pub(crate) async fn get(
    client: &Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    url: &str,
) -> Result<(u16, http::Version, String), String> {
    let req = http::Request::get(url).body(Empty::new()).unwrap();
    let call = async {
        let resp = client.request(req).await.map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        })?;
        let (status, version) = (resp.status().as_u16(), resp.version());
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        let body = String::from_utf8_lossy(&body.to_bytes()).into_owned();
        Ok((status, version, body))
    };
    tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .unwrap_or_else(|_| Err("no answer within 20s".into()))
}

/// A gateway in this process whose config (`toml`) turns TLS on.
struct TlsGw {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    tls: ListenerTls,
    _stop: oneshot::Sender<()>,
}

impl TlsGw {
    async fn start(toml: &str, sim: &Sim) -> TlsGw {
        let (toml, _) = crate::harness::with_ledger(toml);
        let file = FileConfig::parse(&toml, std::path::Path::new("test.toml")).unwrap();
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            upstream: Some(sim.url.clone()),
            ..Overrides::default()
        };
        let env: HashMap<&str, String> = demo_env().into_iter().collect();
        let settings = Settings::resolve(file, &overrides, &|n| env.get(n).cloned()).unwrap();
        let server = Server::bind(settings).await.unwrap();
        let (addr, admin_addr, tls) = (server.local_addr(), server.admin_addr(), server.tls());
        let (tx, rx) = oneshot::channel();
        tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        TlsGw {
            addr,
            admin_addr,
            tls,
            _stop: tx,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }
}

#[allow(
    clippy::unnecessary_debug_formatting,
    reason = "Debug quotes and escapes a path as a TOML string"
)]
fn tls_toml(leaf: &Leaf, client_ca: Option<&TestCa>) -> String {
    let mut keys = format!(
        "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
        leaf.cert, leaf.key
    );
    if let Some(ca) = client_ca {
        keys.push_str(&format!("tls_client_ca_file = {:?}\n", ca.file));
    }
    format!("[server]\n{keys}\n[admin]\n{keys}")
}

const IMAGE: &str = "/v1/pve/open/image";

#[tokio::test]
async fn tls_listeners_serve_http1_and_h2_as_negotiated() {
    let sim = Sim::start(sim_config()).await;
    let ca = TestCa::new("listener");
    let leaf = ca.server();
    let gw = TlsGw::start(&tls_toml(&leaf, None), &sim).await;

    let h2 = tls_client(&ca, None, &[b"h2", b"http/1.1"]);
    let (status, version, body) = get(&h2, &gw.url(IMAGE)).await.unwrap();
    assert_eq!((status, version), (200, http::Version::HTTP_2), "{body}");
    assert!(body.contains("\"code\":0"), "{body}");

    let h1 = tls_client(&ca, None, &[b"http/1.1"]);
    let (status, version, _) = get(&h1, &gw.url(IMAGE)).await.unwrap();
    assert_eq!((status, version), (200, http::Version::HTTP_11));
    assert_eq!(sim.calls("image").await, 2, "both went upstream");

    // The admin listener has its TLS too.
    let admin = format!("https://localhost:{}/healthz", gw.admin_addr.port());
    let (status, _, _) = get(&h1, &admin).await.unwrap();
    assert_eq!(status, 200);

    // A client that does not trust the gateway's CA gets no answer.
    let stranger = tls_client(&TestCa::new("stranger"), None, &[b"http/1.1"]);
    let err = get(&stranger, &gw.url(IMAGE)).await.unwrap_err();
    assert!(err.contains("certificate"), "{err}");

    // Plain HTTP to a TLS port is not served: the bytes are no ClientHello.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(format!("GET {IMAGE} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection is closed");
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"),
        "no plain answer"
    );
    assert_eq!(sim.calls("image").await, 2, "nothing more went upstream");
}

#[tokio::test]
async fn client_certificates_are_required_when_a_client_ca_is_set() {
    let sim = Sim::start(sim_config()).await;
    let server_ca = TestCa::new("server");
    let client_ca = TestCa::new("clients");
    let leaf = server_ca.server();
    let gw = TlsGw::start(&tls_toml(&leaf, Some(&client_ca)), &sim).await;

    let with_cert = client_ca.client();
    let trusted = tls_client(&server_ca, Some(&with_cert), &[b"h2", b"http/1.1"]);
    let (status, version, _) = get(&trusted, &gw.url(IMAGE)).await.unwrap();
    assert_eq!((status, version), (200, http::Version::HTTP_2));

    let anonymous = tls_client(&server_ca, None, &[b"http/1.1"]);
    let err = get(&anonymous, &gw.url(IMAGE)).await.unwrap_err();
    assert!(err.contains("CertificateRequired"), "{err}");

    // A certificate from another CA is no better than none.
    let foreign = TestCa::new("foreign").client();
    let impostor = tls_client(&server_ca, Some(&foreign), &[b"http/1.1"]);
    let err = get(&impostor, &gw.url(IMAGE)).await.unwrap_err();
    assert!(err.contains("UnknownCA"), "{err}");

    let admin = format!("https://localhost:{}/healthz", gw.admin_addr.port());
    let err = get(&anonymous, &admin).await.unwrap_err();
    assert!(err.contains("CertificateRequired"), "{err}");
    assert_eq!(get(&trusted, &admin).await.unwrap().0, 200);

    assert_eq!(
        sim.calls("image").await,
        1,
        "only the trusted client's call"
    );
}

#[tokio::test]
async fn reload_serves_a_renewed_certificate_to_new_connections() {
    let sim = Sim::start(sim_config()).await;
    let old_ca = TestCa::new("old");
    let new_ca = TestCa::new("new");
    let leaf = old_ca.server();
    let gw = TlsGw::start(&tls_toml(&leaf, None), &sim).await;
    let trusts_old = tls_client(&old_ca, None, &[b"http/1.1"]);
    let trusts_new = tls_client(&new_ca, None, &[b"http/1.1"]);
    assert_eq!(get(&trusts_old, &gw.url(IMAGE)).await.unwrap().0, 200);
    get(&trusts_new, &gw.url(IMAGE)).await.unwrap_err();

    // A broken file is refused and the certificate in use stays.
    std::fs::write(&leaf.key, "not a key").unwrap();
    let err = gw.tls.listen.as_ref().unwrap().reload().unwrap_err();
    assert!(err.contains("private key"), "{err}");
    assert_eq!(get(&trusts_old, &gw.url(IMAGE)).await.unwrap().0, 200);

    new_ca.reissue_into(&leaf);
    gw.tls.listen.as_ref().unwrap().reload().unwrap();
    assert_eq!(get(&trusts_new, &gw.url(IMAGE)).await.unwrap().0, 200);
    get(&trusts_old, &gw.url(IMAGE)).await.unwrap_err();
    // The admin listener reloads on its own.
    let admin = format!("https://localhost:{}/healthz", gw.admin_addr.port());
    get(&trusts_new, &admin).await.unwrap_err();
    gw.tls.admin.as_ref().unwrap().reload().unwrap();
    assert_eq!(get(&trusts_new, &admin).await.unwrap().0, 200);
}

#[test]
fn tls_keys_are_checked_when_the_config_is_read() {
    let ca = TestCa::new("config");
    let leaf = ca.server();
    let resolve = |toml: &str| {
        let file = FileConfig::parse(toml, std::path::Path::new("t.toml")).unwrap();
        Settings::resolve(file, &Overrides::default(), &|_| None).map(|_| ())
    };
    let err = resolve(&format!("[server]\ntls_cert_file = {:?}\n", leaf.cert)).unwrap_err();
    assert!(err.to_string().starts_with("server.tls_key_file"), "{err}");
    let err = resolve(&format!("[admin]\ntls_client_ca_file = {:?}\n", ca.file)).unwrap_err();
    assert!(
        err.to_string().starts_with("admin.tls_client_ca_file"),
        "{err}"
    );
    let garbage = temp_file("garbage.pem", "garbage");
    let err = resolve(&format!(
        "[server]\ntls_cert_file = {garbage:?}\ntls_key_file = {:?}\n",
        leaf.key
    ))
    .unwrap_err();
    assert!(err.to_string().contains("holds no certificate"), "{err}");
    resolve(&tls_toml(&leaf, Some(&ca))).unwrap();
}

#[tokio::test]
async fn a_silent_handshake_holds_no_accept_and_is_let_go() {
    let sim = Sim::start(sim_config()).await;
    let ca = TestCa::new("slow");
    let leaf = ca.server();
    let toml =
        tls_toml(&leaf, None).replace("[server]\n", "[server]\nhandshake_timeout = \"1s\"\n");
    let gw = TlsGw::start(&toml, &sim).await;

    // A peer that connects and never sends its ClientHello.
    let mut silent = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let client = tls_client(&ca, None, &[b"h2"]);
    let (status, version, _) = get(&client, &gw.url(IMAGE)).await.unwrap();
    assert_eq!(
        (status, version),
        (200, http::Version::HTTP_2),
        "served meanwhile"
    );

    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(20), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "closed by the gateway: {read:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_certificates_of_both_listeners() {
    let sim = Sim::start(sim_config()).await;
    let (old_ca, new_ca) = (TestCa::new("old-hup"), TestCa::new("new-hup"));
    let leaf = old_ca.server();
    let gw = crate::harness::Bin::serve(
        &tls_toml(&leaf, None),
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    let https = |url: &str, path: &str| {
        format!(
            "https://localhost:{}{path}",
            url.rsplit(':').next().unwrap()
        )
    };
    let (data, admin) = (https(&gw.url, IMAGE), https(&gw.admin_url, "/healthz"));
    let trusts_old = tls_client(&old_ca, None, &[b"http/1.1"]);
    let trusts_new = tls_client(&new_ca, None, &[b"http/1.1"]);
    assert_eq!(get(&trusts_old, &data).await.unwrap().0, 200);
    assert_eq!(get(&trusts_old, &admin).await.unwrap().0, 200);
    new_ca.reissue_into(&leaf);
    gw.hangup();
    gw.wait_for_log("configuration reloaded", 1).await;
    // New connections get the new certificate, on both listeners, with no restart.
    assert_eq!(get(&trusts_new, &data).await.unwrap().0, 200);
    assert_eq!(get(&trusts_new, &admin).await.unwrap().0, 200);
    get(&trusts_old, &data).await.unwrap_err();
}

/// A half-done certificate rotation (the new certificate in place, the old key removed, the new
/// one not yet written) keeps the certificate in use, and no longer holds back the rest of the
/// reload: a client removed in the same reload is refused at once. The answer and the log say
/// what was kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_half_rotated_certificate_is_kept_and_the_rest_of_the_reload_applies() {
    use sha2::{Digest, Sha256};
    const ADMIN_KEY: &str = "fgw_tls_admin_key_8c1f0e4b2a";
    const STAYS: &str = "fgw_tls_client_stays_1a2b3c4d";
    const GOES: &str = "fgw_tls_client_goes_5e6f7a8b";
    let sim = Sim::start(sim_config()).await;
    let ca = TestCa::new("half-rotated");
    let leaf = ca.server();
    let config = |clients: &str| {
        format!(
            "{clients}[admin]\nkey_sha256 = \"{}\"\ntls_cert_file = {:?}\ntls_key_file = {:?}\n{}",
            hex::encode(Sha256::digest(ADMIN_KEY.as_bytes())),
            leaf.cert.display(),
            leaf.key.display(),
            crate::harness::LOOSE_TOKENS
        )
    };
    let stays = crate::harness::client_entry("stays", STAYS, "");
    let goes = crate::harness::client_entry("goes", GOES, "");
    let gw = crate::harness::Bin::serve(
        &config(&format!("{stays}{goes}")),
        &sim.url,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    let data = format!("{}{IMAGE}", gw.url);
    let status_of = |key: &'static str| {
        let data = data.clone();
        async move {
            crate::harness::http()
                .get(data)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status_of(GOES).await, 200);

    let fresh = ca.server();
    std::fs::copy(&fresh.cert, &leaf.cert).unwrap();
    std::fs::remove_file(&leaf.key).unwrap();
    std::fs::write(&gw.config, config(&stays)).unwrap();

    let port = gw.admin_url.rsplit(':').next().unwrap();
    let client = tls_client(&ca, None, &[b"http/1.1"]);
    let req = http::Request::post(format!("https://localhost:{port}/admin/reload"))
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .body(Empty::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 200, "{body}");
    let kept = body["data"]["kept"].to_string();
    assert!(
        kept.contains("admin TLS certificate") && kept.contains("key"),
        "{body}"
    );
    gw.wait_for_log("TLS certificates not reloaded", 1).await;
    assert_eq!(status_of(GOES).await, 401, "the removed client is out");
    assert_eq!(status_of(STAYS).await, 200);
    let healthz = format!("https://localhost:{port}/healthz");
    assert_eq!(
        get(&client, &healthz).await.unwrap().0,
        200,
        "old certificate"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pre_handshake_sockets_make_way_and_are_closed_after_the_handshake_timeout() {
    let sim = Sim::start(sim_config()).await;
    let (server_ca, client_ca) = (TestCa::new("cap-server"), TestCa::new("cap-clients"));
    let leaf = server_ca.server();
    let toml = tls_toml(&leaf, Some(&client_ca)).replace(
        "[server]\n",
        "[server]\nmax_connections = 4\nrequest_timeout = \"60s\"\nhandshake_timeout = \"4s\"\n",
    );
    let gw = TlsGw::start(&toml, &sim).await;
    // Every place taken by sockets that sent a TLS record header (a 200-byte handshake record
    // announced) and nothing more.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8]).await.unwrap();
        stalled.push(s);
    }
    // A client with its certificate (mTLS) is served at once, in the place of one of them.
    let client = client_ca.client();
    let trusted = tls_client(&server_ca, Some(&client), &[b"h2", b"http/1.1"]);
    let started = std::time::Instant::now();
    let (status, _, body) = get(&trusted, &gw.url(IMAGE)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The others are closed once the handshake timeout has passed.
    for s in &mut stalled {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "closed: {read:?}");
    }
    assert!(started.elapsed() >= Duration::from_secs(3));
    let metrics = format!("https://localhost:{}/metrics", gw.admin_addr.port());
    let (_, _, text) = get(&trusted, &metrics).await.unwrap();
    let closed = |reason: &str| {
        crate::harness::metric(
            &text,
            "finovy_gateway_connections_closed_total",
            &[("listener", "data"), ("reason", reason)],
        )
    };
    assert_eq!(
        (closed("idle_at_cap"), closed("handshake_timeout")),
        (1.0, 3.0)
    );
}
