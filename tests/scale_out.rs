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
    name: String,
}

impl Worker {
    fn start(redis: &RedisServer, server: &Serve, name: &str, output: &std::path::Path) -> Worker {
        Self::start_with(redis, server, name, output, &[])
    }

    fn start_with(redis: &RedisServer, server: &Serve, name: &str, output: &std::path::Path, extra: &[&str]) -> Worker {
        let mut child = bin()
            .args(["worker", "--python", "never", "--broker", &redis.url(), "--server", &server.base, "--name", name, "--lease", LEASE])
            .args(extra)
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
        Worker { child: KillOnDrop(child), log, name: name.to_string() }
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
    // Its log may lag behind it on a busy machine: w2 is frozen first (SIGSTOP), and killed only
    // if, once its log and any report it had sent are in, the prompt is still unfinished;
    // otherwise it resumes and the next one is tried.
    let deadline = Instant::now() + Duration::from_secs(60);
    let killed = loop {
        assert!(Instant::now() < deadline, "w2 was never seen in the middle of a prompt; its log:\n{}", w2.log());
        let Some(id) = w2.running() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        w2.signal("STOP");
        std::thread::sleep(Duration::from_millis(300));
        let reported = server.get(&format!("/history/{id}")).1.get(&id).is_some();
        if w2.running().as_deref() == Some(id.as_str()) && !reported {
            break id;
        }
        w2.signal("CONT");
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

/// A native WIDEN merge of the tiny SDXL fixtures, shown as text; `tail` makes two prompts
/// differ after the merge.
fn merge(strength: f64, t: f64, tail: &str) -> Json {
    json!({
        "1": {"class_type": "WIDENBaseInput", "inputs": {"model_name": "tiny/sdxl_f16.safetensors"}},
        "2": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/tiny/sdxl_kohya_lora.safetensors", "strength": strength}},
        "3": {"class_type": "WIDENMerge", "inputs": {"base": ["1", 0], "target": ["2", 0], "t_factor": t}},
        "4": {"class_type": "WIDENExit", "inputs": {"widen": ["3", 0], "save_model": false, "model_name": "m", "save_workflow": false, "enable_cache": true}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}},
        "6": {"class_type": "StringConcatenate", "inputs": {"string_a": ["5", 0], "string_b": tail, "delimiter": " "}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}},
    })
}

/// The nodes a history entry says came from the cache.
fn cached(entry: &Json) -> Vec<String> {
    let msgs = entry["status"]["messages"].as_array().cloned().unwrap_or_default();
    let m = msgs.iter().find(|m| m[0] == "execution_cached").unwrap_or_else(|| panic!("no execution_cached in {entry}"));
    m[1]["nodes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect()
}

/// Cache affinity: two workers each compute a merge; the next prompt sharing a merge goes to
/// the worker that holds it and re-merges nothing.
#[test]
fn a_prompt_sharing_a_merge_runs_on_the_worker_that_holds_it() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let out = bin().args(["fixtures", "--models-dir"]).arg(&models).output().unwrap();
    assert!(out.status.success(), "comfyrs fixtures: {}", String::from_utf8_lossy(&out.stderr));
    let m = models.to_str().unwrap();
    let state = dir.path().join("server");
    let args = ["--python".into(), "never".into(), "--broker".into(), redis.url().into(), "--state-dir".into(), state.into(), "--models-dir".into(), m.into()];
    let server = Serve::spawn(&args);
    server.wait_for("the server to say how to start workers", Duration::from_secs(10), || server.log().contains("comfyrs worker --broker").then_some(()));
    let start = |name: &str| Worker::start_with(&redis, &server, name, &dir.path().join(name), &["--models-dir", m]);
    let workers = [start("w1"), start("w2")];
    server.wait_for("two workers", Duration::from_secs(20), || (server.get("/comfyrs/workers").1.as_array().unwrap().len() == 2).then_some(()));
    let queue = |p: Json| -> String {
        let (status, r) = server.post("/prompt", &json!({"prompt": p}));
        assert_eq!(status, 200, "{r}");
        r["prompt_id"].as_str().unwrap().to_string()
    };
    let done = |id: &str| server.wait_for(&format!("prompt {id}"), Duration::from_secs(120), || server.get(&format!("/history/{id}")).1.get(id).cloned());
    // Two merges at once: one per worker.
    let (a, b) = (queue(merge(1.0, 1.0, "a")), queue(merge(0.5, 0.7, "b")));
    let (ha, hb) = (done(&a), done(&b));
    assert_eq!((ha["status"]["status_str"].as_str(), hb["status"]["status_str"].as_str()), (Some("success"), Some("success")), "{ha}\n{hb}");
    let ran_on = |id: &str| workers.iter().find(|w| w.log().contains(&format!("running prompt {id}"))).map(|w| w.name.clone()).expect("a worker ran it");
    let (wa, wb) = (ran_on(&a), ran_on(&b));
    // The same merges with other text after them: each goes where its merge is.
    let (a2, b2) = (queue(merge(1.0, 1.0, "again")), queue(merge(0.5, 0.7, "again")));
    let (ha2, hb2) = (done(&a2), done(&b2));
    assert_eq!(ran_on(&a2), wa, "the second prompt of merge A runs where A was merged");
    assert_eq!(ran_on(&b2), wb, "the second prompt of merge B runs where B was merged");
    for (h, what) in [(&ha2, "A"), (&hb2, "B")] {
        let c = cached(h);
        assert!(["1", "2", "3", "4"].iter().all(|n| c.contains(&n.to_string())), "merge {what} was not computed again: cached {c:?}");
        assert_eq!(h["status"]["status_str"], "success");
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
    let out = bin().args(["workers"]).env_remove("COMFYRS_BROKER").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("comfyrs workers needs --broker redis://HOST:PORT"));
    let out = bin().args(["worker", "--python", "never", "--broker", "http://x", "--server", "http://y"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a Redis URL"), "{err}");
}
