//! WIDEN merges on fp8, scaled fp8 and bf16 bases (docs/widen.md, "Model formats"): merged keys
//! keep the base's dtype, match the same merge on the f16 base within the formats' precision,
//! and a scaled fp8 merge saves and reloads in the base's key layout with new scales.

mod pack_util;

use comfyrs_nodes::arch::{layout, Arch, LayoutSize};
use comfyrs_nodes::models::{CheckpointDomain, CheckpointFile, FileDtype, MappedFile};
use comfyrs_testkit::fixtures::write_scaled_fp8_model;
use comfyrs_nodes::pack::NativeModel;
use pack_util::*;
use serde_json::{json, Value as Json};
use tch::Kind;

fn prompt(base: &str, target: Json, save: Option<&str>) -> Json {
    let mut exit = json!({"widen": ["3", 0]});
    if let Some(name) = save {
        exit["save_model"] = json!(true);
        exit["model_name"] = json!(name);
    }
    json!({
        "1": {"class_type": "WIDENBaseInput", "inputs": {"model_name": base}},
        "2": target,
        "3": {"class_type": "WIDENMerge", "inputs": {"base": ["1", 0], "target": ["2", 0], "t_factor": 1.0}},
        "4": {"class_type": "WIDENExit", "inputs": exit},
        "5": {"class_type": "TestCapture", "inputs": {"value": ["4", 0]}}
    })
}

fn lora() -> Json {
    json!({"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/b.safetensors", "strength": 1.0}})
}

/// A key's true values (stored values × scale) as f64.
fn values(m: &NativeModel, k: &str) -> Vec<f64> {
    let t = m.tensor(k).unwrap();
    let s = m.scale(k).unwrap().unwrap_or(1.0) as f64;
    f64_of(&t).into_iter().map(|v| v * s).collect()
}

/// Half an fp8 / bf16 step relative to a value in the normal range, and half the smallest
/// (subnormal) step, in stored units.
fn precision(kind: Kind) -> (f64, f64) {
    match kind {
        Kind::Float8e4m3fn => (2f64.powi(-4), 2f64.powi(-10)),
        Kind::Float8e5m2 => (2f64.powi(-3), 2f64.powi(-17)),
        Kind::BFloat16 => (2f64.powi(-8), 2f64.powi(-134)),
        _ => (2f64.powi(-11), 2f64.powi(-25)),
    }
}

