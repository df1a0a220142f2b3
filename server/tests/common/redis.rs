//! A real `redis-server` for tests: Debian's binary on a free loopback port, in a temporary
//! directory of its own, stopped by its pid when dropped. Started with append-only persistence
//! when asked, so a test can kill and restart it over the same data.

// Each test binary uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `redis-server` may take to answer PING after its start.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A running `redis-server`. Dropping it kills the process (SIGKILL by pid) and removes its
/// directory unless the directory was given.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    own_dir: Option<tempfile::TempDir>,
    aof: bool,
}

impl RedisServer {
    /// A fresh server without persistence.
    pub fn start() -> Result<RedisServer, String> {
        let own = tempfile::tempdir().map_err(|e| format!("cannot create a directory for redis-server: {e}"))?;
        let dir = own.path().to_path_buf();
        let mut s = RedisServer { child: None, port: 0, dir, own_dir: Some(own), aof: false };
        s.spawn()?;
        Ok(s)
    }

    /// A server with append-only persistence (`appendfsync always`) over `dir`: what it
    /// acknowledged survives [`kill`](Self::kill) and [`restart`](Self::restart).
    pub fn start_persistent(dir: &Path) -> Result<RedisServer, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut s = RedisServer { child: None, port: 0, dir: dir.to_path_buf(), own_dir: None, aof: true };
        s.spawn()?;
        Ok(s)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, no shutdown save: only what the append-only file holds survives.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// FLUSHALL: what a Redis that restarted without its data holds (nothing).
    pub fn flush_all(&self) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("redis-server answers");
        s.write_all(b"FLUSHALL\r\n").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        assert!(line.starts_with("+OK"), "FLUSHALL answered {line:?}");
    }

    /// Kills the server (if running) and starts it again on the same port and directory.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn_on(self.port)
    }

    fn spawn(&mut self) -> Result<(), String> {
        // A port can be taken between choosing it and the server binding it: a few tries.
        let mut last = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
            match self.spawn_on(port) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn spawn_on(&mut self, port: u16) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", if self.aof { "yes" } else { "no" }, "--appendfsync", "always", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            format!("cannot start redis-server ({e}); install Debian's redis-server (scripts/setup.sh does it as root)")
        })?;
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                let mut err = String::new();
                if let Some(s) = child.stderr.take() {
                    for line in BufReader::new(s).lines().map_while(Result::ok).take(20) {
                        err.push_str(&line);
                        err.push('\n');
                    }
                }
                return Err(format!("redis-server exited at start ({status}): {err}"));
            }
            if ping(port) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("redis-server did not answer PING on port {port} within {READY_WITHIN:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.port = port;
        self.child = Some(child);
        Ok(())
    }
}

/// Whether a server on `port` answers PING (and is done loading its data).
fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("+PONG")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        drop(self.own_dir.take());
    }
}
