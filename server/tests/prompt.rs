//! Submitting prompts and watching them run, over real HTTP and WebSocket on loopback.

mod common;

use common::*;
use serde_json::json;

#[test]
fn a_prompt_runs_and_its_messages_and_history_match_comfyui() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut ws = Socket::connect(&server, "c1");
    let hello = ws.text();
    assert_eq!(hello["type"], "status");
    assert_eq!(hello["data"]["sid"], "c1");
    assert_eq!(hello["data"]["status"]["exec_info"]["queue_remaining"], 0);

    let resp = server.queue(wait_prompt("hello", 5), Some("c1"));
    let id = resp["prompt_id"].as_str().unwrap().to_string();
    assert_eq!(resp["number"], 0);
    assert_eq!(resp["node_errors"], json!({}));
    let msgs = ws.until_done(&id);
    let k = kinds(&msgs);
    // Order as ComfyUI sends it: start, cached, per node, success, status, executing null.
    let pos = |t: &str| k.iter().position(|x| x == t).unwrap_or_else(|| panic!("no {t} in {k:?}"));
    assert!(pos("execution_start") < pos("execution_cached"));
    assert!(pos("execution_cached") < pos("executing"));
    assert!(pos("executed") < pos("execution_success"));
    assert_eq!(k[k.len() - 2], "status", "{k:?}");
    assert_eq!(k.last().unwrap(), "executing");
    let executed = msgs.iter().find(|m| m["type"] == "executed").unwrap();
    assert_eq!(executed["data"]["node"], "3");
    assert_eq!(executed["data"]["output"], json!({"text": ["hello"]}));
    let running: Vec<&str> = msgs
        .iter()
        .filter(|m| m["type"] == "executing" && !m["data"]["node"].is_null())
        .map(|m| m["data"]["node"].as_str().unwrap())
        .collect();
    assert_eq!(running, ["1", "2", "3"]);
    assert!(msgs.iter().any(|m| m["type"] == "progress" && m["data"]["node"] == "2"));
    assert!(msgs.iter().any(|m| m["type"] == "progress_state" && m["data"]["nodes"]["2"]["state"] == "finished"));

    let h = server.wait_history(&id);
    assert_eq!(h["outputs"]["3"], json!({"text": ["hello"]}));
    assert_eq!(h["status"]["status_str"], "success");
    assert_eq!(h["status"]["completed"], true);
    let recorded: Vec<&str> = h["status"]["messages"].as_array().unwrap().iter().map(|m| m[0].as_str().unwrap()).collect();
    assert_eq!(recorded, ["execution_start", "execution_cached", "execution_success"]);
    assert_eq!(h["prompt"][1], id.as_str());
    assert_eq!(h["prompt"][3]["client_id"], "c1");
    assert_eq!(h["prompt"][4], json!(["3"]));
    assert_eq!(h["meta"]["3"]["display_node"], "3");

    // The same prompt again: everything cached, the output's UI replayed, nothing executing.
    let id2 = server.queue(wait_prompt("hello", 5), Some("c1"))["prompt_id"].as_str().unwrap().to_string();
    let msgs = ws.until_done(&id2);
    let cached = msgs.iter().find(|m| m["type"] == "execution_cached").unwrap();
    assert_eq!(cached["data"]["nodes"], json!(["1", "2", "3"]));
    assert!(!msgs.iter().any(|m| m["type"] == "executing" && !m["data"]["node"].is_null()));
    assert!(msgs.iter().any(|m| m["type"] == "executed" && m["data"]["node"] == "3"));
    assert_eq!(server.wait_history(&id2)["outputs"]["3"], json!({"text": ["hello"]}));
}

/// A client may queue a prompt the moment its socket is open, before it reads anything: the
/// first message it reads is still the `status` hello, and none of the prompt's messages is lost
/// (docs/server.md: the socket is registered before the handshake is answered).
#[test]
fn a_prompt_queued_the_moment_the_socket_opens_loses_no_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    for i in 0..20 {
        let client = format!("eager-{i}");
        let mut ws = Socket::connect(&server, &client);
        let id = server.queue(wait_prompt("now", 0), Some(&client))["prompt_id"].as_str().unwrap().to_string();
        let hello = ws.text();
        assert_eq!((hello["type"].as_str(), hello["data"]["sid"].as_str()), (Some("status"), Some(client.as_str())), "the hello comes first");
        let k = kinds(&ws.until_done(&id));
        assert!(k.iter().any(|t| t == "execution_start") && k.iter().any(|t| t == "executed"), "{k:?}");
    }
}

