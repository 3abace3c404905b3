//! A real PostgreSQL server for the tests and benches that need one: `initdb` and `postgres` from
//! Debian's package (found at run time under `/usr/lib/postgresql/*/bin`, else on `PATH`), a
//! cluster of its own in a temporary folder, listening on a free loopback port and a unix socket
//! in that folder, with a fresh database (`fgw`). It can be stopped (the database is down) and
//! started again on the same data and port; it is shut down and its folder removed on drop.
//!
//! PostgreSQL refuses to run as root: as root, its programs run as the `postgres` user (through
//! `runuser`) and the folder is handed to that user. A missing installation fails the test that
//! asked for it, saying what to install: the PostgreSQL tests never skip.
//!
//! One file serves three crates (the library's tests, the end-to-end harness and the ledger
//! bench, the latter two through `#[path]`), so it uses only `std` and tokio.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a started server has to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long a start again keeps trying to bind the old port.
const RESTART_WITHIN: Duration = Duration::from_secs(15);
/// The superuser `initdb` makes, whoever runs it; it connects without a password over loopback.
pub(crate) const SUPERUSER: &str = "postgres";
/// The database made at start, which [`PgServer::url`] names.
pub(crate) const DATABASE: &str = "fgw";

/// One PostgreSQL cluster and its server process.
pub(crate) struct PgServer {
    bin: PathBuf,
    /// The temporary folder: `data/` (the cluster), the socket, `server.log`, TLS files.
    dir: PathBuf,
    port: u16,
    /// Run the programs as `postgres` (this process is root).
    as_postgres: bool,
    /// `-c` settings after the usual ones (TLS, a bench's own).
    settings: Vec<(String, String)>,
    child: Option<Child>,
}

/// A certificate and its key, in PEM, for a server started with `ssl = on`.
pub(crate) struct TlsFiles<'a> {
    pub(crate) cert_pem: &'a str,
    pub(crate) key_pem: &'a str,
}

impl PgServer {
    /// A fresh cluster on a free loopback port, its database `fgw` made; waits until it is ready.
    pub(crate) fn start() -> PgServer {
        blocking(|| Self::launch(None, &[]))
    }

    /// [`PgServer::start`] with more `-c` settings, which win over the usual ones (a bench sets
    /// `fsync = on` to measure what a production server does).
    pub(crate) fn start_with(settings: &[(&str, &str)]) -> PgServer {
        blocking(|| Self::launch(None, settings))
    }

    /// [`PgServer::start`] with TLS on (`ssl = on`, this certificate): clients may ask for it
    /// (`sslmode=require`); plain connections are still accepted.
    pub(crate) fn start_tls(tls: &TlsFiles<'_>) -> PgServer {
        blocking(|| Self::launch(Some(tls), &[]))
    }

