//! Fuzzing `Prompt::parse` + `validate` (+ the executor for accepted prompts) with proptest:
//! random text, random JSON, random prompts over the test classes, and mutations of seed
//! prompts (the API prompts under `workflows/`, read at run time, and our own). Nothing may
//! panic; accepted prompts must run to a consistent report, and their signatures must not
//! depend on node ids.
//!
//! Case counts are kept moderate (the whole runtime suite runs in CI on 2 cores); raise them
//! locally with `PROPTEST_CASES=5000 cargo test -p comfyrs-runtime --test fuzz_prompt`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::*;
use comfyrs_runtime::cache::CacheMode;
use comfyrs_runtime::executor::{Executor, NodeStatus, RunReport};
use comfyrs_runtime::prompt::Prompt;
use comfyrs_runtime::signature::sign_all;
use comfyrs_runtime::validate::{validate, Validated};
use comfyrs_runtime::Registry;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use serde_json::{json, Map, Value as Json};

// -------------------------------------------------------------------------------------------------
// The world: test classes, stand-ins for the workflows' classes, seed prompts

struct World {
    probe: Arc<Probe>,
    /// One executor for all cases of a thread: its cache holds results of many prompts.
    shared: std::cell::RefCell<Executor>,
    registry: Registry,
    seeds: Vec<Json>,
    class_names: Vec<String>,
}

fn own_seeds() -> Vec<Json> {
    vec![
        json!({
            "1": {"class_type": "Int", "inputs": {"value": 1}},
            "2": {"class_type": "Int", "inputs": {"value": 2}},
            "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
            "4": {"class_type": "Preview", "inputs": {"value": ["3", 0]}},
            "5": {"class_type": "Str", "inputs": {"value": "s"}},
            "6": {"class_type": "Concat", "inputs": {"a": ["5", 0], "b": "x", "sep": "-"}},
            "7": {"class_type": "Echo", "inputs": {"value": ["6", 0]}},
        }),
        json!({
            "t": {"class_type": "Int", "inputs": {"value": 1}},
            "f": {"class_type": "Fail", "inputs": {"message": "no"}},
            "s": {"class_type": "Switch", "inputs": {"switch": true, "on_true": ["t", 0], "on_false": ["f", 0]}},
            "p": {"class_type": "Preview", "inputs": {"value": ["s", 0]}},
            "s2": {"class_type": "Switch", "inputs": {"switch": "", "on_true": ["f", 0], "on_false": ["s", 0]}},
            "p2": {"class_type": "Preview", "inputs": {"value": ["s2", 0]}},
        }),
        json!({
            "1": {"class_type": "Range", "inputs": {"start": 0, "count": 3}},
            "2": {"class_type": "Range", "inputs": {"start": ["1", 0], "count": 2}},
            "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
            "4": {"class_type": "Join", "inputs": {"values": ["3", 0], "sep": "+"}},
            "5": {"class_type": "Preview", "inputs": {"value": ["4", 0]}},
            "6": {"class_type": "Preview", "inputs": {"value": ["3", 0]}},
        }),
        json!({
            "1": {"class_type": "Slow", "inputs": {"value": 1, "ms": 1}},
            "2": {"class_type": "Slow", "inputs": {"value": ["1", 0], "ms": 1}},
            "3": {"class_type": "Always", "inputs": {"value": 4}},
            "4": {"class_type": "NotIdempotent", "inputs": {"value": ["3", 0]}},
            "5": {"class_type": "Sink", "inputs": {"any": ["2", 0], "model": ["6", 0], "pic": ["7", 0]}},
            "6": {"class_type": "ModelSrc", "inputs": {}},
            "7": {"class_type": "UnionSrc", "inputs": {}},
            "8": {"class_type": "Preview", "inputs": {"value": ["4", 0]}},
        }),
        json!({
            "1": {"class_type": "Widgets", "inputs": {"i": 5, "f": 0.5, "mode": "a", "big": "opt03", "flag": true, "text": "t"}},
            "2": {"class_type": "Even", "inputs": {"n": ["1", 0]}},
            "3": {"class_type": "Multi", "inputs": {"value": ["2", 0]}},
            "4": {"class_type": "Preview", "inputs": {"value": ["3", 2]}},
            "5": {"class_type": "Fingerprinted", "inputs": {"value": ["3", 0]}},
            "6": {"class_type": "Interrupter", "inputs": {"value": ["5", 0]}},
            "7": {"class_type": "Preview", "inputs": {"value": ["6", 0]}},
            "8": {"class_type": "AnyPass", "inputs": {"value": {"__value__": [1, 2]}}},
            "9": {"class_type": "Preview", "inputs": {"value": ["8", 0]}},
        }),
    ]
}

