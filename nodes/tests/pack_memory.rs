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

/// What a ComfyUI beside the merge would say: `free` bytes on the merge's device, and room that
/// unloading its idle models makes.
struct Beside {
    free: std::sync::Mutex<u64>,
    unloads: u64,
    asked: std::sync::Mutex<Vec<u64>>,
    measured: std::sync::atomic::AtomicUsize,
}

impl comfyrs_nodes::pack::ForeignModels for Beside {
    fn state_dict(&self, _: &comfyrs_runtime::Value) -> Option<Result<comfyrs_nodes::pack::ForeignState, String>> {
        None
    }
    fn with_weights(&self, _: &comfyrs_runtime::Value, _: &indexmap::IndexMap<String, tch::Tensor>) -> Result<comfyrs_runtime::Value, String> {
        Err("no foreign models here".into())
    }
    fn unload_idle(&self, _: Option<&comfyrs_runtime::Value>, bytes: u64) -> u64 {
        // Unloading takes a while (ComfyUI copies the model to host memory).
        std::thread::sleep(std::time::Duration::from_millis(30));
        self.asked.lock().unwrap().push(bytes);
        *self.free.lock().unwrap() += self.unloads;
        self.unloads
    }
    fn device_free(&self, device: Device) -> Option<u64> {
        self.measured.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (device == Device::Cpu).then(|| *self.free.lock().unwrap())
    }
}

/// Beside a runtime that holds the device (ComfyUI with its models loaded), an Exit asks what is
/// free before its first chunk; far short of its plan, it has the runtime unload the models it
/// is not using for the rest and asks again (docs/architecture.md, "Memory"). The merge is the
/// same.
#[test]
fn a_merge_beside_comfyui_sizes_its_chunks_from_what_is_free_and_has_idle_models_unloaded_when_far_short() {
    const GIB: u64 = 1 << 30;
    let m = models(&[Arch::Sdxl], false);
    let (alone, _) = run_fresh(&registry_on(&m, engine_with(None)), &prompt(), "9", "10");
    // The Exit run `runs` times on one engine (a fresh executor each time, so the Exit runs
    // and finds the engine's caches).
    let beside = |free: u64, runs: usize| {
        let engine = MergeEngine::standalone(MergeSettings { chunk_budget: Some(8 * GIB), ..MergeSettings::on(Device::Cpu) }).unwrap();
        let runtime = std::sync::Arc::new(Beside { free: free.into(), unloads: GIB, asked: Default::default(), measured: 0.into() });
        engine.set_foreign_models(runtime.clone());
        let reg = registry_on(&m, engine);
        let mut room = Vec::new();
        for _ in 0..runs {
            let (merged, stats) = run_fresh(&reg, &prompt(), "9", "10");
            assert_same_overrides(&alone, &merged);
            room.push(stats["phases"]["room"].as_f64().unwrap());
        }
        let asked = runtime.asked.lock().unwrap().clone();
        (asked, runtime.measured.load(std::sync::atomic::Ordering::Relaxed), room)
    };
    // Nothing free: the floor of 256 MiB is what the chunks would get; the runtime is asked for
    // the rest of the plan, and the device measured again. The Exit's statistics put the time
    // that took in a phase of its own.
    let (asked, measured, room) = beside(0, 1);
    assert_eq!(asked, vec![8 * GIB - (256 << 20)]);
    assert_eq!(measured, 2, "measured before and after the unloading");
    assert!(room[0] >= 0.03, "the unloading's time is the room phase's: {room:?}");
    // A second run that finds every key in the cache computes nothing and asks nothing.
    let (asked, measured, _) = beside(0, 2);
    assert_eq!((asked, measured), (vec![8 * GIB - (256 << 20)], 2));
    // Half the plan free: nothing is unloaded.
    let (asked, measured, _) = beside(4 * GIB + GIB / 2, 1);
    assert_eq!((asked, measured), (vec![], 1));
}
