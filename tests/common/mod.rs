//! A real `comfyrs serve` process for end-to-end tests: its own state folder and fixture models,
//! on a loopback port it picks itself (`--port 0`; the address is read from its log, so no two
//! tests race for a port). Killed by pid when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

/// Python ComfyUI starts before the server listens; on a loaded machine that takes a while.
const START_TIMEOUT: Duration = Duration::from_secs(240);

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_comfyrs"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The project venv (scripts/setup.sh writes COMFYRS_VENV into .cargo/config.toml).
pub fn venv() -> PathBuf {
    std::env::var_os("COMFYRS_VENV")
        .map(PathBuf::from)
        .or_else(|| option_env!("COMFYRS_VENV").map(PathBuf::from))
        .expect("COMFYRS_VENV is not set: run scripts/setup.sh")
}

/// A child process killed (by its pid) and reaped on drop, so a failing test leaves nothing behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Serve {
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
    child: KillOnDrop,
}

impl Serve {
    /// Writes the fixture models into a fresh folder and starts `comfyrs serve` on them.
    pub fn start() -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        let out = bin().args(["fixtures", "--models-dir"]).arg(&models).output().unwrap();
        assert!(out.status.success(), "comfyrs fixtures failed:\n{}", String::from_utf8_lossy(&out.stderr));
        Self::start_in(dir, &models)
    }

    fn start_in(dir: tempfile::TempDir, models: &Path) -> Serve {
        let child = bin()
            .args(["serve", "--port", "0", "--state-dir"])
            .arg(dir.path().join("state"))
            .arg("--models-dir")
            .arg(models)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start comfyrs serve");
        let mut child = KillOnDrop(child);
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.0.stderr.take().unwrap();
        let sink = log.clone();
        // Drains the server's log for the whole run (a full pipe would block the server).
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(a) => a,
            Err(_) => {
                let status = child.0.try_wait().ok().flatten();
                drop(child);
                panic!("comfyrs serve did not start listening within {START_TIMEOUT:?} (exit: {status:?}); its log:\n{}", log.lock().unwrap());
            }
        };
        let base = format!("http://{addr}");
        Serve { addr, base, dir, log, child }
    }

    /// What the server has logged so far (for failure messages).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn get(&self, path: &str) -> Json {
        let url = format!("{}{path}", self.base);
        let mut res = ureq::get(&url).call().unwrap_or_else(|e| panic!("GET {url}: {e}\nserver log:\n{}", self.log()));
        res.body_mut().read_json().unwrap_or_else(|e| panic!("GET {url} is not JSON: {e}"))
    }

    /// Polls `f` every 100 ms until it returns something or `timeout` passes.
    pub fn wait_for<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}; server log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