fn world() -> World {
    let probe = Probe::limited(2_000);
    let mut registry = Registry::new();
    for &k in &safe_kinds() {
        registry.register(Arc::new(TestNode::new(k, probe.clone())));
    }
    let workflows: Vec<Json> = workflow_prompts().into_iter().map(|(_, j)| j).collect();
    register_mimics(&mut registry, &probe, &workflows);
    let mut seeds = own_seeds();
    seeds.extend(workflows);
    let class_names = registry.names().map(String::from).collect();
    World { probe, registry, seeds, class_names, shared: std::cell::RefCell::new(Executor::new(CacheMode::Lru, 64 << 20)) }
}

// -------------------------------------------------------------------------------------------------
// Checking one document

/// What happened to one document, for the properties below.
#[derive(Debug, PartialEq)]
enum Outcome {
    NotJson,
    NotAPrompt,
    Rejected(String),
    Ran,
}

fn check_text(w: &World, text: &str) -> Outcome {
    match Prompt::parse(text) {
        Err(comfyrs_runtime::prompt::PromptError::Json { line, column, .. }) => {
            assert!(line >= 1, "line {line}");
            let _ = column;
            Outcome::NotJson
        }
        Err(_) => Outcome::NotAPrompt,
        Ok((_, json)) => check_json(w, &json),
    }
}

fn check_json(w: &World, json: &Json) -> Outcome {
    let out = check_json_inner(w, json);
    if std::env::var_os("FUZZ_STATS").is_some() {
        eprintln!("OUTCOME {out:?}");
    }
    out
}

fn check_json_inner(w: &World, json: &Json) -> Outcome {
    let Ok(prompt) = Prompt::from_json(json) else { return Outcome::NotAPrompt };
    // The prompt round-trips through its JSON form.
    let again = Prompt::from_json(&prompt.to_json()).expect("to_json gives a prompt");
    assert_eq!(again.nodes.len(), prompt.nodes.len());
    match validate(prompt, &w.registry, None) {
        Err(rej) => {
            check_rejection_shape(&rej.to_json(), json);
            let _ = rej.render();
            Outcome::Rejected(rej.error.kind.clone())
        }
        Ok(v) => {
            check_accepted(w, &v, json);
            Outcome::Ran
        }
    }
}

fn check_error_shape(e: &Json) {
    let o = e.as_object().expect("an error is an object");
    assert_eq!(o.keys().map(String::as_str).collect::<Vec<_>>().len(), 4, "{e}");
    for k in ["details", "extra_info", "message", "type"] {
        assert!(o.contains_key(k), "{e}");
    }
    assert!(e["type"].is_string() && e["message"].is_string() && e["details"].is_string() && e["extra_info"].is_object(), "{e}");
}

