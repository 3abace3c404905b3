//! A real `redis-server` on a loopback port for the shared-mode tests, and a bare RESP client to
//! look at what the gateways stored. Shared mode is only ever tested against the real server: a
//! missing binary fails the tests rather than skipping them.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a started server has to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// How long a restart keeps trying to bind the old port.
const RESTART_WITHIN: Duration = Duration::from_secs(10);

/// One `redis-server` child process, killed on drop.
pub(crate) struct RedisServer {
    port: u16,
    dir: PathBuf,
    binary: PathBuf,
    child: Option<Child>,
    /// More options after the usual ones (cluster mode, replication).
    extra: Vec<String>,
    /// Runs as a Sentinel with this config file (written into `dir`).
    sentinel_conf: Option<String>,
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    pub(crate) fn int(&self) -> i64 {
        match self {
            Resp::Int(n) => *n,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }

    /// A simple or bulk string; `None` for a nil bulk.
    pub(crate) fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(b) => b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()),
            other => panic!("expected a string reply, got {other:?}"),
        }
    }

    pub(crate) fn strings(&self) -> Vec<String> {
        match self {
            Resp::Array(Some(items)) => items
                .iter()
                .map(|i| i.text().expect("a non-nil element"))
                .collect(),
            Resp::Array(None) => Vec::new(),
            other => panic!("expected an array reply, got {other:?}"),
        }
    }
}

/// `redis-server` from PATH, or a failing test that says how to get it.
fn find_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "redis-server not found: install it (apt-get install redis-server); \
                 shared-mode tests never skip"
            )
        })
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local addr").port()
}

