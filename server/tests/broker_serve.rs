//! `comfyrs serve` with a broker, against a real redis-server: prompts are handed to the stream
//! in the server's order, a worker's events reach the submitting client, its outcome is recorded
//! once, and interrupts reach the workers. The worker here is the test itself, speaking the
//! broker's protocol (docs/scale-out.md).

use std::time::Duration;

use comfyrs_server::broker::{BrokerSettings, ControlMessage, ControlSubscriber, EventLog, Namespace, PromptQueue};
use comfyrs_server::ServeOptions;
use serde_json::json;

mod common;
#[path = "common/redis.rs"]
mod redis_server;
#[path = "common/worker.rs"]
mod worker;

use common::{wait_prompt, Msg, Server, Socket};
use redis_server::RedisServer;
use worker::{broker_server, Worker};

const LEASE: Duration = Duration::from_secs(30);


fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn a_prompt_runs_on_a_worker_and_its_client_hears_it() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = broker_server(&redis.url(), dir.path());
    let rt = rt();
    let ns = Namespace::default();
    let queue = rt.block_on(PromptQueue::connect(&redis.url(), &ns)).unwrap();
    let mut socket = Socket::connect(&server, "c1");
    let id = server.queue(wait_prompt("hello", 1), Some("c1"))["prompt_id"].as_str().unwrap().to_string();

    // The worker claims it: the validated prompt, its outputs and its client.
    let d = rt.block_on(queue.claim("w1", LEASE, Duration::from_secs(10))).unwrap().expect("the prompt reaches the stream");
    assert_eq!(d.job.prompt_id, id);
    assert_eq!(d.job.extra_data["client_id"], "c1");
    assert_eq!(d.job.prompt["2"]["class_type"], "TestWait");
    assert_eq!(d.job.outputs, ["3"]);
    let (_, q) = server.get("/queue");
    assert_eq!(q["queue_running"][0][1], id, "dispatched prompts show as running: {q}");

    // Its events reach the client, in order, binary previews included.
    let conn = rt.block_on(EventLog::connection(&redis.url())).unwrap();
    let log = EventLog::new(&redis.url(), conn, &ns, &id, d.deliveries);
    rt.block_on(async {
        log.send("execution_start", &json!({"prompt_id": id}), None, false).await.unwrap();
        log.send("executing", &json!({"node": "2", "prompt_id": id}), None, false).await.unwrap();
        log.send("preview", &json!({}), Some(b"\x00\x00\x00\x01\x00\x00\x00\x01JPEG"), false).await.unwrap();
    });
    // (the socket first gets its own status message)
    let mut texts = Vec::new();
    let mut binary = None;
    while binary.is_none() {
        match socket.next() {
            Msg::Text(t) if t["type"] != "status" => texts.push(t),
            Msg::Binary(b) => binary = Some(b),
            _ => {}
        }
    }
    assert_eq!(texts.iter().map(|t| t["type"].as_str().unwrap()).collect::<Vec<_>>(), ["execution_start", "executing"]);
    assert_eq!(binary.unwrap(), b"\x00\x00\x00\x01\x00\x00\x00\x01JPEG");

    // The outcome is recorded once; a second delivery's report changes nothing.
    let report = json!({
        "prompt_id": id, "outcome": "completed", "number": 0, "create_time": 1, "start_time": 2, "end_time": 3, "delivery": 1,
        "entry": {"prompt": [0, id, d.job.prompt, d.job.extra_data, d.job.outputs], "outputs": {"3": {"text": ["hello"]}},
                  "status": {"status_str": "success", "completed": true, "messages": []}, "meta": {}},
    });
    assert_eq!(server.post("/internal/comfyrs/outcome", &report), (200, json!({"recorded": true})));
    let mut again = report.clone();
    again["outcome"] = json!("failed");
    assert_eq!(server.post("/internal/comfyrs/outcome", &again), (200, json!({"recorded": false})));
    let h = server.wait_history(&id);
    assert_eq!(h["outputs"]["3"]["text"][0], "hello");
    assert_eq!(server.get(&format!("/api/jobs/{id}")).1["status"], "completed");
    rt.block_on(log.send("executing", &json!({"node": null, "prompt_id": id}), None, false)).unwrap();
    let last = socket.until_done(&id);
    assert_eq!(last.last().unwrap()["data"]["prompt_id"], id, "the terminal message after the outcome still reaches the client");
    assert!(rt.block_on(queue.ack("w1", &d)).unwrap());
    assert_eq!(server.get("/queue").1["queue_running"], json!([]));
}