fn check_rejection_shape(rej: &Json, prompt: &Json) {
    check_error_shape(&rej["error"]);
    let ne = rej["node_errors"].as_object().expect("node_errors is an object");
    for (id, n) in ne {
        assert!(prompt.get(id).is_some(), "node_errors names node {id}, which is not in the prompt");
        let errs = n["errors"].as_array().expect("errors");
        assert!(!errs.is_empty(), "node {id} is listed without errors");
        errs.iter().for_each(check_error_shape);
        assert!(n["class_type"].is_string());
        for o in n["dependent_outputs"].as_array().expect("dependent_outputs") {
            assert!(prompt.get(o.as_str().unwrap()).is_some());
        }
    }
    let t = rej["error"]["type"].as_str().unwrap();
    let known = ["missing_node_type", "prompt_no_outputs", "prompt_outputs_failed_validation"];
    assert!(known.contains(&t), "unexpected prompt-level error {t}");
    if t != "prompt_outputs_failed_validation" {
        assert!(ne.is_empty());
    } else {
        assert!(!ne.is_empty(), "failed validation without node errors: {rej}");
    }
}

fn uses_unstable_classes(v: &Validated) -> bool {
    v.schemas.iter().any(|s| matches!(s.name.as_str(), "Always" | "NotIdempotent"))
}

fn check_accepted(w: &World, v: &Validated, json: &Json) {
    assert!(!v.outputs.is_empty());
    for &o in &v.outputs {
        assert!(v.schemas[o].output_node);
    }
    for (id, ne) in &v.node_errors {
        assert!(json.get(id).is_some());
        assert!(!ne.errors.is_empty());
    }
    // Signatures do not depend on node ids (unless a class asks for its id or never caches).
    let sigs = sign_all(v);
    if !uses_unstable_classes(v) {
        let (renamed, map) = renumber(json, sigs.len() as u64 + 17);
        let p2 = Prompt::from_json(&renamed).unwrap();
        let v2 = validate(p2, &w.registry, None).unwrap_or_else(|r| panic!("renumbering made the prompt invalid: {}", r.to_json()));
        let sigs2 = sign_all(&v2);
        let by_id2: BTreeMap<&str, _> = (0..sigs2.len()).map(|i| (v2.id(i), sigs2[i])).collect();
        for (i, s) in sigs.iter().enumerate() {
            assert_eq!(*s, by_id2[map[v.id(i)].as_str()], "node {} changed signature when renamed", v.id(i));
        }
    }
    // Run twice on one executor: the reports must be consistent.
    let mut exec = Executor::new(CacheMode::Lru, 1 << 20);
    w.probe.reset();
    let r1 = exec.run(v, &options());
    check_report(v, &r1);
    w.probe.reset();
    let r2 = exec.run(v, &options());
    check_report(v, &r2);
    if r1.success() && !uses_unstable_classes(v) {
        assert_eq!(w.probe.total(), 0, "a successful prompt re-ran nodes on its second run: {:?}", w.probe.ran());
        assert!(r2.success());
    }
    // Cache soundness: on the executor shared by every case of this thread (its cache full of
    // other prompts' results), a prompt gives what it gives with no cache at all.
    w.probe.reset();
    let fresh = Executor::new(CacheMode::None, 0).run(v, &options());
    w.probe.reset();
    let shared = w.shared.borrow_mut().run(v, &options());
    check_report(v, &shared);
    if fresh.success() && shared.success() {
        assert_eq!(results(&shared), results(&fresh), "served from the cache ≠ computed: {json}");
    }
}

/// UI outputs and output values by node id, order-independent.
fn results(r: &RunReport) -> (BTreeMap<String, Json>, BTreeMap<String, Vec<Json>>) {
    (
        r.outputs.iter().map(|(k, v)| (k.clone(), Json::Object(v.clone()))).collect(),
        r.values.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    )
}

