//! What the load benches share: starting a process that announces its address in a log line, and
//! stopping it again.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A child process, stopped with SIGTERM when dropped: nginx's master takes its workers down with
/// it only when asked nicely, and the gateway drains and exits.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with the demo credentials, waits for its `<marker> ... listen=ADDR` log line, and
/// returns it with ADDR. The rest of its log goes to `log`, or nowhere, so the pipe never fills.
pub fn start(mut cmd: Command, marker: &str, log: Option<&Path>) -> (Proc, String) {
    let mut child = cmd
        .env("FINOVY_UUID", "demo-uuid")
        .env("FINOVY_SECRET", "demo-secret")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the process (are its tools installed?)");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the process printed its address")
            .unwrap();
        if line.contains(marker)
            && let Some(rest) = line.split("listen=").nth(1)
        {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let mut file = log.map(|p| File::create(p).unwrap());
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Some(f) = file.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    (Proc(child), addr)
}

/// A token straight from the simulator at `base` (`http://host:port`), for calls that bypass the
/// gateway.
pub async fn demo_token(client: &reqwest::Client, base: &str) -> String {
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
