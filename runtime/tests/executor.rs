//! Signatures, cache and scheduler: what runs, what is served from the cache, list semantics,
//! lazy inputs, failures, interrupts, concurrency and depth.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use comfyrs_runtime::cache::CacheMode;
use comfyrs_runtime::executor::NodeStatus;
use comfyrs_runtime::signature::{sign_all, Signature};
use serde_json::{json, Map, Value as Json};

/// Signatures by node id.
fn sigs(h: &Harness, prompt: &Json) -> BTreeMap<String, Signature> {
    let v = h.validate(prompt);
    sign_all(&v).into_iter().enumerate().filter_map(|(i, s)| s.map(|s| (v.id(i).to_string(), s))).collect()
}

/// Two branches into outputs, constants of several kinds.
fn diamond() -> Json {
    json!({
        "1": {"class_type": "Int", "inputs": {"value": 1}},
        "2": {"class_type": "Int", "inputs": {"value": 2}},
        "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
        "4": {"class_type": "Int", "inputs": {"value": 4}},
        "5": {"class_type": "Add", "inputs": {"a": ["3", 0], "b": ["4", 0]}},
        "6": {"class_type": "Str", "inputs": {"value": "six"}},
        "7": {"class_type": "Preview", "inputs": {"value": ["5", 0]}},
        "8": {"class_type": "Concat", "inputs": {"a": ["6", 0], "b": "!", "sep": " "}},
        "9": {"class_type": "Preview", "inputs": {"value": ["8", 0]}},
    })
}

// ---------------------------------------------------------------------------------------------
// Signatures

#[test]
fn signatures_are_equal_under_renumbered_ids_and_order() {
    let h = Harness::new();
    let a = sigs(&h, &diamond());
    assert_eq!(a.len(), 9);
    for seed in [1, 2, 3, 42, 9001] {
        let (renamed, map) = renumber(&diamond(), seed);
        let b = sigs(&h, &renamed);
        for (old, new) in &map {
            assert_eq!(a[old], b[new], "node {old} renamed {new} (seed {seed})");
        }
    }
    // Different nodes have different signatures.
    let distinct: BTreeSet<&Signature> = a.values().collect();
    assert_eq!(distinct.len(), a.len());
}