fn check_report(v: &Validated, r: &RunReport) {
    let ids: Vec<&str> = r.nodes.iter().map(|n| n.id.as_str()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a node is reported twice: {ids:?}");
    let status: BTreeMap<&str, &NodeStatus> = r.nodes.iter().map(|n| (n.id.as_str(), &n.status)).collect();
    for e in &r.errors {
        assert_eq!(status.get(e.node_id.as_str()), Some(&&NodeStatus::Failed), "{e:?}");
    }
    for n in &r.nodes {
        if let NodeStatus::Skipped { blocked_by } = &n.status {
            assert_eq!(status.get(blocked_by.as_str()), Some(&&NodeStatus::Failed), "{} blocked by {blocked_by}", n.id);
        }
        if n.status == NodeStatus::NotRun {
            assert!(r.interrupted, "{} did not run, and nothing interrupted the run: {:?}", n.id, r.nodes);
        }
    }
    if r.success() {
        for &o in &v.outputs {
            let s = status[v.id(o)];
            assert!(matches!(s, NodeStatus::Executed | NodeStatus::Cached), "output {} is {s:?}", v.id(o));
        }
    } else {
        assert!(r.interrupted || !r.errors.is_empty());
    }
}

// -------------------------------------------------------------------------------------------------
// Strategies

fn leaf() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        prop::sample::select(vec![0i64, 1, -1, 2, 3, 10, 11, 1000, i64::MAX, i64::MIN]).prop_map(Json::from),
        (-1e6f64..1e6).prop_map(Json::from),
        prop::num::f64::NORMAL.prop_map(Json::from),
        "[a-z0-9 _.'\"\\\\-]{0,8}".prop_map(Json::String),
        prop::sample::select(vec![
            "nan", "inf", "-inf", "1e5", "12", " 7 ", "1_0", "+5", "true", "false", "", "a", "b", "opt07", "__value__",
            "0x10", "٣", "1.5", "-0", "other.safetensors", "euler", "*", "\u{0}", "ÿ",
        ])
        .prop_map(|s| Json::String(s.into())),
    ]
}

fn any_json() -> impl Strategy<Value = Json> {
    leaf().prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::vec(("[a-z_]{0,6}", inner.clone()), 0..6).prop_map(|kv| Json::Object(kv.into_iter().collect())),
            inner.clone().prop_map(|v| json!({"__value__": v})),
            ("[0-9a-z]{1,3}", 0u64..4).prop_map(|(id, slot)| json!([id, slot])),
            (0u64..20, 0u64..4).prop_map(|(id, slot)| json!([id, slot])),
        ]
    })
}

/// An input value for a random prompt over `n` nodes: mostly links and plausible constants.
fn value(n: usize) -> impl Strategy<Value = Json> {
    prop_oneof![
        4 => (0..n.max(1), 0u64..3).prop_map(|(i, slot)| json!([i.to_string(), slot])),
        1 => (0..n.max(1) + 3, -1i64..5).prop_map(|(i, slot)| json!([i.to_string(), slot])),
        3 => leaf(),
        1 => any_json(),
    ]
}

/// The random choices for one node of a random prompt; [`build_prompt`] reads them against
/// the class's schema, so most inputs get a value of the right kind.
#[derive(Clone, Debug)]
struct NodePlan {
    class: usize,
    picks: Vec<u32>,
    leaves: Vec<Json>,
    extra: Option<(String, Json)>,
    unknown: Option<String>,
}

fn node_plan() -> impl Strategy<Value = NodePlan> {
    (
        any::<usize>(),
        prop::collection::vec(any::<u32>(), 12),
        prop::collection::vec(leaf(), 6),
        prop::option::weighted(0.15, (prop::sample::select(input_names()).prop_map(String::from), value(8))),
        prop::option::weighted(0.01, "[A-Za-z]{1,8}"),
    )
        .prop_map(|(class, picks, leaves, extra, unknown)| NodePlan { class, picks, leaves, extra, unknown })
}

