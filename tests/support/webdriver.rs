//! A minimal W3C WebDriver client for end-to-end tests in a real browser: Debian's chromium
//! driven through Debian's chromedriver, both on loopback. Include with
//! `#[path = "support/webdriver.rs"] mod webdriver;` next to `support/herald.rs`.
//!
//! A missing chromium or chromedriver FAILS the test with the install command: the browser is
//! a real component of these tests, never skipped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use super::herald::free_port;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_bin(env: &str, candidates: &[&str]) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    candidates.iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or_else(|| {
        panic!("{} not found (tried {candidates:?}; set {env}): install Debian's packages with `apt-get install chromium chromium-driver`", candidates[0])
    })
}

/// A running chromedriver; killed on drop.
pub struct Driver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    pub fn start() -> Driver {
        let bin = find_bin("HERALD_CHROMEDRIVER", &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let port = free_port();
        let child = Command::new(&bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let d = Driver { child, port, profile: tempfile::tempdir().unwrap() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while try_request(port, "GET", "/status", None, None).map(|r| r.status).ok() != Some(200) {
            assert!(Instant::now() < deadline, "chromedriver did not answer on port {port} within 20s");
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    /// A new headless browser session; `javascript: false` starts one with scripts disabled.
    pub fn session(&self, javascript: bool, width: u32, height: u32) -> Session {
        let chromium = find_bin("HERALD_CHROMIUM", &["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
        let profile = self.profile.path().join(format!("p{}", free_port()));
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--force-color-profile=srgb".into(),
            format!("--user-data-dir={}", profile.display()),
            format!("--window-size={width},{height}"),
        ];
        if !javascript {
            args.push("--blink-settings=scriptEnabled=false".into());
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args}
        }}});
        let v = call(self.port, "POST", "/session", Some(caps));
        let id = v["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_string();
        Session { port: self.port, id }
    }
}

/// One HTTP/1.1 exchange with chromedriver, reading the body by its Content-Length
/// (chromedriver keeps connections open, so reading to EOF would wait for a timeout).
fn try_request(port: u16, method: &str, path: &str, _token: Option<&str>, body: Option<&str>) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or("");
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut len = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut buf = vec![0; len];
    r.read_exact(&mut buf)?;
    Ok(Reply { status, body: String::from_utf8_lossy(&buf).into_owned() })
}

struct Reply {
    status: u16,
    body: String,
}

fn call(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = match method {
        "GET" | "DELETE" => None,
        _ => Some(body.map_or_else(|| "{}".to_string(), |b| b.to_string())),
    };
    let r = try_request(port, method, path, None, body.as_deref()).unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"));
    let v: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("webdriver {method} {path}: not JSON ({e}): {}", r.body));
    assert!(r.status < 400, "webdriver {method} {path} answered {}: {v}", r.status);
    v["value"].clone()
}

/// One browser session; closed on drop.
pub struct Session {
    port: u16,
    id: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = try_request(self.port, "DELETE", &format!("/session/{}", self.id), None, None);
    }
}

impl Session {
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        call(self.port, method, &format!("/session/{}{path}", self.id), body)
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None).as_str().unwrap_or_default().to_string()
    }

    /// The first element matching a CSS selector, if any.
    pub fn find(&self, css: &str) -> Option<String> {
        let r = try_request(self.port, "POST", &format!("/session/{}/element", self.id), None, Some(&json!({"using": "css selector", "value": css}).to_string())).ok()?;
        if r.status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&r.body).ok()?;
        v["value"][ELEMENT].as_str().map(str::to_string)
    }

    /// Waits (bounded) for an element to match, without reloading the page.
    pub fn wait_for(&self, css: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(e) = self.find(css) {
                return e;
            }
            assert!(Instant::now() < deadline, "no element matched {css:?} within {within:?}; page:\n{}", self.source());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn text(&self, el: &str) -> String {
        self.cmd("GET", &format!("/element/{el}/text"), None).as_str().unwrap_or_default().to_string()
    }

    pub fn attr(&self, el: &str, name: &str) -> Option<String> {
        self.cmd("GET", &format!("/element/{el}/attribute/{name}"), None).as_str().map(str::to_string)
    }

    pub fn css(&self, el: &str, prop: &str) -> String {
        self.cmd("GET", &format!("/element/{el}/css/{prop}"), None).as_str().unwrap_or_default().to_string()
    }

    pub fn click(&self, el: &str) {
        self.cmd("POST", &format!("/element/{el}/click"), Some(json!({})));
    }

    pub fn type_into(&self, el: &str, text: &str) {
        self.cmd("POST", &format!("/element/{el}/value"), Some(json!({ "text": text })));
    }

    /// Runs a script in the page and returns its result.
    pub fn exec(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({ "script": script, "args": [] })))
    }

    pub fn source(&self) -> String {
        self.cmd("GET", "/source", None).as_str().unwrap_or_default().to_string()
    }

    /// Saves a PNG screenshot of the viewport.
    pub fn screenshot(&self, path: &Path) {
        let b64 = self.cmd("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap_or_default()).expect("screenshot is base64");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}
