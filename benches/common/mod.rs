//! What the load benches share: starting a process that announces its address in a log line, and
//! stopping it again.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A child process, stopped with SIGTERM when dropped: nginx's master takes its workers down with
/// it only when asked nicely, and the gateway drains and exits.
pub(crate) struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with the demo credentials, waits for its `<marker> ... listen=ADDR` log line, and
/// returns it with ADDR. Its log goes straight into `log` (as nginx writes its own: no copying
/// process in between), or is read and dropped.
pub(crate) fn start(mut cmd: Command, marker: &str, log: Option<&Path>) -> (Proc, String) {
    // A folder of its own under the temp dir: what a process writes beside itself (a gateway's
    // default purchase ledger, `data/ledger.sqlite`) stays out of the repository. Every path a
    // bench hands a process is absolute.
    if cmd.get_current_dir().is_none() {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("fgw-bench-run-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        cmd.current_dir(dir);
    }
    cmd.env("FINOVY_UUID", "demo-uuid")
        .env("FINOVY_SECRET", "demo-secret")
        .stdout(Stdio::null());
    let find = |line: &str| {
        line.contains(marker)
            .then(|| line.split("listen=").nth(1))
            .flatten()
            .map(|rest| rest.split_whitespace().next().unwrap().to_string())
    };
    if let Some(path) = log {
        let child = Proc(
            cmd.stderr(Stdio::from(File::create(path).unwrap()))
                .spawn()
                .expect("start the process (are its tools installed?)"),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if let Some(addr) = text.lines().find_map(find) {
                return (child, addr);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {marker:?} line in {}",
                path.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the process (are its tools installed?)");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the process printed its address")
            .unwrap();
        if let Some(addr) = find(&line) {
            break addr;
        }
    };
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    (Proc(child), addr)
}

/// `FGW_BENCH_BEFORE`'s binary, made absolute: it runs in a folder of its own ([`start`]).
#[allow(dead_code)]
pub(crate) fn before_build() -> Option<String> {
    std::env::var("FGW_BENCH_BEFORE").ok().map(|path| {
        std::fs::canonicalize(&path)
            .unwrap_or_else(|e| panic!("FGW_BENCH_BEFORE={path}: {e}"))
            .to_string_lossy()
            .into_owned()
    })
}

/// A token straight from the simulator at `base` (`http://host:port`), for calls that bypass the
/// gateway.
pub(crate) async fn demo_token(client: &reqwest::Client, base: &str) -> String {
    let answer: serde_json::Value = client
        .post(format!("{base}/v1/auth/getToken"))
        .json(&serde_json::json!({"uuid": "demo-uuid", "secret": "demo-secret"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["data"]["token"]
        .as_str()
        .expect("a token")
        .to_string()
}