/// A client that reacts to `execution_success` (the frontend refreshes its job list then) finds
/// the prompt in history and among the completed jobs: the entry is committed first.
#[test]
fn history_is_committed_before_execution_success_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut ws = Socket::connect(&server, "c9");
    ws.text();
    for round in 0..20 {
        let id = server.queue(wait_prompt(&format!("round {round}"), 0), Some("c9"))["prompt_id"].as_str().unwrap().to_string();
        loop {
            let m = ws.text();
            if m["type"] == "execution_success" && m["data"]["prompt_id"] == id.as_str() {
                break;
            }
        }
        let (_, h) = server.get(&format!("/history/{id}"));
        assert!(h.get(&id).is_some(), "round {round}: no history entry when execution_success arrived");
        let (_, j) = server.get(&format!("/api/jobs/{id}"));
        assert_eq!(j["status"], "completed", "round {round}: {j}");
    }
}

#[test]
fn validation_errors_are_comfyuis_and_nothing_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (status, body) = server.post("/prompt", &json!({"client_id": "x"}));
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "no_prompt");

    let (status, body) = server.post("/prompt", &json!({"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}));
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "missing_node_type");

    let bad = json!({"1": {"class_type": "TestWait", "inputs": {"ms": "soon", "value": "x"}}, "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}});
    let (status, body) = server.post("/prompt", &json!({"prompt": bad}));
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "prompt_outputs_failed_validation");
    assert_eq!(body["node_errors"]["1"]["errors"][0]["type"], "invalid_input_type");

    let (status, body) = server.post("/prompt", &json!({"prompt": wait_prompt("x", 1), "prompt_id": "NOT-A-UUID"}));
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_prompt_id");
    let upper = "6B2F0C4E-8D1A-4E77-9D4F-1C2B3A4D5E6F";
    assert_eq!(server.post("/prompt", &json!({"prompt": wait_prompt("x", 1), "prompt_id": upper})).0, 400);

    // A body that is not JSON is a 400 with a message, whatever the content type.
    let resp = ureq::post(&server.url("/prompt")).config().http_status_as_error(false).build().send("{not json").unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(server.get("/queue").1["queue_pending"], json!([]));
    assert_eq!(server.get("/prompt").1, json!({"exec_info": {"queue_remaining": 0}}));
}

#[test]
fn partial_acceptance_runs_the_valid_outputs_and_reports_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut p = wait_prompt("ok", 1);
    p["4"] = json!({"class_type": "PreviewAny", "inputs": {"source": ["99", 0]}});
    let resp = server.queue(p, None);
    assert!(resp["node_errors"]["4"].is_object(), "{resp}");
    let h = server.wait_history(resp["prompt_id"].as_str().unwrap());
    assert_eq!(h["prompt"][4], json!(["3"]));
    assert_eq!(h["outputs"]["3"], json!({"text": ["ok"]}));
}

#[test]
fn a_client_chosen_id_is_idempotent_and_the_api_prefix_serves_the_same_routes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let id = "6b2f0c4e-8d1a-4e77-9d4f-1c2b3a4d5e6f";
    let body = json!({"prompt": wait_prompt("once", 1), "prompt_id": id});
    let (s1, r1) = server.post("/api/prompt", &body);
    let (s2, r2) = server.post("/prompt", &body);
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(r1["prompt_id"], id);
    assert_eq!(r1["number"], r2["number"]);
    server.wait_history(id);
    let (_, r3) = server.post("/prompt", &body);
    assert_eq!(r3["prompt_id"], id);
    assert_eq!(server.get("/api/history").1.as_object().unwrap().len(), 1, "ran once");
    assert_eq!(server.get("/api/queue").1["queue_pending"], json!([]));
}

