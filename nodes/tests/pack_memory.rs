//! The device memory limit on tiny SDXL fixtures, on the CPU (docs/decisions.md D35): under a
//! small limit the Exit plans smaller chunks, runs more of them, and merges the same bits.

mod pack_util;

use comfyrs_nodes::arch::Arch;
use comfyrs_nodes::merge::device_plan::cpu_chunk_memory;
use comfyrs_nodes::pack::{MergeEngine, MergeSettings};
use pack_util::*;
use serde_json::json;
use tch::Device;

/// A compose of two LoRAs merged into the base, then a third chained at t 0.5.
fn prompt() -> serde_json::Value {
    json!({
        "1": {"class_type": "WIDENBaseInput", "inputs": {"model_name": "tiny/sdxl_f32.safetensors"}},
        "2": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/a.safetensors", "strength": 1.0}},
        "3": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/b.safetensors", "strength": 0.8}},
        "4": {"class_type": "WIDENCompose", "inputs": {"branch": ["2", 0]}},
        "5": {"class_type": "WIDENCompose", "inputs": {"branch": ["3", 0], "compose": ["4", 0]}},
        "6": {"class_type": "WIDENMerge", "inputs": {"base": ["1", 0], "target": ["5", 0], "t_factor": 1.0}},
        "7": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/c.safetensors", "strength": 1.0}},
        "8": {"class_type": "WIDENMerge", "inputs": {"base": ["6", 0], "target": ["7", 0], "t_factor": 0.5}},
        "9": {"class_type": "WIDENExit", "inputs": {"widen": ["8", 0]}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["9", 0]}}
    })
}

fn engine_with(limit: Option<u64>) -> std::sync::Arc<MergeEngine> {
    MergeEngine::standalone(MergeSettings { device_memory: limit, ..MergeSettings::on(Device::Cpu) }).expect("a CPU engine")
}

#[test]
fn a_small_device_memory_limit_runs_more_chunks_and_merges_the_same_bits() {
    let m = models(&[Arch::Sdxl], false);
    let (free, free_stats) = run_fresh(&registry_on(&m, engine_with(None)), &prompt(), "9", "10");
    // 4 KiB: less than any key of the fixture needs, so every chunk is a single key.
    let (limited, limited_stats) = run_fresh(&registry_on(&m, engine_with(Some(4 << 10))), &prompt(), "9", "10");
    assert_same_overrides(&free, &limited);
    let chunks = |s: &serde_json::Value| s["chunks"].as_u64().unwrap_or_else(|| panic!("no chunk count: {s}"));
    assert!(chunks(&limited_stats) > chunks(&free_stats), "limited {limited_stats}, unlimited {free_stats}");
    assert_eq!(chunks(&limited_stats), limited_stats["recomputed"].as_u64().unwrap(), "one key per chunk: {limited_stats}");
    assert_eq!(limited_stats["oom_retries"], 0, "planned, not retried: {limited_stats}");
    assert_eq!(free_stats["oom_retries"], 0);
    // A limit larger than what the machine offers changes nothing.
    let (roomy, roomy_stats) = run_fresh(&registry_on(&m, engine_with(Some(1 << 50))), &prompt(), "9", "10");
    assert_same_overrides(&free, &roomy);
    assert_eq!(chunks(&roomy_stats), chunks(&free_stats));
    assert_eq!(cpu_chunk_memory(8 << 30, Some(1 << 50)), cpu_chunk_memory(8 << 30, None));
}
