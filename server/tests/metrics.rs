//! `/metrics` (docs/server.md, "Metrics"): Prometheus' text format from a real server, local
//! and with a broker (a real redis-server and an in-process worker), read line by line.

use std::time::Duration;

use comfyrs_server::broker::{Namespace, PromptQueue};
use comfyrs_server::ServeOptions;
use serde_json::json;

mod common;
#[path = "common/redis.rs"]
mod redis_server;
#[path = "common/worker.rs"]
mod worker;

use common::{wait_prompt, Server, Socket};
use redis_server::RedisServer;
use worker::{broker_server, Worker};

/// A sample line: the metric's name, its labels sorted, its value.
type Sample = (String, Vec<(String, String)>, f64);

/// The samples of an exposition; comments skipped.
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line: {l:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("a value: {l:?}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), Vec::new()),
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("closed labels: {l:?}"));
                    // The values here hold no commas or quotes.
                    let mut labels: Vec<(String, String)> = inner
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once('=').unwrap_or_else(|| panic!("a label: {l:?}"));
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    labels.sort();
                    (name.to_string(), labels)
                }
            };
            (name, labels, value)
        })
        .collect()
}

/// The value of `name{labels}`, if the exposition has it.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    want.sort();
    samples(text).into_iter().find(|(n, l, _)| n == name && *l == want).map(|(_, _, v)| v)
}

fn scrape(server: &Server) -> String {
    let r = server.get_bytes("/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    r.text()
}

/// Runs `prompt` for client `c` and waits for its end on the socket (the metrics are fed before
/// the terminal message goes out).
fn run(server: &Server, socket: &mut Socket, prompt: serde_json::Value) -> String {
    let id = server.queue(prompt, Some("c"))["prompt_id"].as_str().unwrap().to_string();
    let msgs = socket.until_done(&id);
    assert!(msgs.iter().any(|m| m["type"] == "execution_success"), "{msgs:?}");
    id
}

/// Two prompts, the second reusing the first's string from the cache: what `worker` did.
fn check_two_prompts(text: &str, worker: &str) {
    let w = ("worker", worker);
    assert_eq!(value(text, "comfyrs_prompts_total", &[("outcome", "completed"), w]), Some(2.0), "{text}");
    assert_eq!(value(text, "comfyrs_prompts_total", &[("outcome", "failed"), w]), None, "{text}");
    assert_eq!(value(text, "comfyrs_prompt_seconds_count", &[w]), Some(2.0), "{text}");
    assert_eq!(value(text, "comfyrs_prompt_seconds_bucket", &[w, ("le", "+Inf")]), Some(2.0), "{text}");
    let runs = |class: &str, status: &str| value(text, "comfyrs_node_runs_total", &[("class_type", class), ("status", status), w]);
    assert_eq!(runs("PrimitiveString", "executed"), Some(1.0), "{text}");
    assert_eq!(runs("PrimitiveString", "cached"), Some(1.0), "{text}");
    assert_eq!(runs("TestWait", "executed"), Some(2.0), "{text}");
    assert_eq!(runs("TestWait", "cached"), None, "{text}");
    assert_eq!(runs("PreviewAny", "executed"), Some(2.0), "{text}");
    let seconds = value(text, "comfyrs_node_seconds_total", &[("class_type", "TestWait"), w]).expect("TestWait's time");
    assert!(seconds > 0.0, "{text}");
    assert_eq!(value(text, "comfyrs_queue_pending", &[]), Some(0.0), "{text}");
    assert_eq!(value(text, "comfyrs_queue_running", &[]), Some(0.0), "{text}");
}

#[test]
fn a_local_server_counts_prompts_and_node_runs_by_class() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    assert_eq!(value(&scrape(&server), "comfyrs_queue_pending", &[]), Some(0.0));
    let mut socket = Socket::connect(&server, "c");
    run(&server, &mut socket, wait_prompt("a", 5));
    // The same string, another wait: the string comes from the cache, the rest runs.
    run(&server, &mut socket, wait_prompt("a", 6));
    let text = scrape(&server);
    check_two_prompts(&text, "local");
    assert!(text.contains("# TYPE comfyrs_node_runs_total counter"), "{text}");
    assert!(text.contains("cached / (executed + cached)."), "the HELP says how to get the hit rate: {text}");
    // Served under /api as well, as every route.
    assert_eq!(server.get_bytes("/api/metrics").status, 200);
}

