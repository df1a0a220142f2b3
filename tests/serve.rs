//! `comfyrs serve` as a process under load: many clients, a thousand prompts, a `kill -9` in the
//! middle. Every accepted prompt must reach history exactly once, with its output.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use common::Serve;

/// `value` through `links` string concatenations into a PreviewAny: shows `value` followed by
/// `links` dots.
fn prompt(value: &str, links: usize) -> Json {
    let mut p = serde_json::Map::new();
    p.insert("0".into(), json!({"class_type": "PrimitiveString", "inputs": {"value": value}}));
    for i in 1..=links {
        p.insert(i.to_string(), json!({"class_type": "StringConcatenate", "inputs": {"string_a": [(i - 1).to_string(), 0], "string_b": ".", "delimiter": ""}}));
    }
    p.insert("out".into(), json!({"class_type": "PreviewAny", "inputs": {"source": [links.to_string(), 0]}}));
    Json::Object(p)
}

fn expected(value: &str, links: usize) -> Json {
    json!({"text": [format!("{value}{}", ".".repeat(links))]})
}

/// Polls (bounded) until the queue is empty.
fn drain(server: &Serve) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, q) = server.get("/prompt");
        if q["exec_info"]["queue_remaining"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the queue did not drain in 120 s: {q}\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn fifty_clients_queue_a_thousand_prompts_and_each_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Serve::native(dir.path()));
    const CLIENTS: usize = 50;
    const EACH: usize = 20;
    let starts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let server = server.clone();
            let starts = starts.clone();
            std::thread::spawn(move || {
                let client = format!("client-{c}");
                let (mut ws, _) = tungstenite::connect(format!("ws://{}/ws?clientId={client}", server.addr)).expect("socket");
                if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                }
                let mut mine = HashSet::new();
                for j in 0..EACH {
                    let body = json!({"prompt": prompt(&format!("{client}-{j}"), 3), "client_id": client});
                    let (status, resp) = server.post("/prompt", &body);
                    assert_eq!(status, 200, "{resp}");
                    mine.insert(resp["prompt_id"].as_str().unwrap().to_string());
                }
                // Read this client's messages until each of its prompts has finished.
                let mut done = HashSet::new();
                while done.len() < mine.len() {
                    let msg = ws.read().expect("messages keep coming (60 s read timeout)");
                    let tungstenite::Message::Text(t) = msg else { continue };
                    let m: Json = serde_json::from_str(t.as_str()).unwrap();
                    let id = m["data"]["prompt_id"].as_str().unwrap_or("").to_string();
                    match m["type"].as_str() {
                        Some("execution_start") => {
                            assert!(mine.contains(&id), "{client} got another client's execution_start");
                            *starts.lock().unwrap().entry(id).or_default() += 1;
                        }
                        Some("executing") if m["data"]["node"].is_null() => {
                            done.insert(id);
                        }
                        _ => {}
                    }
                }
                mine
            })
        })
        .collect();
    let mut all = HashSet::new();
    for t in threads {
        all.extend(t.join().expect("a client thread failed"));
    }
    assert_eq!(all.len(), CLIENTS * EACH);
    let starts = starts.lock().unwrap();
    assert!(starts.values().all(|&n| n == 1), "a prompt started twice");
    assert_eq!(starts.len(), CLIENTS * EACH);
    let (_, history) = server.get("/history?max_items=5000");
    let history = history.as_object().unwrap();
    assert_eq!(history.len(), CLIENTS * EACH);
    for (id, entry) in history {
        assert!(all.contains(id));
        let value = entry["prompt"][2]["0"]["inputs"]["value"].as_str().unwrap();
        assert_eq!(entry["outputs"]["out"], expected(value, 3));
    }
    let peak = server.peak_rss();
    assert!(peak < 512 << 20, "the server's peak memory was {} MiB", peak >> 20);
}

