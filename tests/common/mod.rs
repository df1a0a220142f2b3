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
    /// The folder `start` made for the fixture models and the state (None when the caller
    /// owns the state folder).
    pub dir: Option<tempfile::TempDir>,
    log: Arc<Mutex<String>>,
    child: KillOnDrop,
}

impl Serve {
    /// Writes the fixture models into a fresh folder and starts `comfyrs serve` on them, with
    /// the embedded Python ComfyUI.
    pub fn start() -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        let out = bin().args(["fixtures", "--models-dir"]).arg(&models).output().unwrap();
        assert!(out.status.success(), "comfyrs fixtures failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let args: Vec<std::ffi::OsString> = vec!["--state-dir".into(), dir.path().join("state").into_os_string(), "--models-dir".into(), models.into_os_string()];
        let mut server = Self::spawn(&args);
        server.dir = Some(dir);
        server
    }

    /// `comfyrs serve` with native nodes only on the state folder `state`, which outlives it
    /// (a restart on the same folder finds the queue and history).
    pub fn native(state: &Path) -> Serve {
        Self::spawn(&["--python".into(), "never".into(), "--state-dir".into(), state.as_os_str().to_owned()])
    }

    /// Starts `comfyrs serve --port 0 ARGS` and waits (bounded) for its listening line.
    pub fn spawn(args: &[std::ffi::OsString]) -> Serve {
        Self::spawn_with_env(args, &[])
    }

    /// As [`Serve::spawn`], with these environment variables set.
    pub fn spawn_with_env(args: &[std::ffi::OsString], env: &[(&str, &str)]) -> Serve {
        let child = bin()
            .args(["serve", "--port", "0"])
            .args(args.iter())
            .envs(env.iter().copied())
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
        Serve { addr, base, dir: None, log, child }
    }

    /// The folder `start` made (fixture models in `models/`, the state in `state/`).
    pub fn folder(&self) -> &Path {
        self.dir.as_ref().expect("a server from Serve::start has a folder").path()
    }

    /// What the server has logged so far (for failure messages).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends a signal (`KILL`, `TERM`) by pid without waiting.
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill").args([&format!("-{name}"), &self.child.0.id().to_string()]).status();
    }

    /// SIGTERM, then waits (bounded) for a clean exit; its exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.0.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "comfyrs serve did not stop within 30 s of SIGTERM; its log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory (VmHWM) in bytes.
    pub fn peak_rss(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id())).unwrap_or_default();
        s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).unwrap_or(0) * 1024
    }

    /// GET: the status (0 when the connection failed) and the body as JSON (a string when it
    /// is not JSON).
    pub fn get(&self, path: &str) -> (u16, Json) {
        reply(ureq::get(&format!("{}{path}", self.base)).config().http_status_as_error(false).build().call())
    }

    /// POST of a JSON body, answered as `get`.
    pub fn post(&self, path: &str, body: &Json) -> (u16, Json) {
        reply(ureq::post(&format!("{}{path}", self.base)).config().http_status_as_error(false).build().send(body.to_string()))
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

fn reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Json) {
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
