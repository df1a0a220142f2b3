//! Node schemas (`docs/widen.md`, "The nodes": names, inputs, types, defaults, ranges, order)
//! and the errors of its "Errors" section, raised at the nodes and at the Exit, through the
//! runtime.

mod pack_util;

use comfyrs_nodes::arch::Arch;
use pack_util::*;
use serde_json::{json, Value as Json};

#[test]
fn schemas_match_the_reference() {
    let m = models(&[Arch::Sdxl], false);
    let reg = registry(&m);
    let info = reg.object_info();
    for name in [
        "WIDENEntry", "WIDENCLIPEntry", "WIDENCLIPExit", "WIDENLoRA", "WIDENCompose", "WIDENMerge", "WIDENExit",
        "WIDENBlockConfigSDXL", "WIDENBlockConfigSDXLCLIP", "WIDENBlockConfigZImage", "WIDENBlockConfigQwen",
        "WIDENBlockConfigFlux", "WIDENModelInput", "WIDENDiffusionModelInput", "WIDENCLIPLoRA", "WIDENCLIPCompose",
        "WIDENCLIPMerge", "WIDENCLIPModelInput", "WIDENBaseInput",
    ] {
        let rec = &info[name];
        assert!(rec.is_object(), "{name} missing");
        assert_eq!(rec["output_node"], json!(false), "{name}");
        assert!(rec["category"].as_str().unwrap().starts_with("ecaj/merge"), "{name}");
    }
    let req = |n: &str| info[n]["input"]["required"].clone();
    let opt = |n: &str| info[n]["input"]["optional"].clone();
    assert_eq!(req("WIDENLoRA")["strength"], json!(["FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}]));
    assert!(req("WIDENLoRA")["lora_name"][0].as_array().unwrap().contains(&json!("sdxl/a.safetensors")));
    assert_eq!(opt("WIDENLoRA")["prev"], json!(["WIDEN"]));
    assert_eq!(opt("WIDENCLIPLoRA")["prev"], json!(["WIDEN_CLIP"]));
    assert_eq!(req("WIDENMerge")["t_factor"], json!(["FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05}]));
    assert_eq!(info["WIDENMerge"]["input_order"]["optional"], json!(["backbone", "block_config"]));
    assert_eq!(info["WIDENMerge"]["input_order"]["required"], json!(["base", "target", "t_factor"]));
    assert_eq!(req("WIDENModelInput")["strength"], json!(["FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.01}]));
    assert!(req("WIDENDiffusionModelInput")["model_name"][0].as_array().unwrap().contains(&json!("tiny/sdxl_f32.safetensors")));
    assert!(req("WIDENModelInput")["model_name"][0].as_array().unwrap().contains(&json!("tiny/sdxl_ldm_f32.safetensors")));
    let exit_opt = opt("WIDENExit");
    assert_eq!(exit_opt["save_model"], json!(["BOOLEAN", {"default": false}]));
    assert_eq!(exit_opt["model_name"], json!(["STRING", {"default": ""}]));
    assert_eq!(exit_opt["save_workflow"], json!(["BOOLEAN", {"default": true}]));
    assert_eq!(exit_opt["enable_cache"], json!(["BOOLEAN", {"default": true}]));
    assert_eq!(info["WIDENExit"]["input"]["hidden"], json!({"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}));
    assert_eq!(info["WIDENExit"]["output"], json!(["MODEL"]));
    assert_eq!(info["WIDENCLIPExit"]["output"], json!(["CLIP"]));
    // The CLIP Exit saves too (as text encoder files): the same options.
    assert_eq!(opt("WIDENCLIPExit"), exit_opt);
    assert_eq!(info["WIDENCLIPExit"]["input_order"]["optional"], info["WIDENExit"]["input_order"]["optional"]);
    assert_eq!(info["WIDENCLIPExit"]["input"]["hidden"], info["WIDENExit"]["input"]["hidden"]);
    for (n, count, first, last_block) in [
        ("WIDENBlockConfigSDXL", 25, "IN00", "FINAL_OUT"),
        ("WIDENBlockConfigSDXLCLIP", 52, "CL00", "CG_PROJ"),
        ("WIDENBlockConfigZImage", 39, "L00", "FINAL_NORM"),
        ("WIDENBlockConfigQwen", 65, "TB00", "FINAL_NORM"),
        ("WIDENBlockConfigFlux", 41, "DB00", "FINAL_LAYER"),
    ] {
        let order: Vec<String> =
            serde_json::from_value(info[n]["input_order"]["required"].clone()).unwrap();
        assert_eq!(order.len(), count, "{n}");
        assert_eq!(order[0], first);
        assert_eq!(order[count - 4], last_block);
        assert_eq!(&order[count - 3..], &["attention", "feed_forward", "norm"]);
        assert_eq!(req(n)[first], json!(["FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05}]));
        assert_eq!(info[n]["output"], json!(["BLOCK_CONFIG"]));
    }
}

fn base() -> Json {
    json!({"class_type": "WIDENBaseInput", "inputs": {"model_name": "tiny/sdxl_f32.safetensors"}})
}

fn sdxl_bc() -> Json {
    let mut bc = serde_json::Map::new();
    for b in (0..9).map(|i| format!("IN{i:02}")).chain(["MID".into()]).chain((0..9).map(|i| format!("OUT{i:02}"))).chain(
        ["TIME_EMBED", "LABEL_EMB", "FINAL_OUT", "attention", "feed_forward", "norm"].iter().map(|s| s.to_string()),
    ) {
        bc.insert(b, json!(1.0));
    }
    json!({"class_type": "WIDENBlockConfigSDXL", "inputs": bc})
}

fn zimage_bc() -> Json {
    let mut bc = serde_json::Map::new();
    for b in (0..30).map(|i| format!("L{i:02}")).chain(
        ["NOISE_REF0", "NOISE_REF1", "CTX_REF0", "CTX_REF1", "PATCH_EMBED", "FINAL_NORM", "attention", "feed_forward", "norm"]
            .iter()
            .map(|s| s.to_string()),
    ) {
        bc.insert(b, json!(1.0));
    }
    json!({"class_type": "WIDENBlockConfigZImage", "inputs": bc})
}

/// Runs `nodes` with a capture on `out` and returns the first error's (type, message).
fn fails(m: &Models, nodes: Json, out: &str) -> (String, String) {
    let mut p = nodes;
    p["99"] = json!({"class_type": "TestCapture", "inputs": {"value": [out, 0]}});
    let reg = registry(m);
    let mut exec = executor();
    let (r, _) = run(&reg, &mut exec, &p);
    assert!(!r.success(), "should fail: {p}");
    (r.errors[0].exception_type.clone(), r.errors[0].exception_message.clone())
}

#[test]
fn every_node_error() {
    let m = models(&[Arch::Sdxl, Arch::Zimage], false);
    let lora = |n: &str| json!({"class_type": "WIDENLoRA", "inputs": {"lora_name": n, "strength": 1.0}});
    let merge = |b: &str, t: &str| json!({"class_type": "WIDENMerge", "inputs": {"base": [b, 0], "target": [t, 0], "t_factor": 1.0}});
    let cases: Vec<(&str, Json, &str, &str, &str)> = vec![
        ("prev not a LoRA", json!({"1": base(), "2": lora("sdxl/a.safetensors"), "3": merge("1", "2"),
            "4": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/b.safetensors", "strength": 1.0, "prev": ["3", 0]}}}),
            "4", "TypeError", "Expected RecipeLoRA for prev input, got RecipeMerge"),
        ("chained block configs", json!({"1": sdxl_bc(), "2": zimage_bc(),
            "3": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/a.safetensors", "strength": 1.0, "block_config": ["1", 0]}},
            "4": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/b.safetensors", "strength": 1.0, "prev": ["3", 0], "block_config": ["2", 0]}}}),
            "4", "ValueError", "Block config architecture mismatch: prev has 'sdxl' but new block_config has 'zimage'"),
        ("compose a base", json!({"1": base(), "2": {"class_type": "WIDENCompose", "inputs": {"branch": ["1", 0]}}}),
            "2", "ValueError", "Cannot compose a raw base model"),
        ("compose input not a compose", json!({"1": lora("sdxl/a.safetensors"),
            "2": {"class_type": "WIDENCompose", "inputs": {"branch": ["1", 0], "compose": ["1", 0]}}}),
            "2", "TypeError", "compose must be RecipeCompose or None, got RecipeLoRA"),
        ("LoRA as merge base", json!({"1": lora("sdxl/a.safetensors"), "2": lora("sdxl/b.safetensors"), "3": merge("1", "2")}),
            "3", "ValueError", "base must be RecipeBase or RecipeMerge (a base model or merge chain), got RecipeLoRA"),
        ("base as merge target", json!({"1": base(), "3": merge("1", "1")}),
            "3", "TypeError", "target must be RecipeLoRA, RecipeModel, RecipeCompose, or RecipeMerge, got RecipeBase"),
        ("merge block config arch", json!({"1": base(), "2": lora("sdxl/a.safetensors"), "5": zimage_bc(),
            "3": {"class_type": "WIDENMerge", "inputs": {"base": ["1", 0], "target": ["2", 0], "t_factor": 1.0, "block_config": ["5", 0]}}}),
            "3", "ValueError", "Block config architecture 'zimage' does not match base model architecture 'sdxl'"),
        ("exit root a LoRA", json!({"1": lora("sdxl/a.safetensors"), "2": {"class_type": "WIDENExit", "inputs": {"widen": ["1", 0]}}}),
            "2", "ValueError", "Exit node expects RecipeMerge or RecipeBase at root, got RecipeLoRA. Connect a Merge node to Exit."),
        ("LoRA block config arch at Exit", json!({"1": base(), "5": zimage_bc(),
            "2": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/a.safetensors", "strength": 1.0, "block_config": ["5", 0]}},
            "3": merge("1", "2"), "4": {"class_type": "WIDENExit", "inputs": {"widen": ["3", 0]}}}),
            "4", "ValueError", "Block config architecture 'zimage' at root.target does not match base model architecture 'sdxl'"),
        ("checkpoint arch mismatch", json!({"1": base(),
            "2": {"class_type": "WIDENDiffusionModelInput", "inputs": {"model_name": "tiny/zimage_f32.safetensors", "strength": 1.0}},
            "3": merge("1", "2"), "4": {"class_type": "WIDENExit", "inputs": {"widen": ["3", 0]}}}),
            "4", "ValueError", "Architecture mismatch: checkpoint 'tiny/zimage_f32.safetensors' has architecture 'zimage' but base model has 'sdxl'"),
    ];
    for (label, nodes, out, ty, msg) in cases {
        let (t, e) = fails(&m, nodes, out);
        assert!(e.contains(msg), "{label}: {e}");
        assert_eq!(t, ty, "{label}: {e}");
    }
    // Files that disappear after the combo was listed.
    std::fs::copy(m.root().join("loras/sdxl/a.safetensors"), m.root().join("loras/sdxl/gone.safetensors")).unwrap();
    std::fs::copy(m.root().join("diffusion_models/tiny/sdxl_f32.safetensors"), m.root().join("checkpoints/gone.safetensors")).unwrap();
    std::fs::write(m.root().join("checkpoints/old.ckpt"), b"pickle").unwrap();
    std::fs::write(m.root().join("diffusion_models/unknown.safetensors"), {
        let mut v = Vec::new();
        let h = br#"{"foo.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}  "#;
        v.extend_from_slice(&(h.len() as u64).to_le_bytes());
        v.extend_from_slice(h);
        v.extend_from_slice(&[0, 0, 0, 0]);
        v
    }).unwrap();
    let reg = registry(&m);
    std::fs::remove_file(m.root().join("loras/sdxl/gone.safetensors")).unwrap();
    std::fs::remove_file(m.root().join("checkpoints/gone.safetensors")).unwrap();
    let run_fail = |p: Json| {
        let mut exec = executor();
        let (r, _) = run(&reg, &mut exec, &p);
        error_of(&r)
    };
    // Names that pass the combo check but are gone by the time the Exit runs (library path:
    // the runtime re-lists the folders at validation and would reject them earlier).
    {
        use comfyrs_nodes::pack::exit::evaluate;
        use comfyrs_nodes::pack::nodes::{lora_recipe, merge_recipe};
        use comfyrs_nodes::pack::recipe::SourceDir;
        use comfyrs_nodes::pack::{NativeModel, RecipeDomain, RecipeKind, RecipeNode};
        let folders = m.folders();
        let model = NativeModel::open(&m.root().join("diffusion_models/tiny/sdxl_f32.safetensors"), "b", RecipeDomain::Diffusion).unwrap();
        let b = RecipeNode::new(RecipeKind::Base { arch: model.arch(), domain: RecipeDomain::Diffusion, model });
        let l = lora_recipe(None, "sdxl/gone.safetensors", 0.5, None).unwrap();
        let e = evaluate(&m.engine, &folders, &merge_recipe(&b, &l, 1.0, None, None).unwrap(), RecipeDomain::Diffusion, false).err().unwrap();
        assert_eq!(e.exception_type(), "FileNotFoundError");
        assert!(e.message().contains("LoRA file not found: sdxl/gone.safetensors (referenced by LoRA node with strength 0.5"), "{e}");
        let mi = RecipeNode::new(RecipeKind::Model { path: "gone.safetensors".into(), strength: 0.7, block_config: None, source_dir: SourceDir::Checkpoints });
        let e = evaluate(&m.engine, &folders, &merge_recipe(&b, &mi, 1.0, None, None).unwrap(), RecipeDomain::Diffusion, false).err().unwrap();
        assert_eq!(e.message(), "Checkpoint file not found: gone.safetensors\nReferenced by Model Input node with strength 0.7");
    }
    {
        let (name, want) = ("old.ckpt", "Only safetensors format is supported");
        let e = run_fail(json!({"1": base(),
            "2": {"class_type": "WIDENModelInput", "inputs": {"model_name": name, "strength": 1.0}}, "3": merge("1", "2"),
            "4": {"class_type": "WIDENExit", "inputs": {"widen": ["3", 0]}}, "5": {"class_type": "TestCapture", "inputs": {"value": ["4", 0]}}}));
        assert!(e.contains(want), "{name}: {e}");
    }
    let e = run_fail(json!({"1": {"class_type": "WIDENBaseInput", "inputs": {"model_name": "unknown.safetensors"}},
        "5": {"class_type": "TestCapture", "inputs": {"value": ["1", 0]}}}));
    assert!(e.contains("Could not detect model architecture. Key prefixes: ['diffusion_model']. Supported architectures: flux, qwen, sdxl, zimage."), "{e}");
    // WIDENEntry on the native MODEL output works; the CLIP entry on a diffusion model does not.
    let mut exec = executor();
    let (r, _) = run(&reg, &mut exec, &json!({"1": base(), "2": {"class_type": "WIDENEntry", "inputs": {"model": ["1", 1]}},
        "3": lora("sdxl/a.safetensors"), "4": merge("2", "3"), "5": {"class_type": "WIDENExit", "inputs": {"widen": ["4", 0]}},
        "6": {"class_type": "TestCapture", "inputs": {"value": ["5", 0]}}}));
    assert_ok(&r);
}
