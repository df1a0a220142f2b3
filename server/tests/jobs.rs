//! `/api/jobs`: the queue and history as jobs, filtered, sorted, paged and cancelled, over real
//! HTTP on loopback.

mod common;

use common::*;
use serde_json::{json, Value as Json};

fn submit(server: &Server, body: Json) -> String {
    let (status, resp) = server.post("/prompt", &body);
    assert_eq!(status, 200, "{resp}");
    resp["prompt_id"].as_str().unwrap().to_string()
}

fn ids(page: &Json) -> Vec<String> {
    page["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_string()).collect()
}

fn with_workflow(prompt: Json, workflow_id: &str) -> Json {
    json!({"prompt": prompt, "extra_data": {"extra_pnginfo": {"workflow": {"id": workflow_id}}}})
}

#[test]
fn jobs_list_the_queue_and_history_with_comfyuis_fields() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let a = submit(&server, with_workflow(wait_prompt("a", 1), "wf-a"));
    server.wait_history(&a);
    let b = submit(&server, with_workflow(wait_prompt("b", 1), "wf-b"));
    server.wait_history(&b);
    // One runs (until cancelled) and one waits behind it.
    let running = submit(&server, json!({"prompt": wait_prompt("long", 600_000)}));
    server.wait_job(&running, "in_progress");
    let pending = submit(&server, with_workflow(wait_prompt("p", 1), "wf-a"));

    let (status, page) = server.get("/api/jobs");
    assert_eq!(status, 200, "{page}");
    // Newest first by default.
    assert_eq!(ids(&page), [pending.clone(), running.clone(), b.clone(), a.clone()]);
    assert_eq!(page["pagination"], json!({"offset": 0, "limit": null, "total": 4, "has_more": false}));
    let jobs = page["jobs"].as_array().unwrap();
    let done = &jobs[3];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["priority"], 0);
    assert_eq!(done["workflow_id"], "wf-a");
    assert!(done["create_time"].as_i64().unwrap() > 0);
    assert!(done["execution_start_time"].as_i64().unwrap() <= done["execution_end_time"].as_i64().unwrap());
    // PreviewAny shows text: no output files, the text is the preview of last resort.
    assert_eq!(done["outputs_count"], 0);
    assert_eq!(done["previewable_outputs_count"], 0);
    assert_eq!(done["preview_output"], json!({"content": "a", "nodeId": "3", "mediaType": "text"}));
    assert!(done.get("outputs").is_none(), "the list has no details");
    assert!(done.get("execution_error").is_none(), "null keys are left out");
    assert_eq!(jobs[1]["status"], "in_progress");
    assert!(jobs[1].get("workflow_id").is_none());
    assert_eq!(jobs[0]["status"], "pending");
    assert_eq!(jobs[0]["outputs_count"], 0);
    assert_eq!(jobs[0]["workflow_id"], "wf-a");
    assert_eq!(jobs[0]["priority"], 3);

    // Filters, order and pages.
    let (_, p) = server.get("/api/jobs?status=completed");
    assert_eq!(ids(&p), [b.clone(), a.clone()]);
    let (_, p) = server.get("/api/jobs?status=pending,%20IN_PROGRESS&sort_order=asc");
    assert_eq!(ids(&p), [running.clone(), pending.clone()]);
    let (_, p) = server.get("/api/jobs?workflow_id=wf-a&sort_order=ASC");
    assert_eq!(ids(&p), [a.clone(), pending.clone()]);
    let (_, p) = server.get("/api/jobs?sort_order=asc&limit=2&offset=1");
    assert_eq!(ids(&p), [b.clone(), running.clone()]);
    assert_eq!(p["pagination"], json!({"offset": 1, "limit": 2, "total": 4, "has_more": true}));
    let (_, p) = server.get("/api/jobs?offset=-5&limit=99999999999999999999999");
    assert_eq!(p["pagination"]["offset"], 0);
    assert_eq!(ids(&p).len(), 4);
    let (_, p) = server.get("/api/jobs?offset=10");
    assert_eq!(p["jobs"], json!([]));
    assert_eq!(p["pagination"]["total"], 4);
    // An empty status list matches nothing, as in ComfyUI.
    let (_, p) = server.get("/api/jobs?status=,");
    assert_eq!(p["pagination"]["total"], 0);
    // Unfinished jobs last no time; finished ones by how long they ran.
    let (_, p) = server.get("/api/jobs?sort_by=execution_duration&sort_order=asc");
    assert_eq!(ids(&p).len(), 4);

    // Registered as /api/jobs: also at /api/api/jobs, not at /jobs.
    assert_eq!(server.get("/api/api/jobs").0, 200);
    assert_eq!(server.get("/jobs").0, 404);

    // Cancelling the running job records it as cancelled.
    let (status, c) = server.post(&format!("/api/jobs/{running}/cancel"), &json!(null));
    assert_eq!((status, c), (200, json!({"cancelled": true})));
    let j = server.wait_job(&running, "cancelled");
    assert!(j["execution_status"]["messages"].as_array().unwrap().iter().any(|m| m[0] == "execution_interrupted"));
    let (_, p) = server.get("/api/jobs?status=cancelled");
    assert_eq!(ids(&p), [running]);
}