#[test]
fn kill_9_mid_run_loses_no_accepted_prompt_and_runs_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Serve::native(dir.path()));
    let accepted: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..50)
        .map(|c| {
            let (server, accepted, stop) = (server.clone(), accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                for j in 0..20 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let value = format!("k{c}-{j}");
                    let (status, resp) = server.post("/prompt", &json!({"prompt": prompt(&value, 50)}));
                    match status {
                        200 => accepted.lock().unwrap().push((resp["prompt_id"].as_str().unwrap().to_string(), value)),
                        // The server is gone: what was not answered was not accepted.
                        _ => return,
                    }
                }
            })
        })
        .collect();
    // Kill it once a hundred prompts have finished, with work still queued.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, h) = server.get("/history?max_items=100000");
        let (_, q) = server.get("/prompt");
        if h.as_object().map_or(0, |m| m.len()) >= 100 && q["exec_info"]["queue_remaining"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the server never had 100 finished prompts and more queued");
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // SIGKILL while clients may still be posting: what was not answered was not accepted.
    server.signal("KILL");
    for c in clients {
        c.join().unwrap();
    }
    drop(server);

    let server = Serve::native(dir.path());
    drain(&server);
    let accepted = accepted.lock().unwrap();
    let (_, history) = server.get("/history?max_items=100000");
    let history = history.as_object().unwrap();
    for (id, value) in accepted.iter() {
        let entry = history.get(id).unwrap_or_else(|| panic!("accepted prompt {id} was lost"));
        assert_eq!(entry["status"]["status_str"], "success", "{entry}");
        assert_eq!(entry["outputs"]["out"], expected(value, 50));
    }
    assert_eq!(server.get("/queue").1["queue_pending"], json!([]));
}

#[test]
fn sigterm_stops_cleanly_and_the_queue_comes_back_paused_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = Serve::native(dir.path());
    assert_eq!(server.post("/queue/pause", &json!({})).0, 200);
    let (_, r) = server.post("/prompt", &json!({"prompt": prompt("later", 1)}));
    let id = r["prompt_id"].as_str().unwrap().to_string();
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");

    // The pause and the queued prompt survive the restart; resuming runs it.
    let server = Serve::native(dir.path());
    let (_, q) = server.get("/queue");
    assert_eq!(q["paused"], true);
    assert_eq!(q["queue_pending"][0][1], id.as_str());
    server.post("/queue/resume", &json!({}));
    drain(&server);
    let (_, h) = server.get(&format!("/history/{id}"));
    assert_eq!(h[&id]["outputs"]["out"], expected("later", 1));
    // The binary keeps its recent log for the frontend's terminal panel.
    let (_, logs) = server.get("/internal/logs");
    let logs = logs.as_str().unwrap_or_default().to_string();
    assert!(logs.contains("listening on") && logs.contains(&format!("prompt {id} completed")), "{logs}");
}

/// `comfyrs bench server` measures the server end to end (its wiring, not its timings). With
/// COMFYUI_PATH set (the CI's run against current ComfyUI), that ComfyUI's own server is
/// measured in the same run and each row gets its ratio.
#[test]
fn bench_server_measures_the_server_and_comfyui_side_by_side() {
    let against = std::env::var_os("COMFYUI_PATH").filter(|p| !p.is_empty());
    let mut cmd = common::bin();
    cmd.args(["bench", "server", "--repeat", "1", "--against-repeat", "1", "--prompts", "40", "--clients", "2"]);
    if let Some(dir) = &against {
        cmd.arg("--against").arg(dir);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    // The row whose first column is `name`.
    let row = |name: &str| {
        let found = stdout.lines().find(|l| l.trim_start().strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '(']) || rest.is_empty()));
        found.unwrap_or_else(|| panic!("no row {name} in:\n{stdout}")).to_string()
    };
    for name in ["1 node", "chain_1000", "wide_1000", "comfyrs", "trivial prompts"] {
        row(name);
    }
    // progress_state stays linear: about half a KB per node, not the quadratic hundreds of MB.
    let wide = row("wide_1000");
    let kb: Vec<u64> = wide.split(" KB").filter_map(|s| s.rsplit(' ').next()?.parse().ok()).collect();
    assert!(kb.first().is_some_and(|&k| (200..2000).contains(&k)), "{wide}");
    if against.is_some() {
        assert!(row("ComfyUI").contains("/s") && row("ratio").contains('×'), "{stdout}");
        assert!(wide.contains('×'), "ComfyUI ran wide_1000 too: {wide}");
    }
}
