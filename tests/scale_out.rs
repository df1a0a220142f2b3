//! Several machines on one queue, as a user runs them: a real redis-server, `comfyrs serve
//! --broker` and `comfyrs worker` processes (native nodes and the test nodes), prompts from many
//! clients at once, workers killed and restarted (docs/scale-out.md). Every process is stopped
//! by its pid.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

mod common;
#[path = "../server/tests/common/redis.rs"]
mod redis_server;

use common::{bin, KillOnDrop, Serve};
use redis_server::RedisServer;

/// A `comfyrs worker` process (with the test nodes), its log drained into a string.
struct Worker {
    child: KillOnDrop,
    log: Arc<Mutex<String>>,
}

impl Worker {
    fn start(redis: &RedisServer, server: &Serve, name: &str, output: &std::path::Path) -> Worker {
        let mut child = bin()
            .args(["worker", "--python", "never", "--broker", &redis.url(), "--server", &server.base, "--name", name, "--lease", LEASE])
            .arg("--output-dir")
            .arg(output)
            .env(TEST_NODES, "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start comfyrs worker");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Worker { child: KillOnDrop(child), log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn signal(&self, name: &str) {
        let _ = std::process::Command::new("kill").args([&format!("-{name}"), &self.child.0.id().to_string()]).status();
    }

    /// SIGTERM, then a bounded wait for a clean exit.
    fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.0.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "comfyrs worker did not stop within 30 s of SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The prompt this worker started last and has not finished, if any (from its log).
    fn running(&self) -> Option<String> {
        let log = self.log();
        let last = log.lines().rfind(|l| l.contains("running prompt "))?;
        let id = last.split("running prompt ").nth(1)?.split_whitespace().next()?.to_string();
        let done = log.lines().any(|l| l.contains(&format!(": prompt {id} ")));
        (!done).then_some(id)
    }
}

const TEST_NODES: &str = "COMFYRS_TEST_NODES";
/// Seconds; short, so the killed worker's prompt is taken over soon.
const LEASE: &str = "2";

/// A prompt that takes a while and writes one output file holding `text`.
fn prompt(text: &str, ms: i64) -> Json {
    json!({
        "1": {"class_type": "PrimitiveString", "inputs": {"value": text}},
        "2": {"class_type": "TestWait", "inputs": {"ms": ms, "value": ["1", 0]}},
        "3": {"class_type": "TestSaveText", "inputs": {"text": ["2", 0], "filename_prefix": "scale/out"}},
    })
}

/// One client: its socket, then its prompts, then every message until each of them ended.
/// Returns (prompt id, text, the kinds of message heard for it).
fn client(base: String, addr: String, c: usize, n: usize) -> Vec<(String, String, Vec<String>)> {
    let cid = format!("client{c}");
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/ws?clientId={cid}")).expect("socket");
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    }
    let mut prompts: Vec<(String, String, Vec<String>)> = (0..n)
        .map(|i| {
            let text = format!("c{c}-{i}");
            let body = json!({"prompt": prompt(&text, 150), "client_id": cid});
            let mut resp = ureq::post(&format!("{base}/prompt")).send_json(&body).expect("POST /prompt");
            let r: Json = resp.body_mut().read_json().unwrap();
            (r["prompt_id"].as_str().expect("queued").to_string(), text, Vec::new())
        })
        .collect();
    let mut open = n;
    while open > 0 {
        let m = match ws.read().unwrap_or_else(|e| panic!("client {c}: no message within 120 s ({open} prompts open): {e}")) {
            tungstenite::Message::Text(t) => serde_json::from_str::<Json>(t.as_str()).unwrap(),
            _ => continue,
        };
        let Some(p) = prompts.iter_mut().find(|p| m["data"]["prompt_id"] == p.0.as_str()) else { continue };
        let kind = m["type"].as_str().unwrap().to_string();
        if kind == "execution_success" || kind == "execution_error" || kind == "execution_interrupted" {
            open -= 1;
        }
        p.2.push(kind);
    }
    prompts
}

/// The test: one server, three workers, 300 prompts from 20 clients at once; one worker
/// killed with SIGKILL in the middle of a prompt and another restarted. Every prompt completes
/// once, every output is served by `/view`, every client hears its prompts.
#[test]
fn three_workers_run_300_prompts_from_20_clients_through_a_kill_and_a_restart() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("server");
    let args = ["--python".into(), "never".into(), "--broker".into(), redis.url().into(), "--state-dir".into(), state.clone().into()];
    let server = Serve::spawn_with_env(&args, &[(TEST_NODES, "1")]);
    // (the line after the listening line, which the harness waits for)
    server.wait_for("the server to say how to start workers", Duration::from_secs(10), || server.log().contains("comfyrs worker --broker").then_some(()));
    let w1 = Worker::start(&redis, &server, "w1", &dir.path().join("w1"));
    let w2 = Worker::start(&redis, &server, "w2", &dir.path().join("w2"));
    let w3 = Worker::start(&redis, &server, "w3", &dir.path().join("w3"));