#[test]
fn the_dispatcher_stays_a_few_prompts_ahead_so_the_front_of_the_queue_still_overtakes() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = broker_server(&redis.url(), dir.path());
    let rt = rt();
    let queue = rt.block_on(PromptQueue::connect(&redis.url(), &Namespace::default())).unwrap();
    let ids: Vec<String> = (0..8).map(|i| server.queue(wait_prompt(&format!("p{i}"), 1), None)["prompt_id"].as_str().unwrap().to_string()).collect();
    // Four (the default look-ahead) reach the stream; the others wait in SQLite.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rt.block_on(queue.entries()).unwrap() < 4 {
        assert!(std::time::Instant::now() < deadline, "the dispatcher published");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rt.block_on(queue.entries()).unwrap(), 4);
    let (_, q) = server.get("/queue");
    assert_eq!((q["queue_running"].as_array().unwrap().len(), q["queue_pending"].as_array().unwrap().len()), (4, 4));
    // A prompt queued at the front is the next one published once a worker claims one.
    let (status, front) = server.post("/prompt", &json!({"prompt": wait_prompt("front", 1), "front": true}));
    assert_eq!(status, 200);
    let front = front["prompt_id"].as_str().unwrap().to_string();
    let mut claimed = Vec::new();
    for _ in 0..5 {
        let d = rt.block_on(queue.claim("w1", LEASE, Duration::from_secs(10))).unwrap().expect("a prompt");
        claimed.push(d.job.prompt_id);
    }
    assert_eq!(claimed[..4], ids[..4]);
    assert_eq!(claimed[4], front, "the front prompt overtook the four still in SQLite");
}

#[test]
fn interrupts_and_cancels_reach_the_workers() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = broker_server(&redis.url(), dir.path());
    let rt = rt();
    let ns = Namespace::default();
    let queue = rt.block_on(PromptQueue::connect(&redis.url(), &ns)).unwrap();
    let mut control = rt.block_on(ControlSubscriber::subscribe(&redis.url(), &ns)).unwrap();
    let id = server.queue(wait_prompt("x", 1), None)["prompt_id"].as_str().unwrap().to_string();
    rt.block_on(queue.claim("w1", LEASE, Duration::from_secs(10))).unwrap().expect("dispatched");
    assert_eq!(server.post("/interrupt", &json!({"prompt_id": id})).0, 200);
    assert_eq!(server.post(&format!("/api/jobs/{id}/cancel"), &json!({})).1["cancelled"], true);
    assert_eq!(server.post("/interrupt", &json!({})).0, 200);
    // An interrupt naming a prompt that is not running here is not passed on.
    assert_eq!(server.post("/interrupt", &json!({"prompt_id": "not-running"})).0, 200);
    let got = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), async {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(control.next().await.unwrap());
            }
            v
        })
        .await
        .expect("three control messages")
    });
    let stop = ControlMessage::Interrupt { prompt_id: id.clone() };
    assert_eq!(got, [stop.clone(), stop, ControlMessage::InterruptAll]);
}

#[test]
fn a_prompt_cancelled_before_a_worker_claims_it_never_runs() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = broker_server(&redis.url(), dir.path());
    let rt = rt();
    let queue = rt.block_on(PromptQueue::connect(&redis.url(), &Namespace::default())).unwrap();
    let gone = server.queue(wait_prompt("gone", 1), None)["prompt_id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !rt.block_on(queue.prompt_ids()).unwrap().contains(&gone) {
        assert!(std::time::Instant::now() < deadline, "the prompt reaches the stream");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.post(&format!("/api/jobs/{gone}/cancel"), &json!({})).1["cancelled"], true);
    // Out of the stream and the queue, without a history entry (as a cancelled pending prompt).
    assert!(rt.block_on(queue.prompt_ids()).unwrap().is_empty());
    let (_, q) = server.get("/queue");
    assert_eq!(q["queue_running"], json!([]), "{q}");
    // A worker started now runs what comes next, not the cancelled prompt.
    let _worker = Worker::start(&redis.url(), &server, "w1", LEASE);
    let next = server.queue(wait_prompt("next", 1), None)["prompt_id"].as_str().unwrap().to_string();
    assert_eq!(server.wait_history(&next)["outputs"]["3"]["text"][0], "next");
    let (_, h) = server.get("/history");
    assert_eq!(h.as_object().unwrap().keys().collect::<Vec<_>>(), [&next], "{h}");
    assert_eq!(server.post(&format!("/api/jobs/{gone}/cancel"), &json!({})).1["cancelled"], false);
}

