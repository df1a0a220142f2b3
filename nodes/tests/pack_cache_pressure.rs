//! The subtree cache under pressure: when it holds the branch below the output but not both,
//! a slider change on the output's merge still finds the whole branch (the output's results are
//! stored at the cold end of the LRU). Its own binary: it narrows the process-wide cache.

mod pack_util;

use comfyrs_nodes::arch::Arch;
use comfyrs_nodes::pack::{CACHE, FACTORS, STATS};
use pack_util::*;
use serde_json::{json, Value as Json};

/// M1 = merge of a compose of two LoRAs onto the base; M2 = a third LoRA merged onto M1 at `t2`.
fn prompt(t2: f64, cache: bool) -> Json {
    json!({
        "1": {"class_type": "WIDENBaseInput", "inputs": {"model_name": "tiny/sdxl_f32.safetensors"}},
        "2": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/a.safetensors", "strength": 1.0}},
        "3": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/b.safetensors", "strength": 0.8}},
        "4": {"class_type": "WIDENCompose", "inputs": {"branch": ["2", 0]}},
        "5": {"class_type": "WIDENCompose", "inputs": {"branch": ["3", 0], "compose": ["4", 0]}},
        "6": {"class_type": "WIDENMerge", "inputs": {"base": ["1", 0], "target": ["5", 0], "t_factor": 1.0}},
        "7": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/c.safetensors", "strength": 1.0}},
        "8": {"class_type": "WIDENMerge", "inputs": {"base": ["6", 0], "target": ["7", 0], "t_factor": t2}},
        "9": {"class_type": "WIDENExit", "inputs": {"widen": ["8", 0], "enable_cache": cache}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["9", 0]}}
    })
}

fn exec_once(m: &Models, p: &Json) -> (std::sync::Arc<comfyrs_nodes::pack::NativeModel>, Json) {
    let reg = registry(m);
    let mut exec = executor();
    let (r, id) = run(&reg, &mut exec, p);
    assert_ok(&r);
    (model_of(&captured(&id, "10")), r.outputs["9"]["widen"][0].clone())
}

fn clear() {
    CACHE.clear();
    STATS.clear();
    FACTORS.clear();
}

#[test]
fn a_cache_too_small_for_two_merges_keeps_the_branch_a_slider_change_needs() {
    let m = models(&[Arch::Sdxl], false);
    let n = |stats: &Json, k: &str| stats[k].as_u64().unwrap();
    // How many bytes one run leaves: both merges' results (the same keys, shapes and dtype).
    clear();
    exec_once(&m, &prompt(0.5, true));
    // Host memory on the CPU, device memory on a GPU.
    let held = || CACHE.stats().bytes + CACHE.stats().device_bytes;
    let both = held();
    assert!(both > 0);
    // Room for one merge's results and a bit, not for two.
    CACHE.set_limits(both * 6 / 10, both * 6 / 10);
    clear();
    let (_, cold) = exec_once(&m, &prompt(0.5, true));
    assert_eq!(n(&cold, "recomputed"), n(&cold, "keys"));
    let (warm, stats) = exec_once(&m, &prompt(0.9, true));
    assert_eq!(n(&stats, "subtree_hits"), n(&stats, "keys"), "every key of M1 comes from the cache: {stats}");
    assert_eq!(n(&stats, "stats_hits"), n(&stats, "keys"), "{stats}");
    assert!(held() <= both * 6 / 10);
    // And it is the cold result.
    let (fresh, _) = exec_once(&m, &prompt(0.9, false));
    assert_same_overrides(&warm, &fresh);
}
