//! Several machines on one queue, as a user runs them: a real redis-server, `comfyrs serve
//! --broker` and two `comfyrs worker` processes (native nodes), prompts from several clients at
//! once (docs/scale-out.md). Every process is stopped by its pid.

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

/// A `comfyrs worker` process, its log drained into a string.
struct Worker {
    child: KillOnDrop,
    log: Arc<Mutex<String>>,
}

impl Worker {
    fn start(redis: &RedisServer, server: &Serve, name: &str, output: &std::path::Path) -> Worker {
        let mut child = bin()
            .args(["worker", "--python", "never", "--broker", &redis.url(), "--server", &server.base, "--name", name])
            .arg("--output-dir")
            .arg(output)
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

    /// SIGTERM, then a bounded wait for a clean exit.
    fn terminate(mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.0.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "comfyrs worker did not stop within 30 s of SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn prompt(text: &str) -> Json {
    json!({
        "1": {"class_type": "PrimitiveString", "inputs": {"value": text}},
        "2": {"class_type": "StringConcatenate", "inputs": {"string_a": ["1", 0], "string_b": "!", "delimiter": ""}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    })
}

#[test]
fn a_server_and_two_workers_run_prompts_from_several_clients() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Serve::spawn(&["--python".into(), "never".into(), "--broker".into(), redis.url().into(), "--state-dir".into(), dir.path().join("server").into()]);
    // (the line after the listening line, which the harness waits for)
    server.wait_for("the server to say how to start workers", Duration::from_secs(10), || server.log().contains("comfyrs worker --broker").then_some(()));
    let workers = [Worker::start(&redis, &server, "w1", &dir.path().join("w1")), Worker::start(&redis, &server, "w2", &dir.path().join("w2"))];

    // A client on the socket hears its prompt run on a worker.
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/ws?clientId=watcher", server.addr)).expect("socket");
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    }
    let (status, r) = server.post("/prompt", &json!({"prompt": prompt("watched"), "client_id": "watcher"}));
    assert_eq!(status, 200, "{r}");
    let watched = r["prompt_id"].as_str().unwrap().to_string();
    let mut kinds = Vec::new();
    loop {
        let m = match ws.read().expect("a message within 60 s") {
            tungstenite::Message::Text(t) => serde_json::from_str::<Json>(t.as_str()).unwrap(),
            _ => continue,
        };
        if m["data"]["prompt_id"] != watched.as_str() {
            continue;
        }
        kinds.push(m["type"].as_str().unwrap().to_string());
        if m["type"] == "executed" {
            assert_eq!(m["data"]["output"]["text"][0], "watched!");
        }
        if m["type"] == "execution_success" {
            break;
        }
    }
    assert!(kinds.contains(&"execution_start".to_string()) && kinds.contains(&"executed".to_string()), "{kinds:?}");

    // Forty prompts from four clients at once: each runs once and lands in history.
    let submitters: Vec<_> = (0..4)
        .map(|c| {
            let base = server.base.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        let text = format!("c{c}-{i}");
                        let body = json!({"prompt": prompt(&text), "client_id": format!("client{c}")});
                        let mut resp = ureq::post(&format!("{base}/prompt")).send_json(&body).expect("POST /prompt");
                        let r: Json = resp.body_mut().read_json().unwrap();
                        (r["prompt_id"].as_str().unwrap().to_string(), text)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let submitted: Vec<(String, String)> = submitters.into_iter().flat_map(|t| t.join().unwrap()).collect();
    for (id, text) in &submitted {
        let entry = server.wait_for(&format!("prompt {id} in history"), Duration::from_secs(120), || {
            let (_, h) = server.get(&format!("/history/{id}"));
            h.get(id).cloned()
        });
        assert_eq!(entry["outputs"]["3"]["text"][0], format!("{text}!"), "{entry}");
        assert_eq!(entry["status"]["status_str"], "success");
    }
    let (_, jobs) = server.get("/api/jobs?limit=1000");
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 41, "each prompt recorded once");
    let (_, q) = server.get("/queue");
    assert_eq!((q["queue_running"].as_array().unwrap().len(), q["queue_pending"].as_array().unwrap().len()), (0, 0));
    // Both workers took part (prompts go to whichever claims first).
    let logs: Vec<String> = workers.iter().map(Worker::log).collect();
    for (w, log) in logs.iter().enumerate() {
        assert!(log.contains("running prompt") || log.contains("taking prompts"), "worker {w} started:\n{log}");
    }
    for w in workers {
        let status = w.terminate();
        assert!(status.success(), "a worker stops cleanly on SIGTERM");
    }
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
    let out = bin().args(["worker", "--python", "never", "--broker", "http://x", "--server", "http://y"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a Redis URL"), "{err}");
}