#[test]
fn a_worker_skips_a_prompt_cancelled_before_it_started() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = broker_server(&redis.url(), dir.path());
    let rt = rt();
    let queue = rt.block_on(PromptQueue::connect(&redis.url(), &Namespace::default())).unwrap();
    // The cancel lands between the prompt's dispatch and its publication (the mark it leaves
    // is what a worker that claimed a prompt without hearing its interrupt finds).
    let id = "7f0c9a52-9d55-4c0e-8a34-3c1f1b2f0a11";
    assert_eq!(rt.block_on(queue.withdraw(id)).unwrap(), comfyrs_server::broker::Withdrawal::Absent);
    let _worker = Worker::start(&redis.url(), &server, "w1", LEASE);
    let mut socket = Socket::connect(&server, "c1");
    let (status, r) = server.post("/prompt", &json!({"prompt": wait_prompt("skipped", 60_000), "client_id": "c1", "prompt_id": id}));
    assert_eq!(status, 200, "{r}");
    let msgs = socket.until_done(id);
    assert!(msgs.iter().all(|m| m["type"] != "progress" && m["type"] != "executing" || m["data"]["node"].is_null()), "nothing ran: {msgs:?}");
    assert!(msgs.iter().any(|m| m["type"] == "execution_interrupted"), "{msgs:?}");
    assert_eq!(server.get(&format!("/api/jobs/{id}")).1["status"], "cancelled");
}

#[test]
fn uploaded_outputs_keep_their_names_unless_taken_and_a_losing_delivery_leaves_none() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = broker_server(&redis.url(), dir.path());
    let rt = rt();
    let queue = rt.block_on(PromptQueue::connect(&redis.url(), &Namespace::default())).unwrap();
    let id = server.queue(wait_prompt("files", 1), None)["prompt_id"].as_str().unwrap().to_string();
    let lease = Duration::from_millis(300);
    let first = rt.block_on(queue.claim("slow", lease, Duration::from_secs(10))).unwrap().expect("dispatched");
    std::thread::sleep(lease + Duration::from_millis(100));
    let second = rt.block_on(queue.claim("w2", lease, Duration::from_secs(1))).unwrap().expect("reclaimed");
    assert_eq!(second.deliveries, 2);
    let upload = |delivery: u64, kind: &str, sub: &str, name: &str, bytes: &[u8]| {
        let r = server.request("POST", &format!("/internal/comfyrs/files?prompt_id={id}&delivery={delivery}&type={kind}&subfolder={sub}&filename={name}"), &[], Some(bytes));
        (r.status, r.json())
    };
    // Both deliveries write "a_00001_.txt" (each numbers from its own folder).
    let (_, a1) = upload(1, "output", "", "a_00001_.txt", b"from the slow one");
    assert_eq!(a1, json!({"filename": "a_00001_.txt", "subfolder": "", "type": "output"}));
    let (_, a2) = upload(2, "output", "", "a_00001_.txt", b"from w2");
    assert_eq!(a2["filename"], "a_00001_ (1).txt", "a taken name gets a number");
    let (_, p2) = upload(2, "temp", "previews", "p.txt", b"preview");
    assert_eq!(p2, json!({"filename": "p.txt", "subfolder": "previews", "type": "temp"}));
    // The same bytes under the same name again (a cached node's replay): the file is reused.
    assert_eq!(upload(2, "output", "", "a_00001_.txt", b"from w2").1["filename"], "a_00001_ (1).txt");
    assert_eq!(upload(2, "output", "../x", "a.txt", b"x").0, 400, "no way out of the output folder");
    assert_eq!(upload(2, "input", "", "a.txt", b"x").0, 400, "workers do not write inputs");
    // The second delivery's outcome is recorded: the first one's file goes, its own stay.
    let report = json!({
        "prompt_id": id, "outcome": "completed", "number": 0, "create_time": 1, "start_time": 2, "end_time": 3, "delivery": 2,
        "entry": {"prompt": [0, id, second.job.prompt, second.job.extra_data, second.job.outputs],
                  "outputs": {"3": {"files": [a2.clone()]}},
                  "status": {"status_str": "success", "completed": true, "messages": []}, "meta": {}},
    });
    assert_eq!(server.post("/internal/comfyrs/outcome", &report), (200, json!({"recorded": true})));
    let out = dir.path().join("output");
    assert!(!out.join("a_00001_.txt").exists(), "the losing delivery's output is removed");
    assert_eq!(std::fs::read(out.join("a_00001_ (1).txt")).unwrap(), b"from w2");
    assert!(dir.path().join("temp/previews/p.txt").is_file());
    let view = server.get_bytes("/view?filename=a_00001_%20(1).txt&type=output");
    assert_eq!((view.status, view.body.as_slice()), (200, &b"from w2"[..]));
    // The slow one finishes late: its upload and its outcome are refused.
    assert_eq!(upload(1, "output", "", "late.txt", b"late").0, 409);
    let mut late = report.clone();
    late["delivery"] = json!(1);
    assert_eq!(server.post("/internal/comfyrs/outcome", &late), (200, json!({"recorded": false})));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1, "one output file");
    drop(first);
}

