//! The headless browser shared by the end-to-end tests that drive ComfyUI's web frontend
//! (tests/browser.rs, tests/frontend_oracle.rs): Debian's chromium through chromedriver, with
//! fantoccini as the WebDriver client. Every wait is bounded by [`PAGE_TIMEOUT`].
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value as Json};

use crate::common::KillOnDrop;

/// Every wait in the page is bounded by this (the server, Python included, is already up).
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(120);

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Debian's chromium and its driver, or a failure that says how to get them.
pub fn browser_tools() -> (PathBuf, PathBuf) {
    let find = |name: &str, package: &str| {
        on_path(name).unwrap_or_else(|| {
            panic!(
                "the browser tests need `{name}` on PATH (Debian package {package}): run scripts/setup.sh \
                 (as root it installs chromium and chromium-driver with apt-get)"
            )
        })
    };
    (find("chromium", "chromium"), find("chromedriver", "chromium-driver"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// chromedriver on a free loopback port, killed by pid on drop.
pub struct Driver {
    pub url: String,
    _child: KillOnDrop,
}

impl Driver {
    pub fn start(chromedriver: &Path) -> Driver {
        let port = free_port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e} (run scripts/setup.sh)", chromedriver.display()));
        let child = KillOnDrop(child);
        let url = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        loop {
            let ready = ureq::get(&format!("{url}/status")).call().ok().and_then(|mut r| r.body_mut().read_json::<Json>().ok());
            if ready.is_some_and(|s| s["value"]["ready"] == true) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "chromedriver did not get ready on {url} within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver { url, _child: child }
    }

    /// A fresh headless chromium with its own profile folder `profile`, logging the browser
    /// console for [`Page::errors`].
    pub async fn open(&self, chromium: &Path, profile: &Path) -> Page {
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                // --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,900", format!("--user-data-dir={}", profile.display())],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(caps.as_object().unwrap().clone());
        let client = builder.connect(&self.url).await.unwrap_or_else(|e| panic!("chromedriver cannot start chromium: {e}"));
        Page { client, log: Vec::new() }
    }
}

/// chromedriver's log endpoint (outside the W3C protocol, which has none): the browser's console
/// messages, uncaught exceptions and failed loads since the last call.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

pub struct Page {
    pub client: Client,
    /// Every browser log entry seen so far.
    pub log: Vec<Json>,
}

impl Page {
    pub async fn js(&self, script: &str, args: Vec<Json>) -> Json {
        self.client.execute(script, args).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Runs `script` (an expression) until it is truthy; returns its value.
    pub async fn wait_js(&self, what: &str, script: &str) -> Json {
        let start = Instant::now();
        loop {
            let v = self.client.execute(&format!("return ({script});"), vec![]).await.unwrap_or(Json::Null);
            if !(v.is_null() || v == false || v == 0 || v == "") {
                return v;
            }
            if start.elapsed() > PAGE_TIMEOUT {
                let diag = self.js("return {events: window.__comfyrsEvents || null}", vec![]).await;
                panic!("timed out after {PAGE_TIMEOUT:?} waiting for {what} ({script}); page state: {diag}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn collect_log(&mut self) {
        let entries = self.client.issue_cmd(BrowserLog).await.expect("chromedriver's browser log");
        self.log.extend(entries.as_array().cloned().unwrap_or_default());
    }

    /// Console errors, uncaught exceptions and failed requests, except one kind the frontend
    /// expects: a user's file that does not exist yet (user.css, the workflows/ and subgraphs/
    /// listings, comfy.templates.json) is a 404 from /userdata, as in ComfyUI, and the frontend
    /// takes it as empty; the browser logs the 404 all the same.
    pub fn errors(&self) -> Vec<String> {
        self.log
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .filter(|m| !(m.contains("/api/userdata") && m.contains("status of 404")))
            .collect()
    }

    /// Opens the page served at `base` and waits (bounded) until the frontend has booted: the
    /// app and its graph exist, the node definitions are registered and the splash is gone.
    pub async fn boot(&self, base: &str) -> Result<(), String> {
        self.client.goto(&format!("{base}/")).await.map_err(|e| e.to_string())?;
        self.wait_js(
            "the frontend to boot",
            "window.app && window.app.graph && window.LiteGraph && Object.keys(LiteGraph.registered_node_types).length > 0 \
             && !document.getElementById('splash-loader')",
        )
        .await;
        Ok(())
    }
}