/// Builds a prompt from plans: node `i` of class `plan.class`, each declared input usually a
/// link to a compatible earlier node (sockets) or an in-range constant (widgets), sometimes
/// missing, out of range, of the wrong kind, linked anywhere (cycles) or random JSON.
fn build_prompt(w: &World, plans: &[NodePlan]) -> Json {
    use comfyrs_runtime::schema::{InputKind, Num};
    use comfyrs_runtime::validate::types_compatible;
    let names: Vec<&str> = w.registry.names().collect();
    let mut m = Map::new();
    let mut outs: Vec<Vec<String>> = Vec::new(); // output types per node so far
    let num = |n: &Option<Num>, d: f64| n.map(|x| x.as_f64()).unwrap_or(d);
    for (i, plan) in plans.iter().enumerate() {
        let class = names[plan.class % names.len()];
        let schema = w.registry.get(class).unwrap().schema();
        let mut inputs = Map::new();
        for (k, spec) in schema.declared_inputs().enumerate() {
            let p = plan.picks[k % plan.picks.len()].wrapping_add(k as u32 * 7919);
            let roll = p % 20;
            let leafv = plan.leaves[k % plan.leaves.len()].clone();
            let value = match roll {
                0 => continue, // missing
                1 => leafv,
                2 => json!([(p as usize % plans.len()).to_string(), p % 3]), // anywhere, maybe a cycle
                _ => match &spec.kind {
                    InputKind::Socket(t) => {
                        let want = t.clone();
                        let cands: Vec<(usize, usize)> = (0..i)
                            .flat_map(|j| outs[j].iter().enumerate().map(move |(s, ty)| (j, s, ty.clone())))
                            .filter(|(_, _, ty)| types_compatible(ty, &want))
                            .map(|(j, s, _)| (j, s))
                            .collect();
                        if cands.is_empty() {
                            leafv
                        } else {
                            let (j, s) = cands[p as usize % cands.len()];
                            json!([j.to_string(), s])
                        }
                    }
                    InputKind::Int { min, max, .. } => {
                        let (lo, hi) = (num(min, -5.0) as i64, num(max, 5.0) as i64);
                        let span = (hi - lo).clamp(0, 20) as u32 + 1;
                        if roll == 3 { json!(hi.saturating_add(1)) } else { json!(lo + (p % span) as i64) }
                    }
                    InputKind::Float { min, max, .. } => {
                        let (lo, hi) = (num(min, -5.0), num(max, 5.0));
                        if roll == 3 { json!(lo - 0.5) } else { json!(lo + (hi - lo).min(100.0) * (p % 101) as f64 / 100.0) }
                    }
                    InputKind::String { .. } => json!(format!("s{}", p % 5)),
                    InputKind::Boolean { .. } => json!(p % 2 == 0),
                    InputKind::Combo { options, .. } if !options.is_empty() && roll != 3 => options[p as usize % options.len()].clone(),
                    _ => leafv,
                },
            };
            inputs.insert(spec.name.clone(), value);
        }
        if let Some((name, v)) = &plan.extra {
            inputs.insert(name.clone(), v.clone());
        }
        let ct = plan.unknown.clone().unwrap_or_else(|| class.to_string());
        m.insert(i.to_string(), json!({"class_type": ct, "inputs": inputs}));
        outs.push(schema.outputs.iter().map(|o| o.ty.clone()).collect());
    }
    let has_output = m.values().any(|n| n["class_type"].as_str().and_then(|c| w.registry.get(c)).is_some_and(|c| c.schema().output_node));
    if !has_output && !m.is_empty() {
        let last = (m.len() - 1).to_string();
        m.insert("out".into(), json!({"class_type": "Preview", "inputs": {"value": [last, 0]}}));
    }
    Json::Object(m)
}

fn input_names() -> Vec<&'static str> {
    vec![
        "value", "a", "b", "sep", "switch", "on_true", "on_false", "values", "start", "count", "message", "n", "ms", "i", "f",
        "mode", "big", "flag", "text", "model", "pic", "any", "junk", "clip", "samples", "seed",
    ]
}

/// One edit of a seed prompt; indices are taken modulo what exists when it is applied.
#[derive(Clone, Debug)]
enum Op {
    DeleteNode(usize),
    DuplicateNode(usize, String),
    RenameNode(usize, String, bool),
    DeleteInput(usize, usize),
    Retarget(usize, usize, usize, u64),
    LinkToConsumer(usize, usize),
    ChangeClass(usize, usize),
    SetValue(usize, usize, Json),
    AddInput(usize, String, Json),
    BreakRecord(usize, u8),
}

