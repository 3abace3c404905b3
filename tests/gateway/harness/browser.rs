//! A real browser for the console's tests: Debian's `chromium` driven through `chromedriver`
//! (started on a free loopback port, headless, with a fresh profile in a temporary folder) by a
//! small W3C WebDriver client over the tests' HTTP client. Missing either program is a failure
//! that names it, never a skip.
//!
//! A WebDriver crate would bring a second `http` and an older ICU into the tree for the dozen
//! calls used here; the protocol is plain JSON over HTTP.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use super::*;

/// Where Debian's packages put the two programs; `CHROMIUM` and `CHROMEDRIVER` name others.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The key under which WebDriver hands out an element's reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Records, in every document the browser opens and before the page's own script runs, what the
/// page must never do: throw, reject a promise unhandled, or break its Content-Security-Policy.
const RECORDER: &str = r"
window.__pageProblems = [];
window.addEventListener('error', (e) => window.__pageProblems.push('error: ' + (e.message || e.type) + ' ' + (e.filename || '') + ':' + (e.lineno || '')), true);
window.addEventListener('unhandledrejection', (e) => window.__pageProblems.push('unhandled rejection: ' + String(e.reason)));
document.addEventListener('securitypolicyviolation', (e) => window.__pageProblems.push('CSP violation: ' + e.violatedDirective + ' blocked ' + e.blockedURI + ' at ' + e.sourceFile + ':' + e.lineNumber));
";

fn program(var: &str, default: &str, package: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.is_file(),
        "{} is missing ({}): install Debian's `{package}` package (.ci/run does), or set {var}",
        path.file_name().unwrap().to_string_lossy(),
        path.display()
    );
    path
}

fn running_as_root() -> bool {
    // The sandbox of Chromium refuses to start as root; a user's run keeps it.
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

/// A `chromedriver` process and one browser session in it.
pub(crate) struct Browser {
    driver: Child,
    base: String,
    session: String,
    profile: PathBuf,
    http: reqwest::Client,
    /// What the browser's console logged so far (each read of the log empties it).
    log: Vec<Value>,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile, `width` x `height`.
    pub(crate) async fn start(width: u32, height: u32) -> Browser {
        let chromium = program("CHROMIUM", CHROMIUM, "chromium");
        let chromedriver = program("CHROMEDRIVER", CHROMEDRIVER, "chromium-driver");
        // A free port: bound by the OS, let go, taken by chromedriver a moment later.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut driver = Command::new(&chromedriver)
            .args([
                format!("--port={port}"),
                "--allowed-ips=127.0.0.1".to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
        // It says on standard output when it listens: that line is the signal to go on.
        let stdout = driver.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("started successfully") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = driver.kill();
            panic!("chromedriver did not start on port {port}");
        }
        let profile = fresh_dir("chromium-profile");
        std::fs::create_dir_all(&profile).unwrap();
        let mut args = vec![
            "--headless=new".to_string(),
            format!("--user-data-dir={}", profile.display()),
            format!("--window-size={width},{height}"),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--disable-extensions".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--hide-scrollbars".into(),
            "--lang=en-US".into(),
        ];
        if running_as_root() {
            args.push("--no-sandbox".into());
        }
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            profile,
            http: http(),
            log: Vec::new(),
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let created = browser.call("POST", "/session", caps).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        browser
            .cdp(
                "Page.addScriptToEvaluateOnNewDocument",
                json!({"source": RECORDER}),
            )
            .await;
        browser.viewport(width, height, false).await;
        browser
    }

    /// One WebDriver command: its `value`, or a panic with the driver's error.
    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body),
        };
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v["value"].clone()
    }

    async fn session_call(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body).await
    }

    /// A DevTools command, through chromedriver.
    pub(crate) async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.session_call(
            "POST",
            "/goog/cdp/execute",
            json!({"cmd": cmd, "params": params}),
        )
        .await
    }

    /// The page's viewport, in CSS pixels (a phone's with `mobile`).
    pub(crate) async fn viewport(&self, width: u32, height: u32, mobile: bool) {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.session_call("POST", "/url", json!({"url": url})).await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page, its return value.
    pub(crate) async fn run(&self, script: &str, args: Value) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// Waits until `script` returns something other than null, false or undefined, and hands it
    /// back; on time out, says `what` and the page's text.
    pub(crate) async fn until(&self, what: &str, script: &str) -> Value {
        let found = poll(Duration::from_secs(20), || async {
            let v = self.run(script, json!([])).await;
            if v.is_null() || v == Value::Bool(false) {
                Err(())
            } else {
                Ok(v)
            }
        })
        .await;
        match found {
            Ok(v) => v,
            Err(()) => {
                let text = self.run("return document.body.innerText", json!([])).await;
                panic!(
                    "{what} never came; the page reads:\n{}",
                    text.as_str().unwrap_or("")
                );
            }
        }
    }

    /// The element `css` selects (the first).
    pub(crate) async fn find(&self, css: &str) -> String {
        let v = self
            .session_call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    pub(crate) async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.session_call("POST", &format!("/element/{id}/click"), json!({}))
            .await;
    }

    /// Types `text` into the element `css` selects, after what it holds.
    pub(crate) async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.session_call("POST", &format!("/element/{id}/clear"), json!({}))
            .await;
        self.session_call(
            "POST",
            &format!("/element/{id}/value"),
            json!({"text": text}),
        )
        .await;
    }

    /// Presses and releases `key` (a WebDriver key code, e.g. `\u{E00C}` for Escape) where the
    /// focus is.
    pub(crate) async fn press(&self, key: char) {
        let key = key.to_string();
        self.session_call(
            "POST",
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
                {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key},
            ]}]}),
        )
        .await;
    }

    /// Writes what the viewport shows to `path` as PNG.
    pub(crate) async fn screenshot(&self, path: &Path) {
        let v = self.session_call("GET", "/screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("a base64 screenshot"))
            .expect("base64");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
        println!("screenshot: {}", path.display());
    }

    /// Every entry the browser's console logged since the session began.
    pub(crate) async fn console_log(&mut self) -> Vec<Value> {
        let new = self
            .session_call("POST", "/se/log", json!({"type": "browser"}))
            .await;
        self.log.extend(new.as_array().cloned().unwrap_or_default());
        self.log.clone()
    }

    /// What the page recorded going wrong (errors, unhandled rejections, CSP violations).
    pub(crate) async fn page_problems(&self) -> Vec<String> {
        let v = self
            .run(
                "return window.__pageProblems || ['the recorder did not run']",
                json!([]),
            )
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Ends the session (Chromium exits with it) and chromedriver.
    pub(crate) async fn quit(mut self) {
        self.session_call("DELETE", "", Value::Null).await;
        self.session.clear();
    }

    /// The session's end from `Drop`, where nothing can be awaited (a test that failed): one
    /// `DELETE` over a plain socket, so that chromedriver closes the browser it started.
    fn end_session_now(&self) {
        use std::io::{Read, Write};
        let Some(addr) = self.base.strip_prefix("http://") else {
            return;
        };
        let Ok(mut conn) = std::net::TcpStream::connect(addr) else {
            return;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.session
        );
        if conn.write_all(request.as_bytes()).is_ok() {
            // The answer comes once the browser is gone.
            let _ = conn.read_to_end(&mut Vec::new());
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium outlives a killed chromedriver (they talk over a port, not a pipe): the
        // session is ended first.
        if !self.session.is_empty() {
            self.end_session_now();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