/// Runs `f`, telling a multi-threaded tokio runtime (if any) that this thread blocks for a while,
/// so that gateways running in the same runtime keep being served.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers PING.
    pub(crate) fn start() -> RedisServer {
        Self::start_with(&[], None)
    }

    /// A server with more options, e.g. `--cluster-enabled yes` or `--replicaof 127.0.0.1 P`.
    pub(crate) fn start_with_args(extra: &[&str]) -> RedisServer {
        Self::start_with(extra, None)
    }

    /// A Sentinel watching the primary on `primary_port` under the name `mymaster`, quick to act.
    pub(crate) fn start_sentinel(primary_port: u16) -> RedisServer {
        let conf = format!(
            "sentinel monitor mymaster 127.0.0.1 {primary_port} 1\n\
             sentinel down-after-milliseconds mymaster 1000\n\
             sentinel failover-timeout mymaster 3000\n\
             sentinel parallel-syncs mymaster 1\n"
        );
        Self::start_with(&[], Some(conf))
    }

    fn start_with(extra: &[&str], sentinel_conf: Option<String>) -> RedisServer {
        blocking(|| {
            static N: AtomicU64 = AtomicU64::new(0);
            let binary = find_binary();
            let dir = std::env::temp_dir().join(format!(
                "fgw-redis-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&dir).expect("create the redis directory");
            let mut server = RedisServer {
                port: 0,
                dir,
                binary,
                child: None,
                extra: extra.iter().map(ToString::to_string).collect(),
                sentinel_conf: sentinel_conf.clone(),
            };
            // The port is free when chosen but another process may take it before redis binds it.
            let mut last_log = String::new();
            for _ in 0..5 {
                server.port = free_port();
                server.spawn();
                match server.wait_ready(Instant::now() + READY_WITHIN) {
                    Ok(()) => return server,
                    Err(log) => {
                        server.reap();
                        last_log = log;
                    }
                }
            }
            panic!("redis-server did not start; its log:\n{last_log}");
        })
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// SIGKILL, and wait until the process is gone: no shutdown, no goodbye to clients.
    pub(crate) fn kill(&mut self) {
        blocking(|| self.reap());
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a server that hangs, connections open, no answers.
    pub(crate) fn pause(&mut self, paused: bool) {
        let pid = self.child.as_ref().expect("a running server").id();
        let signal = if paused { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts the server again on the same port (its data is gone: nothing is persisted).
    pub(crate) fn restart(&mut self) {
        blocking(|| {
            self.reap();
            let deadline = Instant::now() + RESTART_WITHIN;
            loop {
                self.spawn();
                match self.wait_ready(Instant::now() + READY_WITHIN) {
                    Ok(()) => return,
                    Err(log) => {
                        self.reap();
                        assert!(
                            Instant::now() < deadline,
                            "redis-server could not start again on port {}; its log:\n{log}",
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

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut cmd = Command::new(&self.binary);
        if let Some(conf) = &self.sentinel_conf {
            // A Sentinel rewrites its config file, and takes only its own options.
            let path = self.dir.join("sentinel.conf");
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nlogfile redis.log\n{conf}",
                self.dir.display()
            );
            std::fs::write(&path, text).expect("write sentinel.conf");
            cmd.arg(&path).arg("--sentinel");
        } else {
            cmd.args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--logfile",
                "redis.log",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra);
        }
        let child = cmd
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Polls until the server answers `+PONG`; the server's log when it exits or never answers.
    fn wait_ready(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("exited with {status}\n{}", self.log()));
            }
            if ping(self.addr()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("no PONG within {READY_WITHIN:?}\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends one command and returns the reply (an error reply is returned, not raised).
    pub(crate) async fn command(&self, args: &[&str]) -> Resp {
        let addr = self.addr();
        let exchange = async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.write_all(&encode(args)).await?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 16 * 1024];
            loop {
                if let Some((reply, _)) = parse(&buf) {
                    return Ok::<Resp, std::io::Error>(reply);
                }
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed before a full reply",
                    ));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), exchange).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => panic!("redis {args:?}: {e}"),
            Err(e) => panic!("redis {args:?}: no reply within 5 s ({e})"),
        }
    }

    /// Keys matching `pattern`, sorted.
    pub(crate) async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys = self.command(&["KEYS", pattern]).await.strings();
        keys.sort();
        keys
    }

    /// Milliseconds left: -1 for a key without expiry, -2 for a missing key.
    pub(crate) async fn pttl(&self, key: &str) -> i64 {
        self.command(&["PTTL", key]).await.int()
    }

    pub(crate) async fn dbsize(&self) -> i64 {
        self.command(&["DBSIZE"]).await.int()
    }

    /// Bytes the key and its value take in the server; `None` for a missing key.
    pub(crate) async fn memory_usage(&self, key: &str) -> Option<i64> {
        match self.command(&["MEMORY", "USAGE", key]).await {
            Resp::Int(n) => Some(n),
            Resp::Bulk(None) | Resp::Array(None) => None,
            other => panic!("MEMORY USAGE {key}: {other:?}"),
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self.command(&["GET", key]).await {
            Resp::Bulk(b) => b,
            other => panic!("GET {key}: {other:?}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.reap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A blocking PING; true on `+PONG`.
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while got.len() < 7 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got.starts_with(b"+PONG")
}

/// A command as a RESP array of bulk strings.
fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One reply from the front of `buf` and the bytes it took; `None` while incomplete.
fn parse(buf: &[u8]) -> Option<(Resp, usize)> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[1..line_end]).expect("a UTF-8 reply header");
    let after = line_end + 2;
    match *buf.first()? {
        b'+' => Some((Resp::Simple(line.to_string()), after)),
        b'-' => Some((Resp::Error(line.to_string()), after)),
        b':' => Some((Resp::Int(line.parse().expect("an integer")), after)),
        b'$' => {
            let len: i64 = line.parse().expect("a bulk length");
            if len < 0 {
                return Some((Resp::Bulk(None), after));
            }
            let end = after + len as usize;
            if buf.len() < end + 2 {
                return None;
            }
            Some((Resp::Bulk(Some(buf[after..end].to_vec())), end + 2))
        }
        b'*' => {
            let len: i64 = line.parse().expect("an array length");
            if len < 0 {
                return Some((Resp::Array(None), after));
            }
            let mut items = Vec::with_capacity(len as usize);
            let mut at = after;
            for _ in 0..len {
                let (item, used) = parse(&buf[at..])?;
                items.push(item);
                at += used;
            }
            Some((Resp::Array(Some(items)), at))
        }
        other => panic!("not a RESP reply: {:?}", other as char),
    }
}

/// A Redis Cluster of three primaries on free loopback ports, slots spread by `redis-cli`.
pub(crate) struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub(crate) fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with_args(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        blocking(|| {
            let out = Command::new("redis-cli")
                .arg("--cluster")
                .arg("create")
                .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())))
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .output()
                .unwrap_or_else(|e| {
                    panic!("cannot run redis-cli (apt-get install redis-tools): {e}")
                });
            assert!(
                out.status.success(),
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        });
        RedisCluster { nodes }
    }

    /// `redis+cluster://` naming every node.
    pub(crate) fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Polls until every node says the cluster is ok (slots assigned and agreed).
    pub(crate) async fn wait_ok(&self) {
        crate::harness::eventually("the cluster is ok", Duration::from_secs(20), || async {
            let mut ok = true;
            for n in &self.nodes {
                let info = n.command(&["CLUSTER", "INFO"]).await;
                ok &= info.text().is_some_and(|t| t.contains("cluster_state:ok"));
            }
            ok
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_replies() {
        let buf = b"*3\r\n$3\r\nfoo\r\n:-2\r\n*1\r\n$-1\r\n";
        let (reply, used) = parse(buf).unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(
            reply,
            Resp::Array(Some(vec![
                Resp::Bulk(Some(b"foo".to_vec())),
                Resp::Int(-2),
                Resp::Array(Some(vec![Resp::Bulk(None)])),
            ]))
        );
        assert!(parse(b"$5\r\nab").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_answers_dies_and_comes_back_on_its_port() {
        let mut redis = RedisServer::start();
        let port = redis.port();
        assert_eq!(
            redis.command(&["SET", "k", "v", "PX", "60000"]).await,
            Resp::Simple("OK".into())
        );
        assert_eq!(redis.get("k").await, Some(b"v".to_vec()));
        assert!(redis.pttl("k").await > 0);
        assert_eq!(redis.keys("k*").await, vec!["k".to_string()]);
        assert!(redis.memory_usage("k").await.unwrap() > 0);
        assert_eq!(redis.memory_usage("nope").await, None);
        assert_eq!(redis.dbsize().await, 1);
        redis.kill();
        assert!(!redis.is_running());
        assert!(TcpStream::connect(redis.addr()).is_err(), "nothing listens");
        redis.restart();
        assert_eq!(redis.port(), port);
        assert_eq!(redis.dbsize().await, 0, "nothing was persisted");
        assert!(matches!(redis.command(&["NOPE"]).await, Resp::Error(_)));
    }
}