#[test]
fn the_queue_gauges_are_read_from_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    assert_eq!(server.post("/queue/pause", &json!({})).0, 200);
    let id = server.queue(wait_prompt("later", 1), None)["prompt_id"].as_str().unwrap().to_string();
    let text = scrape(&server);
    assert_eq!(value(&text, "comfyrs_queue_pending", &[]), Some(1.0), "{text}");
    assert_eq!(value(&text, "comfyrs_queue_running", &[]), Some(0.0), "{text}");
    assert_eq!(server.post("/queue/resume", &json!({})).0, 200);
    server.wait_history(&id);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(&server);
        if value(&text, "comfyrs_queue_pending", &[]) == Some(0.0) && value(&text, "comfyrs_queue_running", &[]) == Some(0.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the queue never emptied: {text}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn metrics_need_the_access_token_like_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(ServeOptions { port: 0, auth_token: Some("s3cret".into()), ..ServeOptions::new(dir.path()) });
    assert_eq!(server.get_bytes("/metrics").status, 401);
    let r = server.request("GET", "/metrics", &[("authorization", "Bearer s3cret")], None);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("comfyrs_queue_pending 0"), "{}", r.text());
}



#[test]
fn a_workers_prompts_and_nodes_carry_its_name() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = broker_server(&redis.url(), dir.path());
    let _worker = Worker::start(&redis.url(), &server, "w1", Duration::from_secs(30));
    let mut socket = Socket::connect(&server, "c");
    run(&server, &mut socket, wait_prompt("a", 5));
    run(&server, &mut socket, wait_prompt("a", 6));
    let text = scrape(&server);
    check_two_prompts(&text, "w1");
    assert_eq!(value(&text, "comfyrs_prompts_total", &[("outcome", "completed"), ("worker", "local")]), None, "{text}");
    // The live workers, from their heartbeats (read by the server every second).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(&server);
        if value(&text, "comfyrs_workers", &[("state", "idle")]) == Some(1.0) {
            assert_eq!(value(&text, "comfyrs_workers", &[("state", "busy")]), Some(0.0), "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "one idle worker: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_outcome_report_without_worker_or_nodes_still_records() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = broker_server(&redis.url(), dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let queue = rt.block_on(PromptQueue::connect(&redis.url(), &Namespace::default())).unwrap();
    let id = server.queue(wait_prompt("old", 1), None)["prompt_id"].as_str().unwrap().to_string();
    let d = rt.block_on(queue.claim("old", Duration::from_secs(30), Duration::from_secs(10))).unwrap().expect("dispatched");
    assert_eq!(value(&scrape(&server), "comfyrs_queue_running", &[]), Some(1.0), "a dispatched prompt counts as running");
    // As a worker from before `/metrics` reports.
    let report = json!({
        "prompt_id": id, "outcome": "completed", "number": 0, "create_time": 1, "start_time": 2, "end_time": 3, "delivery": 1,
        "entry": {"prompt": [0, id, d.job.prompt, d.job.extra_data, d.job.outputs], "outputs": {"3": {"text": ["old"]}},
                  "status": {"status_str": "success", "completed": true, "messages": []}, "meta": {}},
    });
    assert_eq!(server.post("/internal/comfyrs/outcome", &report), (200, json!({"recorded": true})));
    server.wait_history(&id);
    let text = scrape(&server);
    assert_eq!(value(&text, "comfyrs_prompts_total", &[("outcome", "completed"), ("worker", "unnamed")]), Some(1.0), "{text}");
    assert_eq!(value(&text, "comfyrs_queue_running", &[]), Some(0.0), "{text}");
    // A second delivery's report: its nodes' work counts, its outcome does not.
    let mut again = report.clone();
    again["delivery"] = json!(2);
    again["worker"] = json!("w2");
    again["nodes"] = json!([{"class_type": "TestWait", "status": "executed", "seconds": 0.25}, {"class_type": "PrimitiveString", "status": "cached", "seconds": 0}]);
    assert_eq!(server.post("/internal/comfyrs/outcome", &again), (200, json!({"recorded": false})));
    let text = scrape(&server);
    assert_eq!(value(&text, "comfyrs_prompts_total", &[("outcome", "completed"), ("worker", "w2")]), None, "{text}");
    assert_eq!(value(&text, "comfyrs_node_runs_total", &[("class_type", "TestWait"), ("status", "executed"), ("worker", "w2")]), Some(1.0), "{text}");
    assert_eq!(value(&text, "comfyrs_node_runs_total", &[("class_type", "PrimitiveString"), ("status", "cached"), ("worker", "w2")]), Some(1.0), "{text}");
    assert_eq!(value(&text, "comfyrs_node_seconds_total", &[("class_type", "TestWait"), ("worker", "w2")]), Some(0.25), "{text}");
}
