//! Broker test fixtures shared by the test crates that include this file: a server with a
//! broker, and a worker (the library loop `comfyrs worker` runs) on its own thread and runtime
//! with the test host's nodes, stopped and joined on drop.

use std::time::Duration;

use comfyrs_server::broker::{BrokerSettings, WorkerOptions};
use comfyrs_server::ServeOptions;

use super::common::{Server, TestHost};

/// A server on a free port whose prompts go to the Redis at `redis_url`.
pub fn broker_server(redis_url: &str, dir: &std::path::Path) -> Server {
    Server::start_with(ServeOptions { port: 0, broker: Some(BrokerSettings::new(redis_url)), ..ServeOptions::new(dir) })
}

pub struct Worker {
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Worker {
    pub fn start(redis_url: &str, server: &Server, name: &str, lease: Duration) -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let opts = WorkerOptions {
            broker: BrokerSettings::new(redis_url),
            name: name.to_string(),
            server: server.url(""),
            auth_token: None,
            lease,
            output_dir: dir.path().join("output"),
            temp_dir: dir.path().join("temp"),
            device: "cpu".into(),
        };
        let (stop, rx) = tokio::sync::watch::channel(false);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(comfyrs_server::broker::run_worker(opts, TestHost::new(), rx));
        });
        Worker { stop, thread: Some(thread), _dir: dir }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