#[test]
fn fp8_and_bf16_bases_merge_like_f16() {
    let m = models(&[Arch::Sdxl], false);
    let reg = registry(&m);
    let (reference, _) = run_fresh(&reg, &prompt("tiny/sdxl_f16.safetensors", lora(), None), "4", "5");
    let f16 = CheckpointFile::open(m.root().join("diffusion_models/tiny/sdxl_f16.safetensors"), CheckpointDomain::Diffusion).unwrap();
    assert!(!reference.overrides().is_empty());
    for (file, kind) in [
        ("sdxl_f8_e4m3", Kind::Float8e4m3fn),
        ("sdxl_f8_e5m2", Kind::Float8e5m2),
        ("sdxl_f8_e4m3_scaled", Kind::Float8e4m3fn),
        ("sdxl_bf16", Kind::BFloat16),
    ] {
        let (model, stats) = run_fresh(&reg, &prompt(&format!("tiny/{file}.safetensors"), lora(), None), "4", "5");
        assert_eq!(model.overrides().keys().collect::<Vec<_>>(), reference.overrides().keys().collect::<Vec<_>>(), "{file}: {stats}");
        let scaled = file.ends_with("scaled");
        let (rel, sub) = precision(kind);
        let (mut worst, mut err2, mut ref2, mut changed, mut n) = (0f64, 0f64, 0f64, 0usize, 0usize);
        for k in model.overrides().keys() {
            let t = &model.overrides()[k];
            assert_eq!(t.kind(), kind, "{file} {k}: the base's dtype");
            assert_eq!(model.kind(k), Some(kind));
            let scale = model.scale(k).unwrap();
            assert_eq!(scale.is_some(), scaled && f16.shape(k).unwrap().len() >= 2, "{file} {k}");
            let got = values(&model, k);
            let want = values(&reference, k);
            let base = f64_of(&f16.tensor(k).unwrap());
            let stored_base = {
                let b = model.try_file().unwrap();
                let s = b.scale(k).unwrap().unwrap_or(1.0) as f64;
                f64_of(&b.tensor(k).unwrap()).into_iter().map(|v| v * s).collect::<Vec<_>>()
            };
            let sub = sub * scale.unwrap_or(1.0) as f64;
            for i in 0..got.len() {
                let delta = (want[i] - base[i]).abs();
                // Two roundings (the base's and the result's) of half a step each, the f16
                // reference's own, and the merge's change itself: the filter ranks columns on a
                // base that differs by rounding, so a column may be kept on one and not the other.
                let tol = rel * (want[i].abs() + base[i].abs()) + 2f64.powi(-11) * want[i].abs() + 2.0 * sub + 2.0 * delta + 1e-7;
                worst = worst.max((got[i] - want[i]).abs() / tol);
                err2 += (got[i] - want[i]).powi(2);
                ref2 += want[i].powi(2);
                changed += (got[i] != stored_base[i]) as usize;
                n += 1;
            }
        }
        let frob = (err2 / ref2).sqrt();
        eprintln!("{file}: worst {worst:.3} of the tolerance, relative error {frob:.2e}, {changed} of {n} values changed");
        assert!(worst <= 1.0, "{file}: {worst}");
        // Overall, the error stays within the formats' rounding (root mean square below half a
        // step), and the merge is not rounded away: some stored values differ from the base's.
        assert!(frob <= rel, "{file}: {frob}");
        assert!(changed > n / 50, "{file}: {changed} of {n}");
    }
}

#[test]
fn scaled_fp8_merge_saves_in_the_base_layout_and_is_reused() {
    let m = models(&[Arch::Sdxl], false);
    let reg = registry(&m);
    let p = prompt("tiny/sdxl_f8_e4m3_scaled.safetensors", lora(), Some("scaled_merge"));
    let (r, id) = run(&reg, &mut executor(), &p);
    assert_ok(&r);
    let model = model_of(&captured(&id, "5"));
    let base = model.try_file().unwrap().clone();
    assert_eq!(model.override_scales().len(), model.overrides().keys().filter(|k| base.scale_key(k).is_some()).count());
    assert!(!model.override_scales().is_empty());
    // The saved file holds the base's names: weights, scales, input scales and the marker.
    let path = m.root().join("checkpoints/scaled_merge.safetensors");
    let saved = CheckpointFile::open(&path, CheckpointDomain::Diffusion).unwrap();
    assert_eq!(saved.keys().collect::<Vec<_>>().len(), base.len());
    assert!(base.keys().all(|k| saved.contains(k) && saved.dtype(k) == base.dtype(k)));
    let names = |c: &CheckpointFile| {
        let mut n: Vec<String> = c.companions().keys().cloned().collect();
        n.sort();
        n
    };
    assert_eq!(names(&saved), names(&base));
    for (k, sk) in base.keys().filter_map(|k| Some((k, base.scale_key(k)?))) {
        assert_eq!(saved.scale_key(k), Some(sk));
        let (want_t, want_s) = match model.overrides().get(k) {
            Some(t) => (t.shallow_clone(), model.override_scales()[k]),
            None => (base.tensor(k).unwrap().shallow_clone(), base.scale(k).unwrap().unwrap()),
        };
        assert!(saved.tensor(k).unwrap().to_kind(Kind::Float).equal(&want_t.to_kind(Kind::Float)), "{k}");
        assert_eq!(saved.scale(k).unwrap(), Some(want_s), "{k}");
        assert_eq!(saved.file().meta(&saved.companions()[sk].file_key).unwrap().dtype, FileDtype::F32);
    }
    let marker = &saved.companions()["diffusion_model.scaled_fp8"];
    assert_eq!(saved.file().meta(&marker.file_key).unwrap().dtype, FileDtype::F8E4M3);
    // Read back as a base, the saved merge holds the merged weights (value × scale).
    let reread = MappedFile::open(&path).unwrap();
    assert!(reread.metadata().unwrap().contains_key("__ecaj_recipe_hash__"));
    // A fresh runtime reuses the file: the same stored values and scales.
    let (r2, id2) = run(&registry(&m), &mut executor(), &p);
    assert_ok(&r2);
    assert_eq!(r2.outputs["4"]["widen"][0]["reused_saved_file"], json!(true));
    let again = model_of(&captured(&id2, "5"));
    assert_same_overrides(&model, &again);
    assert_eq!(again.override_scales(), model.override_scales());
    assert_eq!(again.overrides_digest().unwrap(), model.overrides_digest().unwrap());
}