fn op() -> impl Strategy<Value = Op> {
    let idx = || any::<usize>();
    prop_oneof![
        idx().prop_map(Op::DeleteNode),
        (idx(), "[0-9a-z:]{1,4}").prop_map(|(a, b)| Op::DuplicateNode(a, b)),
        (idx(), "[0-9a-z:]{1,4}", any::<bool>()).prop_map(|(a, b, c)| Op::RenameNode(a, b, c)),
        (idx(), idx()).prop_map(|(a, b)| Op::DeleteInput(a, b)),
        (idx(), idx(), idx(), prop_oneof![4 => 0u64..3, 1 => 0u64..1000]).prop_map(|(a, b, c, d)| Op::Retarget(a, b, c, d)),
        (idx(), idx()).prop_map(|(a, b)| Op::LinkToConsumer(a, b)),
        (idx(), idx()).prop_map(|(a, b)| Op::ChangeClass(a, b)),
        (idx(), idx(), any_json()).prop_map(|(a, b, c)| Op::SetValue(a, b, c)),
        (idx(), prop::sample::select(input_names()).prop_map(String::from), value(8)).prop_map(|(a, b, c)| Op::AddInput(a, b, c)),
        (idx(), 0u8..6).prop_map(|(a, b)| Op::BreakRecord(a, b)),
    ]
}

fn apply(prompt: &mut Json, op: &Op, class_names: &[String]) {
    let Some(m) = prompt.as_object_mut() else { return };
    if m.is_empty() {
        return;
    }
    let ids: Vec<String> = m.keys().cloned().collect();
    let pick = |i: usize| ids[i % ids.len()].clone();
    let input_key = |m: &Map<String, Json>, id: &str, k: usize| -> Option<String> {
        let keys: Vec<String> = m.get(id)?.get("inputs")?.as_object()?.keys().cloned().collect();
        (!keys.is_empty()).then(|| keys[k % keys.len()].clone())
    };
    match op {
        Op::DeleteNode(i) => {
            m.shift_remove(&pick(*i));
        }
        Op::DuplicateNode(i, new) => {
            let rec = m[&pick(*i)].clone();
            m.insert(new.clone(), rec);
        }
        Op::RenameNode(i, new, fix_links) => {
            let old = pick(*i);
            let rec = m.shift_remove(&old).unwrap();
            m.insert(new.clone(), rec);
            if *fix_links {
                for rec in m.values_mut() {
                    if let Some(Json::Object(inputs)) = rec.get_mut("inputs") {
                        for v in inputs.values_mut() {
                            if let Json::Array(a) = v {
                                if a.len() == 2 && a[0] == json!(old) {
                                    a[0] = json!(new);
                                }
                            }
                        }
                    }
                }
            }
        }
        Op::DeleteInput(i, k) => {
            let id = pick(*i);
            if let Some(key) = input_key(m, &id, *k) {
                m[&id]["inputs"].as_object_mut().unwrap().shift_remove(&key);
            }
        }
        Op::Retarget(i, k, t, slot) => {
            let id = pick(*i);
            if let Some(key) = input_key(m, &id, *k) {
                m[&id]["inputs"][&key] = json!([pick(*t), slot]);
            }
        }
        Op::LinkToConsumer(i, k) => {
            // Make a node's input point at one of its consumers (often a cycle).
            let id = pick(*i);
            let consumers: Vec<String> = m
                .iter()
                .filter(|(_, rec)| {
                    rec.get("inputs").and_then(Json::as_object).is_some_and(|ins| ins.values().any(|v| v.get(0) == Some(&json!(id))))
                })
                .map(|(c, _)| c.clone())
                .collect();
            if let (Some(c), Some(key)) = (consumers.first(), input_key(m, &id, *k)) {
                m[&id]["inputs"][&key] = json!([c, 0]);
            }
        }
        Op::ChangeClass(i, c) => {
            if let Some(rec) = m[&pick(*i)].as_object_mut() {
                rec.insert("class_type".into(), json!(class_names[c % class_names.len()]));
            }
        }
        Op::SetValue(i, k, v) => {
            let id = pick(*i);
            if let Some(key) = input_key(m, &id, *k) {
                m[&id]["inputs"][&key] = v.clone();
            }
        }
        Op::AddInput(i, name, v) => {
            let id = pick(*i);
            if let Some(Json::Object(inputs)) = m[&id].get_mut("inputs") {
                inputs.insert(name.clone(), v.clone());
            }
        }
        Op::BreakRecord(i, how) => {
            let id = pick(*i);
            if *how == 3 {
                m[&id] = json!("not a node");
                return;
            }
            let Some(rec) = m[&id].as_object_mut() else { return };
            match how {
                0 => {
                    rec.shift_remove("class_type");
                }
                1 => {
                    rec.insert("class_type".into(), json!(7));
                }
                2 => {
                    rec.insert("inputs".into(), json!([1, 2]));
                }
                4 => {
                    rec.insert("class_type".into(), json!("NoSuchClassAnywhere"));
                }
                _ => {
                    rec.insert("_meta".into(), json!({"title": 5}));
                }
            }
        }
    }
}