#[test]
fn negative_zero_signs_as_zero() {
    // ComfyUI's cache keys compare constants as Python values, where -0.0 == 0.0: a prompt
    // that differs only there is served from the cache.
    let h = Harness::new();
    let zero = |v: f64| json!({"1": {"class_type": "Float", "inputs": {"value": v}}, "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}}});
    assert_eq!(sigs(&h, &zero(0.0)), sigs(&h, &zero(-0.0)));
    assert_ne!(sigs(&h, &zero(0.0))["1"], sigs(&h, &zero(1e-300))["1"]);
}

#[test]
fn a_renumbered_prompt_hits_the_cache() {
    let mut h = Harness::new();
    let first = h.run(&diamond());
    assert!(first.success());
    assert_eq!(h.probe.total(), 9);
    let (renamed, map) = renumber(&diamond(), 7);
    let second = h.run(&renamed);
    assert!(second.success());
    assert_eq!(h.probe.total(), 0, "nothing re-runs");
    assert_eq!(texts(&second, &map["7"]), ["7"]);
    assert_eq!(texts(&second, &map["9"]), ["six !"]);
}

#[test]
fn the_same_sub_graph_in_another_workflow_has_the_same_signatures() {
    let h = Harness::new();
    let a = sigs(&h, &diamond());
    // Another workflow: other ids, extra nodes around, the diamond's 1-2-3-4-5 inside it.
    let other = json!({
        "a": {"class_type": "Int", "inputs": {"value": 1}},
        "b": {"class_type": "Int", "inputs": {"value": 2}},
        "c": {"class_type": "Add", "inputs": {"b": ["b", 0], "a": ["a", 0]}},
        "d": {"class_type": "Int", "inputs": {"value": 4}},
        "e": {"class_type": "Add", "inputs": {"a": ["c", 0], "b": ["d", 0]}},
        "f": {"class_type": "AnyPass", "inputs": {"value": ["e", 0]}},
        "g": {"class_type": "Echo", "inputs": {"value": ["f", 0]}},
        "h": {"class_type": "Preview", "inputs": {"value": ["c", 0]}},
    });
    let b = sigs(&h, &other);
    for (x, y) in [("1", "a"), ("2", "b"), ("3", "c"), ("4", "d"), ("5", "e")] {
        assert_eq!(a[x], b[y], "{x} vs {y}");
    }
    // And running it after the diamond re-uses 1-5: only f, g, h run.
    let mut h = Harness::new();
    h.run(&diamond());
    let report = h.run(&other);
    assert_eq!(executed(&report), set(&["f", "g", "h"]));
    assert_eq!(h.probe.ran(), set(&["f", "g", "h"]));
    assert_eq!(texts(&report, "g"), ["7"]);
}

#[test]
fn signatures_depend_on_class_constants_links_and_slots() {
    let h = Harness::new();
    let base = sigs(&h, &diamond());
    let mut p = diamond();
    p["4"]["inputs"]["value"] = json!(5);
    let changed = sigs(&h, &p);
    assert_eq!(base["1"], changed["1"]);
    assert_eq!(base["3"], changed["3"]);
    assert_ne!(base["4"], changed["4"]);
    assert_ne!(base["5"], changed["5"]);
    assert_ne!(base["7"], changed["7"]);
    assert_eq!(base["9"], changed["9"]);
    // Swapping which input a link feeds changes the signature.
    let mut p = diamond();
    p["3"]["inputs"] = json!({"a": ["2", 0], "b": ["1", 0]});
    assert_ne!(base["3"], sigs(&h, &p)["3"]);
    // The output slot enters: Multi's INT vs STRING output.
    let multi = |slot: usize| {
        sigs(
            &h,
            &json!({
                "1": {"class_type": "Multi", "inputs": {"value": 3}},
                "2": {"class_type": "Preview", "inputs": {"value": ["1", slot]}},
            }),
        )["2"]
    };
    assert_ne!(multi(0), multi(2));
    // Undeclared constants do not enter (they never reach the node).
    let mut p = diamond();
    p["7"]["inputs"]["junk"] = json!("whatever");
    assert_eq!(base["7"], sigs(&h, &p)["7"]);
}

#[test]
fn int_and_float_constants_have_different_signatures_on_a_socket() {
    let mut h = Harness::new();
    let prompt = |v: Json| json!({"1": {"class_type": "AnyPass", "inputs": {"value": v}}, "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}}});
    let (i, f) = (sigs(&h, &prompt(json!(1))), sigs(&h, &prompt(json!(1.0))));
    assert_ne!(i["1"], f["1"]);
    assert_ne!(i["2"], f["2"]);
    let r = h.run(&prompt(json!(1)));
    assert_eq!(texts(&r, "2"), ["1"]);
    let r = h.run(&prompt(json!(1.0)));
    assert_eq!(h.probe.total(), 2, "1.0 is not served from 1's entry");
    assert_eq!(texts(&r, "2"), ["1.0"]);
    // A FLOAT widget coerces 1 to 1.0 first: same signature.
    let float = |v: Json| json!({"1": {"class_type": "Float", "inputs": {"value": v}}, "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}}});
    assert_eq!(sigs(&h, &float(json!(1)))["1"], sigs(&h, &float(json!(1.0)))["1"]);
    // Object key order does not matter, JSON structure does.
    let a = sigs(&h, &prompt(json!({"x": 1, "y": [1, 2]})));
    let b = sigs(&h, &prompt(json!({"y": [1, 2], "x": 1})));
    let c = sigs(&h, &prompt(json!({"y": [2, 1], "x": 1})));
    assert_eq!(a["1"], b["1"]);
    assert_ne!(a["1"], c["1"]);
}

#[test]
fn not_idempotent_nodes_with_different_ids_do_not_share() {
    let mut h = Harness::new();
    let prompt = json!({
        "a": {"class_type": "NotIdempotent", "inputs": {"value": 1}},
        "b": {"class_type": "NotIdempotent", "inputs": {"value": 1}},
        "c": {"class_type": "Int", "inputs": {"value": 1}},
        "d": {"class_type": "Int", "inputs": {"value": 1}},
        "pa": {"class_type": "Preview", "inputs": {"value": ["a", 0]}},
        "pb": {"class_type": "Preview", "inputs": {"value": ["b", 0]}},
    });
    let s = sigs(&h, &prompt);
    assert_ne!(s["a"], s["b"]);
    assert_ne!(s["pa"], s["pb"]);
    let r = h.run(&prompt);
    assert_eq!(h.probe.calls("a"), 1);
    assert_eq!(h.probe.calls("b"), 1);
    assert!(r.success());
    // The same id keeps hitting the cache; renaming it does not.
    h.run(&prompt);
    assert_eq!(h.probe.total(), 0);
    let (renamed, _) = renumber(&prompt, 5);
    h.run(&renamed);
    assert_eq!(h.probe.total(), 4, "both NotIdempotent nodes and their previews re-run");
    // Ordinary nodes with the same constants share a signature.
    let plain = sigs(&h, &json!({
        "c": {"class_type": "Int", "inputs": {"value": 1}},
        "d": {"class_type": "Int", "inputs": {"value": 1}},
        "p": {"class_type": "Preview", "inputs": {"value": ["c", 0]}},
        "q": {"class_type": "Preview", "inputs": {"value": ["d", 0]}},
    }));
    assert_eq!(plain["c"], plain["d"]);
}

// ---------------------------------------------------------------------------------------------
// Cache behaviour across runs

#[test]
fn a_second_run_executes_nothing_and_reports_cached() {
    let mut h = Harness::new();
    let first = h.run(&diamond());
    assert_eq!(first.count(&NodeStatus::Executed), 9);
    assert_eq!(h.probe.total(), 9);
    let second = h.run(&diamond());
    assert_eq!(h.probe.total(), 0);
    assert!(second.success());
    assert!(!second.nodes.is_empty());
    assert!(second.nodes.iter().all(|n| n.status == NodeStatus::Cached), "{:?}", second.nodes);
    // Cache hits end the walk: only the outputs are looked at.
    assert_eq!(with_status(&second, &NodeStatus::Cached), set(&["7", "9"]));
    // Their UI is replayed.
    assert_eq!(texts(&second, "7"), ["7"]);
    assert_eq!(texts(&second, "9"), ["six !"]);
    assert_eq!(second.cache.hits, 2);
}

#[test]
fn changing_one_constant_re_executes_exactly_its_downstream() {
    let mut h = Harness::new();
    h.run(&diamond());
    let mut p = diamond();
    p["2"]["inputs"]["value"] = json!(20);
    let r = h.run(&p);
    assert_eq!(executed(&r), set(&["2", "3", "5", "7"]));
    assert_eq!(h.probe.ran(), set(&["2", "3", "5", "7"]));
    assert_eq!(h.probe.total(), 4);
    assert_eq!(with_status(&r, &NodeStatus::Cached), set(&["1", "4", "9"]));
    assert_eq!(texts(&r, "7"), ["25"]);
    // A change feeding the other output only.
    let mut p2 = p.clone();
    p2["8"]["inputs"]["sep"] = json!("-");
    let r = h.run(&p2);
    assert_eq!(executed(&r), set(&["8", "9"]));
    assert_eq!(texts(&r, "9"), ["six-!"]);
    // Back to the first prompt: everything is still cached.
    let r = h.run(&diamond());
    assert_eq!(h.probe.total(), 0);
    assert_eq!(texts(&r, "7"), ["7"]);
}

#[test]
fn always_fingerprint_re_runs_the_node_and_its_dependents_every_time() {
    let mut h = Harness::new();
    let prompt = json!({
        "1": {"class_type": "Int", "inputs": {"value": 3}},
        "2": {"class_type": "Always", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "AnyPass", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "Preview", "inputs": {"value": ["3", 0]}},
        "5": {"class_type": "Int", "inputs": {"value": 5}},
        "6": {"class_type": "Preview", "inputs": {"value": ["5", 0]}},
    });
    let r = h.run(&prompt);
    assert_eq!(h.probe.total(), 6);
    assert!(r.success());
    for _ in 0..3 {
        let r = h.run(&prompt);
        assert_eq!(executed(&r), set(&["2", "3", "4"]));
        assert_eq!(h.probe.ran(), set(&["2", "3", "4"]));
        assert_eq!(with_status(&r, &NodeStatus::Cached), set(&["1", "6"]));
        assert_eq!(texts(&r, "4"), ["3"]);
    }
}

#[test]
fn two_always_nodes_in_one_prompt_both_run() {
    // ComfyUI's NaN fingerprint never equals another: two "random" nodes must not share.
    let mut h = Harness::new();
    let prompt = json!({
        "1": {"class_type": "Always", "inputs": {"value": 1}},
        "2": {"class_type": "Always", "inputs": {"value": 1}},
        "3": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
        "4": {"class_type": "Preview", "inputs": {"value": ["2", 0]}},
    });
    let s = sigs(&h, &prompt);
    assert_ne!(s["1"], s["2"]);
    h.run(&prompt);
    assert_eq!(h.probe.ran(), set(&["1", "2", "3", "4"]));
}

#[test]
fn a_changed_fingerprint_value_re_runs_the_node() {
    let mut h = Harness::new();
    let prompt = json!({
        "1": {"class_type": "Fingerprinted", "inputs": {"value": 3}},
        "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
    });
    h.run(&prompt);
    h.run(&prompt);
    assert_eq!(h.probe.total(), 0);
    *h.probe.fingerprint.lock().unwrap() = json!({"mtime": 2});
    let r = h.run(&prompt);
    assert_eq!(executed(&r), set(&["1", "2"]));
    h.run(&prompt);
    assert_eq!(h.probe.total(), 0);
}

#[test]
fn regression_identical_branches_in_one_prompt_are_computed_once() {
    // docs/comfyui.md, "Signatures and IS_CHANGED": keys are independent of node ids, so two
    // identical branches in one prompt are computed once.
    let mut h = Harness::new();
    let prompt = json!({
        "1": {"class_type": "Int", "inputs": {"value": 5}},
        "2": {"class_type": "AnyPass", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "Preview", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "Int", "inputs": {"value": 5}},
        "5": {"class_type": "AnyPass", "inputs": {"value": ["4", 0]}},
        "6": {"class_type": "Preview", "inputs": {"value": ["5", 0]}},
    });
    let r = h.run(&prompt);
    assert!(r.success());
    assert_eq!(h.probe.total(), 3, "ran: {:?}", h.probe.ran());
    assert_eq!(texts(&r, "3"), ["5"]);
    assert_eq!(texts(&r, "6"), ["5"]);
}

// ---------------------------------------------------------------------------------------------
// List semantics (docs/comfyui.md, "List semantics")

#[test]
fn lists_repeat_the_shorter_input_to_the_longest() {
    let mut h = Harness::new();
    let r = h.run(&json!({
        "1": {"class_type": "Range", "inputs": {"start": 0, "count": 3}},
        "2": {"class_type": "Range", "inputs": {"start": 10, "count": 2}},
        "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
        "4": {"class_type": "Preview", "inputs": {"value": ["3", 0]}},
        "5": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 100}},
        "6": {"class_type": "Preview", "inputs": {"value": ["5", 0]}},
    }));
    assert!(r.success(), "{:?}", r.errors);
    // (0,10), (1,11), (2,11): b repeats its last element.
    assert_eq!(h.probe.calls("3"), 3);
    assert_eq!(texts(&r, "4"), ["10", "12", "13"], "UI dicts of the calls are merged");
    assert_eq!(h.probe.calls("4"), 3);
    // A constant is a one-element list.
    assert_eq!(texts(&r, "6"), ["100", "101", "102"]);
}

#[test]
fn input_is_list_gets_whole_lists_in_one_call() {
    let mut h = Harness::new();
    let r = h.run(&json!({
        "1": {"class_type": "Range", "inputs": {"start": 1, "count": 4}},
        "2": {"class_type": "Join", "inputs": {"values": ["1", 0], "sep": "+"}},
        "3": {"class_type": "Preview", "inputs": {"value": ["2", 0]}},
    }));
    assert!(r.success(), "{:?}", r.errors);
    assert_eq!(h.probe.calls("2"), 1);
    assert_eq!(texts(&r, "3"), ["1+2+3+4"]);
}

#[test]
fn output_is_list_results_are_concatenated_across_calls() {
    let mut h = Harness::new();
    let r = h.run(&json!({
        "1": {"class_type": "Range", "inputs": {"start": 0, "count": 2}},
        "2": {"class_type": "Range", "inputs": {"start": ["1", 0], "count": 2}},
        "3": {"class_type": "Join", "inputs": {"values": ["2", 0]}},
        "4": {"class_type": "Preview", "inputs": {"value": ["3", 0]}},
        "5": {"class_type": "Preview", "inputs": {"value": ["2", 0]}},
    }));
    assert!(r.success(), "{:?}", r.errors);
    assert_eq!(h.probe.calls("2"), 2);
    // start 0 → [0, 1], start 1 → [1, 2]
    assert_eq!(texts(&r, "4"), ["0,1,1,2"]);
    assert_eq!(texts(&r, "5"), ["0", "1", "1", "2"]);
    // The run's values report the whole list of an output node's slot.
    let v = h.validate(&json!({
        "1": {"class_type": "Range", "inputs": {"start": 0, "count": 3}},
        "2": {"class_type": "Echo", "inputs": {"value": ["1", 0]}},
    }));
    let r = h.executor.run(&v, &options());
    assert_eq!(r.values["2"], vec![json!([0, 1, 2])]);
    assert_eq!(texts(&r, "2"), ["0", "1", "2"]);
}

#[test]
fn an_empty_list_does_not_panic() {
    let mut h = Harness::new();
    let r = h.run(&json!({
        "1": {"class_type": "Range", "inputs": {"start": 0, "count": 0}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
        "3": {"class_type": "Preview", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "Join", "inputs": {"values": ["1", 0]}},
        "5": {"class_type": "Preview", "inputs": {"value": ["4", 0]}},
    }));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(h.probe.calls("2"), 0);
    assert_eq!(texts(&r, "5"), [""]);
}

// ---------------------------------------------------------------------------------------------
// Lazy inputs (docs/comfyui.md, "Lazy inputs")

fn switch(on: bool) -> Json {
    json!({
        "t1": {"class_type": "Int", "inputs": {"value": 1}},
        "t2": {"class_type": "AnyPass", "inputs": {"value": ["t1", 0]}},
        "f1": {"class_type": "Str", "inputs": {"value": "no"}},
        "f2": {"class_type": "Concat", "inputs": {"a": ["f1", 0], "b": "pe"}},
        "s": {"class_type": "Switch", "inputs": {"switch": on, "on_true": ["t2", 0], "on_false": ["f2", 0]}},
        "p": {"class_type": "Preview", "inputs": {"value": ["s", 0]}},
    })
}

#[test]
fn lazy_unneeded_branch_never_runs() {
    let mut h = Harness::new();
    let r = h.run(&switch(true));
    assert!(r.success(), "{:?}", r.errors);
    assert_eq!(h.probe.ran(), set(&["t1", "t2", "s", "p"]));
    assert_eq!(texts(&r, "p"), ["1"]);
    let ids: BTreeSet<String> = r.nodes.iter().map(|n| n.id.clone()).collect();
    assert!(!ids.contains("f1") && !ids.contains("f2"), "{ids:?}");
}

#[test]
fn lazy_requested_branch_runs() {
    let mut h = Harness::new();
    let r = h.run(&switch(false));
    assert!(r.success(), "{:?}", r.errors);
    assert_eq!(h.probe.ran(), set(&["f1", "f2", "s", "p"]));
    assert_eq!(texts(&r, "p"), ["nope"]);
    assert_eq!(h.probe.calls("s"), 1, "the function runs once, after its lazy input");
}

#[test]
fn a_failing_unneeded_lazy_branch_does_not_matter() {
    let mut h = Harness::new();
    let mut p = switch(true);
    p["f2"] = json!({"class_type": "Fail", "inputs": {"message": "never"}});
    let r = h.run(&p);
    assert!(r.success(), "{:?}", r.errors);
    assert_eq!(h.probe.calls("f2"), 0);
}

#[test]
fn lazy_sources_are_served_from_the_cache() {
    let mut h = Harness::new();
    h.run(&switch(true));
    // The switch changes (the unused branch's constant), its chosen source does not.
    let mut p = switch(true);
    p["f1"]["inputs"]["value"] = json!("other");
    let r = h.run(&p);
    assert!(r.success(), "{:?}", r.errors);
    assert_eq!(executed(&r), set(&["s", "p"]));
    assert_eq!(h.probe.ran(), set(&["s", "p"]));
    assert!(with_status(&r, &NodeStatus::Cached).contains("t2"), "{:?}", r.nodes);
    // Flip to the other branch and back: each branch is computed once overall.
    h.run(&switch(false));
    assert_eq!(h.probe.ran(), set(&["f1", "f2", "s", "p"]));
    h.run(&switch(true));
    assert_eq!(h.probe.total(), 0);
}

#[test]
fn regression_lazy_branch_below_a_failed_node_is_skipped_not_lost() {
    // "bad" fails before the switch asks for its lazy branch, which hangs below "bad": the
    // branch and the switch were left waiting forever and reported NotRun (as if interrupted).
    let mut h = Harness::new();
    let r = h.run(&json!({
        "bad": {"class_type": "Fail", "inputs": {"message": "x"}},
        "o1": {"class_type": "Preview", "inputs": {"value": ["bad", 0]}},
        "a": {"class_type": "AnyPass", "inputs": {"value": ["bad", 0]}},
        "s": {"class_type": "Switch", "inputs": {"switch": true, "on_true": ["a", 0], "on_false": 0}},
        "o2": {"class_type": "Preview", "inputs": {"value": ["s", 0]}},
    }));
    assert!(!r.interrupted);
    assert_eq!(r.errors.len(), 1);
    let blocked = NodeStatus::Skipped { blocked_by: "bad".into() };
    let status: BTreeMap<&str, &NodeStatus> = r.nodes.iter().map(|n| (n.id.as_str(), &n.status)).collect();
    assert_eq!(status["o1"], &blocked);
    assert_eq!(status["a"], &blocked, "{status:?}");
    assert_eq!(status["s"], &blocked, "{status:?}");
    assert_eq!(status["o2"], &blocked, "{status:?}");
    assert_eq!(r.count(&NodeStatus::NotRun), 0);
}

// ---------------------------------------------------------------------------------------------
// Failures

#[test]
fn a_failing_node_stops_its_dependents_while_an_independent_branch_finishes() {
    let mut h = Harness::new();
    let prompt = json!({
        "1": {"class_type": "Int", "inputs": {"value": 1}},
        "2": {"class_type": "Fail", "inputs": {"value": ["1", 0], "message": "it broke"}},
        "3": {"class_type": "AnyPass", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "Preview", "inputs": {"value": ["3", 0]}},
        "5": {"class_type": "Int", "inputs": {"value": 5}},
        "6": {"class_type": "Slow", "inputs": {"value": ["5", 0], "ms": 20}},
        "7": {"class_type": "Preview", "inputs": {"value": ["6", 0]}},
    });
    let r = h.run(&prompt);
    assert!(!r.success());
    assert!(!r.interrupted);
    assert_eq!(r.errors.len(), 1);
    let e = &r.errors[0];
    assert_eq!(
        e.to_json(),
        json!({
            "node_id": "2",
            "node_type": "Fail",
            "exception_message": "it broke",
            "exception_type": "ValueError",
            "traceback": [],
            "current_inputs": {"value": [1], "message": ["it broke"]},
        })
    );
    let blocked = NodeStatus::Skipped { blocked_by: "2".into() };
    assert_eq!(with_status(&r, &blocked), set(&["3", "4"]));
    assert_eq!(with_status(&r, &NodeStatus::Failed), set(&["2"]));
    assert_eq!(executed(&r), set(&["1", "5", "6", "7"]));
    assert_eq!(h.probe.ran(), set(&["1", "2", "5", "6", "7"]));
    assert_eq!(texts(&r, "7"), ["5"]);
    assert!(!r.outputs.contains_key("4"));
    // Failures are not cached: the failing node runs again, its successful source does not.
    let r = h.run(&prompt);
    assert_eq!(h.probe.ran(), set(&["2"]));
    assert_eq!(r.errors.len(), 1);
}

#[test]
fn every_failure_is_reported() {
    let mut h = Harness::new();
    let r = h.run(&json!({
        "1": {"class_type": "Fail", "inputs": {"message": "one"}},
        "2": {"class_type": "Fail", "inputs": {"message": "two"}},
        "3": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
        "4": {"class_type": "Preview", "inputs": {"value": ["2", 0]}},
        "5": {"class_type": "Sink", "inputs": {"any": ["1", 0], "model": ["ms", 0]}},
        "ms": {"class_type": "ModelSrc", "inputs": {}},
    }));
    let mut msgs: Vec<&str> = r.errors.iter().map(|e| e.exception_message.as_str()).collect();
    msgs.sort();
    assert_eq!(msgs, ["one", "two"]);
    assert_eq!(with_status(&r, &NodeStatus::Skipped { blocked_by: "1".into() }), set(&["3", "5"]));
}

#[test]
fn regression_a_panicking_node_is_a_node_error_and_does_not_hang() {
    // A panic on a worker thread used to leave the scheduler waiting for a result forever (the
    // other workers keep the result channel open); inline, it unwound through the whole run.
    for class in ["PanicWorker", "Panic"] {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut h = Harness::new();
            let r = h.run(&json!({
                "1": {"class_type": class, "inputs": {"value": 1}},
                "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
                "3": {"class_type": "Slow", "inputs": {"value": 3, "ms": 1}},
                "4": {"class_type": "Preview", "inputs": {"value": ["3", 0]}},
            }));
            let _ = tx.send(r);
        });
        let r = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|e| panic!("{class}: the run did not finish: {e}"));
        assert_eq!(r.errors.len(), 1, "{class}");
        assert_eq!(r.errors[0].node_id, "1");
        assert!(r.errors[0].exception_message.contains("panicked on purpose"), "{:?}", r.errors[0]);
        assert_eq!(with_status(&r, &NodeStatus::Skipped { blocked_by: "1".into() }), set(&["2"]));
        assert_eq!(texts(&r, "4"), ["3"]);
    }
}

#[test]
fn regression_undeclared_link_sources_get_their_own_inputs() {
    // An undeclared link is passed through and its source scheduled (docs/comfyui.md, "Undeclared
    // inputs"); the source used to be scheduled without its own links, so it ran without its
    // inputs.
    let mut h = Harness::new();
    let r = h.run(&json!({
        "1": {"class_type": "Int", "inputs": {"value": 5}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 2}},
        "3": {"class_type": "Preview", "inputs": {"value": 0, "extra": ["2", 0]}},
    }));
    assert!(r.success(), "{:?}", r.errors);
    assert_eq!(h.probe.ran(), set(&["1", "2", "3"]));
}

// ---------------------------------------------------------------------------------------------
// Interrupts

#[test]
fn interrupt_from_a_node_stops_the_run() {
    let mut h = Harness::new();
    let prompt = json!({
        "1": {"class_type": "Int", "inputs": {"value": 1}},
        "2": {"class_type": "Interrupter", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "AnyPass", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "Preview", "inputs": {"value": ["3", 0]}},
    });
    let r = h.run(&prompt);
    assert!(r.interrupted);
    assert!(!r.success());
    assert!(r.errors.is_empty());
    assert_eq!(h.probe.ran(), set(&["1", "2"]));
    assert_eq!(with_status(&r, &NodeStatus::NotRun), set(&["3", "4"]));
    // The next run starts with the flag cleared; what finished before is cached.
    let r = h.run(&prompt);
    assert!(!r.interrupted && r.success());
    assert_eq!(h.probe.ran(), set(&["3", "4"]));
}

#[test]
fn interrupt_from_another_thread_stops_between_nodes() {
    let mut h = Harness::new();
    let prompt = json!({
        "1": {"class_type": "AwaitInterrupt", "inputs": {"value": 1}},
        "2": {"class_type": "AnyPass", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "Slow", "inputs": {"value": ["2", 0], "ms": 1}},
        "4": {"class_type": "Preview", "inputs": {"value": ["3", 0]}},
    });
    let v = h.validate(&prompt);
    let flag = h.executor.interrupt.clone();
    let probe = h.probe.clone();
    let setter = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        while probe.started.load(Ordering::SeqCst) == 0 {
            assert!(t.elapsed() < Duration::from_secs(20), "node 1 never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        flag.set();
    });
    let r = h.executor.run(&v, &options());
    setter.join().unwrap();
    assert!(r.interrupted);
    assert!(r.errors.is_empty());
    assert_eq!(h.probe.ran(), set(&["1"]), "the running node finishes, nothing starts after it");
    assert_eq!(with_status(&r, &NodeStatus::NotRun), set(&["2", "3", "4"]));
}

// ---------------------------------------------------------------------------------------------
// Concurrency and order

#[test]
fn slow_worker_nodes_in_independent_branches_overlap() {
    let mut h = Harness::new();
    let r = h.run(&json!({
        "1": {"class_type": "Slow", "inputs": {"value": 1, "ms": 300}},
        "2": {"class_type": "Slow", "inputs": {"value": 2, "ms": 300}},
        "3": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
        "4": {"class_type": "Preview", "inputs": {"value": ["2", 0]}},
    }));
    assert!(r.success());
    let iv: BTreeMap<String, (std::time::Instant, std::time::Instant)> =
        h.probe.intervals().into_iter().map(|(id, s, e)| (id, (s, e))).collect();
    let (a, b) = (iv["1"], iv["2"]);
    assert!(a.0 < b.1 && b.0 < a.1, "execution intervals do not overlap: {a:?} {b:?}");
}

#[test]
fn dependent_worker_nodes_run_in_order() {
    let mut h = Harness::new();
    let r = h.run(&json!({
        "1": {"class_type": "Slow", "inputs": {"value": 1, "ms": 30}},
        "2": {"class_type": "Slow", "inputs": {"value": ["1", 0], "ms": 30}},
        "3": {"class_type": "AnyPass", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "Slow", "inputs": {"value": ["3", 0], "ms": 1}},
        "5": {"class_type": "Preview", "inputs": {"value": ["4", 0]}},
    }));
    assert!(r.success());
    let iv: BTreeMap<String, (std::time::Instant, std::time::Instant)> =
        h.probe.intervals().into_iter().map(|(id, s, e)| (id, (s, e))).collect();
    for (a, b) in [("1", "2"), ("2", "3"), ("3", "4"), ("4", "5")] {
        assert!(iv[a].1 <= iv[b].0, "{a} must finish before {b} starts");
    }
    assert_eq!(texts(&r, "5"), ["1"]);
}

#[test]
fn many_parallel_worker_nodes_all_finish() {
    let mut h = Harness::new();
    let mut m = Map::new();
    for i in 0..40 {
        m.insert(format!("s{i}"), json!({"class_type": "Slow", "inputs": {"value": i, "ms": 2}}));
        m.insert(format!("p{i}"), json!({"class_type": "Preview", "inputs": {"value": [format!("s{i}"), 0]}}));
    }
    m.insert("j".into(), json!({"class_type": "Join", "inputs": {"values": ["s39", 0]}}));
    m.insert("pj".into(), json!({"class_type": "Preview", "inputs": {"value": ["j", 0]}}));
    let r = h.run(&Json::Object(m));
    assert!(r.success());
    assert_eq!(h.probe.total(), 82);
    assert_eq!(texts(&r, "p17"), ["17"]);
}

// ---------------------------------------------------------------------------------------------
// Cache modes

#[test]
fn cache_mode_none_re_runs_everything() {
    let mut h = Harness::with_cache(CacheMode::None, usize::MAX);
    h.run(&diamond());
    assert_eq!(h.probe.total(), 9);
    let r = h.run(&diamond());
    assert_eq!(h.probe.total(), 9);
    assert_eq!(r.count(&NodeStatus::Cached), 0);
    assert_eq!(r.cache.entries, 0);
    assert_eq!(texts(&r, "7"), ["7"]);
}

fn long_string_prompt(tag: &str) -> Json {
    json!({
        "s": {"class_type": "Str", "inputs": {"value": tag.repeat(1000)}},
        "p": {"class_type": "Preview", "inputs": {"value": ["s", 0]}},
    })
}

#[test]
fn lru_with_small_cache_bytes_evicts() {
    // Each prompt caches ~2 KB (the Str result and the Preview's UI); 5 KB holds two prompts.
    let mut h = Harness::with_cache(CacheMode::Lru, 5_000);
    for tag in ["a", "b", "c"] {
        let r = h.run(&long_string_prompt(tag));
        assert!(r.success());
        assert!(r.cache.bytes <= 5_000, "{:?}", r.cache);
    }
    let r = h.run(&long_string_prompt("c"));
    assert_eq!(h.probe.total(), 0, "the most recent prompt is still cached");
    assert!(r.cache.evictions > 0, "{:?}", r.cache);
    h.run(&long_string_prompt("a"));
    assert_eq!(h.probe.ran(), set(&["s", "p"]), "the oldest prompt was evicted");
    assert!(h.executor.cache.stats().bytes <= 5_000);
}

#[test]
fn a_cache_too_small_for_any_entry_still_runs_correctly() {
    let mut h = Harness::with_cache(CacheMode::Lru, 10);
    let r = h.run(&diamond());
    assert!(r.success());
    assert_eq!(texts(&r, "7"), ["7"]);
    assert_eq!(r.cache.entries, 0);
    h.run(&diamond());
    assert_eq!(h.probe.total(), 9);
}

#[test]
fn ram_pressure_mode_runs_and_caches() {
    let mut h = Harness::with_cache(CacheMode::RamPressure, usize::MAX);
    h.run(&diamond());
    let r = h.run(&diamond());
    assert!(r.success());
    // Whether entries survive depends on the machine's free memory; a run never breaks.
    assert_eq!(texts(&r, "9"), ["six !"]);
}

// ---------------------------------------------------------------------------------------------
// Depth

#[test]
fn a_100_000_node_chain_runs_without_stack_overflow() {
    let mut h = Harness::new();
    let v = h.validate(&chain(100_000));
    let r = h.executor.run(&v, &options());
    assert!(r.success());
    assert_eq!(h.probe.total(), 100_001);
    assert_eq!(texts(&r, "100000"), ["1"]);
    h.probe.reset();
    let r = h.executor.run(&v, &options());
    assert_eq!(h.probe.total(), 0);
    assert!(r.success());
}

#[test]
fn changing_the_root_of_a_long_chain_re_runs_all_of_it() {
    let mut h = Harness::new();
    h.run(&chain(10_000));
    let mut p = chain(10_000);
    p["0"]["inputs"]["value"] = json!(2);
    let r = h.run(&p);
    assert_eq!(h.probe.total(), 10_001);
    assert_eq!(texts(&r, "10000"), ["2"]);
    // A change in the middle re-runs the lower half only.
    let mut p = chain(10_000);
    p["5000"] = json!({"class_type": "Int", "inputs": {"value": 3}});
    let r = h.run(&p);
    assert_eq!(h.probe.total(), 5_001);
    assert_eq!(texts(&r, "10000"), ["3"]);
}

// ---------------------------------------------------------------------------------------------
// Events

struct Recorder(std::sync::Mutex<Vec<comfyrs_runtime::events::Event>>);

impl comfyrs_runtime::events::EventSink for Recorder {
    fn emit(&self, event: &comfyrs_runtime::events::Event) {
        self.0.lock().unwrap().push(event.clone());
    }
}

#[test]
fn events_match_the_report() {
    use comfyrs_runtime::events::Event;
    let mut h = Harness::new();
    h.run(&diamond());
    let mut p = diamond();
    p["2"]["inputs"]["value"] = json!(20);
    p["10"] = json!({"class_type": "Fail", "inputs": {"message": "x"}});
    p["11"] = json!({"class_type": "Preview", "inputs": {"value": ["10", 0]}});
    let v = h.validate(&p);
    let rec = Recorder(std::sync::Mutex::new(Vec::new()));
    let opts = comfyrs_runtime::executor::RunOptions { events: &rec, ..options() };
    let r = h.executor.run(&v, &opts);
    let events = rec.0.into_inner().unwrap();
    assert!(matches!(events.first(), Some(Event::Start { nodes: 6, .. })), "{:?}", events.first());
    assert!(matches!(events.last(), Some(Event::Done { success: false, .. })));
    let mut executing = BTreeSet::new();
    let mut executed_ev = BTreeSet::new();
    let mut cached_ev = BTreeSet::new();
    let mut errors = BTreeSet::new();
    for e in &events {
        match e {
            Event::Executing { node, .. } => assert!(executing.insert(node.clone()), "{node} started twice"),
            Event::Executed { node, .. } => {
                assert!(executing.contains(node), "{node} finished without starting");
                executed_ev.insert(node.clone());
            }
            Event::Cached { nodes, .. } => cached_ev.extend(nodes.iter().cloned()),
            Event::Error { node, .. } => {
                errors.insert(node.clone());
            }
            _ => {}
        }
    }
    assert_eq!(executed_ev, executed(&r));
    // `Cached` lists every node cached at the start (as ComfyUI's `execution_cached`), used or not.
    assert!(with_status(&r, &NodeStatus::Cached).is_subset(&cached_ev));
    assert_eq!(errors, set(&["10"]));
    assert_eq!(executing, &executed_ev | &errors);
    assert!(cached_ev.is_disjoint(&executing));
}

// ---------------------------------------------------------------------------------------------
// Execution blockers

/// Keeps the custom messages a run sends.
#[derive(Default)]
struct Messages(std::sync::Mutex<Vec<(String, String, Json)>>);

impl comfyrs_runtime::events::EventSink for Messages {
    fn emit(&self, event: &comfyrs_runtime::events::Event) {
        if let comfyrs_runtime::events::Event::Custom { node, name, data, .. } = event {
            self.0.lock().unwrap().push((node.clone(), name.clone(), data.clone()));
        }
    }
}

fn blocked_branch(message: &str) -> Json {
    json!({
        "1": {"class_type": "Int", "inputs": {"value": 3}},
        "2": {"class_type": "Block", "inputs": {"value": ["1", 0], "block": true, "message": message}},
        "3": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 1}},
        "4": {"class_type": "Preview", "inputs": {"value": ["3", 0]}},
        "5": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
    })
}