/// A scaled fp8 Model Input contributes its true weights: the same merge as with the f32 file
/// of the same weights, within e4m3fn's rounding of the contributor.
#[test]
fn scaled_fp8_model_input_contributes_value_times_scale() {
    let m = models(&[Arch::Sdxl], false);
    let l = layout(Arch::Sdxl, LayoutSize::Tiny);
    write_base(m.root(), "diffusion_models/tiny/other_f32.safetensors", Arch::Sdxl, FileDtype::F32, 99);
    write_scaled_fp8_model(&m.root().join("diffusion_models/tiny/other_scaled.safetensors"), &l, FileDtype::F8E4M3, 99, false).unwrap();
    let reg = registry(&m);
    let input = |name: &str| json!({"class_type": "WIDENDiffusionModelInput", "inputs": {"model_name": name, "strength": 0.5}});
    let (want, _) = run_fresh(&reg, &prompt("tiny/sdxl_f32.safetensors", input("tiny/other_f32.safetensors"), None), "4", "5");
    let (got, _) = run_fresh(&reg, &prompt("tiny/sdxl_f32.safetensors", input("tiny/other_scaled.safetensors"), None), "4", "5");
    let other = CheckpointFile::open(m.root().join("diffusion_models/tiny/other_f32.safetensors"), CheckpointDomain::Diffusion).unwrap();
    let scaled = CheckpointFile::open(m.root().join("diffusion_models/tiny/other_scaled.safetensors"), CheckpointDomain::Diffusion).unwrap();
    assert_eq!(got.overrides().keys().collect::<Vec<_>>(), want.overrides().keys().collect::<Vec<_>>());
    let (mut err2, mut ref2) = (0f64, 0f64);
    for k in want.overrides().keys() {
        assert_eq!(got.overrides()[k].kind(), Kind::Float);
        let (g, w) = (f64_of(&got.overrides()[k]), f64_of(&want.overrides()[k]));
        let o = f64_of(&other.tensor(k).unwrap());
        let (rel, step) = match scaled.scale(k).unwrap() {
            Some(s) => (2f64.powi(-4), s as f64 * 2f64.powi(-10)),
            None => (2f64.powi(-8), 0.0),
        };
        for i in 0..g.len() {
            // The contributor differs by its rounding (half a step of its value); the filter,
            // ranking columns on it, may keep a column on one and not the other: at most the
            // whole difference between the contributor and the result.
            let tol = rel * o[i].abs() + step + (o[i] - w[i]).abs() + 1e-6;
            assert!((g[i] - w[i]).abs() <= tol, "{k}[{i}]: {} vs {}", g[i], w[i]);
            err2 += (g[i] - w[i]).powi(2);
            ref2 += w[i].powi(2);
        }
    }
    // Without the scale the weights would be off by three orders of magnitude; with it the
    // merges agree to within a fraction of e4m3fn's step.
    let frob = (err2 / ref2).sqrt();
    eprintln!("scaled Model Input: relative error {frob:.2e}");
    assert!(frob < 2f64.powi(-4), "{frob}");
}