fn config(cases: u32) -> Config {
    let env = std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse::<u32>().ok());
    Config {
        cases: env.map(|n| n.max(cases)).unwrap_or(cases),
        // Found cases go into named regression tests below, not into files next to the tests.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        max_shrink_iters: 2_000,
        ..Config::default()
    }
}

thread_local! {
    static WORLD: World = world();
}

fn with_world<T>(f: impl FnOnce(&World) -> T) -> T {
    WORLD.with(f)
}

// -------------------------------------------------------------------------------------------------
// Properties

#[test]
fn seeds_are_valid_prompts_and_run() {
    with_world(|w| {
        assert!(w.seeds.len() >= own_seeds().len());
        for (k, seed) in w.seeds.iter().enumerate() {
            let outcome = check_json(w, seed);
            assert_eq!(outcome, Outcome::Ran, "seed {k} did not run: {seed}");
        }
    });
    let found = workflow_prompts();
    eprintln!("fuzz seeds from workflows/: {}", found.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>().join(", "));
}

proptest! {
    #![proptest_config(config(600))]

    #[test]
    fn parse_never_panics_on_random_text(text in prop_oneof![
        "\\PC{0,64}",
        "[{}\\[\\]\":,0-9a-z_ \n]{0,64}",
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]) {
        with_world(|w| { check_text(w, &text); });
    }

    #[test]
    fn random_json_never_panics(j in any_json()) {
        with_world(|w| {
            check_json(w, &j);
            check_json(w, &json!({"1": j.clone()}));
            check_json(w, &json!({"1": {"class_type": "Preview", "inputs": {"value": j}}}));
        });
    }
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn random_prompts_validate_and_run_without_panics(plans in prop::collection::vec(node_plan(), 1..14)) {
        with_world(|w| { check_json(w, &build_prompt(w, &plans)); });
    }

    #[test]
    fn mutated_seeds_validate_and_run_without_panics(
        seed in any::<usize>(),
        ops in prop::collection::vec(op(), 1..6),
    ) {
        with_world(|w| {
            let mut p = w.seeds[seed % w.seeds.len()].clone();
            for o in &ops {
                apply(&mut p, o, &w.class_names);
            }
            check_json(w, &p);
            check_text(w, &serde_json::to_string(&p).unwrap());
        });
    }

    #[test]
    fn truncated_and_corrupted_seed_text_never_panics(
        seed in any::<usize>(),
        cut in any::<prop::sample::Index>(),
        junk in prop::option::of((any::<prop::sample::Index>(), "[\\[\\]{}\",:0-9a-z]{1,3}")),
    ) {
        with_world(|w| {
            let text = serde_json::to_string_pretty(&w.seeds[seed % w.seeds.len()]).unwrap();
            let mut bytes = text.as_bytes()[..cut.index(text.len() + 1)].to_vec();
            if let Some((at, s)) = &junk {
                let at = at.index(bytes.len() + 1);
                bytes.splice(at..at, s.bytes());
            }
            let text = String::from_utf8_lossy(&bytes);
            check_text(w, &text);
        });
    }
}

