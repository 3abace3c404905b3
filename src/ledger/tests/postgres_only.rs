//! What only the PostgreSQL ledger has: a fleet's replicas starting together on one fresh database
//! (the migrations applied once), a server that goes away and comes back (entries kept, the pool
//! reconnecting by itself), a role's password from `[ledger] url_file`, and TLS to the server.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use sqlx::Row;

use super::db::MIGRATIONS;
use super::*;
use crate::config::{FileConfig, Overrides, Settings};
use crate::store::conformance::postgres_server::TlsFiles;

fn ids(page: &Page) -> Vec<&str> {
    page.entries.iter().map(|e| e.id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_applied_once_when_three_replicas_start_together() {
    let pg = PgServer::start();
    let url = pg.url();
    let starts: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Ledger::connect(&url, 2, TIMEOUT).await })
        })
        .collect();
    let mut replicas = Vec::new();
    for s in starts {
        replicas.push(s.await.unwrap().expect("every replica starts"));
    }
    let applied: Vec<String> = MIGRATIONS.iter().map(|(v, ..)| format!("{v}|t")).collect();
    let rows = pg.sql("SELECT version, success FROM _sqlx_migrations ORDER BY version");
    assert_eq!(rows.lines().collect::<Vec<_>>(), applied);

    // One ledger: what one replica writes, the others read.
    let e = new_entry(&new_id(NOW), NOW, "a", None);
    replicas[0].open(&e).await.unwrap();
    assert_eq!(replicas[1].get(&e.id).await.unwrap().unwrap().client, "a");
    assert_eq!(replicas[2].open_count().await.unwrap(), 1);

    // A replica started later finds them applied and applies nothing again.
    let late = Ledger::connect(&url, 2, TIMEOUT).await.unwrap();
    assert_eq!(late.open_count().await.unwrap(), 1);
    let rows = pg.sql("SELECT count(*) FROM _sqlx_migrations");
    assert_eq!(rows, MIGRATIONS.len().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_fails_writes_and_once_back_has_kept_every_entry() {
    let mut pg = PgServer::start();
    let timeout = Duration::from_secs(2);
    let l = Ledger::connect(&pg.url(), 4, timeout).await.unwrap();
    let before = new_entry(&new_id(NOW), NOW, "a", None);
    l.open(&before).await.unwrap();

    pg.stop();
    let asked = Instant::now();
    let down = l
        .open(&new_entry(&new_id(NOW + 1), NOW + 1, "a", None))
        .await;
    assert!(matches!(down, Err(LedgerError::Db(_))), "{down:?}");
    assert!(l.list(&Filter::default(), 10, None).await.is_err());
    // An error within the pool's timeout (and room for a loaded machine), not a hang.
    assert!(asked.elapsed() < timeout * 5, "{:?}", asked.elapsed());

    // Back: the same pool writes at its first try; nobody reconnects by hand.
    pg.start_again();
    let after = new_entry(&new_id(NOW + 2), NOW + 2, "a", None);
    l.open(&after).await.unwrap();
    let page = l.list(&Filter::default(), 10, None).await.unwrap();
    assert_eq!(ids(&page), [after.id.as_str(), before.id.as_str()]);

    // A restart nobody saw (no request while down): the pool's dead connections are replaced
    // at the next write, which succeeds.
    pg.stop();
    pg.start_again();
    let unseen = new_entry(&new_id(NOW + 3), NOW + 3, "a", None);
    l.open(&unseen).await.unwrap();

    // A replica restarted too finds the same ledger, its migrations applied once.
    l.close().await;
    let again = Ledger::connect(&pg.url(), 4, timeout).await.unwrap();
    assert_eq!(again.open_count().await.unwrap(), 3);
    assert_eq!(
        pg.sql("SELECT count(*) FROM _sqlx_migrations"),
        MIGRATIONS.len().to_string()
    );
}

/// The ledger's URL as the gateway resolves it from `toml` and the environment.
fn ledger_url(toml: &str, env: &[(&str, &str)]) -> Result<Option<String>, String> {
    let file = FileConfig::parse(toml, Path::new("t.toml")).map_err(|e| e.to_string())?;
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    let lookup = move |name: &str| env.get(name).cloned();
    let settings =
        Settings::resolve(file, &Overrides::default(), &lookup).map_err(|e| e.to_string())?;
    Ok(settings.ledger.url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_connects_with_the_password_from_its_url_file() {
    let pg = PgServer::start();
    pg.create_role("ledger_writer", "s3cret-pw");
    let dir = tempdir::Dir::new();
    let good = dir.path().join("ledger-url");
    let with = |password: &str| {
        format!(
            "postgres://ledger_writer:{password}@127.0.0.1:{}/fgw\n",
            pg.port()
        )
    };
    std::fs::write(&good, with("s3cret-pw")).unwrap();
    let toml = format!("[ledger]\nurl_file = \"{}\"\n", good.display());
    let url = ledger_url(&toml, &[])
        .unwrap()
        .expect("a URL from the file");
    let l = Ledger::connect(&url, 2, TIMEOUT).await.unwrap();
    l.open(&new_entry(&new_id(NOW), NOW, "a", None))
        .await
        .unwrap();
    // The role made the table: the ledger connected as it, with its password.
    assert_eq!(
        pg.sql("SELECT tableowner FROM pg_tables WHERE tablename = 'purchases'"),
        "ledger_writer"
    );

    // FGW_LEDGER_URL_FILE names a file with the wrong password: the server refuses it.
    let bad = dir.path().join("bad-url");
    std::fs::write(&bad, with("wrong")).unwrap();
    let bad = bad.display().to_string();
    let url = ledger_url("", &[("FGW_LEDGER_URL_FILE", &bad)])
        .unwrap()
        .expect("a URL from the file");
    let refused = Ledger::connect(&url, 2, TIMEOUT).await;
    assert!(refused.is_err(), "a wrong password connects");
}

/// A certificate authority and a server certificate it signs for 127.0.0.1: (CA, cert, key).
fn certificates() -> (String, String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_speaks_tls_when_its_url_asks_for_it() {
    let (ca, cert, key) = certificates();
    let pg = PgServer::start_tls(&TlsFiles {
        cert_pem: &cert,
        key_pem: &key,
    });
    let dir = tempdir::Dir::new();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, certificates().0).unwrap();

    let verified = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url(),
        ca_file.display()
    );
    for (i, url) in [format!("{}?sslmode=require", pg.url()), verified]
        .iter()
        .enumerate()
    {
        let l = Ledger::connect(url, 1, TIMEOUT).await.unwrap();
        l.open(&new_entry(&new_id(NOW + i as u64), NOW, "a", None))
            .await
            .unwrap();
        let row = sqlx::query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&l.pool)
            .await
            .unwrap();
        assert!(row.get::<bool, _>("ssl"), "{url}: not encrypted");
        l.close().await;
    }

    // A server whose certificate the named authority did not sign is refused.
    let unverified = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url(),
        other_ca.display()
    );
    assert!(Ledger::connect(&unverified, 1, TIMEOUT).await.is_err());
}
