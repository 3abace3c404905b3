//! The real binary as a child process, its log lines captured, and files for it to read.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

/// A unique file under the temporary directory holding `text`.
pub(crate) fn temp_file(name: &str, text: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "fgw-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&path, text).expect("write temp file");
    path
}

/// A folder path under the temporary directory that nothing holds yet (the process id and a
/// counter are not enough: test processes' ids come round again, and a folder a killed one left
/// would be in the way), not created.
pub(crate) fn fresh_dir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!(
        "fgw-test-{}-{nanos}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

/// `toml` with a `[ledger]` section writing to a fresh SQLite file under the temporary
/// directory, unless it has its own; and that file's folder, to remove when done.
pub(crate) fn with_ledger(toml: &str) -> (String, Option<PathBuf>) {
    if toml.contains("[ledger]") {
        return (toml.to_string(), None);
    }
    let dir = fresh_dir("ledger");
    let path = dir.join("ledger.sqlite");
    // A bought disk's price read would be one more info call, and a cache entry, in tests that
    // count both: the ledger's own tests turn it on.
    let text = format!(
        "{toml}\n[ledger]\npath = {:?}\nrecord_amount = false\n",
        path.display().to_string()
    );
    (text, Some(dir))
}

pub(crate) fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_finovy-gateway"))
}

/// The `listen` field of a log line, human (`listen=ADDR`) or JSON (`"listen":"ADDR"`).
fn listen_field(line: &str) -> Option<String> {
    let rest = line
        .split("listen=")
        .nth(1)
        .or_else(|| line.split("\"listen\":\"").nth(1))?;
    let addr: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    Some(addr)
}

/// The real binary running `serve`, with its log lines captured.
pub(crate) struct Bin {
    pub child: Child,
    pub url: String,
    pub admin_url: String,
    pub logs: Arc<Mutex<Vec<String>>>,
    lines: tokio::sync::watch::Receiver<usize>,
    /// The config file it was started with (rewrite it, then reload).
    pub config: PathBuf,
}

impl Bin {
    /// Starts `serve --config <toml>` on loopback port 0 and waits for both listeners' log lines.
    /// Without a `[token]` table in `toml`, [`LOOSE_TOKENS`] applies, as for [`Gw::start`].
    pub(crate) fn serve(toml: &str, upstream: &str, env: &[(&str, &str)]) -> Bin {
        Bin::serve_args(toml, upstream, env, &[])
    }

    /// [`Bin::serve`] with more arguments for `serve` (e.g. `--log-format json`).
    pub(crate) fn serve_args(
        toml: &str,
        upstream: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Bin {
        let (toml, _) = with_ledger(toml);
        let config = if toml.contains("[token]") {
            temp_file("gateway.toml", &toml)
        } else {
            temp_file("gateway.toml", &format!("{toml}\n{LOOSE_TOKENS}"))
        };
        let mut cmd = binary();
        cmd.args(["serve", "--config"])
            .arg(&config)
            .args(args)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--upstream",
                upstream,
            ])
            .env_remove("FINOVY_UUID")
            .env_remove("FINOVY_SECRET")
            .env_remove("FINOVY_TOKEN")
            .env_remove("FINOVY_UUID_FILE")
            .env_remove("FINOVY_SECRET_FILE")
            .env_remove("FINOVY_TOKEN_FILE")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the gateway binary");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        // The number of lines read so far: a waiter for a line wakes when it moves.
        let (lines_tx, lines) = tokio::sync::watch::channel(0usize);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for (marker, which) in [("gateway listening", "data"), ("admin listening", "admin")]
                {
                    if line.contains(marker)
                        && let Some(addr) = listen_field(&line)
                    {
                        let _ = tx.send((which, addr));
                    }
                }
                let mut sink = sink.lock().unwrap();
                sink.push(line);
                lines_tx.send_replace(sink.len());
            }
        });
        let mut url = None;
        let mut admin_url = None;
        while url.is_none() || admin_url.is_none() {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(("data", a)) => url = Some(format!("http://{a}")),
                Ok((_, a)) => admin_url = Some(format!("http://{a}")),
                Err(e) => panic!(
                    "the gateway did not start ({e}); its log:\n{}",
                    logs.lock().unwrap().join("\n")
                ),
            }
        }
        Bin {
            child,
            url: url.unwrap(),
            admin_url: admin_url.unwrap(),
            logs,
            lines,
            config,
        }
    }

    /// One metric of this process, as [`Gw::metric`].
    pub(crate) async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&metrics_at(&self.admin_url).await, name, labels)
    }

    pub(crate) fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until `count` log lines contain `needle` (the gateway writes its log in batches),
    /// woken by each line the reader takes in.
    pub(crate) async fn wait_for_log(&self, needle: &str, count: usize) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut lines = self.lines.clone();
        loop {
            let text = self.log_text();
            if text.lines().filter(|l| l.contains(needle)).count() >= count {
                return text;
            }
            match tokio::time::timeout_at(deadline, lines.changed()).await {
                // The process is gone (its stderr closed): nothing more will come.
                Ok(Err(_)) if text == self.log_text() => {
                    panic!("{count} lines with {needle:?} never came:\n{text}")
                }
                Ok(Ok(()) | Err(_)) => {}
                Err(e) => panic!("{count} lines with {needle:?} never came ({e}):\n{text}"),
            }
        }
    }

    /// Sends SIGTERM.
    pub(crate) fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Sends SIGHUP: reload the configuration.
    pub(crate) fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit (up to 30 s) and returns its exit code.
    pub(crate) fn wait_exit(&mut self) -> Option<i32> {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the gateway did not exit within 30 s");
    }
}

impl Drop for Bin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real binary as a replica with the demo credentials, once its `/readyz` says ready.
pub(crate) async fn replica_process(toml: &str, upstream: &str) -> Bin {
    let bin = Bin::serve(
        toml,
        upstream,
        &[
            ("FINOVY_UUID", "demo-uuid"),
            ("FINOVY_SECRET", "demo-secret"),
        ],
    );
    readyz_until(&bin.admin_url, 200).await;
    bin
}

impl Bin {
    /// Sends `create` and SIGKILLs the process once the simulator has it (the simulator should
    /// hold its answer back, e.g. `sim.fault("slow", "5s")`): a replica dead mid-purchase. The
    /// caller's connection is cut; whatever it got is dropped.
    pub(crate) async fn kill_mid_create(&mut self, sim: &Sim, create: reqwest::RequestBuilder) {
        let lost = tokio::spawn(async move {
            let _ = try_answer(create).await;
        });
        eventually(
            "the create reaches the upstream",
            Duration::from_secs(10),
            || async { sim.calls("create").await == 1 },
        )
        .await;
        tokio::task::block_in_place(|| {
            self.child.kill().expect("SIGKILL");
            self.child.wait().expect("it exits");
        });
        let _ = lost.await;
    }
}