// -------------------------------------------------------------------------------------------------
// Cases the fuzzer found, kept as regression tests

/// Checks one document against the fuzz world without proptest.
fn regression(doc: Json) -> Outcome {
    with_world(|w| check_json(w, &doc))
}

#[test]
fn regression_deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let depth = 100_000;
    let text = format!("{{\"1\": {{\"class_type\": \"Preview\", \"inputs\": {{\"value\": {}{}}}}}}}", "[".repeat(depth), "]".repeat(depth));
    assert_eq!(with_world(|w| check_text(w, &text)), Outcome::NotJson);
    let text = format!("{}{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    assert_eq!(with_world(|w| check_text(w, &text)), Outcome::NotJson);
}

#[test]
fn regression_undeclared_self_link_is_a_cycle() {
    let doc = json!({"1": {"class_type": "Preview", "inputs": {"value": 1, "x": ["1", 0]}}});
    assert_eq!(regression(doc), Outcome::Rejected("prompt_outputs_failed_validation".into()));
}

#[test]
fn regression_lazy_link_cycle_is_rejected() {
    let doc = json!({
        "s": {"class_type": "Switch", "inputs": {"switch": true, "on_true": 1, "on_false": ["a", 0]}},
        "a": {"class_type": "AnyPass", "inputs": {"value": ["s", 0]}},
        "p": {"class_type": "Preview", "inputs": {"value": ["s", 0]}},
    });
    assert_eq!(regression(doc), Outcome::Rejected("prompt_outputs_failed_validation".into()));
}

#[test]
fn regression_odd_ids_slots_and_names() {
    let long = "X".repeat(100_000);
    assert_eq!(regression(json!({"1": {"class_type": long, "inputs": {}}})), Outcome::Rejected("missing_node_type".into()));
    // Empty and unusual node ids are just strings.
    let doc = json!({
        "": {"class_type": "Int", "inputs": {"value": 1}},
        "a:b:c": {"class_type": "AnyPass", "inputs": {"value": ["", 0]}},
        "12.0.0.3": {"class_type": "Preview", "inputs": {"value": ["a:b:c", 0.0]}},
    });
    assert_eq!(regression(doc), Outcome::Ran);
    // Huge and fractional slots are not links to anything that exists.
    for slot in [json!(1e300), json!(0.5), json!(u64::MAX), json!(-0.0)] {
        let doc = json!({
            "1": {"class_type": "Int", "inputs": {"value": 1}},
            "2": {"class_type": "Preview", "inputs": {"value": ["1", slot]}},
        });
        let out = regression(doc);
        assert!(matches!(out, Outcome::Rejected(_) | Outcome::Ran), "{out:?}");
    }
}

#[test]
fn regression_list_fan_out_stays_bounded_by_the_call_budget() {
    // Range fed by Range fed by Range ...: lists multiply; the fuzz world caps them.
    let mut m = Map::new();
    m.insert("0".into(), json!({"class_type": "Range", "inputs": {"start": 0, "count": 1000}}));
    for i in 1..12 {
        m.insert(i.to_string(), json!({"class_type": "Range", "inputs": {"start": [(i - 1).to_string(), 0], "count": 1000}}));
    }
    m.insert("p".into(), json!({"class_type": "Preview", "inputs": {"value": ["11", 0]}}));
    assert_eq!(regression(Json::Object(m)), Outcome::Ran);
}