#[test]
fn front_and_priority_order_the_queue_and_pause_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    assert_eq!(server.post("/queue/pause", &json!({})).0, 200);
    let a = server.queue(wait_prompt("a", 1), None)["prompt_id"].as_str().unwrap().to_string();
    let (_, b) = server.post("/prompt", &json!({"prompt": wait_prompt("b", 1), "front": true}));
    let (_, c) = server.post("/prompt", &json!({"prompt": wait_prompt("c", 1), "priority": 5}));
    let (_, q) = server.get("/queue");
    let order: Vec<&str> = q["queue_pending"].as_array().unwrap().iter().map(|e| e[1].as_str().unwrap()).collect();
    assert_eq!(order, [c["prompt_id"].as_str().unwrap(), b["prompt_id"].as_str().unwrap(), a.as_str()]);
    assert_eq!(q["paused"], true);
    assert!(b["number"].as_f64().unwrap() < 0.0);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(server.get("/history").1, json!({}), "nothing runs while paused");

    // Delete one, resume: the rest run in order.
    assert_eq!(server.post("/queue", &json!({"delete": [a]})).0, 200);
    server.post("/queue/resume", &json!({}));
    let cid = c["prompt_id"].as_str().unwrap();
    let bid = b["prompt_id"].as_str().unwrap();
    let hc = server.wait_history(cid);
    let hb = server.wait_history(bid);
    assert!(hc["status"]["messages"][0][1]["timestamp"].as_i64() <= hb["status"]["messages"][0][1]["timestamp"].as_i64());
    assert_eq!(server.get(&format!("/history/{a}")).1, json!({}));

    // History deletes what it is told to, then everything.
    assert_eq!(server.post("/history", &json!({"delete": [cid]})).0, 200);
    let (_, h) = server.get("/history");
    assert!(h.get(cid).is_none() && h.get(bid).is_some(), "{h}");
    assert_eq!(server.post("/history", &json!({"clear": true})).0, 200);
    assert_eq!(server.get("/history").1, json!({}));
}

#[test]
fn interrupt_stops_the_running_prompt_and_it_is_recorded_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut ws = Socket::connect(&server, "c2");
    ws.text();
    let id = server.queue(wait_prompt("slow", 60_000), Some("c2"))["prompt_id"].as_str().unwrap().to_string();
    loop {
        let m = ws.text();
        if m["type"] == "executing" && m["data"]["node"] == "2" {
            break;
        }
    }
    // Another prompt's id does not interrupt it; its own does.
    server.post("/interrupt", &json!({"prompt_id": "00000000-0000-4000-8000-000000000000"}));
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(server.get("/prompt").1["exec_info"]["queue_remaining"], 1);
    server.post("/interrupt", &json!({"prompt_id": id}));
    let msgs = ws.until_done(&id);
    assert!(kinds(&msgs).contains(&"execution_interrupted".to_string()), "{:?}", kinds(&msgs));
    let h = server.wait_history(&id);
    assert_eq!(h["status"]["status_str"], "error");
    assert_eq!(h["status"]["messages"].as_array().unwrap().last().unwrap()[0], "execution_interrupted");
}

#[test]
fn stopping_the_server_keeps_the_running_prompt_queued_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut ws = Socket::connect(&server, "c3");
    ws.text();
    let id = server.queue(wait_prompt("survives", 60_000), Some("c3"))["prompt_id"].as_str().unwrap().to_string();
    let queued = server.queue(wait_prompt("next", 1), None);
    let last_number = queued["number"].as_i64().unwrap();
    let queued = queued["prompt_id"].as_str().unwrap().to_string();
    loop {
        let m = ws.text();
        if m["type"] == "executing" && m["data"]["node"] == "2" {
            break;
        }
    }
    server.stop();

    let server = Server::start(dir.path());
    let (_, q) = server.get("/queue");
    let all: Vec<&str> = q["queue_running"].as_array().unwrap().iter().chain(q["queue_pending"].as_array().unwrap()).map(|e| e[1].as_str().unwrap()).collect();
    assert!(all.contains(&id.as_str()) && all.contains(&queued.as_str()), "{q}");
    assert_eq!(server.get("/history").1, json!({}));
    // The server-chosen numbers go on from where they were: a new prompt queues behind the
    // ones that survived.
    let after = server.queue(wait_prompt("after the restart", 1), None);
    assert!(after["number"].as_i64().unwrap() > last_number, "{after} after {last_number}");
    server.post("/interrupt", &json!({"prompt_id": id}));
    server.wait_history(&queued);
}
