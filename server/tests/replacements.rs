//! Node replacements: listed at /node_replacements as the host registered them, and applied to
//! a submitted prompt whose class is gone, before validation (ComfyUI's server does the same).

mod common;

use common::Server;
use serde_json::json;

#[test]
fn replacements_are_listed_and_a_prompt_with_an_old_class_runs_as_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    for prefix in ["", "/api"] {
        let (status, listed) = server.get(&format!("{prefix}/node_replacements"));
        assert_eq!(status, 200);
        assert_eq!(listed["OldConcat"][0]["new_node_id"], "StringConcatenate", "{listed}");
        assert_eq!(listed["Gone"][0]["new_node_id"], "NotHere", "{listed}");
    }

    // OldConcat becomes StringConcatenate: inputs renamed, the delimiter set, and the
    // consumer's link moves from the old output slot 1 to slot 0.
    let prompt = json!({
        "1": {"class_type": "OldConcat", "inputs": {"first": "a", "second": "b", "unmapped": 3}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}},
    });
    let accepted = server.queue(prompt, None);
    let id = accepted["prompt_id"].as_str().unwrap_or_else(|| panic!("{accepted}")).to_string();
    let entry = server.wait_history(&id);
    assert_eq!(entry["status"]["status_str"], "success", "{entry}");
    assert_eq!(entry["outputs"]["2"]["text"], json!(["a+b"]), "{entry}");
    // The queue and history keep the prompt as it ran.
    assert_eq!(entry["prompt"][2]["1"]["class_type"], "StringConcatenate", "{entry}");
    assert_eq!(entry["prompt"][2]["2"]["inputs"]["source"], json!(["1", 0]), "{entry}");

    // A class replaced by one this server does not have stays as it was: unknown.
    let (status, r) = server.post("/prompt", &json!({"prompt": {"1": {"class_type": "Gone", "inputs": {}}}}));
    assert_eq!(status, 400);
    assert_eq!(r["error"]["type"], "missing_node_type", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("'Gone'"), "{r}");
}
