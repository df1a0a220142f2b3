//! Node expansion: nodes that return a sub-graph to run in their place (docs/comfyui.md, "Node
//! expansion"), with the test classes Repeat, Countdown and Expander of `common`.

mod common;

use std::sync::Mutex;

use common::*;
use comfyrs_runtime::events::{Event, EventSink};
use comfyrs_runtime::executor::{NodeStatus, RunOptions, RunReport};
use serde_json::{json, Value as Json};

struct Recorder(Mutex<Vec<Event>>);

impl EventSink for Recorder {
    fn emit(&self, event: &Event) {
        self.0.lock().unwrap().push(event.clone());
    }
}

fn status(r: &RunReport, id: &str) -> NodeStatus {
    r.nodes.iter().find(|n| n.id == id).unwrap_or_else(|| panic!("node {id} is not in the report: {:?}", r.nodes)).status.clone()
}

fn repeat(value: Json, times: Json) -> Json {
    json!({
        "r": {"class_type": "Repeat", "inputs": {"value": value, "times": times}},
        "p": {"class_type": "Preview", "inputs": {"value": ["r", 0]}},
    })
}

#[test]
fn an_expanded_chain_runs_and_its_last_output_is_the_result() {
    let mut h = Harness::new();
    let r = h.run(&repeat(json!(5), json!(3)));
    assert!(r.success(), "{:?}", r.errors);
    assert_eq!(texts(&r, "p"), ["8"]);
    // The added nodes are named as ComfyUI's GraphBuilder names them, and ran once each.
    for k in 1..=3 {
        let id = format!("r.0.0.{k}");
        assert_eq!(status(&r, &id), NodeStatus::Executed, "{id}");
        assert_eq!(h.probe.calls(&id), 1, "{id}");
    }
    assert_eq!(status(&r, "r"), NodeStatus::Executed);
    assert_eq!(h.probe.calls("r"), 1, "the expanding node is called once, then takes its sub-graph's result");

    // The same prompt again: the expanding node's result is cached, nothing expands.
    let again = h.run(&repeat(json!(5), json!(3)));
    assert_eq!(texts(&again, "p"), ["8"]);
    assert_eq!(h.probe.total(), 0, "ran: {:?}", h.probe.ran());
}

#[test]
fn expansion_ids_never_enter_cache_keys() {
    let mut h = Harness::new();
    // The expanding node re-runs on every prompt (its source is "always changed"), under
    // another id each time; what it adds is the same work, so it comes from the cache.
    let prompt = |id: &str| {
        json!({
            "src": {"class_type": "Always", "inputs": {"value": 5}},
            id: {"class_type": "Repeat", "inputs": {"value": ["src", 0], "times": 2}},
            "p": {"class_type": "Preview", "inputs": {"value": [id, 0]}},
        })
    };
    let first = h.run(&prompt("one"));
    assert_eq!(texts(&first, "p"), ["7"]);
    assert_eq!(h.probe.calls("one.0.0.1") + h.probe.calls("one.0.0.2"), 2);
    let second = h.run(&prompt("two"));
    assert_eq!(texts(&second, "p"), ["7"]);
    assert_eq!(h.probe.calls("two"), 1, "the expanding node ran again");
    // The chain's last node is a hit, so the one before it is not even needed.
    assert_eq!(status(&second, "two.0.0.2"), NodeStatus::Cached);
    assert!(second.nodes.iter().all(|n| n.id != "two.0.0.1"), "{:?}", second.nodes);
    assert_eq!(h.probe.calls("two.0.0.1") + h.probe.calls("two.0.0.2"), 0, "ran: {:?}", h.probe.ran());
}

#[test]
fn recursive_expansion_makes_a_loop() {
    let mut h = Harness::new();
    let prompt = json!({
        "c": {"class_type": "Countdown", "inputs": {"n": 4, "acc": 0}},
        "p": {"class_type": "Preview", "inputs": {"value": ["c", 0]}},
    });
    let r = h.run(&prompt);
    assert!(r.success(), "{:?}", r.errors);
    assert_eq!(texts(&r, "p"), ["10"]);
    // Each level expands below the previous one's `next`.
    let deepest = "c.0.0.next.0.0.next.0.0.next.0.0.next";
    assert_eq!(status(&r, deepest), NodeStatus::Executed);
    assert_eq!(h.probe.calls(deepest), 1);
    assert_eq!(r.nodes.iter().filter(|n| n.class_type == "Add").count(), 4);
}

