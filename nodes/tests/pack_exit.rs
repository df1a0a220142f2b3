//! End-to-end Exit runs through the runtime on tiny SDXL fixtures: dense and low-rank paths,
//! composes, chains, backbone, merges as branches, t_factor cases, block configs, dtypes. `D<n>`
//! cites `docs/decisions.md`.

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

fn lora(name: &str, s: f64) -> serde_json::Value {
    json!({"class_type": "WIDENLoRA", "inputs": {"lora_name": name, "strength": s}})
}

/// The worked-example shape (docs/widen.md, "Worked example"): M1 = Merge(Base, Compose(A, B@0.8),
/// 1.0), M2 = Merge(M1, C, 0.5).
fn chain_prompt(base: &str) -> serde_json::Value {
    pack_util::chain_prompt(base, 0.5, false)
}

fn run_capture(m: &Models, prompt: &serde_json::Value, node: &str) -> std::sync::Arc<comfyrs_nodes::pack::NativeModel> {
    let reg = registry(m);
    let mut exec = executor();
    let (report, id) = run(&reg, &mut exec, prompt);
    assert_ok(&report);
    model_of(&captured(&id, node))
}

/// D21: on an fp32 base the merged deltas are within 1e-4 relative of a float64 evaluation of
/// the same recipe (the math module's oracle, LoRA deltas materialized in float64).
#[test]
fn chain_matches_float64_oracle() {
    use comfyrs_nodes::lora::NameIndex;
    use comfyrs_nodes::widen::WidenConfig;
    use comfyrs_testkit::oracle;
    let m = models(&[Arch::Sdxl], false);
    let model = run_capture(&m, &chain_prompt("tiny/sdxl_f32.safetensors"), "10");
    let file = model.file();
    let index = NameIndex::from_shapes(Arch::Sdxl, &file.shapes());
    let set = |name: &str, s: f64| oracle::lora_set(&m.root().join("loras/sdxl").join(name), Arch::Sdxl, &index, s).unwrap();
    let (a, b, c) = (set("a.safetensors", 1.0), set("b.safetensors", 0.8), set("c.safetensors", 1.0));
    let cfg = WidenConfig::default();
    let mut worst = 0.0f64;
    for (k, merged) in model.overrides() {
        let base = file.tensor(k).unwrap().to_kind(Kind::Double);
        let want = oracle::chain_key(&cfg, k, &base, &[&a, &b], &c, 0.5).unwrap();
        let got = merged.to_kind(Kind::Double);
        let delta = (&want - &base).norm().double_value(&[]);
        if delta == 0.0 {
            assert!(got.equal(&want.to_kind(Kind::Double)) || (&got - &want).abs().max().double_value(&[]) < 1e-6, "{k}");
            continue;
        }
        let err = (&got - &want).norm().double_value(&[]) / delta;
        worst = worst.max(err);
        assert!(err < 1e-4, "{k}: relative error {err:e}");
    }
    eprintln!("worst relative delta error vs float64: {worst:e} over {} keys", model.overrides().len());
}

