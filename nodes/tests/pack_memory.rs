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
    chain_prompt("tiny/sdxl_f32.safetensors", 0.5, true)
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

/// LoRAs entering a merge as low-rank factors take kilobytes per key, not copies of it: a
/// compose of three plans its chunks as one LoRA does. The same LoRAs against an explicit
/// backbone enter as full weights and need more, smaller chunks. (Counting every LoRA as full
/// weights planned Z-Image's seven-LoRA compose in 46 chunks instead of 5 under 24 GiB.)
#[test]
fn low_rank_contributions_do_not_shrink_the_chunks_and_full_weights_do() {
    let m = models(&[Arch::Sdxl], false);
    let merge = |n: usize, backbone: bool| -> serde_json::Value {
        let mut p = json!({
            "1": {"class_type": "WIDENBaseInput", "inputs": {"model_name": "tiny/sdxl_f32.safetensors"}},
            "9": {"class_type": "WIDENExit", "inputs": {"widen": ["8", 0]}},
            "10": {"class_type": "TestCapture", "inputs": {"value": ["9", 0]}}
        });
        // The same file at different strengths: every branch touches the same keys, so the
        // groups (and the chunks a budget allows per group) compare one for one.
        for i in 0..n {
            p[format!("l{i}")] = json!({"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/a.safetensors", "strength": 1.0 - 0.1 * i as f64}});
            let mut c = json!({"class_type": "WIDENCompose", "inputs": {"branch": [format!("l{i}"), 0]}});
            if i > 0 {
                c["inputs"]["compose"] = json!([format!("c{}", i - 1), 0]);
            }
            p[format!("c{i}")] = c;
        }
        p["8"] = json!({"class_type": "WIDENMerge", "inputs": {"base": ["1", 0], "target": [format!("c{}", n - 1), 0], "t_factor": 1.0}});
        if backbone {
            p["8"]["inputs"]["backbone"] = json!(["1", 0]);
        }
        p
    };
    // Room for a few of the fixture's keys per chunk.
    let engine = || MergeEngine::standalone(MergeSettings { chunk_budget: Some(256 << 10), ..MergeSettings::on(Device::Cpu) }).expect("a CPU engine");
    let chunks = |p: &serde_json::Value| -> u64 {
        let (_, s) = run_fresh(&registry_on(&m, engine()), p, "9", "10");
        assert_eq!(s["oom_retries"], 0, "{s}");
        s["chunks"].as_u64().unwrap_or_else(|| panic!("no chunk count: {s}"))
    };
    let one = chunks(&merge(1, false));
    assert!(one > 1, "the budget must split the merge for the comparison to mean anything: {one} chunk");
    assert_eq!(chunks(&merge(3, false)), one, "three low-rank LoRAs plan as one does");
    assert!(chunks(&merge(3, true)) > one, "three LoRAs as full weights need smaller chunks");
}