#[test]
fn a_blocker_stops_every_node_that_uses_it_and_nothing_else() {
    let mut h = Harness::new();
    let messages = Messages::default();
    let v = h.validate(&blocked_branch(""));
    h.probe.reset();
    let r = h.executor.run(&v, &comfyrs_runtime::executor::RunOptions { events: &messages, ..options() });
    // Not an error: the prompt succeeds, the other branch shows its output, the blocked one
    // shows nothing, and neither the Add nor its Preview ran.
    assert!(r.success(), "{:?}", r.errors);
    assert_eq!(texts(&r, "5"), ["3"]);
    assert!(!r.outputs.contains_key("4"), "{:?}", r.outputs);
    assert_eq!((h.probe.calls("3"), h.probe.calls("4")), (0, 0));
    assert_eq!(h.probe.calls("2"), 1);
    assert!(messages.0.lock().unwrap().is_empty(), "a blocker without a message is silent");

    // With a message, the first node it stops reports it once (ComfyUI's non-fatal
    // execution_error); the nodes after that are blocked silently.
    let v = h.validate(&blocked_branch("no image today"));
    let r = h.executor.run(&v, &comfyrs_runtime::executor::RunOptions { events: &messages, ..options() });
    assert!(r.success(), "{:?}", r.errors);
    let sent = messages.0.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (node, name, data) = &sent[0];
    assert_eq!((node.as_str(), name.as_str()), ("3", "execution_error"));
    assert_eq!(data["exception_type"], "ExecutionBlocked");
    assert_eq!(data["exception_message"], "Execution Blocked: no image today");
    assert_eq!((data["node_id"].as_str(), data["node_type"].as_str()), (Some("3"), Some("Add")));
}

#[test]
fn a_list_holding_a_blocker_blocks_the_node_that_takes_the_whole_list() {
    let mut h = Harness::new();
    let r = h.run(&json!({
        "1": {"class_type": "Range", "inputs": {"start": 0, "count": 3}},
        "2": {"class_type": "Block", "inputs": {"value": ["1", 0], "block": true}},
        "3": {"class_type": "Join", "inputs": {"values": ["2", 0]}},
        "4": {"class_type": "Preview", "inputs": {"value": ["3", 0]}},
        "5": {"class_type": "Join", "inputs": {"values": ["1", 0]}},
        "6": {"class_type": "Preview", "inputs": {"value": ["5", 0]}},
    }));
    assert!(r.success(), "{:?}", r.errors);
    // One blocker per item (the Block node ran once per item), so the INPUT_IS_LIST Join is not
    // called; the unblocked Join is.
    assert_eq!(h.probe.calls("2"), 3);
    assert_eq!((h.probe.calls("3"), h.probe.calls("4")), (0, 0));
    assert!(!r.outputs.contains_key("4"));
    assert_eq!(h.probe.calls("5"), 1);
    assert!(r.outputs.contains_key("6"));
}