    // `comfyrs workers` lists them (from their heartbeats).
    let listed = server.wait_for("three workers listed", Duration::from_secs(20), || {
        let out = bin().args(["workers", "--broker", &redis.url(), "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let w: Json = serde_json::from_slice(&out.stdout).unwrap();
        (w.as_array().unwrap().len() == 3).then_some(w)
    });
    assert_eq!(listed.as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap()).collect::<Vec<_>>(), ["w1", "w2", "w3"]);
    let table = bin().args(["workers", "--broker", &redis.url()]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("NAME") && table.contains("w2") && table.contains("idle"), "{table}");

    let clients: Vec<_> = (0..20)
        .map(|c| {
            let (base, addr) = (server.base.clone(), server.addr.clone());
            std::thread::spawn(move || client(base, addr, c, 15))
        })
        .collect();

    // Once a good part ran: SIGKILL w2 in the middle of a prompt.
    server.wait_for("60 prompts in history", Duration::from_secs(120), || (server.get("/history").1.as_object().unwrap().len() >= 60).then_some(()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let killed = loop {
        if let Some(id) = w2.running() {
            break id;
        }
        assert!(Instant::now() < deadline, "w2 was never seen in the middle of a prompt; its log:\n{}", w2.log());
        std::thread::sleep(Duration::from_millis(5));
    };
    w2.signal("KILL");
    // And restart w3 (SIGTERM: the prompt it runs is left to another worker).
    assert!(w3.terminate().success(), "a worker stops cleanly on SIGTERM");
    let w3 = Worker::start(&redis, &server, "w3", &dir.path().join("w3"));

    let heard: Vec<(String, String, Vec<String>)> = clients.into_iter().flat_map(|t| t.join().expect("a client")).collect();
    assert_eq!(heard.len(), 300);
    let (_, history) = server.get("/history?max_items=1000");
    let output = state.join("output/scale");
    for (id, text, kinds) in &heard {
        for k in ["execution_start", "executed", "execution_success"] {
            assert!(kinds.iter().any(|x| x == k), "the client of {id} heard no {k}: {kinds:?}");
        }
        let entry = &history[id];
        assert_eq!(entry["status"]["status_str"], "success", "{id}: {entry}");
        let file = &entry["outputs"]["3"]["files"][0];
        let url = format!("/view?filename={}&subfolder=scale&type=output", file["filename"].as_str().unwrap().replace(' ', "%20"));
        let mut resp = ureq::get(&format!("{}{url}", server.base)).call().unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(resp.body_mut().read_to_string().unwrap(), *text, "{url} serves the prompt's own output");
    }
    // Exactly once: 300 jobs, 300 files (a killed or repeated delivery leaves none behind).
    let (_, jobs) = server.get("/api/jobs?limit=1000");
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 300, "each prompt recorded once");
    assert_eq!(std::fs::read_dir(&output).unwrap().count(), 300, "one output file per prompt");
    // The prompt w2 died in was taken over by another worker.
    let logs = [w1.log(), w3.log()].concat();
    assert!(logs.contains(&format!("running prompt {killed} (delivery 2")), "prompt {killed} was taken over:\n{logs}");
    assert_eq!(history[&killed]["status"]["status_str"], "success");
    let (_, q) = server.get("/queue");
    assert_eq!((q["queue_running"].as_array().unwrap().len(), q["queue_pending"].as_array().unwrap().len()), (0, 0));
    for w in [w1, w3] {
        assert!(w.terminate().success(), "a worker stops cleanly on SIGTERM");
    }
    drop(w2);
}

#[test]
fn a_worker_without_its_broker_or_server_says_what_is_missing() {
    let out = bin().args(["worker", "--python", "never"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--broker redis://HOST:PORT"), "{err}");
    let out = bin().args(["worker", "--python", "never", "--broker", "redis://127.0.0.1:1"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--server http://HOST:PORT"), "{err}");
    let out = bin().args(["workers"]).env_remove("COMFYRS_BROKER").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("comfyrs workers needs --broker redis://HOST:PORT"));
    let out = bin().args(["worker", "--python", "never", "--broker", "http://x", "--server", "http://y"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a Redis URL"), "{err}");
}