/// D5: t = 0 gives the backbone; t < 0 (reachable through links, not the widget) is task
/// arithmetic: base + the full delta.
#[test]
fn t_factor_zero_and_negative() {
    use comfyrs_nodes::pack::exit::evaluate;
    use comfyrs_nodes::pack::nodes::{lora_recipe, merge_recipe};
    use comfyrs_nodes::pack::{NativeModel, RecipeDomain, RecipeKind, RecipeNode};
    let m = models(&[Arch::Sdxl], false);
    let zero = run_capture(&m, &base_lora_merge("sdxl/a.safetensors", 0.0), "5");
    for (k, t) in zero.overrides() {
        assert!(t.equal(&zero.file().tensor(k).unwrap()), "{k} should be the base");
    }
    let folders = m.folders();
    let model = NativeModel::open(&m.root().join("diffusion_models/tiny/sdxl_f32.safetensors"), "base", RecipeDomain::Diffusion).unwrap();
    let base = RecipeNode::new(RecipeKind::Base { arch: model.arch(), domain: RecipeDomain::Diffusion, model: model.clone() });
    let l = lora_recipe(None, "sdxl/a.safetensors", 1.0, None).unwrap();
    let run_t = |t: f64| evaluate(&m.engine, &folders, &merge_recipe(&base, &l, t, None, None).unwrap(), RecipeDomain::Diffusion, false).unwrap().model;
    let (neg, pos) = (run_t(-1.0), run_t(1.0));
    let (neg2, zero2) = (run_t(-0.5), run_t(0.0));
    let mut differs = false;
    for (k, t) in neg.overrides() {
        assert!(t.equal(&neg2.overrides()[k]), "{k}: every t < 0 is the same task arithmetic");
        assert!(zero2.overrides()[k].equal(&model.tensor(k).unwrap()), "{k}");
        let base = model.tensor(k).unwrap().to_kind(Kind::Double);
        let full = &t.to_kind(Kind::Double) - &base;
        let filtered = &pos.overrides()[k].to_kind(Kind::Double) - &base;
        assert!(full.norm().double_value(&[]) >= filtered.norm().double_value(&[]) * 0.999, "{k}");
        differs |= !t.equal(&pos.overrides()[k]);
    }
    assert!(differs);
}

/// D7: a Compose nested in a Compose is flattened: same result as the flat compose.
#[test]
fn nested_compose_is_flattened() {
    let m = models(&[Arch::Sdxl], false);
    let flat = run_capture(&m, &chain_prompt("tiny/sdxl_f32.safetensors"), "10");
    let mut p = chain_prompt("tiny/sdxl_f32.safetensors");
    // 4 = Compose(A); 11 = Compose(branch = 4) ; 5 = Compose(B, compose = 11)
    p["11"] = json!({"class_type": "WIDENCompose", "inputs": {"branch": ["4", 0]}});
    p["5"]["inputs"]["compose"] = json!(["11", 0]);
    let nested = run_capture(&m, &p, "10");
    assert_same_overrides(&flat, &nested);
}

/// D8: an explicit backbone equal to the base gives the dense path the same result as the
/// low-rank path (within fp32 rounding); a backbone on the second merge changes the result.
#[test]
fn explicit_backbone() {
    let m = models(&[Arch::Sdxl], false);
    let low = run_capture(&m, &base_lora_merge("sdxl/a.safetensors", 1.0), "5");
    let mut p = base_lora_merge("sdxl/a.safetensors", 1.0);
    p["3"]["inputs"]["backbone"] = json!(["1", 0]);
    let dense = run_capture(&m, &p, "5");
    for (k, t) in low.overrides() {
        let base = low.file().tensor(k).unwrap().to_kind(Kind::Double);
        let d = (&t.to_kind(Kind::Double) - &base).norm().double_value(&[]);
        let e = (t.to_kind(Kind::Double) - dense.overrides()[k].to_kind(Kind::Double)).norm().double_value(&[]);
        assert!(e <= 1e-4 * d.max(1e-12), "{k}: low-rank vs dense {e:e} (delta {d:e})");
    }
    let mut chain = chain_prompt("tiny/sdxl_f32.safetensors");
    let plain = run_capture(&m, &chain, "10");
    chain["8"]["inputs"]["backbone"] = json!(["1", 0]);
    let bb = run_capture(&m, &chain, "10");
    assert!(plain.overrides().iter().any(|(k, t)| !t.equal(&bb.overrides()[k])));
}

