//! End-to-end Exit runs through the runtime on tiny SDXL fixtures: dense and low-rank paths,
//! composes, chains, backbone, merges as branches, t_factor cases, block configs, dtypes.

mod pack_util;

use comfyrs_nodes::arch::Arch;
use pack_util::*;
use serde_json::json;
use tch::Kind;

fn base_lora_merge(lora: &str, t: f64) -> serde_json::Value {
    json!({
        "1": {"class_type": "WIDENBaseInput", "inputs": {"model_name": "tiny/sdxl_f32.safetensors"}},
        "2": {"class_type": "WIDENLoRA", "inputs": {"lora_name": lora, "strength": 1.0}},
        "3": {"class_type": "WIDENMerge", "inputs": {"base": ["1", 0], "target": ["2", 0], "t_factor": t}},
        "4": {"class_type": "WIDENExit", "inputs": {"widen": ["3", 0], "enable_cache": false}},
        "5": {"class_type": "TestCapture", "inputs": {"value": ["4", 0]}}
    })
}

#[test]
fn single_lora_merge_changes_exactly_the_lora_keys() {
    let m = models(&[Arch::Sdxl], false);
    let reg = registry(&m);
    let mut exec = executor();
    let (report, id) = run(&reg, &mut exec, &base_lora_merge("sdxl/a.safetensors", 1.0));
    assert_ok(&report);
    let model = model_of(&captured(&id, "5"));
    assert!(!model.overrides().is_empty());
    let ui = &report.outputs["4"]["widen"][0];
    assert_eq!(ui["keys"].as_u64().unwrap() as usize, model.overrides().len(), "{ui}");
    for (k, t) in model.overrides() {
        assert_eq!(t.kind(), Kind::Float);
        let base = model.file().tensor(k).unwrap();
        assert!(!t.equal(&base), "{k} unchanged");
        assert!(k.contains("attn") || k.contains("proj_"), "{k}");
    }
}