    fn launch(tls: Option<&TlsFiles<'_>>, settings: &[(&str, &str)]) -> PgServer {
        static N: AtomicU64 = AtomicU64::new(0);
        let bin = find_bin();
        let dir = std::env::temp_dir().join(format!(
            "fgw-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the postgres folder");
        let as_postgres = std::fs::metadata(&dir).expect("the folder").uid() == 0;
        let mut server = PgServer {
            bin,
            dir,
            port: 0,
            as_postgres,
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            child: None,
        };
        if let Some(tls) = tls {
            std::fs::write(server.dir.join("server.crt"), tls.cert_pem).expect("write the cert");
            std::fs::write(server.dir.join("server.key"), tls.key_pem).expect("write the key");
            // The server refuses a key others can read.
            run_ok(
                Command::new("chmod")
                    .arg("600")
                    .arg(server.dir.join("server.key")),
            );
            let cert = path_text(&server.dir.join("server.crt"));
            let key = path_text(&server.dir.join("server.key"));
            server.settings.extend([
                ("ssl".into(), "on".into()),
                ("ssl_cert_file".into(), cert),
                ("ssl_key_file".into(), key),
            ]);
        }
        if as_postgres {
            run_ok(
                Command::new("chown")
                    .arg("-R")
                    .arg("postgres:postgres")
                    .arg(&server.dir),
            );
        }
        server.initdb();
        // The port is free when chosen, but another process may take it before the server binds.
        let mut last_log = String::new();
        for _ in 0..5 {
            server.port = free_port();
            server.spawn();
            match server.wait_ready(Instant::now() + READY_WITHIN) {
                Ok(()) => {
                    server.psql("postgres", &format!("CREATE DATABASE {DATABASE}"));
                    return server;
                }
                Err(log) => {
                    server.reap();
                    last_log = log;
                }
            }
        }
        panic!("postgres did not start; its log:\n{last_log}");
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `postgres://postgres@127.0.0.1:PORT/fgw`: the superuser, no password, over loopback.
    pub(crate) fn url(&self) -> String {
        self.url_of(DATABASE)
    }

    /// The superuser's URL of another database of this server.
    pub(crate) fn url_of(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Makes another, empty database; its URL.
    pub(crate) fn create_database(&self, name: &str) -> String {
        self.sql_in("postgres", &format!("CREATE DATABASE {name}"));
        self.url_of(name)
    }

    /// Makes a login role with this password; roles other than the superuser must give it
    /// (`scram-sha-256`) over loopback. It owns nothing; grant what it needs with [`PgServer::sql`].
    pub(crate) fn create_role(&self, name: &str, password: &str) {
        self.sql(&format!(
            "CREATE ROLE {name} LOGIN PASSWORD '{password}'; \
             GRANT ALL ON SCHEMA public TO {name}; \
             GRANT ALL ON DATABASE {DATABASE} TO {name}"
        ));
    }

    /// Runs SQL in the database `fgw` as the superuser (psql, unaligned, tuples only): its output.
    pub(crate) fn sql(&self, sql: &str) -> String {
        self.sql_in(DATABASE, sql)
    }

    /// [`PgServer::sql`] in another database.
    pub(crate) fn sql_in(&self, database: &str, sql: &str) -> String {
        blocking(|| self.psql(database, sql))
    }

    fn psql(&self, database: &str, sql: &str) -> String {
        let mut cmd = self.command("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ]);
        let out = cmd.output().expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// A fast shutdown, waiting until the server is gone: the database is down, its data kept.
    pub(crate) fn stop(&mut self) {
        blocking(|| self.shut_down("-INT"));
    }

    /// Starts the server again on the same data and port (after [`PgServer::stop`]).
    pub(crate) fn start_again(&mut self) {
        blocking(|| {
            self.shut_down("-INT");
            let deadline = Instant::now() + RESTART_WITHIN;
            loop {
                self.spawn();
                match self.wait_ready(Instant::now() + READY_WITHIN) {
                    Ok(()) => return,
                    Err(log) => {
                        self.reap();
                        assert!(
                            Instant::now() < deadline,
                            "postgres could not start again on port {}; its log:\n{log}",
                            self.port
                        );
                        // The old port may take a moment to be released.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        });
    }

    pub(crate) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The server's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// A program of the installation, as the user that owns the cluster.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn initdb(&self) {
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(self.data())
            .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"]);
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb: {e}"));
        assert!(out.status.success(), "initdb failed: {}", output_text(&out));
        // Loopback: the superuser without a password (the tests' own), every other role with its
        // password, so a test of a password proves it is sent.
        let hba = "local all all trust\n\
                   host all postgres 127.0.0.1/32 trust\n\
                   host all all 127.0.0.1/32 scram-sha-256\n";
        let hba_path = self.data().join("pg_hba.conf");
        std::fs::write(&hba_path, hba).expect("write pg_hba.conf");
        if self.as_postgres {
            run_ok(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&hba_path),
            );
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("open the server log");
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Tests and benches: nothing here must outlive a power cut.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"]);
        for (k, v) in &self.settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        let child = cmd
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run postgres: {e}"));
        self.child = Some(child);
    }

    /// The postmaster's pid, from its lock file (under `runuser` it is not our child's pid).
    fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Waits until the lock file says `ready` and the port takes a connection; the server's log
    /// when it exits or never gets there.
    fn wait_ready(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("exited with {status}\n{}", self.log()));
            }
            let ready = std::fs::read_to_string(self.data().join("postmaster.pid"))
                .is_ok_and(|t| t.lines().nth(7).is_some_and(|s| s.trim() == "ready"));
            if ready && TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("not ready within {READY_WITHIN:?}\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Signals the postmaster (`-INT` fast, `-QUIT` immediate shutdown) and waits for it to go.
    fn shut_down(&mut self, signal: &str) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() {
            if let Some(pid) = self.postmaster_pid() {
                let _ = Command::new("kill")
                    .args([signal, &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            } else {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
    }

    fn reap(&mut self) {
        self.shut_down("-QUIT");
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.reap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The folder holding `initdb` and `postgres`: the newest under `/usr/lib/postgresql`, else
/// `PATH`; or a failing test that says how to get them.
fn find_bin() -> PathBuf {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_both(bin))
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|dir| has_both(dir))
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL not found (initdb and postgres under /usr/lib/postgresql/*/bin or on \
                 PATH): install it (apt-get install postgresql); the PostgreSQL tests never skip"
            )
        })
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local addr").port()
}

fn path_text(p: &Path) -> String {
    p.to_str().expect("a UTF-8 temporary path").to_string()
}

fn output_text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("run a setup command");
    assert!(out.status.success(), "{cmd:?}: {}", output_text(&out));
}

/// Runs `f`, telling a multi-threaded tokio runtime (if any) that this thread blocks for a while,
/// so that what else runs in that runtime (gateways, other pools) keeps being served.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