/// D9: a Merge used as a compose branch is a model of its own.
#[test]
fn merge_as_branch() {
    let m = models(&[Arch::Sdxl], false);
    let p = json!({
        "1": {"class_type": "WIDENBaseInput", "inputs": {"model_name": "tiny/sdxl_f32.safetensors"}},
        "2": lora("sdxl/a.safetensors", 1.0),
        "3": lora("sdxl/b.safetensors", 1.0),
        "4": {"class_type": "WIDENMerge", "inputs": {"base": ["1", 0], "target": ["3", 0], "t_factor": 0.5}},
        "5": {"class_type": "WIDENCompose", "inputs": {"branch": ["2", 0]}},
        "6": {"class_type": "WIDENCompose", "inputs": {"branch": ["4", 0], "compose": ["5", 0]}},
        "7": {"class_type": "WIDENMerge", "inputs": {"base": ["1", 0], "target": ["6", 0], "t_factor": 1.0}},
        "8": {"class_type": "WIDENExit", "inputs": {"widen": ["7", 0]}},
        "9": {"class_type": "TestCapture", "inputs": {"value": ["8", 0]}},
        "10": {"class_type": "WIDENMerge", "inputs": {"base": ["1", 0], "target": ["4", 0], "t_factor": 1.0}},
        "11": {"class_type": "WIDENExit", "inputs": {"widen": ["10", 0], "enable_cache": false}},
        "12": {"class_type": "TestCapture", "inputs": {"value": ["11", 0]}}
    });
    let reg = registry(&m);
    let mut exec = executor();
    let (report, id) = run(&reg, &mut exec, &p);
    assert_ok(&report);
    let both = model_of(&captured(&id, "9"));
    let alone = model_of(&captured(&id, "12"));
    assert!(both.overrides().len() >= alone.overrides().len());
    assert!(both.overrides().iter().any(|(k, t)| alone.overrides().get(k).is_some_and(|u| !u.equal(t))));
    // A merge as the only target: filtered once more against the base.
    assert!(alone.overrides().iter().all(|(k, t)| t.kind() == Kind::Float && both.overrides().contains_key(k)));
}

/// D10: block configs multiply LoRA strengths and t_factors per key.
#[test]
fn block_configs() {
    let m = models(&[Arch::Sdxl], false);
    let reg = registry(&m);
    let mut bc = serde_json::Map::new();
    for b in (0..9).map(|i| format!("IN{i:02}")).chain(["MID".into()]).chain((0..9).map(|i| format!("OUT{i:02}"))).chain(
        ["TIME_EMBED", "LABEL_EMB", "FINAL_OUT", "attention", "feed_forward", "norm"].iter().map(|s| s.to_string()),
    ) {
        bc.insert(b, json!(1.0));
    }
    bc.insert("MID".into(), json!(0.0));
    let mut p = base_lora_merge("sdxl/a.safetensors", 1.0);
    p["6"] = json!({"class_type": "WIDENBlockConfigSDXL", "inputs": bc});
    // On the LoRA: MID keys get no delta → base.
    p["2"]["inputs"]["block_config"] = json!(["6", 0]);
    let mut exec = executor();
    let (r, id) = run(&reg, &mut exec, &p);
    assert_ok(&r);
    let on_lora = model_of(&captured(&id, "5"));
    let plain = run_capture(&m, &base_lora_merge("sdxl/a.safetensors", 1.0), "5");
    let mut mid = 0;
    for (k, t) in on_lora.overrides() {
        if k.starts_with("diffusion_model.middle_block.") {
            mid += 1;
            assert!(t.equal(&on_lora.file().tensor(k).unwrap()), "{k}: MID slider 0 keeps the base");
        } else {
            assert!(t.equal(&plain.overrides()[k]), "{k}: other blocks unchanged by a 1.0 slider");
        }
    }
    assert!(mid > 0);
    // On the Merge: t × 0 = 0 for MID → backbone there; attention × 2 changes t elsewhere.
    let mut p2 = base_lora_merge("sdxl/a.safetensors", 1.0);
    p2["6"] = p["6"].clone();
    p2["6"]["inputs"]["attention"] = json!(2.0);
    p2["3"]["inputs"]["block_config"] = json!(["6", 0]);
    let (r, id) = run(&reg, &mut exec, &p2);
    assert_ok(&r);
    let on_merge = model_of(&captured(&id, "5"));
    for (k, t) in on_merge.overrides() {
        if k.starts_with("diffusion_model.middle_block.") {
            assert!(t.equal(&on_merge.file().tensor(k).unwrap()), "{k}");
        }
    }
    assert!(on_merge.overrides().iter().any(|(k, t)| !k.contains("middle_block") && !t.equal(&plain.overrides()[k])));
}