#[test]
fn a_job_shows_its_details_once_finished() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let id = submit(&server, json!({"prompt": wait_prompt("hi", 1), "client_id": "c"}));
    server.wait_history(&id);
    let (status, j) = server.get(&format!("/api/jobs/{id}"));
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["id"], id.as_str());
    assert_eq!(j["status"], "completed");
    assert_eq!(j["outputs"], json!({"3": {"text": ["hi"]}}));
    assert_eq!(j["execution_status"]["status_str"], "success");
    assert_eq!(j["workflow"]["prompt"]["2"]["class_type"], "TestWait");
    assert_eq!(j["workflow"]["extra_data"]["client_id"], "c");
    // The same record under /api/api.
    assert_eq!(server.get(&format!("/api/api/jobs/{id}")).1, j);

    let (status, j) = server.get("/api/jobs/6b2f0c4e-8d1a-4e77-9d4f-1c2b3a4d5e6f");
    assert_eq!((status, j), (404, json!({"error": "Job not found"})));
    assert_eq!(server.get("/api/jobs/cancel").0, 404);
    assert_eq!(server.get("/api/jobs/not-a-uuid").0, 404);
}

#[test]
fn failed_jobs_carry_their_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    // The test nodes cannot fail at run time, so a finished entry is rewritten into what the
    // executor records for a node error, with the server stopped.
    let id = submit(&server, json!({"prompt": wait_prompt("x", 1)}));
    server.wait_history(&id);
    assert!(server.get(&format!("/api/jobs/{id}")).1.get("execution_error").is_none());
    server.stop();

    let db = comfyrs_server::Store::open(&dir.path().join("comfyrs.sqlite"), 100).unwrap();
    db.with_conn(|c| {
        c.execute(
            "UPDATE history SET outcome = 'failed', entry = json_set(entry, '$.status.status_str', 'error',
               '$.status.messages', json_array(json_array('execution_start', json_object('prompt_id', prompt_id, 'timestamp', 5)),
                 json_array('execution_error', json_object('prompt_id', prompt_id, 'node_id', '2', 'exception_message', 'boom', 'timestamp', 9))))",
            [],
        )?;
        Ok(())
    })
    .unwrap();
    drop(db);
    let server = Server::start(dir.path());
    let (_, j) = server.get(&format!("/api/jobs/{id}"));
    assert_eq!(j["status"], "failed");
    assert_eq!(j["execution_error"]["exception_message"], "boom");
    assert_eq!(j["execution_start_time"], 5);
    assert_eq!(j["execution_end_time"], 9);
    let (_, p) = server.get("/api/jobs?status=failed");
    assert_eq!(ids(&p), [id]);
}

#[test]
fn bad_parameters_are_400_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    for q in [
        "status=done",
        "status=pending,nope",
        "sort_by=name",
        "sort_order=up",
        "limit=0",
        "limit=-1",
        "limit=ten",
        "offset=x",
        "limit=1.5",
    ] {
        let (status, body) = server.get(&format!("/api/jobs?{q}"));
        assert_eq!(status, 400, "{q}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{q}: {body}");
    }
    let (_, body) = server.get("/api/jobs?status=done");
    assert_eq!(body["error"], "Invalid status value(s): done. Valid values: pending, in_progress, completed, failed, cancelled");
}

#[test]
fn cancelling_dequeues_pending_jobs_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    assert_eq!(server.post("/queue/pause", &json!(null)).0, 200);
    let p1 = submit(&server, json!({"prompt": wait_prompt("1", 1)}));
    let p2 = submit(&server, json!({"prompt": wait_prompt("2", 1)}));
    let p3 = submit(&server, json!({"prompt": wait_prompt("3", 1)}));
    assert_eq!(server.get(&format!("/api/jobs/{p1}")).1["status"], "pending");

    assert_eq!(server.post(&format!("/api/jobs/{p1}/cancel"), &json!(null)).1, json!({"cancelled": true}));
    assert_eq!(server.post(&format!("/api/jobs/{p1}/cancel"), &json!(null)).1, json!({"cancelled": false}));
    assert_eq!(server.get(&format!("/api/jobs/{p1}")).0, 404);
    assert_eq!(server.post("/api/jobs/nonsense/cancel", &json!(null)).1, json!({"cancelled": false}));

    // The batch form: malformed ids are refused before anything is cancelled.
    let (status, body) = server.post("/api/jobs/cancel", &json!({"job_ids": [p2, "nope", 5, {"a": 1}]}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["invalid_ids"], json!(["nope", "5", "{\"a\":1}"]));
    assert_eq!(server.get(&format!("/api/jobs/{p2}")).1["status"], "pending");
    for bad in [json!({}), json!({"job_ids": "x"}), json!([1]), json!({"job_ids": [p2.to_uppercase()]})] {
        assert_eq!(server.post("/api/jobs/cancel", &bad).0, 400, "{bad}");
    }
    assert_eq!(server.call("POST", "/api/jobs/cancel", &[], Some(b"{not json")).status, 400);

    let (status, body) = server.post("/api/jobs/cancel", &json!({"job_ids": [p2, p1]}));
    assert_eq!((status, body), (200, json!({"cancelled": true})));
    assert_eq!(server.post("/api/jobs/cancel", &json!({"job_ids": [p2, p1]})).1, json!({"cancelled": false}));
    assert_eq!(server.post("/api/jobs/cancel", &json!({"job_ids": []})).1, json!({"cancelled": false}));

    // What is left runs; a finished job cannot be cancelled.
    assert_eq!(server.post("/queue/resume", &json!(null)).0, 200);
    server.wait_history(&p3);
    assert_eq!(server.post(&format!("/api/jobs/{p3}/cancel"), &json!(null)).1, json!({"cancelled": false}));
    let (_, p) = server.get("/api/jobs");
    assert_eq!(ids(&p), [p3]);
}