#[test]
fn the_server_shows_which_worker_runs_what() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = broker_server(&redis.url(), dir.path());
    let worker = Worker::start(&redis.url(), &server, "w1", LEASE);
    let id = server.queue(wait_prompt("long", 60_000), None)["prompt_id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let (_, w) = server.get("/comfyrs/workers");
        if w[0]["prompt"] == id.as_str() {
            break w;
        }
        assert!(std::time::Instant::now() < deadline, "w1 shows its prompt: {w}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!((listed[0]["name"].as_str(), listed[0]["device"].as_str(), listed[0]["done"].as_u64()), (Some("w1"), Some("cpu"), Some(0)));
    assert_eq!(listed[0]["pid"], std::process::id());
    let (_, job) = server.get(&format!("/api/jobs/{id}"));
    assert_eq!((job["status"].as_str(), job["worker"].as_str()), (Some("in_progress"), Some("w1")), "{job}");
    let (_, jobs) = server.get("/api/jobs");
    assert_eq!(jobs["jobs"][0]["worker"], "w1");
    let (_, stats) = server.get("/system_stats");
    assert_eq!(stats["workers"][0]["name"], "w1");
    // A worker that stops leaves the list at once.
    assert_eq!(server.post(&format!("/api/jobs/{id}/cancel"), &json!({})).1["cancelled"], true);
    server.wait_history(&id);
    drop(worker);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.get("/comfyrs/workers").1 != json!([]) {
        assert!(std::time::Instant::now() < deadline, "the stopped worker leaves the list");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_server_without_a_broker_refuses_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (status, body) = server.post("/internal/comfyrs/outcome", &json!({"prompt_id": "x"}));
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("--broker"), "{body}");
}

#[test]
fn an_unreachable_broker_stops_the_start_with_its_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let host = common::TestHost::new();
    let r = rt.block_on(comfyrs_server::serve(ServeOptions { port: 0, broker: Some(BrokerSettings::new(&url)), ..ServeOptions::new(dir.path()) }, host));
    let err = r.err().expect("no broker there").to_string();
    assert!(err.contains("broker") && err.contains(&url), "{err}");
}

#[test]
fn a_restarted_server_neither_loses_nor_republishes_dispatched_prompts() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let queue = rt.block_on(PromptQueue::connect(&redis.url(), &Namespace::default())).unwrap();
    let server = broker_server(&redis.url(), dir.path());
    let ids: Vec<String> = (0..2).map(|i| server.queue(wait_prompt(&format!("p{i}"), 1), Some("c1"))["prompt_id"].as_str().unwrap().to_string()).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rt.block_on(queue.entries()).unwrap() < 2 {
        assert!(std::time::Instant::now() < deadline, "the dispatcher published");
        std::thread::sleep(Duration::from_millis(10));
    }
    let claimed = rt.block_on(queue.claim("w1", LEASE, Duration::from_secs(1))).unwrap().unwrap();
    server.stop();

    // Same Redis: nothing is published twice, and the worker's report is recorded.
    let server = broker_server(&redis.url(), dir.path());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rt.block_on(queue.entries()).unwrap(), 2, "no second entry for either prompt");
    assert_eq!(server.get("/queue").1["queue_running"].as_array().unwrap().len(), 2);
    let report = json!({"prompt_id": claimed.job.prompt_id, "outcome": "completed", "number": 0, "create_time": 1, "start_time": 2, "end_time": 3, "delivery": 1,
                        "entry": {"prompt": [0, claimed.job.prompt_id, {}, {}, []], "outputs": {}, "status": {"status_str": "success", "completed": true, "messages": []}, "meta": {}}});
    assert_eq!(server.post("/internal/comfyrs/outcome", &report).1["recorded"], true);
    assert!(rt.block_on(queue.ack("w1", &claimed)).unwrap());
    server.stop();

    // A Redis that lost its data: the prompt still running is published again.
    redis.flush_all();
    let server = broker_server(&redis.url(), dir.path());
    let queue = rt.block_on(PromptQueue::connect(&redis.url(), &Namespace::default())).unwrap();
    let d = rt.block_on(queue.claim("w2", LEASE, Duration::from_secs(10))).unwrap().expect("published again");
    let other = ids.iter().find(|id| **id != claimed.job.prompt_id).unwrap();
    assert_eq!(&d.job.prompt_id, other);
    assert_eq!(d.job.extra_data["client_id"], "c1");
    assert!(rt.block_on(queue.claim("w2", LEASE, Duration::from_millis(300))).unwrap().is_none(), "the recorded one is not");
    drop(server);
}


