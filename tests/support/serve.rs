//! A real `comfyrs serve` process on a free loopback port, and a blocking HTTP client for it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

pub struct Serve {
    child: Child,
    pub base: String,
    pub addr: String,
    /// The server's stderr after the listening line, read on a thread into this buffer.
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Serve {
    /// Starts `comfyrs serve --port 0` with `state` as its state dir and native nodes only,
    /// waits (bounded) for its listening line.
    pub fn start(state: &Path, extra: &[&str]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_comfyrs"))
            .args(["serve", "--port", "0", "--python", "never", "--state-dir"])
            .arg(state)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("comfyrs serve starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(url) = line.split("listening on ").nth(1) {
                        let url = url.split_whitespace().next().unwrap_or("").to_string();
                        let _ = tx.send(url);
                        sent = true;
                    }
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let base = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("comfyrs serve did not start listening within 60 s")
        });
        let addr = base.trim_start_matches("http://").to_string();
        Serve { child, base, addr, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends a signal (`KILL`, `TERM`) without waiting.
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status();
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (bounded) for a clean exit; its exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("comfyrs serve did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory (VmHWM) in bytes.
    pub fn peak_rss(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).unwrap_or(0) * 1024
    }

    pub fn get(&self, path: &str) -> (u16, Json) {
        request(ureq::get(&format!("{}{path}", self.base)).config().http_status_as_error(false).build().call())
    }

    pub fn post(&self, path: &str, body: &Json) -> (u16, Json) {
        request(ureq::post(&format!("{}{path}", self.base)).config().http_status_as_error(false).build().send(body.to_string()))
    }
}

fn request(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Json) {
    match r {
        Ok(resp) => {
            let status = resp.status().as_u16();
            // History pages can be large: no 10 MB cap.
            let text = resp.into_body().with_config().limit(1 << 30).read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Json::String(text)))
        }
        Err(e) => (0, Json::String(e.to_string())),
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