/// D17: an f16 base gives f16 merged keys; a diffusion-model input takes the dense path.
#[test]
fn f16_base_and_model_input() {
    let m = models(&[Arch::Sdxl], false);
    write_base(m.root(), "diffusion_models/tiny/other_f32.safetensors", Arch::Sdxl, comfyrs_nodes::models::FileDtype::F32, 99);
    let mut p = chain_prompt("tiny/sdxl_f16.safetensors");
    p["10"] = json!({"class_type": "TestCapture", "inputs": {"value": ["9", 0]}});
    let half = run_capture(&m, &p, "10");
    assert!(half.overrides().values().all(|t| t.kind() == Kind::Half));
    let p = json!({
        "1": {"class_type": "WIDENBaseInput", "inputs": {"model_name": "tiny/sdxl_f32.safetensors"}},
        "2": {"class_type": "WIDENDiffusionModelInput", "inputs": {"model_name": "tiny/other_f32.safetensors", "strength": 0.5}},
        "3": lora("sdxl/a.safetensors", 1.0),
        "4": {"class_type": "WIDENCompose", "inputs": {"branch": ["2", 0]}},
        "5": {"class_type": "WIDENCompose", "inputs": {"branch": ["3", 0], "compose": ["4", 0]}},
        "6": {"class_type": "WIDENMerge", "inputs": {"base": ["1", 0], "target": ["5", 0], "t_factor": 1.0}},
        "7": {"class_type": "WIDENExit", "inputs": {"widen": ["6", 0]}},
        "8": {"class_type": "TestCapture", "inputs": {"value": ["7", 0]}}
    });
    let full = run_capture(&m, &p, "8");
    // Every float key of the base is touched by the full model.
    assert_eq!(full.overrides().len(), full.keys().count());
}

/// Every architecture, naming and kind of LoRA fixture merges (CLIP through the CLIP nodes).
#[test]
fn every_arch_naming_and_kind() {
    let m = models(&[Arch::Sdxl, Arch::SdxlClip, Arch::Zimage, Arch::Flux, Arch::Qwen], true);
    let reg = registry(&m);
    let mut exec = executor();
    let mut n = 0;
    for (arch, base) in [
        ("sdxl", "tiny/sdxl_f32.safetensors"),
        ("zimage", "tiny/zimage_f32.safetensors"),
        ("flux", "tiny/flux1_f32.safetensors"),
        ("qwen", "tiny/qwen_f32.safetensors"),
        ("sdxl_clip", "tiny/sdxl_ldm_f32.safetensors"),
    ] {
        let dir = m.root().join(format!("loras/{arch}/tiny"));
        let mut files: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        files.sort();
        assert!(!files.is_empty());
        for f in files {
            let name = format!("{arch}/tiny/{f}");
            let p = if arch == "sdxl_clip" {
                json!({
                    "1": {"class_type": "WIDENCLIPBaseInput", "inputs": {"ckpt_name": base}},
                    "2": {"class_type": "WIDENCLIPLoRA", "inputs": {"lora_name": name, "strength": 1.0}},
                    "3": {"class_type": "WIDENCLIPMerge", "inputs": {"base": ["1", 0], "target": ["2", 0], "t_factor": 1.0}},
                    "4": {"class_type": "WIDENCLIPExit", "inputs": {"widen_clip": ["3", 0]}},
                    "5": {"class_type": "TestCapture", "inputs": {"value": ["4", 0]}}
                })
            } else {
                let mut p = base_lora_merge(&name, 1.0);
                p["1"]["inputs"]["model_name"] = json!(base);
                p
            };
            let (r, id) = run(&reg, &mut exec, &p);
            assert!(r.success(), "{name}: {:?}", r.errors.iter().map(|e| &e.exception_message).collect::<Vec<_>>());
            let model = model_of(&captured(&id, "5"));
            assert!(!model.overrides().is_empty(), "{name}: nothing merged");
            assert!(model.overrides().iter().any(|(k, t)| !t.equal(&model.file().tensor(k).unwrap())), "{name}: no change");
            n += 1;
        }
    }
    eprintln!("{n} LoRA fixtures merged");
}
