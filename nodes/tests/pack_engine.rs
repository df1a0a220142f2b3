//! The merge engine is an object, not process state: two engines in one process keep their own
//! caches and budgets, and two Exits of one prompt share one engine while running at once.

mod pack_util;

use std::sync::Arc;

use comfyrs_nodes::arch::Arch;
use comfyrs_nodes::pack::{MergeEngine, MergeSettings};
use comfyrs_runtime::memory::{MemoryBudget, Place};
use pack_util::*;
use serde_json::{json, Value as Json};

/// A merge of two LoRAs onto the base at `t`, through an Exit with the subtree cache on.
fn merge_prompt(t: f64) -> Json {
    json!({
        "1": {"class_type": "WIDENBaseInput", "inputs": {"model_name": "tiny/sdxl_f32.safetensors"}},
        "2": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/a.safetensors", "strength": 1.0}},
        "3": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/b.safetensors", "strength": 0.8}},
        "4": {"class_type": "WIDENCompose", "inputs": {"branch": ["2", 0]}},
        "5": {"class_type": "WIDENCompose", "inputs": {"branch": ["3", 0], "compose": ["4", 0]}},
        "6": {"class_type": "WIDENMerge", "inputs": {"base": ["1", 0], "target": ["5", 0], "t_factor": t}},
        "7": {"class_type": "WIDENExit", "inputs": {"widen": ["6", 0], "enable_cache": true}},
        "8": {"class_type": "TestCapture", "inputs": {"value": ["7", 0]}}
    })
}

fn exit_stats(m: &Models, engine: &Arc<MergeEngine>, prompt: &Json) -> (Arc<comfyrs_nodes::pack::NativeModel>, Json) {
    run_fresh(&registry_on(m, engine.clone()), prompt, "7", "8")
}

#[test]
fn two_engines_in_one_process_keep_independent_caches() {
    let m = models(&[Arch::Sdxl], false);
    let n = |s: &Json, k: &str| s[k].as_u64().unwrap();
    let (a, b) = (engine(), engine());
    let (first, cold) = exit_stats(&m, &a, &merge_prompt(0.5));
    assert_eq!(n(&cold, "recomputed"), n(&cold, "keys"));
    assert!(a.cache_stats().subtrees.entries > 0);
    // The same recipe on the other engine: nothing of the first engine's caches answers.
    assert_eq!(b.cache_stats().subtrees.entries, 0);
    let (second, on_b) = exit_stats(&m, &b, &merge_prompt(0.5));
    assert_eq!(n(&on_b, "recomputed"), n(&on_b, "keys"), "engine b computed everything itself: {on_b}");
    assert_eq!(n(&on_b, "cache_hits"), 0, "{on_b}");
    assert_same_overrides(&first, &second);
    // Engine a still has its own: the same recipe comes from its cache.
    let (_, warm) = exit_stats(&m, &a, &merge_prompt(0.5));
    assert_eq!(n(&warm, "cache_hits"), n(&warm, "keys"), "{warm}");
    // Clearing one leaves the other alone.
    b.clear();
    assert_eq!(b.cache_stats().subtrees.entries, 0);
    assert!(a.cache_stats().subtrees.entries > 0);
}

#[test]
fn every_cache_of_an_engine_counts_in_its_one_budget() {
    let m = models(&[Arch::Sdxl], false);
    let budget = MemoryBudget::new(1 << 30, 1 << 30);
    let engine = MergeEngine::new(MergeSettings::default(), budget.clone()).expect("engine");
    exit_stats(&m, &engine, &merge_prompt(0.5));
    let usage = budget.usage();
    let pool = |name: &str| usage.pools.iter().find(|p| p.name == name).map(|p| p.host + p.device).unwrap_or(0);
    let cached = engine.cache_stats();
    assert_eq!(pool("widen.subtrees") as usize, cached.subtrees.bytes + cached.subtrees.device_bytes, "{usage:?}");
    assert_eq!(pool("widen.statistics") as usize, cached.stats.bytes + cached.stats.device_bytes, "{usage:?}");
    assert!(pool("widen.subtrees") > 0 && pool("widen.statistics") > 0, "{usage:?}");
    assert_eq!(budget.used(Place::Host) + budget.used(Place::Device), usage.pools.iter().map(|p| p.host + p.device).sum::<u64>());
    engine.clear();
    assert_eq!(pool_after(&budget, "widen.subtrees"), 0, "clearing gives the budget back");
}

fn pool_after(budget: &MemoryBudget, name: &str) -> u64 {
    budget.usage().pools.iter().find(|p| p.name == name).map(|p| p.host + p.device).unwrap_or(0)
}

#[test]
fn two_exits_of_one_prompt_run_on_one_engine_at_once_and_match_separate_runs() {
    let m = models(&[Arch::Sdxl], false);
    // Two Exits over different merges of the same sets (they share sets, factors and staging),
    // independent of each other, so the executor runs them on two workers at once.
    let mut p = merge_prompt(0.3);
    p["16"] = json!({"class_type": "WIDENMerge", "inputs": {"base": ["1", 0], "target": ["5", 0], "t_factor": 0.9}});
    p["17"] = json!({"class_type": "WIDENExit", "inputs": {"widen": ["16", 0], "enable_cache": true}});
    p["18"] = json!({"class_type": "TestCapture", "inputs": {"value": ["17", 0]}});
    let shared = engine();
    for round in 0..3 {
        let reg = registry_on(&m, shared.clone());
        let (r, id) = run(&reg, &mut executor(), &p);
        assert_ok(&r);
        let (low, high) = (model_of(&captured(&id, "8")), model_of(&captured(&id, "18")));
        // Each alone, on an engine of its own, cold.
        let (low_alone, _) = exit_stats(&m, &engine(), &merge_prompt(0.3));
        let (high_alone, _) = exit_stats(&m, &engine(), &merge_prompt(0.9));
        assert_same_overrides(&low, &low_alone);
        assert_same_overrides(&high, &high_alone);
        if round > 0 {
            let s = &r.outputs["17"]["widen"][0];
            assert_eq!(s["cache_hits"], s["keys"], "round {round}: the shared engine answers both Exits: {s}");
        }
    }
}