#[test]
fn calls_of_a_list_expand_separately_and_mix_with_plain_results() {
    let mut h = Harness::new();
    // times = 0, 1, 2: the first call returns its value plainly, the others expand.
    let prompt = json!({
        "t": {"class_type": "Range", "inputs": {"start": 0, "count": 3}},
        "r": {"class_type": "Repeat", "inputs": {"value": 10, "times": ["t", 0]}},
        "j": {"class_type": "Join", "inputs": {"values": ["r", 0]}},
        "p": {"class_type": "Preview", "inputs": {"value": ["j", 0]}},
    });
    let r = h.run(&prompt);
    assert!(r.success(), "{:?}", r.errors);
    assert_eq!(texts(&r, "p"), ["10,11,12"], "results keep the order of the calls");
    // Each call names its nodes after its index.
    assert_eq!(status(&r, "r.1.0.1"), NodeStatus::Executed);
    assert_eq!(status(&r, "r.2.0.2"), NodeStatus::Executed);
}

#[test]
fn an_output_node_in_an_expansion_reports_its_ui() {
    let mut h = Harness::new();
    let prompt = json!({
        "x": {"class_type": "Expander", "inputs": {"value": "hello", "mode": "show"}},
        "p": {"class_type": "Preview", "inputs": {"value": ["x", 0]}},
    });
    let rec = Recorder(Mutex::new(Vec::new()));
    let v = h.validate(&prompt);
    let r = h.executor.run(&v, &RunOptions { events: &rec, registry: Some(&h.registry), ..options() });
    assert!(r.success(), "{:?}", r.errors);
    assert_eq!(texts(&r, "x.0.0.a"), ["hello"]);
    assert_eq!(texts(&r, "p"), ["hello"]);
    let events = rec.0.into_inner().unwrap();
    let added = events.iter().find_map(|e| match e {
        Event::Expanded { node, added, nodes, .. } if node == "x" => Some((added.clone(), *nodes)),
        _ => None,
    });
    assert_eq!(added, Some((vec![("x.0.0.a".to_string(), "x".to_string())], 1)), "the added node is shown as its parent");
}

#[test]
fn a_broken_expansion_fails_its_node_with_what_is_wrong() {
    for (mode, says) in [
        ("class", "node 'x.0.0.a' has class 'NoSuchClass', which is not installed"),
        ("link", "links to node 'nowhere', which is neither in the prompt nor in the expansion"),
        ("cycle", "its nodes form a dependency cycle"),
        ("own", "depends on its own result"),
    ] {
        let mut h = Harness::new();
        let prompt = json!({
            "x": {"class_type": "Expander", "inputs": {"value": 1, "mode": mode}},
            "p": {"class_type": "Preview", "inputs": {"value": ["x", 0]}},
        });
        let r = h.run(&prompt);
        assert_eq!(r.errors.len(), 1, "{mode}: {:?}", r.errors);
        let e = &r.errors[0];
        assert_eq!(e.node_id, "x", "{mode}");
        assert!(e.exception_message.contains(says), "{mode}: {}", e.exception_message);
        assert_eq!(status(&r, "p"), NodeStatus::Skipped { blocked_by: "x".into() }, "{mode}");
    }
}

#[test]
fn a_failure_inside_an_expansion_stops_the_expanding_node() {
    let mut h = Harness::new();
    let prompt = json!({
        "x": {"class_type": "Expander", "inputs": {"value": 1, "mode": "fail"}},
        "p": {"class_type": "Preview", "inputs": {"value": ["x", 0]}},
        "q": {"class_type": "Preview", "inputs": {"value": "independent"}},
    });
    let r = h.run(&prompt);
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.errors[0].node_id, "x.0.0.a");
    assert_eq!(r.errors[0].exception_message, "inner failure");
    assert_eq!(status(&r, "x"), NodeStatus::Skipped { blocked_by: "x.0.0.a".into() });
    assert_eq!(status(&r, "p"), NodeStatus::Skipped { blocked_by: "x.0.0.a".into() });
    assert_eq!(texts(&r, "q"), ["independent"]);
}

#[test]
fn without_a_registry_an_expansion_fails_saying_so() {
    let h = Harness::new();
    let mut exec = comfyrs_runtime::executor::Executor::new(comfyrs_runtime::cache::CacheMode::Lru, usize::MAX);
    let v = h.validate(&repeat(json!(1), json!(1)));
    let r = exec.run(&v, &options());
    assert_eq!(r.errors.len(), 1);
    assert!(r.errors[0].exception_message.contains("no node registry"), "{}", r.errors[0].exception_message);
}