#[test]
fn a_worker_runs_the_prompts_and_their_clients_hear_them() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = broker_server(&redis.url(), dir.path());
    let _worker = Worker::start(&redis.url(), &server, "w1", LEASE);
    let mut socket = Socket::connect(&server, "c1");
    let id = server.queue(wait_prompt("hello", 20), Some("c1"))["prompt_id"].as_str().unwrap().to_string();
    let msgs = socket.until_done(&id);
    let kinds: Vec<&str> = msgs.iter().map(|m| m["type"].as_str().unwrap()).filter(|k| *k != "status" && *k != "progress" && *k != "progress_state").collect();
    assert_eq!(kinds, ["execution_start", "execution_cached", "executing", "executing", "executing", "executed", "execution_success", "executing"], "{msgs:?}");
    let executed = msgs.iter().find(|m| m["type"] == "executed").unwrap();
    assert_eq!(executed["data"]["output"]["text"][0], "hello");
    let h = server.wait_history(&id);
    assert_eq!(h["status"]["status_str"], "success");
    assert_eq!(h["outputs"]["3"]["text"][0], "hello");
    // More prompts, without a client: all of them run, once each.
    let ids: Vec<String> = (0..5).map(|i| server.queue(wait_prompt(&format!("p{i}"), 5), None)["prompt_id"].as_str().unwrap().to_string()).collect();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(server.wait_history(id)["outputs"]["3"]["text"][0], format!("p{i}"));
    }
    let rt = rt();
    let queue = rt.block_on(PromptQueue::connect(&redis.url(), &Namespace::default())).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rt.block_on(queue.entries()).unwrap() > 0 {
        assert!(std::time::Instant::now() < deadline, "every entry acknowledged");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_interrupt_stops_the_prompt_on_its_worker() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = broker_server(&redis.url(), dir.path());
    let _worker = Worker::start(&redis.url(), &server, "w1", LEASE);
    let mut socket = Socket::connect(&server, "c1");
    let id = server.queue(wait_prompt("long", 60_000), Some("c1"))["prompt_id"].as_str().unwrap().to_string();
    // Once the worker runs it (its wait node reports progress)...
    loop {
        let m = socket.text();
        if m["type"] == "progress" {
            break;
        }
    }
    assert_eq!(server.post("/interrupt", &json!({"prompt_id": id})).0, 200);
    let msgs = socket.until_done(&id);
    assert!(msgs.iter().any(|m| m["type"] == "execution_interrupted"), "{msgs:?}");
    assert_eq!(server.wait_history(&id)["status"]["status_str"], "error");
    assert_eq!(server.get(&format!("/api/jobs/{id}")).1["status"], "cancelled");
}

#[test]
fn a_prompt_left_by_a_dead_worker_is_finished_by_another_and_recorded_once() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = broker_server(&redis.url(), dir.path());
    let rt = rt();
    let queue = rt.block_on(PromptQueue::connect(&redis.url(), &Namespace::default())).unwrap();
    let id = server.queue(wait_prompt("orphan", 1), None)["prompt_id"].as_str().unwrap().to_string();
    // A worker claims it and dies (never renews, never reports).
    let lease = Duration::from_millis(900);
    let before_claim = std::time::Instant::now();
    let dead = rt.block_on(queue.claim("dead", lease, Duration::from_secs(10))).unwrap().expect("claimed");
    assert_eq!(dead.job.prompt_id, id);
    let _worker = Worker::start(&redis.url(), &server, "w2", lease);
    let h = server.wait_history(&id);
    assert!(before_claim.elapsed() >= lease, "taken over only after the lease lapsed");
    assert_eq!(h["outputs"]["3"]["text"][0], "orphan");
    assert_eq!(server.get("/api/jobs").1["jobs"].as_array().unwrap().len(), 1, "one job, recorded once");
    // The dead worker's late acknowledgement changes nothing.
    assert!(!rt.block_on(queue.ack("dead", &dead)).unwrap());
}
