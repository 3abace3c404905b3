//! A real `redis-server` for the Redis side of the conformance suite: a child process on a free
//! loopback port, with nothing persisted, killed on drop. A missing binary fails the test that
//! asked for it: the Redis implementations are never skipped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a started server has to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(10);

pub(super) struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers PING. Another process
    /// may take the chosen port before the server binds it, so a failed start is tried again.
    pub(super) fn start() -> RedisServer {
        static N: AtomicU64 = AtomicU64::new(0);
        let binary = find_binary();
        let dir = std::env::temp_dir().join(format!(
            "fgw-conformance-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create the redis directory");
        let mut server = RedisServer {
            port: 0,
            dir,
            child: None,
        };
        let mut last_log = String::new();
        for _ in 0..5 {
            server.port = free_port();
            let child = Command::new(&binary)
                .args(["--port", &server.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--logfile", "redis.log"])
                .arg("--dir")
                .arg(&server.dir)
                .current_dir(&server.dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
            server.child = Some(child);
            match server.wait_ready() {
                Ok(()) => return server,
                Err(log) => {
                    server.reap();
                    last_log = log;
                }
            }
        }
        panic!("redis-server did not start; its log:\n{last_log}");
    }

    pub(super) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Polls until the server answers `+PONG`; the server's log when it exits or never answers.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("exited with {status}\n{}", self.log()));
            }
            if ping(addr) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("no PONG within {READY_WITHIN:?}\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.reap();
        let _ = std::fs::remove_dir_all(&self.dir);
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
                 the Redis stores' conformance tests never skip"
            )
        })
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local addr").port()
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
